/**
 * The API's gRPC methods on the kit's gRPC server: each unary method runs through the pipeline with the
 * request bytes untouched, so that decoding happens inside it (a malformed message is then an
 * INVALID_ARGUMENT with an event).
 */
import { create, type DescMethod, fromBinary, isMessage, toBinary } from "@bufbuild/protobuf";
import {
  Code,
  type GrpcCallInfo,
  type GrpcServer,
  methodPath,
  ServiceError,
  type UnaryResponder,
} from "@tailwatch/grpc";
import type { CallOutcome, IncomingCall, Pipeline, ServiceBinding } from "./pipeline.ts";

/** What the client saw of a call that ended before the handler answered: its deadline, or its cancel. */
function endedEarlyOutcome(deadlineMs: number | undefined): CallOutcome {
  return deadlineMs !== undefined && Date.now() >= deadlineMs
    ? { code: Code.DEADLINE_EXCEEDED, httpStatus: 200, responseBytes: 0, errorMessage: "deadline exceeded" }
    : { code: Code.CANCELLED, httpStatus: 200, responseBytes: 0, errorMessage: "cancelled by the client" };
}

/** The pipeline's view of a gRPC call that arrived now. */
function incomingCall(call: GrpcCallInfo, requestBytes: number): IncomingCall {
  return {
    arrivedMs: Date.now(),
    arrivedMono: performance.now(),
    protocol: "grpc",
    route: "",
    requestBytes,
    traceparent: call.header("traceparent"),
    deadlineMs: call.deadlineMs,
    signal: call.signal,
    header: (name) => call.header(name),
  };
}

function unaryHandler(pipeline: Pipeline, binding: ServiceBinding, method: DescMethod) {
  return (request: Uint8Array, call: GrpcCallInfo, respond: UnaryResponder) => {
    const running = pipeline.run(binding, method, incomingCall(call, request.byteLength), () => {
      try {
        return fromBinary(method.input, request);
      } catch (error) {
        throw new ServiceError(
          Code.INVALID_ARGUMENT,
          `malformed ${method.input.typeName} message: ${(error as Error).message}`,
        );
      }
    });
    running.result.then(
      (init) => {
        if (call.signal.aborted) {
          running.finish(endedEarlyOutcome(call.deadlineMs));
          return;
        }
        // A handler may answer with the message itself; anything else is an init shape to build it from.
        const message = isMessage(init, method.output)
          ? init
          // deno-lint-ignore no-explicit-any -- the handler's return type is checked by ServiceHandlers
          : create(method.output, init as any);
        const bytes = toBinary(method.output, message);
        respond.message(bytes);
        running.finish({ code: Code.OK, httpStatus: 200, responseBytes: bytes.byteLength, errorMessage: "" });
      },
      (reason) => {
        if (call.signal.aborted) {
          running.finish(endedEarlyOutcome(call.deadlineMs));
          return;
        }
        const error = ServiceError.from(reason);
        respond.error(
          error,
          error.retryAfterSeconds === undefined
            ? undefined
            : { "retry-after": String(error.retryAfterSeconds) },
        );
        running.finish({ code: error.code, httpStatus: 200, responseBytes: 0, errorMessage: error.message });
      },
    );
  };
}

/**
 * Serves every method of every binding through the pipeline; a call of a method no binding has becomes an
 * event too (UNIMPLEMENTED, empty method), as an unknown REST route does.
 */
export function addBindings(
  server: GrpcServer,
  pipeline: Pipeline,
  bindings: readonly ServiceBinding[],
): void {
  for (const binding of bindings) {
    for (const method of binding.service.methods) {
      server.addUnary(methodPath(method), unaryHandler(pipeline, binding, method));
    }
  }
  server.onUnknownMethod((path, call, requestBytes) =>
    pipeline.unmatched(incomingCall(call, requestBytes), {
      code: Code.UNIMPLEMENTED,
      httpStatus: 200,
      responseBytes: 0,
      errorMessage: `unknown method ${path}`,
    })
  );
}
