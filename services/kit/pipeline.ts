/**
 * The one path every request takes, whatever its transport: admission, decoding, injected faults, the
 * handler, then exactly one event and the metrics. gRPC and REST only translate bytes and statuses.
 */
import {
  type DescMessage,
  type DescMethod,
  type DescService,
  type MessageInitShape,
  type MessageShape,
  toJson,
} from "@bufbuild/protobuf";
import { FaultsSchema } from "@tailwatch/proto/admin/v1";
import { Protocol } from "@tailwatch/proto/events/v1";
import { Code, codeName, methodPath, ServiceError } from "@tailwatch/grpc";
import type { EventSink } from "@tailwatch/nats";
import { type Faults, NO_FAULTS, sampleDelayMs, sampleError, validateFaults } from "./faults.ts";
import {
  type Logger,
  type Registry,
  type SpanContext,
  spanFromTraceparent,
  traceparentOf,
  uuidv7,
} from "@tailwatch/runtime";
import { LOAD_RUN_HEADER, loadRunIdOf } from "@tailwatch/events";

/** What a handler knows about the call it serves. */
export interface CallContext {
  /** This request's server span; pass `traceparent` to downstream calls to make them its children. */
  readonly span: SpanContext;
  readonly traceparent: string;
  /** The load run that sent the call (LOAD_RUN_HEADER), "" when none: pass it to downstream calls too. */
  readonly loadRunId: string;
  /** Aborted when the client cancels or its deadline passes. */
  readonly signal: AbortSignal;
  /** Epoch ms by which the client wants its answer, if it said. */
  readonly deadlineMs?: number;
  readonly protocol: "grpc" | "http";
  /** A request header (REST) or metadata value (gRPC), lowercase name. */
  header(name: string): string | undefined;
}

export type UnaryHandler<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  context: CallContext,
) => Promise<MessageInitShape<O>> | MessageInitShape<O>;

/** One handler per RPC of `S`, keyed by the RPC's local name (e.g. `getProduct`). */
export type ServiceHandlers<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends
    { input: infer I extends DescMessage; output: infer O extends DescMessage } ? UnaryHandler<I, O>
    : never;
};

/** A service and its handlers, as the runtime serves it. */
export interface ServiceBinding {
  readonly service: DescService;
  // deno-lint-ignore no-explicit-any -- each method's handler is typed by ServiceHandlers at registration
  readonly handlers: Record<string, UnaryHandler<any, any>>;
  /** "api" methods are subject to fault injection; "admin" ones are not. */
  readonly kind: "api" | "admin";
}

export function bindService<S extends DescService>(
  service: S,
  handlers: ServiceHandlers<S>,
  kind: "api" | "admin" = "api",
): ServiceBinding {
  for (const method of service.methods) {
    if (method.methodKind !== "unary") throw new Error(`${method.toString()}: only unary RPCs are served`);
    if (typeof (handlers as Record<string, unknown>)[method.localName] !== "function") {
      throw new Error(`${service.typeName}: no handler for ${method.name}`);
    }
  }
  return { service, handlers: handlers as ServiceBinding["handlers"], kind };
}

/** The request as a transport sees it before the handler runs. */
export interface IncomingCall {
  /** When the request arrived: epoch ms, and performance.now() for the duration. */
  arrivedMs: number;
  arrivedMono: number;
  protocol: "grpc" | "http";
  /** REST route template, e.g. "GET /v1/products/{product_id}"; "" for gRPC. */
  route: string;
  requestBytes: number;
  traceparent: string | undefined;
  deadlineMs?: number;
  signal: AbortSignal;
  header(name: string): string | undefined;
}

/** How a call ended, as the transport sent it. */
export interface CallOutcome {
  code: Code;
  httpStatus: number;
  responseBytes: number;
  errorMessage: string;
}

export interface Pipeline {
  /** Runs one call through admission, decoding, faults and the handler. Throws a ServiceError. */
  run(
    binding: ServiceBinding,
    method: DescMethod,
    call: IncomingCall,
    decode: () => unknown,
  ): { span: SpanContext; result: Promise<unknown>; finish(outcome: CallOutcome): void };
  /** Records a request that matched no method (REST only): an event with an empty method. */
  unmatched(call: IncomingCall, outcome: CallOutcome): void;
  faults(): Faults;
  setFaults(faults: Faults): Faults;
  inFlight(): number;
}

export interface PipelineOptions {
  service: string;
  instanceId: string;
  maxInFlight: number;
  faults: Faults;
  events: EventSink;
  metrics: Registry;
  logger: Logger;
}

const DURATION_BUCKETS_SECONDS = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
];

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new ServiceError(Code.CANCELLED, "request cancelled during injected latency"));
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

export function createPipeline(options: PipelineOptions): Pipeline {
  const { metrics, events } = options;
  let faults = options.faults ?? NO_FAULTS;
  let inFlight = 0;
  const requests = metrics.counter("requests_total", "Requests served, by method, protocol and gRPC code.", [
    "method",
    "protocol",
    "code",
  ]);
  const duration = metrics.histogram(
    "request_duration_seconds",
    "Time from a request's arrival to its response.",
    DURATION_BUCKETS_SECONDS,
    ["method", "protocol"],
  );
  const rejected = metrics.counter(
    "admission_rejections_total",
    "Requests refused at once because the in-flight limit was reached.",
    ["method", "protocol"],
  );
  metrics.gaugeFn("requests_in_flight", "Requests being handled now.", () => inFlight);
  metrics.gaugeFn(
    "requests_in_flight_limit",
    "Requests handled at once at most (MAX_IN_FLIGHT).",
    () => options.maxInFlight,
  );

  /** Each (method, protocol)'s duration series and per-code request counters, looked up once. */
  const seriesByMethod = new Map<
    string,
    { duration: { observe(value: number): void }; byCode: Array<{ inc(): void } | undefined> }
  >();
  const seriesOf = (method: string, protocol: "grpc" | "http") => {
    const key = protocol === "grpc" ? method : `${method}\u0000http`;
    let series = seriesByMethod.get(key);
    if (!series) {
      series = { duration: duration.with({ method, protocol }), byCode: [] };
      seriesByMethod.set(key, series);
    }
    return series;
  };

  const emit = (
    method: string,
    call: IncomingCall,
    span: SpanContext,
    outcome: CallOutcome,
    faultInjected: boolean,
    loadRunId: string,
  ) => {
    const startMs = call.arrivedMs;
    const elapsed = performance.now() - call.arrivedMono;
    const series = seriesOf(method, call.protocol);
    const counter = series.byCode[outcome.code] ??= requests.with({
      method,
      protocol: call.protocol,
      code: codeName(outcome.code),
    });
    counter.inc();
    series.duration.observe(elapsed / 1000);
    events.emit({
      eventId: uuidv7(startMs),
      startTimeMs: BigInt(startMs),
      // performance.timeOrigin + the monotonic arrival: the start to the microsecond (Date.now() has ms),
      // which places the spans of one trace against each other.
      startTimeUs: BigInt(Math.round((performance.timeOrigin + call.arrivedMono) * 1000)),
      loadRunId,
      durationUs: BigInt(Math.max(0, Math.round(elapsed * 1000))),
      service: options.service,
      method,
      protocol: call.protocol === "grpc" ? Protocol.GRPC : Protocol.HTTP,
      route: call.route,
      grpcCode: outcome.code,
      httpStatus: outcome.httpStatus,
      requestBytes: BigInt(call.requestBytes),
      responseBytes: BigInt(outcome.responseBytes),
      traceId: span.traceId,
      spanId: span.spanId,
      parentSpanId: span.parentSpanId,
      instance: options.instanceId,
      errorMessage: outcome.errorMessage,
      faultInjected,
    });
  };

  return {
    run(binding, method, call, decode) {
      const span = spanFromTraceparent(call.traceparent);
      const loadRunId = loadRunIdOf(call.header(LOAD_RUN_HEADER));
      const path = methodPath(method);
      let faultInjected = false;
      let admitted = false;
      const result = (async () => {
        if (inFlight >= options.maxInFlight) {
          rejected.inc({ method: path, protocol: call.protocol });
          throw new ServiceError(
            Code.RESOURCE_EXHAUSTED,
            `${options.service} is at its limit of ${options.maxInFlight} requests in flight; retry shortly`,
            { retryAfterSeconds: 1 },
          );
        }
        inFlight++;
        admitted = true;
        const request = decode();
        const context: CallContext = {
          span,
          traceparent: traceparentOf(span),
          loadRunId,
          signal: call.signal,
          deadlineMs: call.deadlineMs,
          protocol: call.protocol,
          header: call.header,
        };
        if (binding.kind === "api") {
          const current = faults;
          const delay = sampleDelayMs(current);
          if (delay > 0) {
            faultInjected = true;
            await abortableSleep(delay, call.signal);
          }
          const injected = sampleError(current);
          if (injected) {
            faultInjected = true;
            throw injected;
          }
        }
        // deno-lint-ignore no-explicit-any -- decode() returns the method's input message
        return await binding.handlers[method.localName](request as any, context);
      })();
      let finished = false;
      return {
        span,
        result,
        finish(outcome) {
          if (finished) return;
          finished = true;
          if (admitted) inFlight--;
          emit(path, call, span, outcome, faultInjected, loadRunId);
        },
      };
    },
    unmatched(call, outcome) {
      emit(
        "",
        call,
        spanFromTraceparent(call.traceparent),
        outcome,
        false,
        loadRunIdOf(call.header(LOAD_RUN_HEADER)),
      );
    },
    faults: () => faults,
    setFaults(next) {
      faults = validateFaults(next);
      options.logger.info("faults changed", { faults: toJson(FaultsSchema, faults) });
      return faults;
    },
    inFlight: () => inFlight,
  };
}
