/** Runs ghz (https://ghz.sh) against a local gRPC server through reflection and reads its JSON report. */
import { procStatFields } from "@tailwatch/runtime";
import { quantiles } from "./latency.ts";

export interface GhzRun {
  /** Full method, e.g. "orders.v1.OrderService/CreateOrder". */
  call: string;
  /** host:port; only loopback targets are allowed (load tests never leave this machine). */
  target: string;
  /** Request body in protobuf JSON; an array is sent one element per request, in turn. */
  data: unknown;
  /** Constant request rate (open model); omit for as fast as `concurrency` allows (closed model). */
  rps?: number;
  /** Stop after this many requests (preferred: no request is cut off at the end)... */
  total?: number;
  /** ...or after this long, e.g. "30s" (ghz then cancels what is still in flight). */
  duration?: string;
  concurrency?: number;
  connections?: number;
  timeout?: string;
  /** gRPC metadata sent with every call, e.g. { "tailwatch-load-run": "..." }. */
  metadata?: Record<string, string>;
  /** More flags (a load schedule: ghzScheduleArgs). */
  extraArgs?: string[];
}

/** One call as ghz's `details` report it: when it ended, how long it took, its status. */
export interface GhzDetail {
  /** Epoch microseconds at the call's end (ghz's timestamp is the end: stats.End). */
  endUs: number;
  latencyUs: number;
  /** ghz's status name (Go's codes.Code.String(): "OK", "NotFound", "Unavailable"...); "" without one. */
  status: string;
  error: string;
}

export interface GhzReport {
  count: number;
  rps: number;
  endReason: string;
  statuses: Record<string, number>;
  errors: Record<string, number>;
  details: GhzDetail[];
  /** CPU seconds ghz itself used (user + system): the load generator shares the machine's cores. */
  cpuSeconds: number;
}

export interface GhzSummary {
  count: number;
  rps: number;
  averageMs: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  /** From the per-call details (ghz's own distribution stops at p99). */
  p999Ms: number;
  slowestMs: number;
  /** Responses by gRPC status name, e.g. { OK: 59990, Unavailable: 10 }. */
  statuses: Record<string, number>;
  errors: Record<string, number>;
  successRate: number;
  /** CPU seconds ghz itself used (user + system): the load generator shares the machine's cores. */
  ghzCpuSeconds: number;
}

interface GhzJson {
  count: number;
  rps: number;
  endReason?: string;
  statusCodeDistribution: Record<string, number> | null;
  errorDistribution: Record<string, number> | null;
  details?: Array<{ timestamp: string; latency: number; status: string; error: string }> | null;
}

/** CPU seconds used by this process's finished (waited-for) children: cutime + cstime from /proc. */
export function childrenCpuSeconds(): number {
  const fields = procStatFields(Deno.readTextFileSync("/proc/self/stat"));
  // cutime and cstime are fields 16 and 17 of stat.
  return (Number(fields[16 - 3]) + Number(fields[17 - 3])) / 100;
}

/** Epoch µs of an RFC 3339 time with up to nanoseconds ("2026-12-06T22:45:31.762796491Z"). */
export function parseTimestampUs(text: string): number {
  const match = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/.exec(text);
  if (!match) return NaN;
  const seconds = Date.parse(`${match[1]}${match[3]}`);
  const fraction = (match[2] ?? "").padEnd(6, "0").slice(0, 6);
  return seconds * 1000 + Number(fraction);
}

export function ghzArgs(run: GhzRun): string[] {
  if (!/^(127\.\d+\.\d+\.\d+|localhost|\[::1\]):\d+$/.test(run.target)) {
    throw new Error(`ghz target must be a loopback address, got ${run.target}`);
  }
  const args = [
    "--insecure",
    "--call",
    run.call,
    "--data",
    JSON.stringify(run.data),
    "--concurrency",
    String(run.concurrency ?? 50),
    "--connections",
    String(run.connections ?? 1),
    "--timeout",
    run.timeout ?? "20s",
    "--format",
    "json",
  ];
  if (run.metadata) args.push("--metadata", JSON.stringify(run.metadata));
  if (run.rps !== undefined) args.push("--rps", String(run.rps));
  if (run.total !== undefined) args.push("--total", String(run.total));
  if (run.duration !== undefined) args.push("--duration", run.duration);
  args.push(...(run.extraArgs ?? []), run.target);
  return args;
}

/** Runs ghz once and returns its report with every call's details. */
export async function runGhzReport(run: GhzRun): Promise<GhzReport> {
  const child = new Deno.Command("ghz", { args: ghzArgs(run), stdout: "piped", stderr: "piped" }).spawn();
  const pid = child.pid;
  let lastCpu = 0;
  // ghz's own CPU, read from /proc while it runs (the last sample before it exits; children's totals are
  // shared by every ghz this process runs at once).
  const sampler = setInterval(() => {
    try {
      const fields = procStatFields(Deno.readTextFileSync(`/proc/${pid}/stat`));
      lastCpu = (Number(fields[14 - 3]) + Number(fields[15 - 3])) / 100;
    } catch { /* exited */ }
  }, 250);
  const output = await child.output();
  clearInterval(sampler);
  const text = new TextDecoder().decode(output.stdout);
  if (!output.success && !text.trim().startsWith("{")) {
    throw new Error(`ghz failed: ${new TextDecoder().decode(output.stderr)}`);
  }
  const report = JSON.parse(text) as GhzJson;
  return {
    count: report.count,
    rps: report.rps,
    endReason: report.endReason ?? "",
    statuses: report.statusCodeDistribution ?? {},
    errors: report.errorDistribution ?? {},
    details: (report.details ?? []).map((d) => ({
      endUs: parseTimestampUs(d.timestamp),
      latencyUs: d.latency / 1000,
      status: d.status ?? "",
      error: d.error ?? "",
    })),
    cpuSeconds: lastCpu,
  };
}

export async function runGhz(run: GhzRun): Promise<GhzSummary> {
  const childrenCpuBefore = childrenCpuSeconds();
  const report = await runGhzReport(run);
  const ghzCpuSeconds = childrenCpuSeconds() - childrenCpuBefore;
  return summarizeGhz(report, report.details.map((d) => d.latencyUs), ghzCpuSeconds);
}

/**
 * A run's summary: counts, statuses and success rate from `report`, the latency figures (ms) from
 * `latenciesUs` (all of its requests, or those a caller keeps, e.g. without the calls ghz cancelled itself),
 * and the CPU seconds ghz used.
 */
export function summarizeGhz(report: GhzReport, latenciesUs: number[], ghzCpuSeconds: number): GhzSummary {
  const q = quantiles(latenciesUs);
  const ok = report.statuses["OK"] ?? 0;
  return {
    count: report.count,
    rps: report.rps,
    averageMs: q.mean / 1000,
    p50Ms: q.p50 / 1000,
    p90Ms: q.p90 / 1000,
    p99Ms: q.p99 / 1000,
    p999Ms: q.p999 / 1000,
    slowestMs: q.max / 1000,
    statuses: report.statuses,
    errors: report.errors,
    successRate: report.count === 0 ? 0 : ok / report.count,
    ghzCpuSeconds,
  };
}

/** Go's gRPC code names (as ghz reports statuses) to the canonical names the services' metrics use. */
export const GO_CODE_NAMES: Record<string, string> = {
  OK: "OK",
  Canceled: "CANCELLED",
  Unknown: "UNKNOWN",
  InvalidArgument: "INVALID_ARGUMENT",
  DeadlineExceeded: "DEADLINE_EXCEEDED",
  NotFound: "NOT_FOUND",
  AlreadyExists: "ALREADY_EXISTS",
  PermissionDenied: "PERMISSION_DENIED",
  ResourceExhausted: "RESOURCE_EXHAUSTED",
  FailedPrecondition: "FAILED_PRECONDITION",
  Aborted: "ABORTED",
  OutOfRange: "OUT_OF_RANGE",
  Unimplemented: "UNIMPLEMENTED",
  Internal: "INTERNAL",
  Unavailable: "UNAVAILABLE",
  DataLoss: "DATA_LOSS",
  Unauthenticated: "UNAUTHENTICATED",
};

/**
 * Whether a ghz call ended because ghz itself stopped it (the end of a timed run closes its connections and
 * cancels what is in flight: "transport is closing", seen 1 in 10,000 at 1000 rps), not because of an answer.
 */
export function cancelledByGhz(detail: { status: string; error: string }): boolean {
  return /transport is closing|client connection is closing|context canceled|grpc: the client connection is closing/i
    .test(detail.error) && detail.status !== "OK";
}

/** A CreateOrder body that always succeeds against the seeded catalog. */
export const CREATE_ORDER_BODY = {
  customer_id: "load",
  lines: [{ product_id: "treats-tuna-60g", quantity: 1 }, { product_id: "kibble-salmon-2kg", quantity: 1 }],
  card_number: "4242424242424242",
};
