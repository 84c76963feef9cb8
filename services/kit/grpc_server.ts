/**
 * A gRPC server on node:http2: unary methods for the API, and streaming methods for the protocol services
 * (health's Watch, reflection). Messages are passed as bytes; decoding happens in the pipeline, so that a
 * malformed message is an INVALID_ARGUMENT with an event.
 *
 * Why not grpc-js's server: under Deno its per-call machinery (interceptor chains, call objects, metadata
 * conversions, a deadline timer per call) cost about 60 us of CPU per unary call on top of the ~80 us of the
 * HTTP/2 stream itself, and every call of the cat food store crosses one or two servers. The protocol is
 * small for what the services use: identity encoding only (compressed messages are refused with
 * UNIMPLEMENTED, and `grpc-accept-encoding: identity` says so), length-prefixed messages, the status in the
 * trailers (or alone in the headers when there is no message). Tests call it with grpc-js's client, ghz
 * (grpc-go) and grpcurl, besides the kit's own client.
 */
import type { Buffer } from "node:buffer";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ServiceError } from "./errors.ts";
import {
  encodeGrpcMessage,
  firstHeader,
  frameMessage,
  GRPC_CONTENT_TYPE,
  MessageReader,
} from "./grpc_wire.ts";
import { corkForThisTurn } from "./http2_batching.ts";
import type { Logger } from "./log.ts";

export interface GrpcServerOptions {
  /** Largest request message accepted; larger ones are refused with RESOURCE_EXHAUSTED. */
  maxReceiveBytes: number;
  /** HTTP/2 streams (calls) one connection may have open at once. Default 1000. */
  maxConcurrentStreams?: number;
  logger: Logger;
}

/** What a handler knows about its call. */
export interface GrpcCallInfo {
  /** "/package.Service/Method". */
  path: string;
  /** Absolute deadline (epoch ms) from grpc-timeout, if the client set one. */
  deadlineMs: number | undefined;
  /** Aborted when the client cancels, the connection goes or the deadline passes. */
  signal: AbortSignal;
  /** A request header (metadata), lower-case name; the first value. */
  header(name: string): string | undefined;
}

/** Answers a unary call, once: later answers, and answers after the call ended, are ignored. */
export interface UnaryResponder {
  /** Sends the response message and the OK status. */
  message(bytes: Uint8Array): void;
  /** Sends an error status, with extra trailing metadata (e.g. retry-after). */
  error(error: ServiceError, trailers?: Record<string, string>): void;
}

/** Handles one unary call; answers through `respond` (an exception thrown is answered as INTERNAL). */
export type UnaryHandler = (request: Uint8Array, call: GrpcCallInfo, respond: UnaryResponder) => void;

/** A streaming call, seen from its handler. */
export interface GrpcStream extends GrpcCallInfo {
  /** Each request message, in order. */
  onMessage(listener: (message: Uint8Array) => void): void;
  /** The client finished sending (half-close). */
  onEnd(listener: () => void): void;
  /** Sends a response message; false once the call is over. */
  send(message: Uint8Array): boolean;
  /** Ends the call with a status (OK by default). */
  end(error?: ServiceError): void;
}

export type StreamingHandler = (stream: GrpcStream) => void;

/** Called for a unary path no handler serves (the answer is UNIMPLEMENTED either way). */
export type UnknownMethodListener = (path: string, call: GrpcCallInfo, requestBytes: number) => void;

export interface GrpcServer {
  addUnary(path: string, handler: UnaryHandler): void;
  addStreaming(path: string, handler: StreamingHandler): void;
  onUnknownMethod(listener: UnknownMethodListener): void;
  /** Listens on host:port (0: any free port); resolves with the bound port. */
  listen(host: string, port: number): Promise<number>;
  /** Stops accepting connections and calls; resolves when every call in flight has ended. */
  shutdown(): Promise<void>;
  /** Closes every connection now, calls in flight included. */
  forceShutdown(): void;
}

const TIMEOUT_UNIT_MS: Record<string, number> = {
  H: 3_600_000,
  M: 60_000,
  S: 1000,
  m: 1,
  u: 0.001,
  n: 0.000001,
};
const RESPONSE_HEADERS = {
  ":status": 200,
  "content-type": GRPC_CONTENT_TYPE,
  "grpc-accept-encoding": "identity",
};

/** The deadline named by a grpc-timeout header ("100m", "2S"...), or a ServiceError when it is malformed. */
function parseTimeout(value: string | undefined, now: number): number | undefined {
  if (value === undefined) return undefined;
  const match = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (!match) throw new ServiceError(Code.INTERNAL, `malformed grpc-timeout ${JSON.stringify(value)}`);
  return now + Number(match[1]) * TIMEOUT_UNIT_MS[match[2]];
}

function statusTrailers(error: ServiceError | undefined, extra: Record<string, string> = {}) {
  return {
    ...extra,
    "grpc-status": String(error?.code ?? Code.OK),
    "grpc-message": error ? encodeGrpcMessage(error.message) : "",
  };
}

/**
 * One call's stream: answers once, in whichever form fits (message and trailers, or trailers only), and
 * aborts its signal when the call ends before an answer (client cancel, connection gone, deadline).
 */
function createCallState(stream: http2.ServerHttp2Stream, deadlineMs: number | undefined) {
  const abort = new AbortController();
  let headersSent = false;
  let ended = false;
  let deadlineTimer: ReturnType<typeof setTimeout> | undefined;
  const ensureHeaders = () => {
    if (headersSent) return;
    headersSent = true;
    corkForThisTurn(stream.session);
    stream.respond(RESPONSE_HEADERS, { waitForTrailers: true });
  };
  const state = {
    signal: abort.signal,
    get ended() {
      return ended;
    },
    send(message: Uint8Array): boolean {
      if (ended || stream.destroyed) return false;
      ensureHeaders();
      stream.write(frameMessage(message));
      return true;
    },
    end(error?: ServiceError, trailers?: Record<string, string>) {
      if (ended) return;
      ended = true;
      clearTimeout(deadlineTimer);
      if (stream.destroyed || stream.closed) return;
      if (!headersSent) {
        // Trailers-only: the status in the one HEADERS frame.
        headersSent = true;
        corkForThisTurn(stream.session);
        stream.respond({ ...RESPONSE_HEADERS, ...statusTrailers(error, trailers) }, { endStream: true });
        return;
      }
      stream.once("wantTrailers", () => stream.sendTrailers(statusTrailers(error, trailers)));
      stream.end();
    },
    /** Sends one message and the OK status. */
    answer(message: Uint8Array) {
      if (ended) return;
      ended = true;
      clearTimeout(deadlineTimer);
      if (stream.destroyed || stream.closed) return;
      headersSent = true;
      corkForThisTurn(stream.session);
      stream.respond(RESPONSE_HEADERS, { waitForTrailers: true });
      stream.once("wantTrailers", () => stream.sendTrailers(statusTrailers(undefined)));
      stream.end(frameMessage(message));
    },
  };
  const cancel = () => {
    if (!ended) {
      ended = true;
      clearTimeout(deadlineTimer);
      abort.abort();
    }
  };
  stream.once("close", cancel);
  if (deadlineMs !== undefined) {
    deadlineTimer = setTimeout(() => {
      state.end(new ServiceError(Code.DEADLINE_EXCEEDED, "deadline exceeded"));
      abort.abort();
    }, Math.max(0, deadlineMs - Date.now()));
  }
  return state;
}

export function createGrpcServer(options: GrpcServerOptions): GrpcServer {
  const { logger } = options;
  const unary = new Map<string, UnaryHandler>();
  const streaming = new Map<string, StreamingHandler>();
  const unknownListeners: UnknownMethodListener[] = [];
  const sessions = new Set<http2.ServerHttp2Session>();
  let accepting = true;
  const server = http2.createServer({
    settings: { maxConcurrentStreams: options.maxConcurrentStreams ?? 1000 },
  });

  server.on("session", (session: http2.ServerHttp2Session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    session.on("error", (error: Error) => logger.debug("gRPC connection error", { error }));
  });
  server.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
    stream.on("error", (error: Error) => logger.debug("gRPC stream error", { error }));
    const contentType = firstHeader(headers, "content-type") ?? "";
    if (headers[":method"] !== "POST" || !contentType.startsWith(GRPC_CONTENT_TYPE)) {
      // Not gRPC: a plain HTTP answer, as the gRPC spec asks (405 for the method, 415 for the type).
      const status = headers[":method"] !== "POST" ? 405 : 415;
      stream.respond({ ":status": status, "content-type": "text/plain" });
      stream.end(`this port speaks gRPC (POST with content-type application/grpc)\n`);
      return;
    }
    const path = String(headers[":path"] ?? "");
    const arrived = Date.now();
    let deadlineMs: number | undefined;
    try {
      deadlineMs = parseTimeout(firstHeader(headers, "grpc-timeout"), arrived);
    } catch (error) {
      createCallState(stream, undefined).end(error as ServiceError);
      return;
    }
    const state = createCallState(stream, deadlineMs);
    const info: GrpcCallInfo = {
      path,
      deadlineMs,
      signal: state.signal,
      header: (name) => firstHeader(headers, name),
    };
    if (!accepting) {
      state.end(new ServiceError(Code.UNAVAILABLE, "the server is shutting down"));
      return;
    }
    const reader = new MessageReader(options.maxReceiveBytes);
    const streamingHandler = streaming.get(path);
    if (streamingHandler) {
      serveStreaming(stream, state, info, reader, streamingHandler);
      return;
    }
    const handler = unary.get(path);
    let request: Uint8Array | undefined;
    let requestBytes = 0;
    let failed = false;
    stream.on("data", (chunk: Buffer) => {
      if (failed) return;
      requestBytes += chunk.length;
      try {
        for (const message of reader.push(chunk)) {
          if (request !== undefined) {
            throw new ServiceError(Code.INVALID_ARGUMENT, `${path} is unary: one request message only`);
          }
          request = message;
        }
      } catch (error) {
        failed = true;
        state.end(error as ServiceError);
        if (!stream.closed) stream.close(http2.constants.NGHTTP2_NO_ERROR);
      }
    });
    stream.on("end", () => {
      if (failed || state.ended) return;
      if (!handler) {
        for (const listener of unknownListeners) listener(path, info, requestBytes);
        state.end(new ServiceError(Code.UNIMPLEMENTED, `unknown method ${path}`));
        return;
      }
      if (request === undefined || reader.partialBytes > 0) {
        state.end(new ServiceError(Code.INTERNAL, `${path} is unary: exactly one whole request message`));
        return;
      }
      try {
        handler(request, info, {
          message: (bytes) => state.answer(bytes),
          error: (error, trailers) => state.end(error, trailers),
        });
      } catch (error) {
        logger.error("gRPC handler threw", { path, error });
        state.end(ServiceError.from(error));
      }
    });
  });

  function serveStreaming(
    stream: http2.ServerHttp2Stream,
    state: ReturnType<typeof createCallState>,
    info: GrpcCallInfo,
    reader: MessageReader,
    handler: StreamingHandler,
  ) {
    const messageListeners: Array<(message: Uint8Array) => void> = [];
    const endListeners: Array<() => void> = [];
    handler({
      ...info,
      onMessage: (listener) => messageListeners.push(listener),
      onEnd: (listener) => endListeners.push(listener),
      send: (message) => state.send(message),
      end: (error) => state.end(error),
    });
    stream.on("data", (chunk: Buffer) => {
      if (state.ended) return;
      try {
        for (const message of reader.push(chunk)) {
          for (const listener of messageListeners) listener(message);
        }
      } catch (error) {
        state.end(ServiceError.from(error));
      }
    });
    stream.on("end", () => {
      for (const listener of endListeners) listener();
    });
  }

  return {
    addUnary: (path, handler) => void unary.set(path, handler),
    addStreaming: (path, handler) => void streaming.set(path, handler),
    onUnknownMethod: (listener) => void unknownListeners.push(listener),
    listen(host, port) {
      return new Promise((resolve, reject) => {
        const onError = (error: Error) =>
          reject(new Error(`cannot listen for gRPC on ${host}:${port}: ${error}`));
        server.once("error", onError);
        server.listen(port, host, () => {
          server.off("error", onError);
          resolve((server.address() as AddressInfo).port);
        });
      });
    },
    shutdown() {
      accepting = false;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // close(): GOAWAY, then the session ends by itself once its last stream has.
      for (const session of sessions) session.close();
      return closed;
    },
    forceShutdown() {
      accepting = false;
      for (const session of sessions) session.destroy();
      server.close();
    },
  };
}
