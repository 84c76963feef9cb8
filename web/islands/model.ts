/**
 * What the server sends and the islands show: the view payloads (the same JSON in the first render's props,
 * in /api/view and in every live update) and the pure helpers both sides use. Types and plain functions
 * only: this file is bundled for the browser.
 */

export type Cell = number | string;

/**
 * One chart or table: the exact SQL that produced it (time range written in, runnable as the read-only user),
 * its columns and rows as ClickHouse returned them (numbers as numbers), or where its numbers come from
 * when they are not SQL.
 */
export interface Block {
  id: string;
  title: string;
  sql?: string;
  source?: string;
  columns: string[];
  rows: Cell[][];
  error?: string;
  /** When the rows were read (epoch ms); slow blocks are refreshed less often than every second. */
  readAtMs: number;
}

export interface TimeRangeData {
  fromS: number;
  toS: number;
  stepS: number;
  live: boolean;
  label: string;
}

export interface FiringAlert {
  id: string;
  name: string;
  sinceMs: number;
  value: number;
  threshold: number;
  unit: string;
}

export interface GlobalData {
  nowMs: number;
  clickhouse: { ok: boolean; downSinceMs?: number; error?: string };
  firing: FiringAlert[];
  /** Lines of the stale banner: empty when all is fresh. */
  stale: string[];
  /** Age inputs: the newest request_events row (ts_ms) and the newest latency_percentiles second. */
  newestEventMs: number;
  newestPercentileS: number;
  freshnessSql: string;
}

export interface TargetHealth {
  name: string;
  url: string;
  up: boolean;
  error?: string;
  lastOkMs?: number;
  /** Metric values of the last scrape (summed over labels) and per-second rates of its counters. */
  values: Record<string, number>;
  rates: Record<string, number>;
}

export interface ProcessHistoryData {
  t: number[];
  processes: { name: string; cpuPct: (number | null)[]; rssMiB: (number | null)[]; fds: (number | null)[] }[];
}

export interface LoadRun {
  file: string;
  scenario: string;
  startedAtMs: number;
  endedAtMs: number;
}

export interface OverviewData {
  page: "overview";
  query: string;
  range: TimeRangeData;
  window: number;
  global: GlobalData;
  services: string[];
  now: Block;
  rps: Block;
  p99: Block;
  faults: Block;
  targets: TargetHealth[];
  processes: ProcessHistoryData;
  loadRuns: LoadRun[];
}

export interface ServiceData {
  page: "service";
  query: string;
  range: TimeRangeData;
  window: number;
  service: string;
  method: string;
  methods: string[];
  global: GlobalData;
  now: Block;
  percentiles: Block;
  status: Block;
  protocols: Block;
  instances: Block;
  histogram: Block;
  faults: Block;
  loadRuns: LoadRun[];
}

export interface TracesData {
  page: "traces";
  query: string;
  range: TimeRangeData;
  global: GlobalData;
  slowest: Block;
}

export interface RuleView {
  id: string;
  name: string;
  kind: "p99_above" | "error_rate_above";
  service: string;
  method: string;
  threshold: number;
  forS: number;
  windowS: number;
  webhook: string;
  state: "ok" | "pending" | "firing" | "no data";
  value: number | null;
  valueAtS: number | null;
  sinceMs: number | null;
}

export interface AlertEventView {
  id: number;
  ruleId: string;
  ruleName: string;
  state: "firing" | "resolved";
  atMs: number;
  value: number;
  threshold: number;
  message: string;
}

export interface AlertsData {
  page: "alerts";
  query: string;
  global: GlobalData;
  rules: RuleView[];
  fileErrors: string[];
  history: AlertEventView[];
  evaluation: Block;
  rulesFile: string;
}

export type ViewData = OverviewData | ServiceData | TracesData | AlertsData;

// ---------------------------------------------------------------------------------------------- helpers

export function col(block: Block, name: string): number {
  return block.columns.indexOf(name);
}

/** Pivots rows (t, key, value) into aligned series over the range's steps; missing points are null. */
export function pivot(
  block: Block,
  range: TimeRangeData,
  keyOf: (row: Cell[]) => string,
  valueOf: (row: Cell[]) => number | null,
): { t: number[]; keys: string[]; series: (number | null)[][] } {
  const t: number[] = [];
  for (let s = range.fromS; s < range.toS; s += range.stepS) t.push(s);
  const ti = col(block, "t");
  const keys: string[] = [];
  const byKey = new Map<string, (number | null)[]>();
  for (const row of block.rows) {
    const key = keyOf(row);
    let series = byKey.get(key);
    if (!series) {
      series = t.map(() => null);
      byKey.set(key, series);
      keys.push(key);
    }
    const index = Math.round((Number(row[ti]) - range.fromS) / range.stepS);
    if (index >= 0 && index < t.length) {
      const value = valueOf(row);
      series[index] = value === null ? null : (series[index] ?? 0) + value;
    }
  }
  keys.sort();
  return { t, keys, series: keys.map((k) => byKey.get(k)!) };
}

const GRPC_CODES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

export function grpcCodeName(code: number): string {
  return GRPC_CODES[code] ?? `code ${code}`;
}

/** µs as the pages show durations: µs below 1 ms, ms below 10 s, s above. */
export function formatUs(us: number | null | undefined): string {
  if (us === null || us === undefined || !Number.isFinite(us)) return "–";
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 10_000) return `${(us / 1000).toFixed(2)} ms`;
  if (us < 10_000_000) return `${(us / 1000).toFixed(1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

export function formatRate(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

export function formatPct(fraction: number | null | undefined): string {
  if (fraction === null || fraction === undefined || !Number.isFinite(fraction)) return "–";
  const pct = fraction * 100;
  return pct === 0 ? "0 %" : pct < 0.01 ? "<0.01 %" : `${pct.toFixed(2)} %`;
}

export function formatCount(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return Math.round(value).toLocaleString("en-US");
}

/** HH:MM:SS in UTC (every time on the pages is UTC, said once in the header). */
export function formatTime(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms) || ms <= 0) return "–";
  return new Date(ms).toISOString().slice(11, 19);
}

export function formatDateTime(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms) || ms <= 0) return "–";
  return new Date(ms).toISOString().slice(0, 19).replace("T", " ");
}

export function formatAge(ageMs: number | null): string {
  if (ageMs === null || !Number.isFinite(ageMs)) return "none in the last hour";
  if (ageMs < 0) return "0 s";
  if (ageMs < 10_000) return `${(ageMs / 1000).toFixed(1)} s`;
  if (ageMs < 120_000) return `${Math.round(ageMs / 1000)} s`;
  return `${Math.round(ageMs / 60_000)} min`;
}

/** The [lower, upper) µs of a histogram bucket (native/profiler/include/tailwatch/buckets.h). */
export function bucketBounds(bucket: number): [number, number] {
  if (bucket < 128) return [bucket, bucket + 1];
  const shift = Math.floor(bucket / 128) - 1;
  const mantissa = bucket - 128 * shift;
  const scale = 2 ** shift;
  return [mantissa * scale, (mantissa + 1) * scale];
}

/** Histogram rows (bucket, count) regrouped into bins of equal width on a log scale, for display. */
export function logBins(
  rows: Cell[][],
  bins = 40,
): { lowerUs: number; upperUs: number; count: number }[] {
  if (rows.length === 0) return [];
  const points = rows.map((r) => ({ b: bucketBounds(Number(r[0])), c: Number(r[1]) }));
  const lo = Math.max(1, points[0].b[0]);
  const hi = Math.max(lo * 1.01, points[points.length - 1].b[1]);
  const ratio = Math.pow(hi / lo, 1 / bins);
  const out = Array.from({ length: bins }, (_, i) => ({
    lowerUs: lo * Math.pow(ratio, i),
    upperUs: lo * Math.pow(ratio, i + 1),
    count: 0,
  }));
  for (const p of points) {
    const mid = Math.max(lo, (p.b[0] + p.b[1]) / 2);
    const i = Math.min(bins - 1, Math.max(0, Math.floor(Math.log(mid / lo) / Math.log(ratio))));
    out[i].count += p.c;
  }
  return out;
}
