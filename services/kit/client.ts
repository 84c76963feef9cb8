/**
 * Typed unary gRPC clients built from the same descriptors as the servers. Every call has a deadline and
 * carries the caller's trace context; failures come back as ServiceError.
 *
 * Why not grpc-js's client: under Deno its per-call machinery (resolving, retrying, load-balancing and
 * subchannel calls, filter stacks, metadata objects) was a third of the orders service's CPU, whose every
 * CreateOrder makes two upstream calls. A unary call needs none of it: one HTTP/2 stream on a shared
 * session, the request as one length-prefixed message, the status from the trailers (or from the headers
 * of a trailers-only response). The servers stay grpc-js, and the tests also call them with grpc-js's own
 * client, so both directions of the protocol are checked against a standard implementation.
 */
import { Buffer } from "node:buffer";
import http2 from "node:http2";
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
import { decodeGrpcMessage, firstHeader, frameMessage, GRPC_CONTENT_TYPE } from "./grpc_wire.ts";
import { corkForThisTurn } from "./http2_batching.ts";
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

const {
  HTTP2_HEADER_STATUS,
  NGHTTP2_CANCEL,
} = http2.constants;

/** Waiting longer than this after a failed connection before trying again. */
const MAX_RECONNECT_BACKOFF_MS = 1000;

/** One HTTP/2 session to `address`, opened on first use and again after it closed or failed. */
function createSessionPool(address: string) {
  let session: http2.ClientHttp2Session | undefined;
  let failedAt = 0;
  let backoffMs = 0;
  let lastFailure = "";
  let closed = false;
  return {
    /** The open session, or a ServiceError(UNAVAILABLE) while the last connection attempt is fresh. */
    get(): http2.ClientHttp2Session {
      if (closed) throw new ServiceError(Code.CANCELLED, `client for ${address} is closed`);
      if (session && !session.closed && !session.destroyed) return session;
      if (backoffMs > 0 && Date.now() - failedAt < backoffMs) {
        throw new ServiceError(Code.UNAVAILABLE, `${address} unreachable: ${lastFailure}`);
      }
      const opened = http2.connect(`http://${address}`);
      let connected = false;
      opened.once("connect", () => {
        connected = true;
        backoffMs = 0;
      });
      opened.on("error", (error: Error) => {
        lastFailure = error.message;
        if (!connected) {
          failedAt = Date.now();
          backoffMs = Math.min(MAX_RECONNECT_BACKOFF_MS, backoffMs === 0 ? 50 : backoffMs * 2);
        }
      });
      // A GOAWAY (server draining) or a close: later calls open a new session; calls in flight finish.
      const forget = () => {
        if (session === opened) session = undefined;
      };
      opened.once("goaway", forget);
      opened.once("close", forget);
      session = opened;
      return opened;
    },
    close() {
      closed = true;
      session?.close();
      session = undefined;
    },
  };
}

/** The status an HTTP response without grpc-status maps to (gRPC's HTTP-to-gRPC status mapping). */
function codeForHttpStatus(status: number): Code {
  switch (status) {
    case 400:
      return Code.INTERNAL;
    case 401:
      return Code.UNAUTHENTICATED;
    case 403:
      return Code.PERMISSION_DENIED;
    case 404:
      return Code.UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return Code.UNAVAILABLE;
    default:
      return Code.UNKNOWN;
  }
}

/** A client for `service` at "host:port" (one HTTP/2 connection, reused by every call). */
export function createClient<S extends DescService>(
  service: S,
  address: string,
  options: ClientOptions = {},
): ServiceClient<S> {
  const pool = createSessionPool(address);
  const defaultTimeoutMs = options.defaultTimeoutMs ?? 2000;
  const maxResponseBytes = options.maxResponseBytes ?? 4 * 1024 * 1024;
  const client: Record<string, unknown> = { close: () => pool.close() };

  for (const method of service.methods) {
    const path = methodPath(method);
    client[method.localName] = (request: MessageInitShape<DescMessage>, call: CallOptions = {}) =>
      new Promise<MessageShape<DescMessage>>((resolve, reject) => {
        let deadline = Date.now() + (call.timeoutMs ?? defaultTimeoutMs);
        if (call.deadlineMs !== undefined) deadline = Math.min(deadline, call.deadlineMs);
        const remainingMs = deadline - Date.now();
        if (remainingMs <= 0) {
          reject(new ServiceError(Code.DEADLINE_EXCEEDED, `deadline exceeded before calling ${path}`));
          return;
        }
        if (call.signal?.aborted) {
          reject(new ServiceError(Code.CANCELLED, `${path} cancelled before it started`));
          return;
        }
        let stream: http2.ClientHttp2Stream;
        try {
          const body = frameMessage(toBinary(method.input, create(method.input, request)));
          const requestHeaders: http2.OutgoingHttpHeaders = {
            ":method": "POST",
            ":path": path,
            "content-type": GRPC_CONTENT_TYPE,
            "te": "trailers",
            "grpc-timeout": `${Math.ceil(remainingMs)}m`,
          };
          if (call.traceparent) requestHeaders.traceparent = call.traceparent;
          for (const [key, value] of Object.entries(call.headers ?? {})) {
            requestHeaders[key.toLowerCase()] = value;
          }
          const session = pool.get();
          corkForThisTurn(session);
          stream = session.request(requestHeaders);
          stream.end(body);
        } catch (error) {
          reject(ServiceError.from(error, Code.UNAVAILABLE));
          return;
        }

        let settled = false;
        let httpStatus = 0;
        let contentType = "";
        const chunks: Buffer[] = [];
        let received = 0;
        const settle = (error: ServiceError | undefined, response?: MessageShape<DescMessage>) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          call.signal?.removeEventListener("abort", cancel);
          if (error) reject(error);
          else resolve(response!);
        };
        const abandon = (error: ServiceError) => {
          if (!stream.closed && !stream.destroyed) stream.close(NGHTTP2_CANCEL);
          settle(error);
        };
        const cancel = () => abandon(new ServiceError(Code.CANCELLED, `${path} cancelled by the caller`));
        const timer = setTimeout(
          () => abandon(new ServiceError(Code.DEADLINE_EXCEEDED, `${path}: deadline exceeded`)),
          remainingMs,
        );
        call.signal?.addEventListener("abort", cancel, { once: true });

        /** Settles from grpc-status and grpc-message (trailers, or the headers of a trailers-only answer). */
        const finish = (status: http2.IncomingHttpHeaders) => {
          const grpcStatus = firstHeader(status, "grpc-status");
          if (grpcStatus === undefined) {
            settle(
              new ServiceError(
                httpStatus === 200 ? Code.INTERNAL : codeForHttpStatus(httpStatus),
                `${path}: response without grpc-status (HTTP ${httpStatus})`,
              ),
            );
            return;
          }
          const code = Number(grpcStatus);
          if (code !== Code.OK) {
            const retryAfter = Number(firstHeader(status, "retry-after"));
            settle(
              new ServiceError(
                Number.isInteger(code) && code > 0 && code <= 16 ? code : Code.UNKNOWN,
                decodeGrpcMessage(firstHeader(status, "grpc-message")),
                Number.isFinite(retryAfter) && retryAfter > 0 ? { retryAfterSeconds: retryAfter } : {},
              ),
            );
            return;
          }
          const payload = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
          if (payload.length < 5) {
            settle(new ServiceError(Code.INTERNAL, `${path}: OK without a response message`));
            return;
          }
          if (payload[0] !== 0) {
            settle(new ServiceError(Code.INTERNAL, `${path}: compressed response, none was asked for`));
            return;
          }
          const length = payload.readUInt32BE(1);
          if (payload.length !== 5 + length) {
            settle(new ServiceError(Code.INTERNAL, `${path}: a unary response must be one whole message`));
            return;
          }
          try {
            settle(undefined, fromBinary(method.output, payload.subarray(5)));
          } catch (error) {
            settle(
              new ServiceError(Code.INTERNAL, `${path}: malformed response: ${(error as Error).message}`),
            );
          }
        };

        stream.on("response", (headers) => {
          httpStatus = Number(headers[HTTP2_HEADER_STATUS]);
          contentType = firstHeader(headers, "content-type") ?? "";
          if (headers["grpc-status"] !== undefined) finish(headers); // trailers-only
          else if (httpStatus !== 200 || !contentType.startsWith(GRPC_CONTENT_TYPE)) {
            abandon(
              new ServiceError(codeForHttpStatus(httpStatus), `${path}: HTTP ${httpStatus} ${contentType}`),
            );
          }
        });
        stream.on("data", (chunk: Buffer) => {
          received += chunk.length;
          if (received > maxResponseBytes + 5) {
            abandon(
              new ServiceError(
                Code.RESOURCE_EXHAUSTED,
                `${path}: response larger than ${maxResponseBytes} bytes`,
              ),
            );
            return;
          }
          chunks.push(chunk);
        });
        // Settled at the end of the stream, once every DATA frame before the trailers was read.
        let trailers: http2.IncomingHttpHeaders = {};
        stream.on("trailers", (received) => trailers = received);
        stream.on("end", () => finish(trailers));
        stream.on("error", (error: Error) => settle(ServiceError.from(error, Code.UNAVAILABLE)));
        stream.on("close", () => {
          if (settled) return;
          const rstCode = stream.rstCode;
          settle(
            new ServiceError(
              rstCode === NGHTTP2_CANCEL ? Code.CANCELLED : Code.UNAVAILABLE,
              `${path}: stream closed before a status (HTTP/2 code ${rstCode ?? "none"})`,
            ),
          );
        });
      });
  }
  return client as ServiceClient<S>;
}
