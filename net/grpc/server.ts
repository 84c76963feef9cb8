/**
 * A gRPC server on the kit's HTTP/2 connection (http2/connection.ts): unary methods for the API, and
 * streaming methods for the protocol services (health's Watch, reflection). Messages are passed as bytes;
 * decoding happens in the pipeline, so that a malformed message is an INVALID_ARGUMENT with an event.
 *
 * Why not grpc-js or node:http2: under Deno, a unary call through grpc-js cost about 60 us of CPU on top of
 * node:http2, and node:http2 itself about 430 us per call at 1000 calls/s (several event-loop wakeups and a
 * send() per frame per call), against about 140 us here, where a call is one read and one write. What the
 * services need of the protocol is small: identity encoding only (compressed messages are refused with
 * UNIMPLEMENTED, and `grpc-accept-encoding: identity` says so), length-prefixed messages, the status in the
 * trailers (or alone in the headers when there is no message). Tests call it with grpc-js's client, ghz
 * (grpc-go) and grpcurl besides the kit's own client, and h2spec checks the HTTP/2 underneath.
 */
import { createDeadlineQueue, type Deadline, type DeadlineQueue } from "./deadlines.ts";
import { Code, ServiceError } from "./errors.ts";
import { fieldValue, frameMessage, GRPC_CONTENT_TYPE, MessageReader, statusFields } from "./wire.ts";
import {
  type ByteStream,
  createHttp2Connection,
  DEFAULT_HTTP2_LIMITS,
  ErrorCode,
  type Http2Connection,
  type Http2Handler,
  type Http2Limits,
  type Http2Observer,
  type Http2Stream,
  refuseConnection,
} from "@tailwatch/http2";
import type { Logger, Registry } from "@tailwatch/runtime";

export interface GrpcServerOptions {
  /** Largest request message accepted; larger ones are refused with RESOURCE_EXHAUSTED. */
  maxReceiveBytes: number;
  /** HTTP/2 streams (calls) one connection may have open at once. Default limits.maxConcurrentStreams. */
  maxConcurrentStreams?: number;
  /**
   * Unary calls one connection may start in one turn of the event loop; the rest of what one read brought
   * start on the next turns, after the other connections' reads. So that one connection's burst cannot take
   * every admission slot of the process (MAX_IN_FLIGHT) before another connection's call is even seen.
   * Default: maxConcurrentStreams.
   */
  maxCallsPerTurn?: number;
  /** The HTTP/2 defences (http2/limits.ts), over DEFAULT_HTTP2_LIMITS. */
  limits?: Partial<Http2Limits>;
  /** Where the connections' gauges and the limits hit are counted (`http2_*`); none when absent. */
  metrics?: Registry;
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

const RESPONSE_HEADERS: readonly string[] = [
  ":status",
  "200",
  "content-type",
  GRPC_CONTENT_TYPE,
  "grpc-accept-encoding",
  "identity",
];
const OK_TRAILERS = statusFields(undefined);

/** The deadline named by a grpc-timeout header ("100m", "2S"...), or a ServiceError when it is malformed. */
function parseTimeout(value: string | undefined, now: number): number | undefined {
  if (value === undefined) return undefined;
  // At most 8 digits and a unit (the gRPC spec), read by hand: this runs on every call.
  const unit = TIMEOUT_UNIT_MS[value.charAt(value.length - 1)];
  let amount = 0;
  for (let i = 0; i < value.length - 1; i++) {
    const digit = value.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) {
      amount = -1;
      break;
    }
    amount = amount * 10 + digit;
  }
  if (unit === undefined || amount < 0 || value.length < 2 || value.length > 9) {
    throw new ServiceError(Code.INTERNAL, `malformed grpc-timeout ${JSON.stringify(value)}`);
  }
  return now + amount * unit;
}

/**
 * A request that is not gRPC gets a plain HTTP answer once it has ended, as the gRPC spec asks (405 for the
 * method, 415 for the content type); its body is read and dropped.
 */
class PlainAnswer {
  constructor(readonly stream: Http2Stream, readonly status: number) {}

  requestEnded(): void {
    this.stream.sendHeaders(
      [":status", String(this.status), "content-type", "text/plain"],
      false,
    );
    this.stream.sendData(PLAIN_BODY, true);
  }
}

const PLAIN_BODY = new TextEncoder().encode(
  "this port speaks gRPC (POST with content-type application/grpc)\n",
);

/**
 * One call on one HTTP/2 stream: answers once, in whichever form fits (message and trailers, or trailers
 * only), and aborts its signal when the call ends before an answer (client cancel, connection gone,
 * deadline). The AbortController is made only when a handler asks for the signal.
 */
class ServerCall implements GrpcCallInfo {
  headersSent = false;
  ended = false;
  request: Uint8Array | undefined = undefined;
  requestBytes = 0;
  failed = false;
  reader: MessageReader;
  deadline: Deadline | undefined = undefined;
  controller: AbortController | undefined = undefined;
  cancelled = false;
  /** Streaming calls: the handler's listeners. */
  messageListeners: Array<(message: Uint8Array) => void> | undefined = undefined;
  endListeners: Array<() => void> | undefined = undefined;
  unary: UnaryHandler | undefined = undefined;

  constructor(
    readonly starts: CallStarts,
    readonly stream: Http2Stream,
    readonly path: string,
    readonly deadlineMs: number | undefined,
    readonly fields: string[],
    maxReceiveBytes: number,
    readonly deadlines: DeadlineQueue,
  ) {
    this.reader = new MessageReader(maxReceiveBytes);
    if (deadlineMs !== undefined) {
      this.deadline = deadlines.add(deadlineMs, () => {
        this.end(new ServiceError(Code.DEADLINE_EXCEEDED, "deadline exceeded"));
        this.cancel();
      });
    }
  }

  clearDeadline(): void {
    if (this.deadline) this.deadlines.remove(this.deadline);
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.cancelled) this.controller.abort();
    }
    return this.controller.signal;
  }

  // A method, not an arrow-function field: a closure made per call kept each call's objects alive through
  // the young generation's scavenges until they were promoted (measured: ~560 bytes promoted per call, and
  // scavenges five times longer, against 2 bytes without it). Who passes it on binds it.
  header(name: string): string | undefined {
    return fieldValue(this.fields, name);
  }

  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.controller?.abort();
  }

  send(message: Uint8Array): boolean {
    if (this.ended) return false;
    if (!this.headersSent) {
      this.headersSent = true;
      this.stream.sendHeaders(RESPONSE_HEADERS, false);
    }
    this.stream.sendData(frameMessage(message), false);
    return true;
  }

  /** Ends the call with a status; trailers-only when nothing was sent yet. */
  end(error?: ServiceError, trailers?: Record<string, string>): void {
    if (this.ended) return;
    this.ended = true;
    this.clearDeadline();
    const status = error || trailers ? statusFields(error, trailers) : OK_TRAILERS;
    if (!this.headersSent) {
      this.headersSent = true;
      this.stream.sendHeaders([...RESPONSE_HEADERS, ...status], true);
    } else {
      this.stream.sendTrailers(status);
    }
    this.stream.discardRest();
  }

  /** Sends one message and the OK status. */
  answer(message: Uint8Array): void {
    if (this.ended) return;
    this.ended = true;
    this.clearDeadline();
    this.headersSent = true;
    this.stream.sendHeaders(RESPONSE_HEADERS, false);
    this.stream.sendData(frameMessage(message), false);
    this.stream.sendTrailers(OK_TRAILERS);
    this.stream.discardRest();
  }
}

/**
 * The unary calls of one connection whose request has ended, started in arrival order once the read that
 * brought them has been handled (`afterRead`), at most `perTurn` in one turn of the event loop (the rest on
 * the next turns, after other connections' reads). A call that ended before its start (the client reset it,
 * its deadline passed) never starts: what a rapid reset (CVE-2023-44487) sends as HEADERS, DATA and
 * RST_STREAM together then costs no handler, no admission slot and no event.
 */
class CallStarts {
  readonly waiting: ServerCall[] = [];
  head = 0;
  scheduled = false;

  constructor(
    readonly perTurn: number,
    readonly start: (call: ServerCall) => void,
    readonly counts: { endedBeforeStart: number },
  ) {}

  add(call: ServerCall): void {
    this.waiting.push(call);
  }

  pump(): void {
    let started = 0;
    while (this.head < this.waiting.length && started < this.perTurn) {
      const call = this.waiting[this.head++];
      if (call.ended) {
        this.counts.endedBeforeStart++;
        continue;
      }
      started++;
      this.start(call);
    }
    if (this.head === this.waiting.length) {
      this.waiting.length = 0;
      this.head = 0;
    } else if (!this.scheduled) {
      this.scheduled = true;
      setTimeout(() => {
        this.scheduled = false;
        this.pump();
      }, 0);
    }
  }
}

/**
 * The `http2_*` metrics of a server's connections: gauges summed over the open connections at scrape time
 * (nothing is counted per call), and counters of the limits hit.
 */
function http2Metrics(
  registry: Registry | undefined,
  connections: Set<Http2Connection>,
  counts: { endedBeforeStart: number },
) {
  if (!registry) return { observer: undefined, accepted: () => {}, refused: () => {} };
  registry.counterFn(
    "grpc_calls_ended_before_start_total",
    "Unary gRPC calls reset by the client (or past their deadline) before their start: never run.",
    () => counts.endedBeforeStart,
  );
  const sum = (read: (connection: Http2Connection) => number) => () => {
    let total = 0;
    for (const connection of connections) total += read(connection);
    return total;
  };
  registry.gaugeFn("http2_connections", "HTTP/2 connections open.", () => connections.size);
  registry.gaugeFn(
    "http2_streams",
    "HTTP/2 streams open, over every connection.",
    sum((c) => c.activeStreams),
  );
  registry.gaugeFn(
    "http2_output_buffered_bytes",
    "Bytes of HTTP/2 output not yet taken by the peers' sockets (bounded by H2_MAX_OUTPUT_BYTES each).",
    sum((c) => c.outputBytes),
  );
  registry.gaugeFn(
    "http2_pending_data_bytes",
    "Bytes of answers (DATA) waiting for the HTTP/2 peers' flow-control windows or for room in the output.",
    sum((c) => c.pendingBytes),
  );
  registry.gaugeFn(
    "http2_queued_control_frames",
    "Answers owed to HTTP/2 peers (PING/SETTINGS acknowledgements, RST_STREAM) not yet taken by their sockets.",
    sum((c) => c.queuedControlFrames),
  );
  registry.gaugeFn(
    "http2_connections_reading_paused",
    "HTTP/2 connections not read until their peer takes what it was sent (H2_MAX_OUTPUT_BYTES).",
    sum((c) => c.readingPaused ? 1 : 0),
  );
  let accepted = 0;
  registry.counterFn("http2_connections_accepted_total", "HTTP/2 connections accepted.", () => accepted);
  const closed = registry.counter(
    "http2_connections_closed_total",
    "HTTP/2 connections closed (or refused) because of a limit (H2_*), by the limit.",
    ["reason"],
  );
  const refusedStreams = registry.counter(
    "http2_streams_refused_total",
    "HTTP/2 streams refused or reset because of a limit, by the limit.",
    ["reason"],
  );
  const paused = registry.counter(
    "http2_reads_paused_total",
    "Times an HTTP/2 connection stopped reading because its peer did not take its output.",
  );
  const observer: Http2Observer = {
    closed: (reason) => closed.inc({ reason }),
    streamRefused: (reason) => refusedStreams.inc({ reason }),
    readingPaused: () => paused.inc(),
  };
  return {
    observer,
    accepted: () => void accepted++,
    refused: () => closed.inc({ reason: "max_connections" }),
  };
}

export function createGrpcServer(options: GrpcServerOptions): GrpcServer {
  const { logger } = options;
  const limits: Http2Limits = {
    ...DEFAULT_HTTP2_LIMITS,
    ...options.limits,
    maxConcurrentStreams: options.maxConcurrentStreams ?? options.limits?.maxConcurrentStreams ??
      DEFAULT_HTTP2_LIMITS.maxConcurrentStreams,
  };
  const maxCallsPerTurn = options.maxCallsPerTurn ?? limits.maxConcurrentStreams;
  const unary = new Map<string, UnaryHandler>();
  const streaming = new Map<string, StreamingHandler>();
  const unknownListeners: UnknownMethodListener[] = [];
  const connections = new Set<Http2Connection>();
  const callCounts = { endedBeforeStart: 0 };
  const counted = http2Metrics(options.metrics, connections, callCounts);
  const deadlines = createDeadlineQueue();
  let listener: Deno.TcpListener | undefined;
  let accepting = true;
  let acceptLoop: Promise<void> | undefined;

  const responder = (call: ServerCall): UnaryResponder => ({
    message: (bytes) => call.answer(bytes),
    error: (error, trailers) => call.end(error, trailers),
  });

  function startCall(starts: CallStarts, stream: Http2Stream, fields: string[], endStream: boolean): void {
    const method = fieldValue(fields, ":method");
    const contentType = fieldValue(fields, "content-type") ?? "";
    if (method !== "POST" || !contentType.startsWith(GRPC_CONTENT_TYPE)) {
      const plain = new PlainAnswer(stream, method !== "POST" ? 405 : 415);
      stream.context = plain;
      if (endStream) plain.requestEnded();
      return;
    }
    const path = fieldValue(fields, ":path") ?? "";
    let deadlineMs: number | undefined;
    let timeoutError: ServiceError | undefined;
    try {
      deadlineMs = parseTimeout(fieldValue(fields, "grpc-timeout"), Date.now());
    } catch (error) {
      timeoutError = error as ServiceError;
    }
    const call = new ServerCall(starts, stream, path, deadlineMs, fields, options.maxReceiveBytes, deadlines);
    stream.context = call;
    if (timeoutError) return call.end(timeoutError);
    if (!accepting) return call.end(new ServiceError(Code.UNAVAILABLE, "the server is shutting down"));
    const streamingHandler = streaming.get(path);
    if (streamingHandler) {
      call.messageListeners = [];
      call.endListeners = [];
      const listeners = { messages: call.messageListeners, ends: call.endListeners };
      try {
        streamingHandler({
          path,
          deadlineMs,
          get signal() {
            return call.signal;
          },
          header: (name) => call.header(name),
          onMessage: (listener) => void listeners.messages.push(listener),
          onEnd: (listener) => void listeners.ends.push(listener),
          send: (message) => call.send(message),
          end: (error) => call.end(error),
        });
      } catch (error) {
        logger.error("gRPC streaming handler threw", { path, error });
        call.end(ServiceError.from(error));
      }
    } else {
      call.unary = unary.get(path);
    }
    if (endStream) requestEnded(call);
  }

  function onData(call: ServerCall, data: Uint8Array, endStream: boolean): void {
    if (!call.failed && !call.ended) {
      call.requestBytes += data.length;
      try {
        const messages = call.reader.push(data);
        for (const message of messages) {
          if (call.messageListeners) {
            for (const listener of call.messageListeners) listener(message);
          } else if (call.request !== undefined) {
            throw new ServiceError(Code.INVALID_ARGUMENT, `${call.path} is unary: one request message only`);
          } else {
            call.request = message;
          }
        }
      } catch (error) {
        call.failed = true;
        call.end(ServiceError.from(error));
      }
    }
    if (endStream) requestEnded(call);
  }

  function requestEnded(call: ServerCall): void {
    if (call.endListeners) {
      if (!call.ended) { for (const listener of call.endListeners) listener(); }
      return;
    }
    if (call.failed || call.ended) return;
    call.starts.add(call); // started once this read has been handled (afterRead)
  }

  function startUnary(call: ServerCall): void {
    const handler = call.unary;
    if (!handler) {
      for (const listener of unknownListeners) listener(call.path, call, call.requestBytes);
      call.end(new ServiceError(Code.UNIMPLEMENTED, `unknown method ${call.path}`));
      return;
    }
    if (call.request === undefined || call.reader.partialBytes > 0) {
      call.end(new ServiceError(Code.INTERNAL, `${call.path} is unary: exactly one whole request message`));
      return;
    }
    try {
      handler(call.request, call, responder(call));
    } catch (error) {
      logger.error("gRPC handler threw", { path: call.path, error });
      call.end(ServiceError.from(error));
    }
  }

  /** The handler of one connection's streams (with its own CallStarts). */
  const http2Handler = (starts: CallStarts): Http2Handler => ({
    onHeaders(stream: Http2Stream, fields: string[], endStream: boolean) {
      const context = stream.context as ServerCall | PlainAnswer | undefined;
      if (context === undefined) return startCall(starts, stream, fields, endStream);
      // Request trailers: gRPC has none to read; they end the request.
      if (!endStream) return;
      if (context instanceof PlainAnswer) context.requestEnded();
      else requestEnded(context);
    },
    onData(stream: Http2Stream, data: Uint8Array, endStream: boolean) {
      const context = stream.context as ServerCall | PlainAnswer;
      if (context instanceof ServerCall) onData(context, data, endStream);
      else if (endStream) context.requestEnded();
    },
    afterRead: () => starts.pump(),
    onClose(stream: Http2Stream) {
      const call = stream.context;
      if (!(call instanceof ServerCall)) return;
      call.clearDeadline();
      if (!call.ended) {
        call.ended = true;
        call.cancel();
      }
    },
  });

  let refusedLoggedAt = -Infinity;

  function serveConnection(conn: Deno.TcpConn): void {
    try {
      conn.setNoDelay(true);
    } catch {
      // the socket may already be gone
    }
    const remote = conn.remoteAddr;
    const label = `${remote.hostname}:${remote.port}`;
    if (connections.size >= limits.maxConnections) {
      counted.refused();
      // Logged once per 10 s at most: a flood of connections must not become a flood of log lines.
      if (Date.now() - refusedLoggedAt >= 10_000) {
        refusedLoggedAt = Date.now();
        logger.warn("http2: connections refused, at the connection limit (counted in /metrics)", {
          connection: label,
          maxConnections: limits.maxConnections,
        });
      }
      void refuseConnection(
        conn as ByteStream,
        ErrorCode.ENHANCE_YOUR_CALM,
        `this server is at its limit of ${limits.maxConnections} connections (H2_MAX_CONNECTIONS)`,
      );
      return;
    }
    counted.accepted();
    const starts = new CallStarts(maxCallsPerTurn, startUnary, callCounts);
    const connection = createHttp2Connection(conn as ByteStream, {
      role: "server",
      handler: http2Handler(starts),
      logger,
      label,
      maxConcurrentStreams: limits.maxConcurrentStreams,
      limits,
      observer: counted.observer,
    });
    connections.add(connection);
    void connection.closed.then(() => connections.delete(connection));
    if (!accepting) void connection.close();
  }

  return {
    addUnary: (path, handler) => void unary.set(path, handler),
    addStreaming: (path, handler) => void streaming.set(path, handler),
    onUnknownMethod: (listener) => void unknownListeners.push(listener),
    listen(host, port) {
      try {
        listener = Deno.listen({ hostname: host, port, transport: "tcp" });
      } catch (error) {
        return Promise.reject(new Error(`cannot listen for gRPC on ${host}:${port}: ${error}`));
      }
      const bound = listener;
      acceptLoop = (async () => {
        try {
          for await (const conn of bound) serveConnection(conn);
        } catch (error) {
          if (accepting) logger.error("gRPC listener failed", { error });
        }
      })();
      return Promise.resolve((bound.addr as Deno.NetAddr).port);
    },
    async shutdown() {
      accepting = false;
      try {
        listener?.close();
      } catch {
        // already closed
      }
      await acceptLoop;
      // GOAWAY: each connection ends by itself once its last stream has.
      await Promise.all([...connections].map((connection) => connection.close()));
    },
    forceShutdown() {
      accepting = false;
      try {
        listener?.close();
      } catch {
        // already closed
      }
      for (const connection of connections) connection.destroy("the server is shutting down");
    },
  };
}
