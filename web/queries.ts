/**
 * Every SQL statement the pages run. Values (names the user chose, times) go in only through the binder's
 * `sql` template; tables and columns come from the fixed names below. Each statement is what "copy as SQL"
 * gives: the time range is written in, and it runs as it is in clickhouse-client as the read-only user.
 *
 * ClickHouse 18.16: no query parameters, window functions or toStartOfInterval (buckets are
 * `intDiv(toUInt32(ts), step) * step`). `latency_percentiles` rows are rewritten with a higher `version` when
 * late rows arrive, so every read takes `argMax(col, version)` per (ts, window_s, service, method); aliases
 * never reuse a name the same SELECT reads (18.16 would substitute them).
 */
import { ident, type Sql, sql } from "@tailwatch/ingest/sql";
import { num, type Reader } from "./clickhouse.ts";
import type { Block, Cell } from "./islands/model.ts";
import type { StatusFilter, TimeRange } from "./params.ts";

/** Columns kept as text; every other column is a number. */
const TEXT_COLUMNS = new Set([
  "service",
  "method",
  "protocol",
  "route",
  "instance",
  "trace_id",
  "span_id",
  "parent_span_id",
  "error_message",
  "event_id",
]);

export interface Tables {
  requestEvents: Sql;
  requestStats: Sql;
  latencyProfile: Sql;
  latencyPercentiles: Sql;
}

export function tables(database: string): Tables {
  const t = (name: string) => sql`${ident(database, name)}`;
  return {
    requestEvents: t("request_events"),
    requestStats: t("request_stats_1s"),
    latencyProfile: t("latency_profile_1s"),
    latencyPercentiles: t("latency_percentiles"),
  };
}

/** A statement and the columns of its SELECT, in order. */
export interface BlockQuery {
  id: string;
  title: string;
  sql: Sql;
  columns: string[];
}

/** Rows as the block keeps them: the SELECT's columns in order, numbers as numbers. */
export function toCells(columns: string[], rows: Record<string, unknown>[]): Cell[][] {
  return rows.map((row) => columns.map((c) => TEXT_COLUMNS.has(c) ? String(row[c] ?? "") : num(row[c])));
}

export async function runBlock(reader: Reader, query: BlockQuery): Promise<Block> {
  const readAtMs = Date.now();
  try {
    const rows = await reader.rows<Record<string, unknown>>(query.sql);
    return {
      id: query.id,
      title: query.title,
      sql: query.sql.text,
      columns: query.columns,
      rows: toCells(query.columns, rows),
      readAtMs,
    };
  } catch (error) {
    return {
      id: query.id,
      title: query.title,
      sql: query.sql.text,
      columns: query.columns,
      rows: [],
      error: String((error as Error)?.message ?? error),
      readAtMs,
    };
  }
}

const range = (r: TimeRange) => ({ from: sql`toDateTime(${r.fromS})`, to: sql`toDateTime(${r.toS})` });

/**
 * The newest percentile row per key at or before `toS` (within 2 minutes of it), latest version of each row.
 * `service` undefined: one row per service (method ''); else one row per method of the service ('' = all).
 */
export function latestPercentiles(
  t: Tables,
  windowS: number,
  toS: number,
  service?: string,
): BlockQuery {
  const where = service === undefined ? sql`method = '' AND service != ''` : sql`service = ${service}`;
  const key = service === undefined ? sql`service` : sql`method`;
  const text = sql`SELECT
    ${key},
    max(ts_s) AS latest_ts,
    argMax(c, ts_s) AS count,
    argMax(e, ts_s) AS errors,
    argMax(r, ts_s) AS rps,
    argMax(er, ts_s) AS error_rate,
    argMax(q50, ts_s) AS p50_us,
    argMax(q95, ts_s) AS p95_us,
    argMax(q99, ts_s) AS p99_us,
    argMax(q999, ts_s) AS p999_us,
    argMax(mx, ts_s) AS max_us
FROM
(
    SELECT
        toUInt32(ts) AS ts_s,
        service,
        method,
        argMax(count, version) AS c,
        argMax(errors, version) AS e,
        argMax(rps, version) AS r,
        argMax(error_rate, version) AS er,
        argMax(p50_us, version) AS q50,
        argMax(p95_us, version) AS q95,
        argMax(p99_us, version) AS q99,
        argMax(p999_us, version) AS q999,
        argMax(max_us, version) AS mx
    FROM ${t.latencyPercentiles}
    WHERE window_s = ${windowS} AND ${where}
      AND ts > toDateTime(${toS - 120}) AND ts <= toDateTime(${toS})
    GROUP BY ts, window_s, service, method
)
GROUP BY ${key}
ORDER BY ${key}`;
  return {
    id: "now",
    title: service === undefined
      ? `Services now (${windowS} s window, latest_ts = window end)`
      : `Methods of ${service} now (${windowS} s window; method '' = the whole service)`,
    sql: text,
    columns: [
      service === undefined ? "service" : "method",
      "latest_ts",
      "count",
      "errors",
      "rps",
      "error_rate",
      "p50_us",
      "p95_us",
      "p99_us",
      "p999_us",
      "max_us",
    ],
  };
}

/** Requests and errors per step and service (start second), from request_stats_1s. */
export function requestsByService(t: Tables, r: TimeRange): BlockQuery {
  const { from, to } = range(r);
  return {
    id: "rps",
    title: `Requests per ${r.stepS} s by service (request_stats_1s, by start second)`,
    sql: sql`SELECT
    intDiv(toUInt32(ts), ${r.stepS}) * ${r.stepS} AS t,
    service,
    sum(requests) AS requests,
    sum(errors) AS errors
FROM ${t.requestStats}
WHERE ts >= ${from} AND ts < ${to}
GROUP BY t, service
ORDER BY t, service`,
    columns: ["t", "service", "requests", "errors"],
  };
}

/** p99 of each whole service (10 s windows), one point per step, latest version of each row. */
export function p99ByService(t: Tables, r: TimeRange): BlockQuery {
  const { from, to } = range(r);
  return {
    id: "p99",
    title: "p99 by service (latency_percentiles, 10 s windows ending at t)",
    sql: sql`SELECT
    toUInt32(ts) AS t,
    service,
    argMax(p99_us, version) AS p99_us
FROM ${t.latencyPercentiles}
WHERE window_s = 10 AND method = '' AND service != ''
  AND ts > ${from} AND ts <= ${to} AND toUInt32(ts) % ${r.stepS} = 0
GROUP BY ts, window_s, service, method
ORDER BY t, service`,
    columns: ["t", "service", "p99_us"],
  };
}

/** Requests served with an injected fault, per step (and service): the fault markers. */
export function faultMarkers(t: Tables, r: TimeRange, service?: string): BlockQuery {
  const { from, to } = range(r);
  const only = service === undefined ? sql`` : sql` AND service = ${service}`;
  return {
    id: "faults",
    title: "Requests with an injected fault (request_events.fault_injected)",
    sql: sql`SELECT
    intDiv(toUInt32(ts), ${r.stepS}) * ${r.stepS} AS t,
    service,
    count() AS faulted
FROM ${t.requestEvents}
WHERE ts >= ${from} AND ts < ${to}${only} AND fault_injected = 1
GROUP BY t, service
ORDER BY t, service`,
    columns: ["t", "service", "faulted"],
  };
}

/** Percentiles of one key over time at one window length, one point per step. */
export function percentilesOverTime(
  t: Tables,
  r: TimeRange,
  service: string,
  method: string,
  windowS: number,
): BlockQuery {
  const { from, to } = range(r);
  return {
    id: "percentiles",
    title: `Latency percentiles of ${method || `${service} (all methods)`}, ${windowS} s windows ending at t`,
    sql: sql`SELECT
    toUInt32(ts) AS t,
    argMax(p50_us, version) AS p50_us,
    argMax(p90_us, version) AS p90_us,
    argMax(p95_us, version) AS p95_us,
    argMax(p99_us, version) AS p99_us,
    argMax(p999_us, version) AS p999_us,
    argMax(count, version) AS requests
FROM ${t.latencyPercentiles}
WHERE window_s = ${windowS} AND service = ${service} AND method = ${method}
  AND ts > ${from} AND ts <= ${to} AND toUInt32(ts) % ${r.stepS} = 0
GROUP BY ts, window_s, service, method
ORDER BY t`,
    columns: ["t", "p50_us", "p90_us", "p95_us", "p99_us", "p999_us", "requests"],
  };
}

/** Requests per step by protocol and status, from request_stats_1s. */
export function statusOverTime(t: Tables, r: TimeRange, service: string, method: string): BlockQuery {
  const { from, to } = range(r);
  const only = method === "" ? sql`` : sql` AND method = ${method}`;
  return {
    id: "status",
    title: `Requests per ${r.stepS} s by protocol and status (request_stats_1s)`,
    sql: sql`SELECT
    intDiv(toUInt32(ts), ${r.stepS}) * ${r.stepS} AS t,
    protocol,
    grpc_code,
    http_status,
    sum(requests) AS requests
FROM ${t.requestStats}
WHERE ts >= ${from} AND ts < ${to} AND service = ${service}${only}
GROUP BY t, protocol, grpc_code, http_status
ORDER BY t, protocol, grpc_code, http_status`,
    columns: ["t", "protocol", "grpc_code", "http_status", "requests"],
  };
}

/** The window's raw rows (start second in [toS - windowS, toS)) grouped by `by`: exact quantiles. */
function rawBreakdown(
  t: Tables,
  toS: number,
  windowS: number,
  service: string,
  method: string,
  by: "protocol" | "instance",
): BlockQuery {
  const only = method === "" ? sql`` : sql` AND method = ${method}`;
  const key = by === "protocol" ? sql`protocol` : sql`instance`;
  return {
    id: by === "protocol" ? "protocols" : "instances",
    title: by === "protocol"
      ? `gRPC and REST side by side (raw rows, last ${windowS} s by start)`
      : `Per instance (raw rows, last ${windowS} s by start)`,
    sql: sql`SELECT
    ${key},
    count() AS requests,
    countIf(grpc_code != 0) AS errors,
    round(avg(duration_us)) AS avg_us,
    quantileExact(0.5)(duration_us) AS p50_us,
    quantileExact(0.99)(duration_us) AS p99_us,
    max(duration_us) AS max_us
FROM ${t.requestEvents}
WHERE service = ${service}${only}
  AND ts >= toDateTime(${toS - windowS}) AND ts < toDateTime(${toS})
GROUP BY ${key}
ORDER BY ${key}`,
    columns: [by, "requests", "errors", "avg_us", "p50_us", "p99_us", "max_us"],
  };
}

export const protocolBreakdown = (
  t: Tables,
  toS: number,
  windowS: number,
  service: string,
  method: string,
) => rawBreakdown(t, toS, windowS, service, method, "protocol");
export const instanceBreakdown = (
  t: Tables,
  toS: number,
  windowS: number,
  service: string,
  method: string,
) => rawBreakdown(t, toS, windowS, service, method, "instance");

/** The latency histogram of the window (completion second in [toS - windowS, toS)) from latency_profile_1s. */
export function latencyHistogram(
  t: Tables,
  toS: number,
  windowS: number,
  service: string,
  method: string,
): BlockQuery {
  const only = method === "" ? sql`` : sql` AND method = ${method}`;
  return {
    id: "histogram",
    title: `Latency histogram, last ${windowS} s by completion (latency_profile_1s, profiler buckets)`,
    sql: sql`SELECT
    b AS bucket,
    sum(c) AS count
FROM ${t.latencyProfile}
ARRAY JOIN histogramMap.bucket AS b, histogramMap.count AS c
WHERE service = ${service}${only}
  AND end_ts >= toDateTime(${toS - windowS}) AND end_ts < toDateTime(${toS})
GROUP BY bucket
ORDER BY bucket`,
    columns: ["bucket", "count"],
  };
}

export const EVENT_COLUMNS = [
  "event_id",
  "ts_ms",
  "ts_us",
  "service",
  "method",
  "protocol",
  "route",
  "grpc_code",
  "http_status",
  "duration_us",
  "trace_id",
  "span_id",
  "parent_span_id",
  "instance",
  "error_message",
  "fault_injected",
];

const EVENT_SELECT = sql`toString(event_id) AS event_id,
    ts_ms,
    ts_us,
    service,
    method,
    protocol,
    route,
    grpc_code,
    http_status,
    duration_us,
    trace_id,
    span_id,
    parent_span_id,
    instance,
    error_message,
    fault_injected`;

/** The slowest requests of the range that pass the filters. */
export function slowestRequests(
  t: Tables,
  r: TimeRange,
  filter: { service: string; method: string; status: StatusFilter; minMs: number; limit: number },
): BlockQuery {
  const { from, to } = range(r);
  const conditions: Sql[] = [sql`ts >= ${from} AND ts < ${to}`];
  if (filter.service) conditions.push(sql`service = ${filter.service}`);
  if (filter.method) conditions.push(sql`method = ${filter.method}`);
  if (filter.status === "ok") conditions.push(sql`grpc_code = 0`);
  else if (filter.status === "error") conditions.push(sql`grpc_code != 0`);
  else if (typeof filter.status === "number") conditions.push(sql`grpc_code = ${filter.status}`);
  if (filter.minMs > 0) conditions.push(sql`duration_us >= ${filter.minMs * 1000}`);
  const where = conditions.reduce((a, b) =>
    sql`${a}
  AND ${b}`
  );
  return {
    id: "slowest",
    title: "Slowest requests",
    sql: sql`SELECT
    ${EVENT_SELECT}
FROM ${t.requestEvents}
WHERE ${where}
ORDER BY duration_us DESC, ts_ms DESC
LIMIT ${filter.limit}`,
    columns: EVENT_COLUMNS,
  };
}

/** Every span of one trace (±10 minutes around `atMs`, or the last 24 h). */
export function traceSpans(t: Tables, traceId: string, atMs: number | undefined, nowMs: number): BlockQuery {
  const fromS = atMs === undefined ? Math.floor(nowMs / 1000) - 86_400 : Math.floor(atMs / 1000) - 600;
  const toS = atMs === undefined ? Math.floor(nowMs / 1000) + 60 : Math.floor(atMs / 1000) + 600;
  return {
    id: "trace",
    title: `Spans of trace ${traceId}`,
    sql: sql`SELECT
    ${EVENT_SELECT}
FROM ${t.requestEvents}
WHERE trace_id = ${traceId}
  AND ts >= toDateTime(${fromS}) AND ts < toDateTime(${toS})
ORDER BY ts_ms, ts_us
LIMIT 1000`,
    columns: EVENT_COLUMNS,
  };
}

/**
 * The newest raw row (ts_ms) and the newest percentile second within the last hour. The raw table is ordered
 * by (service, method, ts): the newest start second comes from request_stats_1s (ordered by time, small),
 * and request_events is then read only from that second on (a few granules per key, not the hour).
 */
export function freshness(t: Tables, nowS: number): BlockQuery {
  return {
    id: "freshness",
    title: "Newest row of request_events and of latency_percentiles (last hour)",
    sql: sql`SELECT
    (SELECT max(ts_ms) FROM ${t.requestEvents}
     WHERE ts >= (SELECT max(ts) FROM ${t.requestStats} WHERE ts >= toDateTime(${nowS - 3600}))
       AND ts >= toDateTime(${nowS - 3600})) AS newest_event_ms,
    (SELECT toUInt32(max(ts)) FROM ${t.latencyPercentiles} WHERE ts >= toDateTime(${
      nowS - 3600
    })) AS newest_percentile_s`,
    columns: ["newest_event_ms", "newest_percentile_s"],
  };
}

/** The (service, method) keys seen in the last day: what the pages accept. */
export function knownKeys(t: Tables, nowS: number): BlockQuery {
  return {
    id: "keys",
    title: "Services and methods seen in the last 24 h",
    sql: sql`SELECT service, method
FROM ${t.requestStats}
WHERE ts >= toDateTime(${nowS - 86_400})
GROUP BY service, method
ORDER BY service, method`,
    columns: ["service", "method"],
  };
}
