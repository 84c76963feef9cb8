/** Runs ghz (https://ghz.sh) against a local gRPC server through reflection and reads its JSON report. */
import { procStatFields } from "@tailwatch/kit";

export interface GhzRun {
  /** Full method, e.g. "orders.v1.OrderService/CreateOrder". */
  call: string;
  /** host:port; only loopback targets are allowed (load tests never leave this machine). */
  target: string;
  /** Request body in protobuf JSON. */
  data: unknown;
  /** Constant request rate (open model); omit for as fast as `concurrency` allows (closed model). */
  rps?: number;
  /** Stop after this many requests (preferred: no request is cut off at the end)... */
  total?: number;
  /** ...or after this long, e.g. "30s". */
  duration?: string;
  concurrency?: number;
  connections?: number;
  timeout?: string;
}

export interface GhzSummary {
  count: number;
  rps: number;
  averageMs: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
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
  average: number;
  slowest: number;
  latencyDistribution: Array<{ percentage: number; latency: number }> | null;
  statusCodeDistribution: Record<string, number> | null;
  errorDistribution: Record<string, number> | null;
}

const NS_PER_MS = 1e6;

/** CPU seconds used by this process's finished (waited-for) children: cutime + cstime from /proc. */
function childrenCpuSeconds(): number {
  const fields = procStatFields(Deno.readTextFileSync("/proc/self/stat"));
  // cutime and cstime are fields 16 and 17 of stat.
  return (Number(fields[16 - 3]) + Number(fields[17 - 3])) / 100;
}

export async function runGhz(run: GhzRun): Promise<GhzSummary> {
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
  if (run.rps !== undefined) args.push("--rps", String(run.rps));
  if (run.total !== undefined) args.push("--total", String(run.total));
  if (run.duration !== undefined) args.push("--duration", run.duration);
  args.push(run.target);
  const childrenCpuBefore = childrenCpuSeconds();
  const output = await new Deno.Command("ghz", { args, stdout: "piped", stderr: "piped" }).output();
  const ghzCpuSeconds = childrenCpuSeconds() - childrenCpuBefore;
  const text = new TextDecoder().decode(output.stdout);
  if (!output.success && !text.trim().startsWith("{")) {
    throw new Error(`ghz failed: ${new TextDecoder().decode(output.stderr)}`);
  }
  const report = JSON.parse(text) as GhzJson;
  const percentile = (p: number) =>
    (report.latencyDistribution ?? []).find((entry) => entry.percentage === p)?.latency ?? NaN;
  const statuses = report.statusCodeDistribution ?? {};
  return {
    count: report.count,
    rps: report.rps,
    averageMs: report.average / NS_PER_MS,
    p50Ms: percentile(50) / NS_PER_MS,
    p90Ms: percentile(90) / NS_PER_MS,
    p99Ms: percentile(99) / NS_PER_MS,
    slowestMs: report.slowest / NS_PER_MS,
    statuses,
    errors: report.errorDistribution ?? {},
    successRate: report.count === 0 ? 0 : (statuses["OK"] ?? 0) / report.count,
    ghzCpuSeconds,
  };
}

/** A CreateOrder body that always succeeds against the seeded catalog. */
export const CREATE_ORDER_BODY = {
  customer_id: "load",
  lines: [{ product_id: "treats-tuna-60g", quantity: 1 }, { product_id: "kibble-salmon-2kg", quantity: 1 }],
  card_number: "4242424242424242",
};
