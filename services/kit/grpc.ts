/**
 * The gRPC transport (grpc-js): service definitions built from the protobuf-es descriptors, with the bytes
 * passed through untouched so that decoding happens inside the pipeline (a malformed message is then an
 * INVALID_ARGUMENT with an event, not grpc-js's INTERNAL).
 */
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import { create, type DescMethod, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ServiceError } from "./errors.ts";
import { methodPath, type Pipeline, type ServiceBinding } from "./pipeline.ts";

const passThrough = (bytes: Buffer) => bytes;

/** A grpc-js definition for raw-bytes unary handlers of every method of a binding. */
function rawDefinition(binding: ServiceBinding): grpc.ServiceDefinition {
  const definition: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
  for (const method of binding.service.methods) {
    definition[method.localName] = {
      path: methodPath(method),
      requestStream: false,
      responseStream: false,
      requestSerialize: passThrough,
      requestDeserialize: passThrough,
      responseSerialize: passThrough,
      responseDeserialize: passThrough,
      originalName: method.name,
    };
  }
  return definition;
}

function firstMetadata(metadata: grpc.Metadata, name: string): string | undefined {
  const value = metadata.get(name)[0];
  return value === undefined ? undefined : String(value);
}

function deadlineOf(call: grpc.ServerUnaryCall<Buffer, Buffer>): number | undefined {
  const deadline = call.getDeadline();
  if (deadline instanceof Date) return deadline.getTime();
  return Number.isFinite(deadline) ? Number(deadline) : undefined;
}

function unaryHandler(pipeline: Pipeline, binding: ServiceBinding, method: DescMethod) {
  return (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
    const arrivedMono = performance.now();
    const arrivedMs = Date.now();
    const abort = new AbortController();
    const deadlineMs = deadlineOf(call);
    let answered = false;
    let cancelledEarly = false;
    // grpc-js reports "cancelled" when the client goes away or the deadline passes (it then answers
    // DEADLINE_EXCEEDED itself), and also after every answer it sent: only the first two concern the handler.
    // Aborting needlessly is not free (an AbortSignal's reason is a DOMException with a stack trace).
    call.on("cancelled", () => {
      if (answered) return;
      cancelledEarly = true;
      abort.abort();
    });
    const running = pipeline.run(binding, method, {
      arrivedMs,
      arrivedMono,
      protocol: "grpc",
      route: "",
      requestBytes: call.request.length,
      traceparent: firstMetadata(call.metadata, "traceparent"),
      deadlineMs,
      signal: abort.signal,
      header: (name) => firstMetadata(call.metadata, name),
    }, () => {
      try {
        return fromBinary(method.input, call.request);
      } catch (error) {
        throw new ServiceError(
          Code.INVALID_ARGUMENT,
          `malformed ${method.input.typeName} message: ${(error as Error).message}`,
        );
      }
    });
    running.result.then(
      (init) => {
        answered = true;
        if (cancelledEarly) {
          running.finish(cancelledOutcome(deadlineMs));
          return;
        }
        // deno-lint-ignore no-explicit-any -- the handler's return type is checked by ServiceHandlers
        const bytes = toBinary(method.output, create(method.output, init as any));
        callback(null, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
        running.finish({ code: Code.OK, httpStatus: 200, responseBytes: bytes.byteLength, errorMessage: "" });
      },
      (reason) => {
        answered = true;
        if (cancelledEarly) {
          running.finish(cancelledOutcome(deadlineMs));
          return;
        }
        const error = ServiceError.from(reason);
        const metadata = new grpc.Metadata();
        if (error.retryAfterSeconds !== undefined) {
          metadata.set("retry-after", String(error.retryAfterSeconds));
        }
        callback({ code: error.code as number as grpc.status, details: error.message, metadata });
        running.finish({ code: error.code, httpStatus: 200, responseBytes: 0, errorMessage: error.message });
      },
    );
  };
}

/** What the client saw of a call that ended before the handler answered: its deadline, or its cancel. */
function cancelledOutcome(deadlineMs: number | undefined) {
  return deadlineMs !== undefined && Date.now() >= deadlineMs
    ? { code: Code.DEADLINE_EXCEEDED, httpStatus: 200, responseBytes: 0, errorMessage: "deadline exceeded" }
    : { code: Code.CANCELLED, httpStatus: 200, responseBytes: 0, errorMessage: "cancelled by the client" };
}

/** Adds every binding's methods to a grpc-js server. */
export function addBindings(
  server: grpc.Server,
  pipeline: Pipeline,
  bindings: readonly ServiceBinding[],
): void {
  for (const binding of bindings) {
    const implementation: grpc.UntypedServiceImplementation = {};
    for (const method of binding.service.methods) {
      implementation[method.localName] = unaryHandler(pipeline, binding, method);
    }
    server.addService(rawDefinition(binding), implementation);
  }
}

/** A typed grpc-js definition (real serializers) for protocol services such as health and reflection. */
export function typedDefinition(methods: readonly DescMethod[]): grpc.ServiceDefinition {
  // deno-lint-ignore no-explicit-any -- messages of different types per method
  const definition: Record<string, grpc.MethodDefinition<any, any>> = {};
  for (const method of methods) {
    definition[method.localName] = {
      path: methodPath(method),
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      // deno-lint-ignore no-explicit-any -- grpc-js passes the message given to it by the handler
      requestSerialize: (message: any) => Buffer.from(toBinary(method.input, message)),
      requestDeserialize: (bytes: Buffer) => fromBinary(method.input, bytes),
      // deno-lint-ignore no-explicit-any -- as above
      responseSerialize: (message: any) => Buffer.from(toBinary(method.output, message)),
      responseDeserialize: (bytes: Buffer) => fromBinary(method.output, bytes),
      originalName: method.name,
    };
  }
  return definition;
}

/** Binds the server to host:port (0 = any free port) and returns the bound port. */
export function bindServer(server: grpc.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const address = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (error, boundPort) => {
      if (error) reject(new Error(`cannot listen for gRPC on ${address}: ${error.message}`));
      else resolve(boundPort);
    });
  });
}
