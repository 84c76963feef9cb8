/**
 * grpc.health.v1: SERVING while the process takes requests, NOT_SERVING from the moment it starts draining,
 * so probes and load balancers stop sending traffic before the listener closes.
 */
import type * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import {
  Health,
  type HealthCheckRequest,
  type HealthCheckResponse,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthCheckResponseSchema,
} from "@tailwatch/proto/grpc/health/v1";
import { typedDefinition } from "./grpc.ts";

export { ServingStatus };

export interface HealthState {
  /** Status of the whole server ("") and of every named service. */
  status(service: string): ServingStatus | undefined;
  setAll(status: ServingStatus): void;
  isServing(): boolean;
  /** Ends every Watch stream (after NOT_SERVING was sent), so the server can finish its shutdown. */
  endWatches(): void;
}

export function createHealth(server: grpc.Server, serviceNames: readonly string[]): HealthState {
  const names = new Set(["", ...serviceNames]);
  let current = ServingStatus.SERVING;
  const watchers = new Set<(status: ServingStatus) => void>();
  const watchCalls = new Set<grpc.ServerWritableStream<HealthCheckRequest, HealthCheckResponse>>();
  const statusOf = (service: string) => names.has(service) ? current : undefined;

  server.addService(typedDefinition(Health.methods), {
    check(
      call: grpc.ServerUnaryCall<HealthCheckRequest, HealthCheckResponse>,
      callback: grpc.sendUnaryData<HealthCheckResponse>,
    ) {
      const status = statusOf(call.request.service);
      if (status === undefined) {
        callback({ code: 5, details: `unknown service ${JSON.stringify(call.request.service)}` });
      } else {
        callback(null, create(HealthCheckResponseSchema, { status }));
      }
    },
    watch(call: grpc.ServerWritableStream<HealthCheckRequest, HealthCheckResponse>) {
      const send = () => {
        const status = statusOf(call.request.service) ?? ServingStatus.SERVICE_UNKNOWN;
        call.write(create(HealthCheckResponseSchema, { status }));
      };
      send();
      const watcher = () => send();
      watchers.add(watcher);
      watchCalls.add(call);
      const forget = () => {
        watchers.delete(watcher);
        watchCalls.delete(call);
      };
      call.on("cancelled", forget);
      call.on("close", forget);
    },
  });
  return {
    status: statusOf,
    setAll(status) {
      if (status === current) return;
      current = status;
      for (const watcher of watchers) watcher(status);
    },
    isServing: () => current === ServingStatus.SERVING,
    endWatches() {
      for (const call of watchCalls) call.end();
      watchCalls.clear();
      watchers.clear();
    },
  };
}
