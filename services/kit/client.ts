/**
 * Typed unary gRPC clients built from the same descriptors as the servers. Every call has a deadline and
 * carries the caller's trace context; failures come back as ServiceError.
 */
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import {
  create,
  type DescMessage,
  type DescService,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import { Code, ServiceError } from "./errors.ts";
import { installHttp2WriteBatching } from "./http2_batching.ts";
import { methodPath } from "./pipeline.ts";

export interface CallOptions {
  /** Milliseconds the call may take; the default of the client otherwise. */
  timeoutMs?: number;
  /** Absolute deadline (epoch ms) inherited from the caller's own deadline; the earlier one wins. */
  deadlineMs?: number;
  /** W3C traceparent of the calling span. */
  traceparent?: string;
  /** Extra metadata, e.g. { authorization: "Bearer ..." }. */
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export type ServiceClient<S extends DescService> =
  & {
    [K in keyof S["method"]]: S["method"][K] extends
      { input: infer I extends DescMessage; output: infer O extends DescMessage }
      ? (request: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
      : never;
  }
  & { close(): void };

export interface ClientOptions {
  /** Per-call timeout when a call names none. Default 2000 ms. */
  defaultTimeoutMs?: number;
  /** Largest response accepted. Default 4 MiB. */
  maxResponseBytes?: number;
}

/** A client for `service` at "host:port" (one HTTP/2 connection, reused by every call). */
export function createClient<S extends DescService>(
  service: S,
  address: string,
  options: ClientOptions = {},
): ServiceClient<S> {
  installHttp2WriteBatching();
  const channel = new grpc.Client(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": options.maxResponseBytes ?? 4 * 1024 * 1024,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.enable_channelz": 0,
    // No retry policy is configured, so grpc-js's retry layer (which buffers every message) only costs CPU.
    "grpc.enable_retries": 0,
  });
  const client: Record<string, unknown> = { close: () => channel.close() };
  for (const method of service.methods) {
    const path = methodPath(method);
    client[method.localName] = (request: MessageInitShape<DescMessage>, call: CallOptions = {}) =>
      new Promise((resolve, reject) => {
        const metadata = new grpc.Metadata();
        if (call.traceparent) metadata.set("traceparent", call.traceparent);
        for (const [key, value] of Object.entries(call.headers ?? {})) metadata.set(key, value);
        let deadline = Date.now() + (call.timeoutMs ?? options.defaultTimeoutMs ?? 2000);
        if (call.deadlineMs !== undefined) deadline = Math.min(deadline, call.deadlineMs);
        const pending = channel.makeUnaryRequest(
          path,
          (message: MessageShape<DescMessage>) => Buffer.from(toBinary(method.input, message)),
          (bytes: Buffer) => fromBinary(method.output, bytes),
          create(method.input, request),
          metadata,
          { deadline },
          (error, response) => {
            call.signal?.removeEventListener("abort", cancel);
            if (error) reject(ServiceError.from(error, Code.UNKNOWN));
            else resolve(response);
          },
        );
        const cancel = () => pending.cancel();
        call.signal?.addEventListener("abort", cancel, { once: true });
      });
  }
  return client as ServiceClient<S>;
}
