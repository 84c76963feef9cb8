/**
 * Tailwatch for a service that runs on `@grpc/grpc-js`: a server interceptor that emits one
 * `events.v1.RequestEvent` per call, the event the project's own services emit, through the same publisher
 * (the kit's event sink: a bounded buffer drained by pipelined, acknowledged JetStream publishes on subject
 * `events.requests.<service>`). Ingest, ClickHouse, the profiler and the dashboard then treat the service like
 * catalog, orders and payments.
 *
 * How a call is observed (grpc-js >= 1.10, whose server takes `interceptors`):
 * - start: when grpc-js builds the call, right after the request's headers arrived (the interceptor runs
 *   then); wall clock (`Date.now()`) for start_time_ms and `performance.timeOrigin` + the monotonic clock for
 *   start_time_us and the duration, as the kit's pipeline does;
 * - trace and load run: from the request metadata (`traceparent`, `tailwatch-load-run`), read by the kit's
 *   `spanFromTraceparent` and `loadRunIdOf`, so the call's span is a child of the caller's;
 * - end: when grpc-js ends the call (it tells every interceptor's listener `onCancel` once the status is sent,
 *   or once the stream closed without one); the event is emitted then, after the response;
 * - status: the `grpc-status` grpc-js actually sent (read from the HTTP/2 stream's sent trailers, or its
 *   headers for a trailers-only answer), so statuses that grpc-js sends on its own without passing through
 *   the interceptors (its deadline timer, a request it cannot decode, a message over its limits) are right
 *   too; a call that ended without a status is DEADLINE_EXCEEDED when its deadline has passed, else CANCELLED
 *   (as the kit's services say);
 * - sizes: request bytes are the DATA bytes the stream received less each message's 5-byte gRPC prefix (the
 *   messages' own bytes, as the services count them); response bytes are each response message serialized
 *   once more by the method's serializer (grpc-js does not tell interceptors what it wrote).
 *
 * The HTTP/2 stream is not part of grpc-js's interceptor API: it is found on the innermost call object (the
 * interceptor is best placed first in `interceptors`; it also looks through other interceptors' calls). Where
 * it is not found (another grpc-js), the status is the one that passed through this interceptor (else
 * CANCELLED/DEADLINE_EXCEEDED) and request bytes are 0; `tailwatch_grpc_stream_unavailable_total` counts such
 * calls.
 *
 * Never in the way of a call: everything is synchronous and small, every hook passes the call on whatever
 * happens in it (a failure there is counted in `tailwatch_grpc_interceptor_errors_total` and logged at most
 * once a minute), and the sink's `emit` never blocks and never throws (a full buffer drops the event and counts
 * it in `events_dropped_total`).
 *
 * Limits: a call of a method the server does not have is answered UNIMPLEMENTED by grpc-js before any
 * interceptor runs, so it has no event (the kit's services emit one with an empty method). Runs under Deno 2
 * (the kit is Deno code).
 */
import * as grpc from "@grpc/grpc-js";
import { Protocol } from "@tailwatch/proto/events/v1";
import { Code, codeName } from "@tailwatch/grpc";
import { createEventSink, type EventSink, type NatsConfig, natsConfig } from "@tailwatch/nats";
import {
  createLogger,
  createRegistry,
  type Logger,
  type Registry,
  type SpanContext,
  spanFromTraceparent,
  traceparentOf,
  uuidv7,
} from "@tailwatch/runtime";
import { LOAD_RUN_HEADER, loadRunIdOf } from "@tailwatch/events";

export interface TailwatchInterceptorOptions {
  /**
   * The service's name: the events' `service` and their subject `events.requests.<service>`. One subject token:
   * letters, digits, `_` and `-`.
   */
  service: string;
  /**
   * NATS: a URL (several comma-separated; credentials allowed in it, as in NATS_URL), or the kit's NatsConfig
   * (servers, user/password or token, inbox prefix). Default: the environment (NATS_URL, NATS_USER,
   * NATS_PASSWORD, NATS_TOKEN, NATS_INBOX_PREFIX), as the services read it.
   */
  natsUrl?: string;
  nats?: NatsConfig;
  /** The serving process, unique per process start. Default `<service>-<hostname>-<pid>`. */
  instance?: string;
  /** Events held at most while NATS is slow or away (then dropped, counted). Default 100,000. */
  capacity?: number;
  /** Events awaiting their JetStream ack at once. Default 4096. */
  concurrency?: number;
  /** Events emitted within this many ms are published together. Default 20. */
  publishIntervalMs?: number;
  /** Events one JetStream message holds at most. Default 256. */
  eventsPerMessage?: number;
  /** Where the sink and the interceptor log (JSON lines on stderr by default). */
  logger?: Logger;
  /**
   * Where the metrics go (`events_*` of the sink, `requests_total`, the interceptor's own): pass the registry
   * your /metrics renders, or read `tailwatch.metrics.render()`. Default: a registry of its own.
   */
  metrics?: Registry;
  /** Publish through this sink instead of creating one (tests; a process that has one already). */
  events?: EventSink;
}

export interface TailwatchInterceptor extends AsyncDisposable {
  /** For `new grpc.Server({ interceptors: [tailwatch.interceptor] })`: best first in the list. */
  readonly interceptor: grpc.ServerInterceptor;
  /** The sink the events go through (readiness, pending). */
  readonly events: EventSink;
  readonly metrics: Registry;
  /**
   * Metadata for a downstream call made while serving the call whose request metadata is `incoming`
   * (`call.metadata` in a handler): `traceparent` naming this call's span as the parent, and the load run id,
   * so the downstream service's events join this call's trace and run. Empty for metadata this interceptor
   * did not see.
   */
  downstreamMetadata(incoming: grpc.Metadata): grpc.Metadata;
  /**
   * Waits until every emitted event is acknowledged by JetStream (at most `timeoutMs`, default 5000) and
   * closes the NATS connection (a sink passed in `events` is left open). Call it after the server shut down.
   */
  close(timeoutMs?: number): Promise<void>;
}

const SERVICE_NAME = /^[A-Za-z0-9_-]+$/;
/** The messages the kit's services write for a call that ended without a status. */
const DEADLINE_MESSAGE = "deadline exceeded";
const CANCELLED_MESSAGE = "cancelled by the client";
/** Bytes before each gRPC message on the wire: a compressed flag and a 4-byte length. */
const MESSAGE_PREFIX_BYTES = 5;

/** The part of a Node/Deno `Http2Stream` the interceptor reads. */
interface Http2StreamLike {
  on(event: "data", listener: (chunk: Uint8Array) => void): unknown;
  once(event: "close", listener: () => void): unknown;
  readonly sentHeaders?: Record<string, unknown>;
  readonly sentTrailers?: Record<string, unknown>;
}

const isStream = (value: unknown): value is Http2StreamLike =>
  typeof value === "object" && value !== null &&
  typeof (value as Http2StreamLike).on === "function" &&
  typeof (value as Http2StreamLike).once === "function";

/**
 * The HTTP/2 stream under a grpc-js server call: `stream` of grpc-js's innermost call object
 * (BaseServerInterceptingCall), reached through `nextCall` of the interceptors' calls in between. Not public
 * API: undefined when not found.
 */
function streamOf(call: grpc.ServerInterceptingCallInterface): Http2StreamLike | undefined {
  let current: unknown = call;
  for (let depth = 0; depth < 32 && typeof current === "object" && current !== null; depth++) {
    const candidate = (current as { stream?: unknown }).stream;
    if (isStream(candidate)) return candidate;
    current = (current as { nextCall?: unknown }).nextCall;
  }
  return undefined;
}

/** The `grpc-status` (and message) a stream was answered with, if it was. */
function sentStatus(stream: Http2StreamLike): { code: number; details: string } | undefined {
  const block = stream.sentTrailers?.["grpc-status"] !== undefined
    ? stream.sentTrailers
    : stream.sentHeaders?.["grpc-status"] !== undefined
    ? stream.sentHeaders
    : undefined;
  if (block === undefined) return undefined;
  const message = block["grpc-message"];
  let details = typeof message === "string" ? message : "";
  try {
    details = decodeURIComponent(details); // grpc-js sends encodeURI(details)
  } catch {
    // not percent-encoded after all: keep it as sent
  }
  return { code: Number(block["grpc-status"]), details };
}

/** A status code as the event stores it: 0-16, anything else UNKNOWN (what a gRPC client makes of it). */
const eventCode = (code: number): number =>
  Number.isInteger(code) && code >= 0 && code <= 16 ? code : Code.UNKNOWN;

/**
 * Counts the bytes of the gRPC messages in a request's DATA chunks: every byte but each message's 5-byte
 * prefix. Chunks may split a prefix or a message anywhere.
 */
export class MessageByteCounter {
  bytes = 0;
  /** Bytes of the current prefix read so far (0-4), the length it spells, and what is left of the message. */
  private prefixRead = 0;
  private length = 0;
  private left = 0;

  push(chunk: Uint8Array): void {
    const end = chunk.length;
    let at = 0;
    while (at < end) {
      if (this.left > 0) {
        const take = Math.min(this.left, end - at);
        this.left -= take;
        this.bytes += take;
        at += take;
        continue;
      }
      const byte = chunk[at++];
      if (this.prefixRead > 0) this.length = this.length * 256 + byte;
      if (++this.prefixRead === MESSAGE_PREFIX_BYTES) {
        this.left = this.length;
        this.prefixRead = 0;
        this.length = 0;
      }
    }
  }
}

/**
 * Creates the sink (it connects to NATS in the background: calls never wait for it) and the interceptor.
 * Throws only for bad options (a service name that is not one subject token, a bad NATS URL).
 */
export function createTailwatchInterceptor(
  options: TailwatchInterceptorOptions,
): Promise<TailwatchInterceptor> {
  try {
    return Promise.resolve(buildInterceptor(options));
  } catch (error) {
    return Promise.reject(error);
  }
}

function buildInterceptor(options: TailwatchInterceptorOptions): TailwatchInterceptor {
  const { service } = options;
  if (!SERVICE_NAME.test(service)) {
    throw new Error(
      `tailwatch: service ${JSON.stringify(service)} must be one NATS subject token ([A-Za-z0-9_-]+)`,
    );
  }
  const instance = options.instance ?? `${service}-${hostname()}-${Deno.pid}`;
  const logger = options.logger ?? createLogger("info", { service, instance, component: "tailwatch" });
  const metrics = options.metrics ?? createRegistry();
  const ownSink = options.events === undefined;
  const events = options.events ?? createEventSink({
    service,
    nats: options.nats ?? natsConfig(options.natsUrl ?? Deno.env.toObject()),
    capacity: options.capacity ?? 100_000,
    concurrency: options.concurrency ?? 4096,
    publishIntervalMs: options.publishIntervalMs ?? 20,
    eventsPerMessage: options.eventsPerMessage ?? 256,
    logger,
    metrics,
  });

  const requests = metrics.counter("requests_total", "Requests served, by method, protocol and gRPC code.", [
    "method",
    "protocol",
    "code",
  ]);
  const interceptorErrors = metrics.counter(
    "tailwatch_grpc_interceptor_errors_total",
    "Failures inside the Tailwatch interceptor (the call went on; its event may be missing).",
  );
  const streamUnavailable = metrics.counter(
    "tailwatch_grpc_stream_unavailable_total",
    "Calls whose HTTP/2 stream the interceptor could not find (status from the interceptor chain, no request bytes).",
  );
  /** Each (method, code)'s request counter, looked up once. */
  const counters = new Map<string, Array<{ inc(): void } | undefined>>();
  const countRequest = (method: string, code: number) => {
    let byCode = counters.get(method);
    if (byCode === undefined) counters.set(method, byCode = []);
    (byCode[code] ??= requests.with({ method, protocol: "grpc", code: codeName(code) })).inc();
  };

  let lastErrorLog = 0;
  const failed = (where: string, error: unknown) => {
    interceptorErrors.inc();
    const now = Date.now();
    if (now - lastErrorLog >= 60_000) {
      lastErrorLog = now;
      logger.error("tailwatch: the interceptor failed (the call goes on)", { where, error });
    }
  };

  /** The span and load run of each call, by its request metadata (what handlers see as `call.metadata`). */
  const contexts = new WeakMap<grpc.Metadata, { span: SpanContext; loadRunId: string }>();

  const interceptor: grpc.ServerInterceptor = (methodDescriptor, call) => {
    const startMs = Date.now();
    const startMono = performance.now();
    const method = methodDescriptor.path;
    let span: SpanContext | undefined;
    let loadRunId = "";
    let responseBytes = 0;
    /** The last status that passed through this interceptor (used when the stream is not found). */
    let passedStatus: { code: number; details: string } | undefined;
    let emitted = false;
    let stream: Http2StreamLike | undefined;
    let received: MessageByteCounter | undefined;

    const emit = () => {
      if (emitted) return;
      emitted = true;
      try {
        const endMono = performance.now();
        let status = stream !== undefined ? sentStatus(stream) : passedStatus;
        if (status === undefined) {
          const deadline = call.getDeadline();
          const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
          status = Date.now() >= deadlineMs
            ? { code: Code.DEADLINE_EXCEEDED, details: DEADLINE_MESSAGE }
            : { code: Code.CANCELLED, details: CANCELLED_MESSAGE };
        }
        const code = eventCode(status.code);
        span ??= spanFromTraceparent(undefined);
        countRequest(method, code);
        events.emit({
          eventId: uuidv7(startMs),
          startTimeMs: BigInt(startMs),
          startTimeUs: BigInt(Math.round((performance.timeOrigin + startMono) * 1000)),
          durationUs: BigInt(Math.max(0, Math.round((endMono - startMono) * 1000))),
          service,
          method,
          protocol: Protocol.GRPC,
          route: "",
          grpcCode: code,
          httpStatus: 200,
          requestBytes: BigInt(received?.bytes ?? 0),
          responseBytes: BigInt(responseBytes),
          traceId: span.traceId,
          spanId: span.spanId,
          parentSpanId: span.parentSpanId,
          instance,
          errorMessage: code === Code.OK ? "" : status.details,
          faultInjected: false,
          loadRunId,
        });
      } catch (error) {
        failed("emit", error);
      }
    };

    try {
      stream = streamOf(call);
      if (stream === undefined) {
        streamUnavailable.inc();
      } else {
        const counter = received = new MessageByteCounter();
        // grpc-js pauses the stream and reads it on demand: one more 'data' listener sees the same chunks and
        // does not resume it.
        stream.on("data", (chunk) => counter.push(chunk));
        // A call cancelled before grpc-js started it never reaches a listener (its metadata unread): the
        // close ends it then. Otherwise the listener's onCancel follows the close.
        stream.once("close", () => {
          if (span === undefined) setTimeout(emit, 0);
        });
      }
    } catch (error) {
      failed("stream", error);
    }

    const listener: grpc.ServerListener = {
      onReceiveMetadata(metadata, next) {
        try {
          const traceparent = metadata.get("traceparent")[0];
          span = spanFromTraceparent(typeof traceparent === "string" ? traceparent : undefined);
          const run = metadata.get(LOAD_RUN_HEADER)[0];
          loadRunId = loadRunIdOf(typeof run === "string" ? run : undefined);
          contexts.set(metadata, { span, loadRunId });
        } catch (error) {
          failed("metadata", error);
        }
        next(metadata);
      },
      // grpc-js calls it once the call is over: after the status was sent, or when the stream closed.
      onCancel: emit,
    };

    return new grpc.ServerInterceptingCall(call, {
      start(next) {
        next(listener);
      },
      sendMessage(message, next) {
        try {
          responseBytes += methodDescriptor.responseSerialize(message).byteLength;
        } catch {
          // grpc-js's own serialization fails too and answers INTERNAL
        }
        next(message);
      },
      sendStatus(status, next) {
        passedStatus = { code: status.code, details: status.details ?? "" };
        next(status);
      },
    });
  };

  const close = async (timeoutMs = 5000) => {
    if (ownSink) await events.close(timeoutMs);
  };
  return {
    interceptor,
    events,
    metrics,
    downstreamMetadata(incoming) {
      const metadata = new grpc.Metadata();
      const context = contexts.get(incoming);
      if (context !== undefined) {
        metadata.set("traceparent", traceparentOf(context.span));
        if (context.loadRunId !== "") metadata.set(LOAD_RUN_HEADER, context.loadRunId);
      }
      return metadata;
    },
    close,
    [Symbol.asyncDispose]: () => close(),
  };
}

function hostname(): string {
  try {
    return Deno.hostname();
  } catch {
    return "localhost"; // no permission to read it
  }
}
