/**
 * What a load scenario is: the calls it makes (gRPC through ghz, REST through vegeta), their shares, the load
 * model (open: a rate schedule; closed: a number of users), how long it runs and how long it warms up. The
 * scenarios themselves are one small file each in scenarios/, listed in scenarios/mod.ts.
 */
import type { RatePiece } from "./latency.ts";

export type ServiceName = "catalog" | "orders" | "payments";

/** Requests per second over the run. */
export type Schedule =
  /** The same rate throughout. */
  | { kind: "constant"; rate: number }
  /** `start`, then `step` more every `everyS` seconds, up to `end` (then held): ghz's step schedule. */
  | { kind: "step"; start: number; step: number; everyS: number; end: number }
  /** From `from` to `to` over the run, changing once a second (ghz's line schedule). */
  | { kind: "ramp"; from: number; to: number };

/** One REST request as vegeta sends it (a target). */
export interface HttpRequest {
  method: "GET" | "POST" | "PUT" | "DELETE";
  /** Path and query, e.g. "/v1/products/kibble-salmon-2kg". */
  path: string;
  /** JSON body. */
  body?: unknown;
}

interface CallBase {
  /** What the call stands for in the mix, e.g. "browse: get a product". */
  label: string;
  service: ServiceName;
  /** Full gRPC method without the leading slash, e.g. "catalog.v1.CatalogService/GetProduct". */
  method: string;
  /** Share of the scenario's rate (open) or users (closed); the shares of a scenario add up to 1. */
  weight: number;
  /** What the call is expected to answer, for the reader ("OK", "NOT_FOUND or OK", ...). */
  expect: string;
}

/** A gRPC call: ghz sends `data`'s messages in turn (protobuf JSON, field names as in the .proto). */
export interface GrpcCall extends CallBase {
  protocol: "grpc";
  data: unknown[];
}

/** A REST call on the service's shim: vegeta sends `requests` in turn. */
export interface HttpCall extends CallBase {
  protocol: "http";
  requests: HttpRequest[];
}

export type Call = GrpcCall | HttpCall;

/** Ids that after-sales calls need (orders to get, cancel and refund), made before the run by `setup`. */
export interface Fixtures {
  orders: Array<{ orderId: string; paymentId: string; customerId: string }>;
}

/** What a scenario's `calls` gets: fixtures, and how many requests each call will send in the phase. */
export interface CallContext {
  fixtures: Fixtures;
  /** Requests a call of this weight sends in the phase being prepared (open model; 0 when unknown). */
  hits(weight: number): number;
  /** "warmup" or "run": the two phases take disjoint fixtures (an order is cancelled once). */
  phase: "warmup" | "run";
}

export interface Scenario {
  name: string;
  description: string;
  model: "open" | "closed";
  /** Open model: the rate over the run. */
  schedule?: Schedule;
  /** Closed model: concurrent users, each sending its next request when the last one answered. */
  users?: number;
  durationS: number;
  /** Seconds of load before the measured run, at the schedule's starting rate; excluded from every figure. */
  warmupS: number;
  /** Orders to create before the warm-up (for after-sales calls), given the run's requests per weight. */
  fixtureOrders?(hits: (weight: number) => number): number;
  calls(context: CallContext): Call[];
}

/** The rate pieces of a schedule over `durationS`, as ghz paces it (see RatePiece). */
export function ratePieces(schedule: Schedule, durationS: number): RatePiece[] {
  switch (schedule.kind) {
    case "constant":
      return [{ at: 0, rate: schedule.rate }];
    case "step": {
      const pieces: RatePiece[] = [];
      for (let at = 0, k = 0; at < durationS; at += schedule.everyS, k++) {
        const rate = Math.min(schedule.start + k * schedule.step, schedule.end);
        pieces.push({ at, rate });
        if (rate >= schedule.end) break;
      }
      return pieces;
    }
    case "ramp": {
      const slope = rampSlope(schedule, durationS);
      const pieces: RatePiece[] = [];
      for (let at = 0; at < durationS; at++) {
        const rate = slope > 0
          ? Math.min(schedule.from + slope * at, schedule.to)
          : Math.max(schedule.from + slope * at, schedule.to);
        pieces.push({ at, rate });
        if (rate === schedule.to) break;
      }
      return pieces;
    }
  }
}

/**
 * ghz's line schedule takes a whole number of requests per second per second: rounded away from zero, so the
 * ramp reaches its end rate within the run (and holds it for the last second or two).
 */
export function rampSlope(schedule: { from: number; to: number }, durationS: number): number {
  const exact = (schedule.to - schedule.from) / Math.max(1, durationS - 1);
  return Math.max(1, Math.ceil(Math.abs(exact))) * (Math.sign(exact) || 1);
}

/** The schedule with every rate multiplied by `factor` (a call's share), each rate a whole number >= 1. */
export function scaleSchedule(schedule: Schedule, factor: number): Schedule {
  const r = (value: number) => Math.max(1, Math.round(value * factor));
  switch (schedule.kind) {
    case "constant":
      return { kind: "constant", rate: r(schedule.rate) };
    case "step":
      return {
        kind: "step",
        start: r(schedule.start),
        step: r(schedule.step),
        everyS: schedule.everyS,
        end: r(schedule.end),
      };
    case "ramp":
      return { kind: "ramp", from: r(schedule.from), to: r(schedule.to) };
  }
}

/** The schedule's rate at the start (the warm-up's constant rate). */
export function startRate(schedule: Schedule): number {
  return schedule.kind === "constant"
    ? schedule.rate
    : schedule.kind === "step"
    ? schedule.start
    : schedule.from;
}

/** The schedule's highest rate. */
export function peakRate(schedule: Schedule): number {
  return schedule.kind === "constant"
    ? schedule.rate
    : schedule.kind === "step"
    ? schedule.end
    : Math.max(schedule.from, schedule.to);
}

/** The schedule scaled so that its peak is `rate` (what `--rate N` means for step and ramp schedules). */
export function withPeakRate(schedule: Schedule, rate: number): Schedule {
  if (schedule.kind === "constant") return { kind: "constant", rate };
  return scaleSchedule(schedule, rate / peakRate(schedule));
}

/** "constant 1000 rps", "step 500 → 3000 by 500 every 20 s", "ramp 100 → 2000 rps". */
export function describeSchedule(schedule: Schedule): string {
  switch (schedule.kind) {
    case "constant":
      return `constant ${schedule.rate} rps`;
    case "step":
      return `step ${schedule.start} → ${schedule.end} rps by ${schedule.step} every ${schedule.everyS} s`;
    case "ramp":
      return `ramp ${schedule.from} → ${schedule.to} rps`;
  }
}

/** ghz's flags for a schedule (open model). */
export function ghzScheduleArgs(schedule: Schedule, durationS: number): string[] {
  switch (schedule.kind) {
    case "constant":
      return ["--rps", String(schedule.rate)];
    case "step":
      return [
        "--rps",
        String(schedule.start),
        "--load-schedule",
        "step",
        "--load-start",
        String(schedule.start),
        "--load-step",
        String(schedule.step),
        "--load-step-duration",
        `${schedule.everyS}s`,
        "--load-end",
        String(schedule.end),
      ];
    case "ramp":
      return [
        "--rps",
        String(schedule.from),
        "--load-schedule",
        "line",
        "--load-start",
        String(schedule.from),
        "--load-step",
        String(rampSlope(schedule, durationS)),
        "--load-end",
        String(schedule.to),
      ];
  }
}

/** What is wrong with a scenario (empty when nothing): shares, rates, calls, durations. */
export function scenarioProblems(scenario: Scenario): string[] {
  const problems: string[] = [];
  if (!/^[a-z0-9][a-z0-9-]{0,30}$/.test(scenario.name)) {
    problems.push(`name ${scenario.name}: a-z, 0-9 and -`);
  }
  if (scenario.model === "open" && !scenario.schedule) problems.push("an open model needs a schedule");
  if (scenario.model === "closed" && !(Number(scenario.users) >= 1)) {
    problems.push("a closed model needs users");
  }
  if (!(scenario.durationS > 0)) problems.push("durationS must be > 0");
  if (!(scenario.warmupS >= 0)) problems.push("warmupS must be >= 0");
  const fixtures: Fixtures = {
    orders: Array.from({ length: 10 }, (_, i) => ({ orderId: `o${i}`, paymentId: `p${i}`, customerId: "c" })),
  };
  const calls = scenario.calls({ fixtures, hits: () => 10, phase: "run" });
  if (calls.length === 0) problems.push("no calls");
  const total = calls.reduce((sum, call) => sum + call.weight, 0);
  if (Math.abs(total - 1) > 1e-9) problems.push(`the calls' weights add up to ${total}, not 1`);
  for (const call of calls) {
    if (!/^[a-z]+\.v1\.[A-Za-z]+Service\/[A-Za-z]+$/.test(call.method)) {
      problems.push(`method ${call.method}`);
    }
    if (!call.method.startsWith(`${call.service}.`)) {
      problems.push(`${call.method} is not a ${call.service} method`);
    }
    if (call.protocol === "grpc" && call.data.length === 0) problems.push(`${call.label}: no data`);
    if (call.protocol === "http" && call.requests.length === 0) problems.push(`${call.label}: no requests`);
  }
  return problems;
}
