/** The admin service every process serves: run-time fault injection behind a bearer token. */
import { AdminService, FaultsSchema } from "@tailwatch/proto/admin/v1";
import { create } from "@bufbuild/protobuf";
import { Code, ServiceError } from "@tailwatch/grpc";
import { bindService, type CallContext, type Pipeline, type ServiceBinding } from "./pipeline.ts";

function timingSafeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

export function createAdminBinding(pipeline: Pipeline, adminToken: string): ServiceBinding {
  const authorize = (context: CallContext) => {
    if (adminToken === "") {
      throw new ServiceError(
        Code.PERMISSION_DENIED,
        "the admin service is disabled: set ADMIN_TOKEN to enable it",
      );
    }
    const header = context.header("authorization") ?? "";
    const token = /^Bearer\s+(.+)$/i.exec(header)?.[1] ?? "";
    if (!token) throw new ServiceError(Code.UNAUTHENTICATED, 'missing "authorization: Bearer <admin token>"');
    if (!timingSafeEqual(token, adminToken)) {
      throw new ServiceError(Code.PERMISSION_DENIED, "wrong admin token");
    }
  };
  return bindService(AdminService, {
    getFaults(_request, context) {
      authorize(context);
      return { faults: pipeline.faults() };
    },
    setFaults(request, context) {
      authorize(context);
      return { faults: pipeline.setFaults(request.faults ?? create(FaultsSchema, {})) };
    },
  }, "admin");
}
