/**
 * One load run of a scenario against a stack, with its proof: fixtures, a warm-up (excluded), the measured run
 * with progress once a second, then the cross-checks (crosscheck.ts) against the services' counters and the
 * rows in ClickHouse selected by the run's id, client and server percentiles, coordinated-omission-corrected
 * percentiles, CPU per process; written as bench/results/load-<time>.json and an HTML report next to it.
 */
import { ident, type Sql, sql } from "@tailwatch/ingest/sql";
import { createClickHouse } from "@tailwatch/ingest";
import {
  correctForCoordinatedOmission,
  hitsInDuration,
  type Quantiles,
  quantiles,
  type RatePiece,
  type Segments,
  segmentSeconds,
  segmentSpread,
  spectrum,
  type SpectrumPoint,
  spectrumText,
} from "./latency.ts";
import {
  type Call,
  describeSchedule,
  type Fixtures,
  ghzScheduleArgs,
  ratePieces,
  scaleSchedule,
  type Scenario,
  type Schedule,
  type ServiceName,
  startRate,
  withPeakRate,
} from "./scenario.ts";
import { cancelledByGhz, GO_CODE_NAMES, runGhzReport } from "./ghz.ts";
import { runVegeta, type VegetaTarget } from "./vegeta.ts";
import { bucketQuantileBound, requestDeltas, type ServiceMetrics, serviceMetrics } from "./metrics_text.ts";
import type { StackTarget } from "./target.ts";
import {
  type CrossCheck,
  crossCheck,
  type GeneratorCounts,
  type LatencyInput,
  type RowCount,
} from "./crosscheck.ts";
import { type CpuInterval, cpuMeter } from "./cpu.ts";
import { compareRuns, type Comparison } from "./compare.ts";
import { renderLoadReport } from "./report_html.ts";

/** The header / metadata key the services copy into every event (services/kit/pipeline.ts LOAD_RUN_HEADER). */
export const LOAD_RUN_HEADER = "tailwatch-load-run";

export const SERVICES: readonly ServiceName[] = ["catalog", "orders", "payments"];

export interface RunOptions {
  scenario: Scenario;
  target: StackTarget;
  /** Overrides: the constant rate (or a step/ramp schedule's peak), the users (closed), the seconds. */
  rate?: number;
  users?: number;
  durationS?: number;
  warmupS?: number;
  /** Where load-<time>.json and .html go; nothing is written when undefined. */
  resultsDir?: string;
  /** A result to compare with (its JSON). */
  baseline?: LoadResult;
  /** Progress lines (once a second) and the summary; console.log by default. */
  log?: (line: string) => void;
  runId?: string;
  /** Called once the measured run has started (tests freeze a process from here). */
  onMeasuredStart?: (startedAtMs: number) => void;
}

/** One request as the generator saw it. */
interface Rec {
  stream: number;
  call: number;
  startUs: number;
  latencyUs: number;
  /** gRPC code name, or "HTTP <status>". */
  status: string;
  cancelled: boolean;
  cancelledAs: string;
  seq?: number;
}

/** One generator process of a phase: a ghz per gRPC call, vegeta for the REST calls (one per rate piece). */
interface Stream {
  tool: "ghz" | "vegeta";
  /** Rate pieces the stream was paced by (open model); undefined for a closed one. */
  pieces?: RatePiece[];
}

export interface MethodStats {
  service: string;
  method: string;
  protocol: string;
  label: string;
  /** Answered calls (the generator's own cancellations left out). */
  count: number;
  byStatus: Record<string, number>;
  cancelled: number;
  cancelledAs: Record<string, number>;
  achievedRps: number;
  plain: Quantiles;
  /** Measured from each request's intended send time (open model only). */
  corrected?: Quantiles & { sentLate: number; maxSendDelayUs: number };
  spectrum: SpectrumPoint[];
  correctedSpectrum?: SpectrumPoint[];
  /** HdrHistogram's text form of both spectra. */
  spectrumText: string;
  correctedSpectrumText?: string;
  segments: { plain: Segments; corrected?: Segments };
  /** Per second of the run: requests sent (by start), answers and percentiles (by completion). */
  timeline: {
    t: number[];
    sent: number[];
    ok: number[];
    errors: number[];
    p50Us: Array<number | null>;
    p99Us: Array<number | null>;
    p99CorrectedUs: Array<number | null>;
  };
}

export interface ServerMethodStats {
  service: string;
  method: string;
  protocol: string;
  quantiles: Quantiles;
  /** Exact by completion second (from the run's rows). */
  timeline: { t: number[]; count: number[]; p50Us: number[]; p99Us: number[] };
  /** The profiler's 10 s windows at its ticks inside the run (all traffic of the key; latest version). */
  profilerTicks: { t: number[]; count: number[]; p50Us: number[]; p99Us: number[]; p999Us: number[] };
}

export interface LoadResult {
  kind: "tailwatch-load-run";
  version: 1;
  scenario: string;
  description: string;
  runId: string;
  target: string;
  model: "open" | "closed";
  schedule?: Schedule;
  scheduleText: string;
  users?: number;
  durationS: number;
  /** The measured run (warm-up excluded): what the dashboard marks. */
  startedAtMs: number;
  endedAtMs: number;
  warmup: { seconds: number; runId: string; requests: number; excluded: true; note: string };
  setup: { orders: number; runId: string };
  calls: Array<
    { label: string; method: string; protocol: string; weight: number; expect: string; tool: string }
  >;
  host: {
    cores: number;
    loadavgBefore: string;
    stealShare: number;
    /** Cores busy on the machine beyond the stack's processes and the load generator: someone else's. */
    otherBusyCores: number;
    note: string;
  };
  client: {
    total: number;
    ok: number;
    errors: number;
    cancelled: number;
    achievedRps: number;
    methods: MethodStats[];
    /** All directly called methods together, per second. */
    timeline: { t: number[]; sent: number[]; ok: number[]; errors: number[] };
  };
  server: { methods: ServerMethodStats[]; profilerOnce?: unknown };
  crossCheck: CrossCheck;
  cpu: {
    seconds: Record<string, number>;
    perThousandRequests: Record<string, number>;
    cores: Record<string, number>;
    mainThread: Record<string, number>;
    machineBusyCores: number;
  };
  baseline?: Comparison;
  files?: { json: string; html: string };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export function newRunId(scenario: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, "").replace(/\..*/, "");
  const suffix = crypto.getRandomValues(new Uint8Array(2)).reduce(
    (s, b) => s + b.toString(16).padStart(2, "0"),
    "",
  );
  return `${stamp}-${scenario}-${suffix}`.slice(0, 64);
}

/** `bench/results` file stamp: "2026-12-06T22-45-31". */
export function fileStamp(ms: number): string {
  return new Date(ms).toISOString().replaceAll(":", "-").replace(/\..*/, "");
}

/** "/orders.v1.OrderService/CreateOrder": how events and metrics name a method. */
const fullMethod = (method: string) => `/${method}`;

async function scrape(target: StackTarget): Promise<Record<ServiceName, ServiceMetrics>> {
  const entries = await Promise.all(SERVICES.map(async (service) => {
    const response = await fetch(`${target.services[service].http}/metrics`);
    return [service, serviceMetrics(await response.text())] as const;
  }));
  return Object.fromEntries(entries) as Record<ServiceName, ServiceMetrics>;
}

/** Waits until no service has a request in flight (at most `timeoutMs`). */
async function drained(target: StackTarget, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const metrics = await scrape(target);
    if (SERVICES.every((s) => metrics[s].inFlight === 0)) return;
    await sleep(100);
  }
}

/** A smooth weighted round robin of the calls (nginx's): `length` call indices, interleaved by weight. */
export function weightedSequence(weights: number[], length: number): number[] {
  const current = weights.map(() => 0);
  const total = weights.reduce((a, b) => a + b, 0);
  const out: number[] = [];
  for (let i = 0; i < length; i++) {
    let best = 0;
    for (let k = 0; k < weights.length; k++) {
      current[k] += weights[k];
      if (current[k] > current[best]) best = k;
    }
    current[best] -= total;
    out.push(best);
  }
  return out;
}

/** Orders made before a run (REST, 16 at a time) for the after-sales calls, under their own run id. */
export async function createFixtures(
  target: StackTarget,
  count: number,
  runId: string,
): Promise<Fixtures["orders"]> {
  const orders: Fixtures["orders"] = [];
  let next = 0;
  let failure = "";
  const worker = async () => {
    while (next < count && !failure) {
      const i = next++;
      const customerId = `load-${i % 10}`;
      const response = await fetch(`${target.services.orders.http}/v1/orders`, {
        method: "POST",
        headers: { "content-type": "application/json", [LOAD_RUN_HEADER]: runId },
        body: JSON.stringify({
          customerId,
          lines: [{ productId: "treats-tuna-60g", quantity: 1 }],
          cardNumber: "4242424242424242",
        }),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok || !body.order?.orderId) {
        failure = `creating fixture orders: HTTP ${response.status} ${JSON.stringify(body).slice(0, 200)}`;
        return;
      }
      orders.push({ orderId: body.order.orderId, paymentId: body.order.paymentId, customerId });
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, count) }, worker));
  if (failure) throw new Error(failure);
  return orders;
}

interface PhaseSpec {
  calls: Call[];
  model: "open" | "closed";
  schedule?: Schedule;
  users?: number;
  durationS: number;
  runId: string;
}

interface PhaseResult {
  records: Rec[];
  streams: Stream[];
  generatorCpuSeconds: number;
}

/** Runs every call of a phase at once: a ghz per gRPC call, vegeta for the REST ones; collects each request. */
async function drive(
  target: StackTarget,
  spec: PhaseSpec,
  onRecord: (record: Rec) => void,
): Promise<PhaseResult> {
  const records: Rec[] = [];
  const streams: Stream[] = [];
  const push = (record: Rec) => {
    records.push(record);
    onRecord(record);
  };
  let generatorCpuSeconds = 0;
  const tasks: Promise<void>[] = [];

  spec.calls.forEach((call, callIndex) => {
    if (call.protocol !== "grpc") return;
    const streamIndex = streams.length;
    const schedule = spec.model === "open" ? scaleSchedule(spec.schedule!, call.weight) : undefined;
    streams.push({ tool: "ghz", pieces: schedule ? ratePieces(schedule, spec.durationS) : undefined });
    const peak = schedule ? Math.max(...ratePieces(schedule, spec.durationS).map((p) => p.rate)) : 0;
    const concurrency = schedule
      ? Math.min(300, Math.max(10, Math.ceil(peak / 10)))
      : Math.max(1, Math.round(spec.users! * call.weight));
    tasks.push((async () => {
      const report = await runGhzReport({
        call: call.method,
        target: target.services[call.service].grpc,
        data: call.data,
        concurrency,
        connections: Math.max(1, Math.ceil(concurrency / 100)),
        duration: `${spec.durationS}s`,
        metadata: { [LOAD_RUN_HEADER]: spec.runId },
        extraArgs: schedule ? ghzScheduleArgs(schedule, spec.durationS) : [],
      });
      generatorCpuSeconds += report.cpuSeconds;
      for (const d of report.details) {
        const cancelled = cancelledByGhz(d);
        const status = GO_CODE_NAMES[d.status] ?? (d.status ? d.status.toUpperCase() : "UNKNOWN");
        push({
          stream: streamIndex,
          call: callIndex,
          startUs: d.endUs - d.latencyUs,
          latencyUs: d.latencyUs,
          status,
          cancelled,
          cancelledAs: cancelled ? `${status}: ${d.error.replace(/^rpc error: code = \w+ desc = /, "")}` : "",
        });
      }
    })());
  });

  const httpCalls = spec.calls.map((call, index) => ({ call, index })).filter((c) =>
    c.call.protocol === "http"
  );
  if (httpCalls.length > 0) {
    const totalWeight = httpCalls.reduce((sum, c) => sum + c.call.weight, 0);
    const targetsFor = (
      count: number,
      offset: number,
    ): { targets: VegetaTarget[]; callOf: Map<string, number> } => {
      const length = Math.max(1, Math.min(200_000, Math.ceil(count)));
      const sequence = weightedSequence(httpCalls.map((c) => c.call.weight), offset + length).slice(offset);
      const used = httpCalls.map(() => 0);
      // Each call's k-th occurrence over the whole phase takes its k-th request (cycled).
      const before = weightedSequence(httpCalls.map((c) => c.call.weight), offset);
      for (const k of before) used[k]++;
      const callOf = new Map<string, number>();
      const targets = sequence.map((k) => {
        const { call, index } = httpCalls[k];
        const requests = (call as Extract<Call, { protocol: "http" }>).requests;
        const request = requests[used[k]++ % requests.length];
        const url = `${target.services[call.service].http}${request.path}`;
        callOf.set(`${request.method} ${url}`, index);
        return { method: request.method, url, body: request.body };
      });
      return { targets, callOf };
    };
    const run = async (rate: number, durationS: number, offset: number, pieces?: RatePiece[]) => {
      const streamIndex = streams.length;
      streams.push({ tool: "vegeta", pieces });
      const { targets, callOf } = targetsFor(rate > 0 ? rate * durationS : 10_000, offset);
      const report = await runVegeta({
        targets,
        rate,
        durationS,
        workers: rate > 0 ? 10 : spec.users!,
        maxWorkers: rate > 0 ? 1000 : spec.users!,
        headers: { [LOAD_RUN_HEADER]: spec.runId },
      }, (r) => {
        const noAnswer = r.code === 0;
        push({
          stream: streamIndex,
          call: callOf.get(`${r.method} ${r.url}`) ?? httpCalls[0].index,
          startUs: r.startUs,
          latencyUs: r.latencyUs,
          status: `HTTP ${r.code}`,
          cancelled: noAnswer,
          cancelledAs: noAnswer ? `no answer: ${r.error}` : "",
          seq: r.seq,
        });
      });
      generatorCpuSeconds += report.cpuSeconds;
    };
    if (spec.model === "closed") {
      tasks.push(run(0, spec.durationS, 0));
    } else {
      // vegeta paces one constant rate: a step or ramp schedule runs as one attack per rate piece.
      const schedule = scaleSchedule(spec.schedule!, totalWeight);
      const pieces = ratePieces(schedule, spec.durationS);
      tasks.push((async () => {
        let offset = 0;
        for (let i = 0; i < pieces.length; i++) {
          const seconds = Math.min(spec.durationS, pieces[i + 1]?.at ?? spec.durationS) - pieces[i].at;
          if (seconds <= 0) continue;
          await run(pieces[i].rate, seconds, offset, [{ at: 0, rate: pieces[i].rate }]);
          offset += Math.round(pieces[i].rate * seconds);
        }
      })());
    }
  }
  const settled = await Promise.allSettled(tasks);
  const failed = settled.find((s) => s.status === "rejected") as PromiseRejectedResult | undefined;
  if (failed) throw failed.reason;
  return { records, streams, generatorCpuSeconds };
}

function timelineOf(
  records: Rec[],
  corrected: Float64Array | undefined,
  indices: number[],
  startUs: number,
  seconds: number,
) {
  const n = Math.ceil(seconds) + 1;
  const t = Array.from({ length: n }, (_, i) => i);
  const sent = new Array(n).fill(0);
  const ok = new Array(n).fill(0);
  const errors = new Array(n).fill(0);
  const latencies: number[][] = Array.from({ length: n }, () => []);
  const correctedLatencies: number[][] = Array.from({ length: n }, () => []);
  for (const i of indices) {
    const r = records[i];
    const startSecond = Math.floor((r.startUs - startUs) / 1e6);
    if (startSecond >= 0 && startSecond < n) sent[startSecond]++;
    if (r.cancelled) continue;
    const endSecond = Math.floor((r.startUs + r.latencyUs - startUs) / 1e6);
    if (endSecond < 0 || endSecond >= n) continue;
    if (r.status === "OK" || r.status === "HTTP 200") ok[endSecond]++;
    else errors[endSecond]++;
    latencies[endSecond].push(r.latencyUs);
    if (corrected) correctedLatencies[endSecond].push(corrected[i]);
  }
  const q = (values: number[], p: number) =>
    values.length ? quantiles(values)[p === 0.5 ? "p50" : "p99"] : null;
  return {
    t,
    sent,
    ok,
    errors,
    p50Us: latencies.map((v) => q(v, 0.5)),
    p99Us: latencies.map((v) => q(v, 0.99)),
    p99CorrectedUs: correctedLatencies.map((v) => (corrected ? q(v, 0.99) : null)),
  };
}

function quantilesFromRow(row: { n: string; q: number[] | string[]; max: string; mean: number }): Quantiles {
  const q = row.q.map(Number);
  return {
    count: Number(row.n),
    p50: q[0],
    p90: q[1],
    p99: q[2],
    p999: q[3],
    p9999: q[4],
    max: Number(row.max),
    mean: Number(row.mean),
  };
}

/** The end second of a row, as the profiler and migration 0009 compute it. */
const END_SECOND = sql`intDiv(ts_ms, 1000) + intDiv(ts_ms % 1000 * 1000 + duration_us, 1000000)`;

export async function runLoad(options: RunOptions): Promise<LoadResult> {
  const { scenario, target } = options;
  const log = options.log ?? ((line: string) => console.log(line));
  const durationS = options.durationS ?? scenario.durationS;
  const warmupS = options.warmupS ?? scenario.warmupS;
  const schedule = scenario.model === "open"
    ? (options.rate !== undefined ? withPeakRate(scenario.schedule!, options.rate) : scenario.schedule!)
    : undefined;
  const users = scenario.model === "closed" ? (options.users ?? options.rate ?? scenario.users!) : undefined;
  const runId = options.runId ?? newRunId(scenario.name);
  const warmupRunId = `${runId}-warmup`.slice(0, 64);
  const setupRunId = `${runId}-setup`.slice(0, 64);
  const clickhouse = createClickHouse(target.clickhouse);
  const table = ident(target.clickhouse.database, "request_events");

  // The stack must be there.
  for (const service of SERVICES) {
    const response = await fetch(`${target.services[service].http}/readyz`).catch((error) => error as Error);
    if (response instanceof Error || !response.ok) {
      if (!(response instanceof Error)) await response.body?.cancel();
      throw new Error(
        `${service} is not ready at ${target.services[service].http} (is the stack up? ./dev up)`,
      );
    }
  }
  if (!(await clickhouse.ping())) throw new Error(`ClickHouse does not answer at ${target.clickhouse.url}`);

  const phaseHits = (seconds: number, phaseSchedule: Schedule | undefined) => (weight: number) =>
    phaseSchedule ? Math.round(weight * hitsInDuration(ratePieces(phaseSchedule, seconds), seconds)) : 0;
  const warmupSchedule: Schedule | undefined = schedule
    ? { kind: "constant", rate: startRate(schedule) }
    : undefined;
  const warmupHits = phaseHits(warmupS, warmupSchedule);
  const runHits = phaseHits(durationS, schedule);

  // Fixtures (orders to read, cancel and refund), under a run id of their own.
  const fixtureCount = scenario.fixtureOrders
    ? (warmupS > 0 ? scenario.fixtureOrders(warmupHits) : 0) + scenario.fixtureOrders(runHits)
    : 0;
  let fixtureOrders: Fixtures["orders"] = [];
  if (fixtureCount > 0) {
    log(`setup: creating ${fixtureCount} orders for the after-sales calls (run id ${setupRunId}) ...`);
    fixtureOrders = await createFixtures(target, fixtureCount, setupRunId);
  }
  const warmupOrders = warmupS > 0 && scenario.fixtureOrders ? scenario.fixtureOrders(warmupHits) : 0;
  const warmupFixtures: Fixtures = { orders: fixtureOrders.slice(0, warmupOrders) };
  const runFixtures: Fixtures = { orders: fixtureOrders.slice(warmupOrders) };

  const runCalls = scenario.calls({ fixtures: runFixtures, hits: runHits, phase: "run" });
  const what = schedule ? describeSchedule(schedule) : `${users} users (closed model)`;
  log(`load run ${runId}: ${scenario.name}, ${what}, ${durationS} s against the ${target.label}`);

  // Warm-up at the starting rate (JIT, connections, caches), under its own run id: excluded exactly.
  let warmupRequests = 0;
  if (warmupS > 0) {
    log(
      `warm-up: ${warmupS} s at ${
        warmupSchedule ? `${warmupSchedule.rate} rps` : `${users} users`
      } (excluded) ...`,
    );
    const warmup = await drive(target, {
      calls: scenario.calls({ fixtures: warmupFixtures, hits: warmupHits, phase: "warmup" }),
      model: scenario.model,
      schedule: warmupSchedule,
      users,
      durationS: warmupS,
      runId: warmupRunId,
    }, () => {});
    warmupRequests = warmup.records.length;
  }
  await drained(target);
  await sleep(1000);

  // The measured run.
  const loadavgBefore = await Deno.readTextFile("/proc/loadavg").then((t) => t.trim()).catch(() => "");
  const metricsBefore = await scrape(target);
  const scrapeBeforeMs = Date.now();
  const pids = target.processes();
  const cpu = cpuMeter(pids);
  const startedAtMs = Date.now();
  const startUs = startedAtMs * 1000;
  options.onMeasuredStart?.(startedAtMs);
  const directKeys = new Set(runCalls.map((c) => `${fullMethod(c.method)}|${c.protocol}`));
  const directServices = [...new Set(runCalls.map((c) => c.service))];
  const vegetaSoFar = { count: 0, ok: 0, errors: 0, latencies: [] as number[] };
  let previous = metricsBefore;
  const ticker = setInterval(async () => {
    try {
      const now = await scrape(target);
      const elapsed = Math.round((Date.now() - startedAtMs) / 1000);
      let served = 0, lastSecond = 0, ok = 0;
      for (const service of directServices) {
        const deltas = requestDeltas(metricsBefore[service], now[service]);
        const recent = requestDeltas(previous[service], now[service]);
        for (const [key, n] of Object.entries(deltas)) {
          const [method, protocol, code] = key.split("|");
          if (!directKeys.has(`${method}|${protocol}`)) continue;
          served += n;
          if (code === "OK") ok += n;
        }
        for (const [key, n] of Object.entries(recent)) {
          const [method, protocol] = key.split("|");
          if (directKeys.has(`${method}|${protocol}`)) lastSecond += n;
        }
      }
      const p99 = Math.max(
        ...directServices.map((service) =>
          bucketQuantileBound(metricsBefore[service], now[service], [...directKeys], 0.99)
        ).filter(Number.isFinite),
      );
      previous = now;
      let line =
        `  ${String(elapsed).padStart(4)}/${durationS} s  served ${lastSecond}/s  OK ${ok} of ${served}` +
        `  errors ${served - ok}  p99 ≤ ${
          Number.isFinite(p99) ? `${(p99 * 1000).toFixed(1)} ms` : "-"
        } (services' /metrics)`;
      if (vegetaSoFar.count > 0) {
        const sorted = vegetaSoFar.latencies.slice(-20000).sort((a, b) => a - b);
        const p = sorted[Math.floor(sorted.length * 0.99)] ?? NaN;
        line += ` | vegeta sent ${vegetaSoFar.count}, OK ${vegetaSoFar.ok}, p99 ${
          (p / 1000).toFixed(1)
        } ms (recent)`;
      }
      log(line);
    } catch { /* a scrape that failed: no line this second */ }
  }, 1000);
  let phase: PhaseResult;
  try {
    phase = await drive(target, {
      calls: runCalls,
      model: scenario.model,
      schedule,
      users,
      durationS,
      runId,
    }, (r) => {
      if (r.seq === undefined) return;
      vegetaSoFar.count++;
      if (r.status === "HTTP 200") vegetaSoFar.ok++;
      else vegetaSoFar.errors++;
      vegetaSoFar.latencies.push(r.latencyUs);
    });
  } finally {
    clearInterval(ticker);
  }
  const endedAtMs = Date.now();
  await drained(target);
  const cpuInterval: CpuInterval = cpu();

  // Settle: every event published (buffers empty) and in ClickHouse.
  log("waiting for the events to reach ClickHouse ...");
  const settleStart = Date.now();
  const settleTimeoutMs = target.settleTimeoutMs ?? 60_000;
  let metricsAfter = await scrape(target);
  let scrapeAfterMs = Date.now();
  const windowFrom = scrapeBeforeMs - 1;
  const windowRows = async (until: number) =>
    Number(
      (await clickhouse.query<{ n: string }>(
        sql`SELECT count() AS n FROM ${table} WHERE ts >= toDateTime(${Math.floor(windowFrom / 1000)})
            AND ts_ms >= ${windowFrom} AND ts_ms <= ${until}`,
      ))[0]?.n ?? 0,
    );
  let lastRows = -1;
  for (;;) {
    metricsAfter = await scrape(target);
    scrapeAfterMs = Date.now();
    const published = SERVICES.reduce(
      (sum, s) => sum + metricsAfter[s].eventsPublished - metricsBefore[s].eventsPublished,
      0,
    );
    const buffered = SERVICES.reduce((sum, s) => sum + metricsAfter[s].eventsBuffered, 0);
    const rows = await windowRows(scrapeAfterMs);
    if (buffered === 0 && rows >= published && rows === lastRows) break;
    lastRows = rows;
    if (Date.now() - settleStart > settleTimeoutMs) {
      log(`  gave up waiting after ${settleTimeoutMs} ms: ${rows} rows for ${published} published events`);
      break;
    }
    await sleep(500);
  }
  const settledAfterMs = Date.now() - endedAtMs;

  // The run's rows: by its id when ingest stores it, else by the span between the two scrapes.
  const byRunId = Number(
    (await clickhouse.query<{ n: string }>(
      sql`SELECT count() AS n FROM ${table} WHERE ts >= toDateTime(${Math.floor(windowFrom / 1000) - 60})
          AND load_run_id = ${runId}`,
    ))[0]?.n ?? 0,
  );
  const selection: "run-id" | "time-span" = byRunId > 0 ? "run-id" : "time-span";
  const inWindow = sql`ts >= toDateTime(${
    Math.floor(windowFrom / 1000)
  }) AND ts_ms >= ${windowFrom} AND ts_ms <= ${scrapeAfterMs}`;
  const runWhere = selection === "run-id"
    ? sql`ts >= toDateTime(${Math.floor(windowFrom / 1000) - 60}) AND load_run_id = ${runId}`
    : inWindow;
  const countRows = async (where: Sql) =>
    (await clickhouse.query<
      {
        service: string;
        method: string;
        protocol: string;
        code: number;
        http: number;
        n: string;
        d: string;
        root: string;
      }
    >(
      sql`SELECT service, method, protocol, grpc_code AS code, http_status AS http, count() AS n,
                 uniqExact(event_id) AS d, countIf(parent_span_id = '') AS root
          FROM ${table} WHERE ${where} GROUP BY service, method, protocol, code, http`,
    )).map((r): RowCount => ({
      service: r.service,
      method: r.method,
      protocol: r.protocol,
      grpcCode: Number(r.code),
      httpStatus: Number(r.http),
      rows: Number(r.n),
      distinct: Number(r.d),
      root: Number(r.root),
    }));
  const rows = await countRows(runWhere);
  const otherRows = selection === "run-id"
    ? await countRows(sql`${inWindow} AND load_run_id != ${runId}`)
    : [];

  // Client side, per directly called method.
  const records = phase.records;
  const correctedAll = new Float64Array(records.length);
  const corrections = phase.streams.map((stream, streamIndex) => {
    const indices: number[] = [];
    records.forEach((r, i) => r.stream === streamIndex && indices.push(i));
    if (!stream.pieces) return { indices, correction: undefined };
    const correction = correctForCoordinatedOmission(
      indices.map((i) => ({
        startUs: records[i].startUs,
        endUs: records[i].startUs + records[i].latencyUs,
        seq: records[i].seq,
      })),
      stream.pieces,
    );
    indices.forEach((recordIndex, k) => correctedAll[recordIndex] = correction.correctedUs[k]);
    return { indices, correction };
  });
  const open = scenario.model === "open";
  const segmentS = segmentSeconds(durationS);
  const byCallKey = new Map<string, number[]>();
  records.forEach((r, i) => {
    const call = runCalls[r.call];
    const key = `${call.service}|${fullMethod(call.method)}|${call.protocol}`;
    let list = byCallKey.get(key);
    if (!list) byCallKey.set(key, list = []);
    list.push(i);
  });
  const methods: MethodStats[] = [];
  const generator: GeneratorCounts[] = [];
  for (const [key, indices] of byCallKey) {
    const [service, method, protocol] = key.split("|");
    const labels = [...new Set(indices.map((i) => runCalls[records[i].call].label))];
    const answered = indices.filter((i) => !records[i].cancelled);
    const byStatus: Record<string, number> = {};
    const cancelledAs: Record<string, number> = {};
    for (const i of indices) {
      const r = records[i];
      if (r.cancelled) cancelledAs[r.cancelledAs] = (cancelledAs[r.cancelledAs] ?? 0) + 1;
      else byStatus[r.status] = (byStatus[r.status] ?? 0) + 1;
    }
    const plainValues = answered.map((i) => records[i].latencyUs);
    const correctedValues = answered.map((i) => correctedAll[i]);
    let sentLate = 0, maxSendDelayUs = 0;
    for (const c of corrections) {
      if (c.correction && c.indices.some((i) => indices.includes(i))) {
        sentLate += c.correction.sentLate;
        maxSendDelayUs = Math.max(maxSendDelayUs, c.correction.maxSendDelayUs);
      }
    }
    const plain = quantiles(plainValues);
    const plainSpectrum = spectrum(plainValues);
    const corrected = open ? { ...quantiles(correctedValues), sentLate, maxSendDelayUs } : undefined;
    const correctedSpectrum = open ? spectrum(correctedValues) : undefined;
    const cancelled = indices.length - answered.length;
    methods.push({
      service,
      method,
      protocol,
      label: labels.join("; "),
      count: answered.length,
      byStatus,
      cancelled,
      cancelledAs,
      achievedRps: indices.length / durationS,
      plain,
      corrected,
      spectrum: plainSpectrum,
      correctedSpectrum,
      spectrumText: spectrumText(plainSpectrum),
      correctedSpectrumText: correctedSpectrum ? spectrumText(correctedSpectrum) : undefined,
      segments: {
        plain: segmentSpread(
          answered.map((i) => ({ startUs: records[i].startUs, latencyUs: records[i].latencyUs })),
          startUs,
          segmentS,
        ),
        corrected: open
          ? segmentSpread(
            answered.map((i) => ({ startUs: records[i].startUs, latencyUs: correctedAll[i] })),
            startUs,
            segmentS,
          )
          : undefined,
      },
      timeline: timelineOf(records, open ? correctedAll : undefined, indices, startUs, durationS),
    });
    generator.push({
      service,
      method,
      protocol: protocol as "grpc" | "http",
      byStatus,
      cancelled,
      cancelledAs,
    });
  }
  methods.sort((a, b) => b.count - a.count);
  const allIndices = records.map((_, i) => i);
  const overall = timelineOf(records, undefined, allIndices, startUs, durationS);

  // Server side: exact quantiles of the run's rows, per second by completion, and the profiler's ticks.
  const serverRows = await clickhouse.query<
    { service: string; method: string; protocol: string; n: string; q: number[]; max: string; mean: number }
  >(
    sql`SELECT service, method, protocol, count() AS n,
               quantilesExact(0.5, 0.9, 0.99, 0.999, 0.9999)(duration_us) AS q,
               max(duration_us) AS max, avg(duration_us) AS mean
        FROM ${table} WHERE ${runWhere} GROUP BY service, method, protocol ORDER BY service, method, protocol`,
  );
  const perSecond = await clickhouse.query<
    { service: string; method: string; protocol: string; s: string; n: string; q: number[] }
  >(
    sql`SELECT service, method, protocol, ${END_SECOND} AS s, count() AS n,
               quantilesExact(0.5, 0.99)(duration_us) AS q
        FROM ${table} WHERE ${runWhere} GROUP BY service, method, protocol, s ORDER BY s`,
  );
  const services = [...new Set(serverRows.map((r) => r.service))];
  const ticks = services.length === 0 ? [] : await clickhouse.query<
    { t: string; service: string; method: string; count: string; p50: string; p99: string; p999: string }
  >(
    sql`SELECT toUnixTimestamp(ts) AS t, service, method, argMax(count, version) AS count,
               argMax(p50_us, version) AS p50, argMax(p99_us, version) AS p99, argMax(p999_us, version) AS p999
        FROM ${ident(target.clickhouse.database, "latency_percentiles")}
        WHERE ts >= toDateTime(${Math.floor(startedAtMs / 1000) + 10}) AND ts <= toDateTime(${
      Math.ceil(endedAtMs / 1000) + 1
    })
          AND window_s = 10 AND has(${services}, service)
        GROUP BY ts, window_s, service, method ORDER BY t`,
  ).catch(() => []);
  const startSecond = startedAtMs / 1000;
  const serverMethods: ServerMethodStats[] = serverRows.map((row) => {
    const mine = perSecond.filter((r) =>
      r.service === row.service && r.method === row.method && r.protocol === row.protocol
    );
    const profilerMine = ticks.filter((r) => r.service === row.service && r.method === row.method);
    return {
      service: row.service,
      method: row.method,
      protocol: row.protocol,
      quantiles: quantilesFromRow(row),
      timeline: {
        t: mine.map((r) => Number(r.s) + 1 - startSecond),
        count: mine.map((r) => Number(r.n)),
        p50Us: mine.map((r) => Number(r.q[0])),
        p99Us: mine.map((r) => Number(r.q[1])),
      },
      profilerTicks: {
        t: profilerMine.map((r) => Number(r.t) - startSecond),
        count: profilerMine.map((r) => Number(r.count)),
        p50Us: profilerMine.map((r) => Number(r.p50)),
        p99Us: profilerMine.map((r) => Number(r.p99)),
        p999Us: profilerMine.map((r) => Number(r.p999)),
      },
    };
  });

  // The profiler's own computation over the run's span (all traffic of each key in it): `--once`.
  let profilerOnce:
    | { now: number; windowS: number; rows: Array<Record<string, number | string>> }
    | undefined;
  if (target.profilerBinary) {
    const now = Math.floor(endedAtMs / 1000) + 1;
    const windowS = now - Math.floor(startedAtMs / 1000);
    const output = await new Deno.Command(target.profilerBinary, {
      args: [
        "--clickhouse-url",
        target.clickhouse.url,
        "--user",
        target.clickhouse.username,
        "--password",
        target.clickhouse.password,
        "--database",
        target.clickhouse.database,
        "--windows",
        String(windowS),
        "--once",
        "--json",
        "--now",
        String(now),
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output().catch(() => undefined);
    if (output?.success) {
      try {
        const parsed = JSON.parse(new TextDecoder().decode(output.stdout));
        profilerOnce = { now, windowS, rows: parsed.rows ?? [] };
      } catch { /* not JSON: left out */ }
    }
  }

  const latency: LatencyInput[] = methods.map((m) => {
    const server = serverMethods.find((s) =>
      s.service === m.service && s.method === m.method && s.protocol === m.protocol
    );
    const once = profilerOnce?.rows.find((r) => r.service === m.service && r.method === m.method);
    return {
      service: m.service,
      method: m.method,
      protocol: m.protocol,
      client: m.plain,
      server: server?.quantiles ?? quantiles([]),
      profiler: once
        ? {
          count: Number(once.count),
          p50: Number(once.p50_us),
          p99: Number(once.p99_us),
          p999: Number(once.p999_us),
          max: Number(once.max_us),
        }
        : undefined,
    };
  });

  const metricsDelta = SERVICES.map((service) => ({
    service,
    requests: requestDeltas(metricsBefore[service], metricsAfter[service]),
    eventsPublished: metricsAfter[service].eventsPublished - metricsBefore[service].eventsPublished,
    eventsDropped: metricsAfter[service].eventsDropped - metricsBefore[service].eventsDropped,
    eventsDisabled: metricsAfter[service].eventsDisabled - metricsBefore[service].eventsDisabled,
  }));
  const check = crossCheck({
    generator,
    metrics: metricsDelta,
    rows,
    otherRows,
    latency,
    selection,
    settledAfterMs,
  });

  // CPU per process over the measured run, and per 1000 requests sent.
  const total = records.length;
  const cpuSeconds: Record<string, number> = {};
  const cores: Record<string, number> = {};
  const mainThread: Record<string, number> = {};
  for (const [name, p] of Object.entries(cpuInterval.processes)) {
    cpuSeconds[name] = p.cpuSeconds;
    cores[name] = p.cores;
    mainThread[name] = p.mainThread;
  }
  cpuSeconds["load generator"] = phase.generatorCpuSeconds;
  cores["load generator"] = phase.generatorCpuSeconds / cpuInterval.wallSeconds;
  const perThousandRequests = Object.fromEntries(
    Object.entries(cpuSeconds).map(([name, s]) => [name, total > 0 ? s / total * 1000 : NaN]),
  );
  const explained = Object.values(cores).reduce((a, b) => a + b, 0);
  const otherBusyCores = Math.max(0, cpuInterval.machineBusyCores - explained);

  const okCount = methods.reduce(
    (sum, m) => sum + (m.byStatus["OK"] ?? 0) + (m.byStatus["HTTP 200"] ?? 0),
    0,
  );
  const cancelledCount = methods.reduce((sum, m) => sum + m.cancelled, 0);
  const result: LoadResult = {
    kind: "tailwatch-load-run",
    version: 1,
    scenario: scenario.name,
    description: scenario.description,
    runId,
    target: target.label,
    model: scenario.model,
    schedule,
    scheduleText: what,
    users,
    durationS,
    startedAtMs,
    endedAtMs,
    warmup: {
      seconds: warmupS,
      runId: warmupRunId,
      requests: warmupRequests,
      excluded: true,
      note: warmupS > 0
        ? `${warmupS} s at the starting rate under run id ${warmupRunId}, before the measured run; not in any figure`
        : "no warm-up",
    },
    setup: { orders: fixtureOrders.length, runId: setupRunId },
    calls: runCalls.map((c) => ({
      label: c.label,
      method: c.method,
      protocol: c.protocol,
      weight: c.weight,
      expect: c.expect,
      tool: c.protocol === "grpc" ? "ghz" : "vegeta",
    })),
    host: {
      cores: navigator.hardwareConcurrency,
      loadavgBefore,
      stealShare: cpuInterval.stealShare,
      otherBusyCores,
      note: otherBusyCores > 0.2
        ? `the machine was shared: ${
          otherBusyCores.toFixed(2)
        } cores busy with other processes during the run`
        : "nothing else used a noticeable share of the machine",
    },
    client: {
      total,
      ok: okCount,
      errors: total - okCount - cancelledCount,
      cancelled: cancelledCount,
      achievedRps: total / durationS,
      methods,
      timeline: { t: overall.t, sent: overall.sent, ok: overall.ok, errors: overall.errors },
    },
    server: { methods: serverMethods, profilerOnce },
    crossCheck: check,
    cpu: {
      seconds: cpuSeconds,
      perThousandRequests,
      cores,
      mainThread,
      machineBusyCores: cpuInterval.machineBusyCores,
    },
  };
  if (options.baseline) result.baseline = compareRuns(options.baseline, result);
  if (options.resultsDir) {
    await Deno.mkdir(options.resultsDir, { recursive: true });
    const base = `${options.resultsDir}/load-${fileStamp(startedAtMs)}`;
    result.files = { json: `${base}.json`, html: `${base}.html` };
    await Deno.writeTextFile(`${base}.json`, JSON.stringify(result, null, 1) + "\n");
    await Deno.writeTextFile(`${base}.html`, renderLoadReport(result, options.baseline));
  }
  return result;
}
