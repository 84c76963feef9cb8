/**
 * `./dev capacity [METHOD]`: the highest constant rate through a method (orders.CreateOrder by default) that
 * keeps p99 under 10 ms and errors under 0.1 % for 30 s, found by stepping up (500, 1000, 1500, ...) until a
 * step fails and then bisecting between the last pass and the first failure. The p99 judged is the one
 * corrected for coordinated omission (measured from each request's intended send time), so a generator that
 * falls behind cannot make a rate look good; the plain p99 is reported next to it. At the limit it names the
 * process that was the bottleneck, from its CPU in /proc. Then a second search, on errors alone: the highest rate
 * at which every request is OK and the generator sends what it is asked, whatever the latency (stepping up from
 * the highest rate the first search saw all OK, then bisecting), so that throughput is measured and not only
 * the rate the tail allows.
 */
import { cancelledByGhz, runGhzReport } from "./ghz.ts";
import { correctForCoordinatedOmission, quantiles } from "./latency.ts";
import { bottleneck, type CpuInterval, cpuMeter } from "./cpu.ts";
import type { StackTarget } from "./target.ts";
import type { CallContext, GrpcCall, ServiceName } from "./scenario.ts";
import { browseAndBuy, grpcStoreMix } from "./scenarios/store_calls.ts";
import { createFixtures, LOAD_RUN_HEADER, newRunId, SERVICES } from "./run.ts";
import { serviceMetrics } from "./metrics_text.ts";

export const DEFAULT_CAPACITY_METHOD = "orders.v1.OrderService/CreateOrder";

/** A probe whose generator sent less than this share of the asked rate did not test that rate. */
const MIN_SENT_SHARE = 0.97;

export interface CapacityOptions {
  target: StackTarget;
  /** Full method ("orders.v1.OrderService/CreateOrder") or its last part ("GetProduct"). */
  method?: string;
  /** Seconds each probe runs (30; a quick run 5). */
  probeSeconds?: number;
  sloP99Ms?: number;
  maxErrorRate?: number;
  startRate?: number;
  stepRate?: number;
  maxRate?: number;
  /** Bisection stops when the last pass and the first failure are this close (rps). */
  resolution?: number;
  /** The same for the search on errors alone (250: its probes run above the latency limit, each costs a probe). */
  allOkResolution?: number;
  log?: (line: string) => void;
}

export interface Probe {
  rate: number;
  achievedRps: number;
  count: number;
  ok: number;
  errorRate: number;
  plainP99Ms: number;
  correctedP99Ms: number;
  plainP50Ms: number;
  pass: boolean;
  reason: string;
  cores: Record<string, number>;
  mainThread: Record<string, number>;
  machineBusyCores: number;
  /** Cores busy beyond the stack's processes and ghz: other work on the machine (a shared host). */
  otherBusyCores: number;
  /** CPU seconds per 1000 requests, per process. */
  cpuPer1k: Record<string, number>;
  bottleneck: { process: string; why: string };
  stealShare: number;
}

export interface CapacityResult {
  method: string;
  service: ServiceName;
  slo: { p99Ms: number; maxErrorRate: number; probeSeconds: number; judgedOn: "corrected p99" };
  /** The highest rate that kept the SLO (0 when none did); at least `maxRate` when every step passed. */
  rate: number;
  reachedMax: boolean;
  /** The p99s at that rate. */
  correctedP99Ms: number;
  plainP99Ms: number;
  /** The highest rate probed with every request OK and sent at the asked rate, whatever its latency. */
  allOkRate: number;
  /** Every step up to `maxRate` had every request OK: `allOkRate` is a lower bound. */
  allOkReachedMax: boolean;
  /** What stopped the search on errors: the lowest rate above `allOkRate` that failed it, and why. */
  allOkLimit?: { atRate: number; why: string; bottleneck: { process: string; why: string } };
  /** What limited the rate: at the first failing probe above the capacity (or the last probe). */
  bottleneck: { process: string; why: string; atRate: number };
  /** CPU per 1000 requests per process at the capacity rate. */
  cpuPer1kAtCapacity: Record<string, number>;
  resolution: number;
  probes: Probe[];
  runIdPrefix: string;
}

/**
 * The call for `method` with bodies that succeed (capacity counts errors against the SLO, so none fail on
 * purpose: every CreateOrder with a good card, every GetProduct a known product), orders made first when the
 * method needs some (GetOrder, CancelOrder, Refund).
 */
async function callFor(target: StackTarget, method: string, runId: string): Promise<GrpcCall> {
  const wanted = (m: string) => m === method || m.endsWith(`/${method}`) || m.endsWith(`.${method}`);
  const candidates = (orders: CallContext["fixtures"]["orders"]) => {
    const context: CallContext = { fixtures: { orders }, hits: () => 250, phase: "run" };
    return [...browseAndBuy(context), ...grpcStoreMix(context)] as GrpcCall[];
  };
  const found = candidates([{ orderId: "x", paymentId: "y", customerId: "z" }]).find((c) => wanted(c.method));
  if (!found) {
    throw new Error(
      `no capacity body for ${method}; one of: ${
        [...new Set(candidates([]).map((c) => c.method))].join(", ")
      }`,
    );
  }
  if (!/\/(GetOrder|CancelOrder|Refund)$/.test(found.method)) return found;
  const orders = await createFixtures(target, 500, `${runId}-setup`);
  return candidates(orders).find((c) => c.method === found.method)!;
}

async function drained(target: StackTarget): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const inFlight = await Promise.all(
      SERVICES.map(async (s) =>
        serviceMetrics(await (await fetch(`${target.services[s].http}/metrics`)).text()).inFlight
      ),
    );
    if (inFlight.every((n) => n === 0)) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * The search itself: step up from `startRate` by `stepRate` until a rate fails (or `maxRate` passes), then bisect
 * between the last pass and the first failure (to multiples of 10) until they are `resolution` apart. Returns
 * the highest rate that passed (0 when none did).
 */
export async function searchRates(
  passes: (rate: number) => Promise<boolean>,
  options: {
    startRate: number;
    stepRate: number;
    maxRate: number;
    resolution: number;
    /** A rate below `startRate` known to pass already (bisection starts from it); 0 by default. */
    knownPass?: number;
  },
): Promise<{ rate: number; reachedMax: boolean }> {
  let lo = options.knownPass ?? 0;
  let hi = 0;
  for (let rate = options.startRate; rate <= options.maxRate; rate += options.stepRate) {
    if (await passes(rate)) lo = rate;
    else {
      hi = rate;
      break;
    }
  }
  if (hi === 0) return { rate: lo, reachedMax: true };
  while (hi - lo > options.resolution) {
    const mid = Math.round((lo + hi) / 2 / 10) * 10;
    if (mid <= lo || mid >= hi) break;
    if (await passes(mid)) lo = mid;
    else hi = mid;
  }
  return { rate: lo, reachedMax: false };
}

export async function searchCapacity(options: CapacityOptions): Promise<CapacityResult> {
  const target = options.target;
  const log = options.log ?? ((line: string) => console.log(line));
  const probeSeconds = options.probeSeconds ?? 30;
  const sloP99Ms = options.sloP99Ms ?? 10;
  const maxErrorRate = options.maxErrorRate ?? 0.001;
  const startRate = options.startRate ?? 500;
  const stepRate = options.stepRate ?? 500;
  const maxRate = options.maxRate ?? 6000;
  const resolution = options.resolution ?? 50;
  const allOkResolution = options.allOkResolution ?? 250;
  const runIdPrefix = newRunId("capacity");
  const call = await callFor(target, options.method ?? DEFAULT_CAPACITY_METHOD, runIdPrefix);
  const address = target.services[call.service].grpc;
  const ghzRun = (rate: number, total: number, runId: string) => ({
    call: call.method,
    target: address,
    data: call.data,
    rps: rate,
    total,
    concurrency: Math.min(300, Math.max(20, Math.ceil(rate / 10))),
    connections: 1,
    timeout: "5s",
    metadata: { [LOAD_RUN_HEADER]: runId },
  });

  log(
    `capacity of ${call.method}: p99 (corrected) < ${sloP99Ms} ms and errors < ${
      maxErrorRate * 100
    } % for ${probeSeconds} s`,
  );
  log(`  warm-up: 5 s at ${startRate} rps (excluded)`);
  await runGhzReport(ghzRun(startRate, startRate * 5, `${runIdPrefix}-warmup`));
  await drained(target);

  const probes: Probe[] = [];
  const probe = async (rate: number): Promise<Probe> => {
    await drained(target);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const meter = cpuMeter(target.processes());
    const report = await runGhzReport(
      ghzRun(rate, rate * probeSeconds, `${runIdPrefix}-r${rate}`.slice(0, 64)),
    );
    const interval: CpuInterval = meter();
    interval.processes["ghz"] = {
      cpuSeconds: report.cpuSeconds,
      cores: report.cpuSeconds / interval.wallSeconds,
      mainThread: NaN,
    };
    const answered = report.details.filter((d) => !cancelledByGhz(d));
    const ok = answered.filter((d) => d.status === "OK").length;
    const plain = quantiles(answered.map((d) => d.latencyUs));
    const correction = correctForCoordinatedOmission(
      report.details.map((d) => ({ startUs: d.endUs - d.latencyUs, endUs: d.endUs })),
      [{ at: 0, rate }],
    );
    const corrected = quantiles(correction.correctedUs);
    const firstStart = Math.min(...report.details.map((d) => d.endUs - d.latencyUs));
    const lastEnd = Math.max(...report.details.map((d) => d.endUs));
    const achievedRps = report.details.length / Math.max(1e-9, (lastEnd - firstStart) / 1e6);
    const errorRate = report.details.length === 0 ? 1 : 1 - ok / report.details.length;
    const reasons: string[] = [];
    if (corrected.p99 >= sloP99Ms * 1000) reasons.push(`p99 ${(corrected.p99 / 1000).toFixed(1)} ms`);
    if (errorRate >= maxErrorRate) reasons.push(`errors ${(errorRate * 100).toFixed(2)} %`);
    if (achievedRps < rate * MIN_SENT_SHARE) reasons.push(`only ${achievedRps.toFixed(0)} rps sent`);
    const cores: Record<string, number> = {};
    const mainThread: Record<string, number> = {};
    const cpuPer1k: Record<string, number> = {};
    for (const [name, p] of Object.entries(interval.processes)) {
      cores[name] = p.cores;
      mainThread[name] = p.mainThread;
      cpuPer1k[name] = report.details.length ? p.cpuSeconds / report.details.length * 1000 : NaN;
    }
    const result: Probe = {
      rate,
      achievedRps,
      count: report.details.length,
      ok,
      errorRate,
      plainP50Ms: plain.p50 / 1000,
      plainP99Ms: plain.p99 / 1000,
      correctedP99Ms: corrected.p99 / 1000,
      pass: reasons.length === 0,
      reason: reasons.join(", ") || "kept the SLO",
      cores,
      mainThread,
      machineBusyCores: interval.machineBusyCores,
      otherBusyCores: Math.max(
        0,
        interval.machineBusyCores - Object.values(cores).reduce((a, b) => a + b, 0),
      ),
      cpuPer1k,
      bottleneck: bottleneck(interval),
      stealShare: interval.stealShare,
    };
    probes.push(result);
    log(
      `  ${String(rate).padStart(5)} rps: ${result.pass ? "pass" : "FAIL"} (${result.reason}); p99 ${
        result.plainP99Ms.toFixed(2)
      } ms plain, ${result.correctedP99Ms.toFixed(2)} corrected; OK ${
        (100 - errorRate * 100).toFixed(2)
      } %; machine ${interval.machineBusyCores.toFixed(2)} cores (${
        result.otherBusyCores.toFixed(2)
      } of other processes); ${result.bottleneck.why}`,
    );
    return result;
  };

  const { rate: lo, reachedMax } = await searchRates(async (rate) => (await probe(rate)).pass, {
    startRate,
    stepRate,
    maxRate,
    resolution,
  });
  const atCapacity = probes.filter((p) => p.rate === lo && p.pass).at(-1);
  const limit = probes.filter((p) => !p.pass).sort((a, b) => a.rate - b.rate)[0] ?? probes.at(-1)!;

  // The search on errors alone, above the rates the first search probed.
  const knownAllOk = Math.max(0, ...probes.filter(allRequestsOk).map((p) => p.rate));
  const firstStep = (Math.floor(knownAllOk / stepRate) + 1) * stepRate;
  log(`  every request OK, whatever the latency: from ${firstStep} rps by ${stepRate}`);
  const probedOnce = new Map(probes.map((p) => [p.rate, p]));
  const { rate: allOkRate, reachedMax: allOkReachedMax } = await searchRates(
    async (rate) => allRequestsOk(probedOnce.get(rate) ?? await probe(rate)),
    { startRate: firstStep, stepRate, maxRate, resolution: allOkResolution, knownPass: knownAllOk },
  );
  const allOkFailed =
    probes.filter((p) => p.rate > allOkRate && !allRequestsOk(p)).sort((a, b) => a.rate - b.rate)[0];
  return {
    method: call.method,
    service: call.service,
    slo: { p99Ms: sloP99Ms, maxErrorRate, probeSeconds, judgedOn: "corrected p99" },
    rate: lo,
    reachedMax,
    correctedP99Ms: atCapacity?.correctedP99Ms ?? NaN,
    plainP99Ms: atCapacity?.plainP99Ms ?? NaN,
    allOkRate,
    allOkReachedMax,
    allOkLimit: allOkFailed && {
      atRate: allOkFailed.rate,
      why: allOkReason(allOkFailed),
      bottleneck: allOkFailed.bottleneck,
    },
    bottleneck: { ...limit.bottleneck, atRate: limit.rate },
    cpuPer1kAtCapacity: atCapacity?.cpuPer1k ?? {},
    resolution,
    probes,
    runIdPrefix,
  };
}

/** Every request answered OK and the generator sent at least MIN_SENT_SHARE of the asked rate. */
function allRequestsOk(p: Probe): boolean {
  return p.count > 0 && p.ok === p.count && p.achievedRps >= p.rate * MIN_SENT_SHARE;
}

function allOkReason(p: Probe): string {
  const reasons: string[] = [];
  if (p.ok < p.count || p.count === 0) reasons.push(`${p.count - p.ok} of ${p.count} requests not OK`);
  if (p.achievedRps < p.rate * MIN_SENT_SHARE) reasons.push(`only ${p.achievedRps.toFixed(0)} rps sent`);
  return reasons.join(", ");
}

const fmt = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : "-");

/** The capacity as Markdown lines for the bench report. */
export function capacityMarkdown(c: CapacityResult): string[] {
  return [
    `## capacity: ${c.method}`,
    "",
    `- highest rate keeping p99 (corrected) < ${c.slo.p99Ms} ms and errors < ${
      c.slo.maxErrorRate * 100
    } % for ${c.slo.probeSeconds} s: **${c.reachedMax ? `at least ${c.rate}` : c.rate} rps** (p99 ${
      fmt(c.plainP99Ms)
    } ms plain, ${fmt(c.correctedP99Ms)} ms corrected; resolution ${c.resolution} rps)`,
    `- highest rate with every request OK and sent at the asked rate, whatever the latency: **${
      c.allOkReachedMax ? `at least ${c.allOkRate}` : c.allOkRate
    } rps**${
      c.allOkLimit
        ? ` (at ${c.allOkLimit.atRate} rps: ${c.allOkLimit.why}; ${c.allOkLimit.bottleneck.process}: ${c.allOkLimit.bottleneck.why})`
        : ""
    }`,
    ...(c.probes.some((p) => p.otherBusyCores > 0.3)
      ? [
        `- **the machine was shared**: up to ${
          Math.max(...c.probes.map((p) => p.otherBusyCores)).toFixed(2)
        } cores of other processes during a probe; these rates describe that host, not the code`,
      ]
      : []),
    `- bottleneck at ${c.bottleneck.atRate} rps: ${c.bottleneck.process}: ${c.bottleneck.why}`,
    `- CPU s per 1000 requests at the capacity: ${
      Object.entries(c.cpuPer1kAtCapacity).map(([name, v]) => `${name} ${v.toFixed(3)}`).join(", ") || "-"
    }`,
    "",
    "| rate | sent/s | OK % | p50 ms | p99 ms | p99 corrected ms | machine cores | of them other processes | verdict |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ...c.probes.map((p) =>
      `| ${p.rate} | ${p.achievedRps.toFixed(0)} | ${(100 - p.errorRate * 100).toFixed(2)} | ${
        p.plainP50Ms.toFixed(2)
      } | ${p.plainP99Ms.toFixed(2)} | ${p.correctedP99Ms.toFixed(2)} | ${p.machineBusyCores.toFixed(2)} | ${
        p.otherBusyCores.toFixed(2)
      } | ${p.pass ? "pass" : `fail: ${p.reason}`} |`
    ),
    "",
  ];
}
