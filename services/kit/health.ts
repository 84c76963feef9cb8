/**
 * grpc.health.v1: SERVING while the process takes requests, NOT_SERVING from the moment it starts draining,
 * so probes and load balancers stop sending traffic before the listener closes.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthCheckResponseSchema,
} from "@tailwatch/proto/grpc/health/v1";
import { Code, type GrpcServer, type GrpcStream, methodPath, ServiceError } from "@tailwatch/grpc";

export { ServingStatus };

export interface HealthState {
  /** Status of the whole server ("") and of every named service. */
  status(service: string): ServingStatus | undefined;
  setAll(status: ServingStatus): void;
  isServing(): boolean;
  /** Ends every Watch stream (after NOT_SERVING was sent), so the server can finish its shutdown. */
  endWatches(): void;
}

/** The service a HealthCheckRequest names, or INVALID_ARGUMENT for a malformed one. */
function requestedService(bytes: Uint8Array): string | ServiceError {
  try {
    return fromBinary(HealthCheckRequestSchema, bytes).service;
  } catch (error) {
    return new ServiceError(
      Code.INVALID_ARGUMENT,
      `malformed HealthCheckRequest: ${(error as Error).message}`,
    );
  }
}

const encodeStatus = (status: ServingStatus) =>
  toBinary(HealthCheckResponseSchema, create(HealthCheckResponseSchema, { status }));

export function createHealth(server: GrpcServer, serviceNames: readonly string[]): HealthState {
  const names = new Set(["", ...serviceNames]);
  let current = ServingStatus.SERVING;
  const watches = new Map<GrpcStream, string>();
  const statusOf = (service: string) => names.has(service) ? current : undefined;

  server.addUnary(methodPath(Health.method.check), (bytes, _call, respond) => {
    const service = requestedService(bytes);
    if (service instanceof ServiceError) {
      respond.error(service);
      return;
    }
    const status = statusOf(service);
    if (status === undefined) {
      respond.error(new ServiceError(Code.NOT_FOUND, `unknown service ${JSON.stringify(service)}`));
    } else {
      respond.message(encodeStatus(status));
    }
  });
  server.addStreaming(methodPath(Health.method.watch), (stream) => {
    stream.onMessage((bytes) => {
      if (watches.has(stream)) return; // server streaming: one request
      const service = requestedService(bytes);
      if (service instanceof ServiceError) {
        stream.end(service);
        return;
      }
      watches.set(stream, service);
      stream.send(encodeStatus(statusOf(service) ?? ServingStatus.SERVICE_UNKNOWN));
    });
    stream.signal.addEventListener("abort", () => watches.delete(stream), { once: true });
  });
  return {
    status: statusOf,
    setAll(status) {
      if (status === current) return;
      current = status;
      for (const [stream, service] of watches) {
        stream.send(encodeStatus(statusOf(service) ?? ServingStatus.SERVICE_UNKNOWN));
      }
    },
    isServing: () => current === ServingStatus.SERVING,
    endWatches() {
      for (const stream of watches.keys()) stream.end();
      watches.clear();
    },
  };
}
