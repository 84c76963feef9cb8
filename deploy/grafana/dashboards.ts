/**
 * Tailwatch's Grafana dashboards, written as code: `deno run -A deploy/grafana/dashboards.ts` writes
 * deploy/grafana/dashboards/*.json, which Grafana loads through provisioning (compose and k8s mount them).
 * deploy/grafana_test.ts checks that the JSON files are what this file makes, then runs every panel's query:
 * ClickHouse SQL with the plugin's macros expanded for a fixed range, as the read-only user, on ClickHouse
 * 18.16 and on chDB (a current engine), against known rows; PromQL against a local Prometheus.
 *
 * The SQL uses only what both ClickHouse lines accept and only the macros grafana-clickhouse-datasource
 * documents that expand to plain SQL there: `$__timeFilter(col)`, `$__fromTime`, `$__toTime`, `$__interval_s`
 * (no `$__timeInterval`: it expands to toStartOfInterval, which 18.16 lacks). Time buckets are
 * `intDiv(toUInt32(col), $__interval_s) * $__interval_s`. latency_percentiles rows are rewritten with higher
 * versions, so every read of it takes `argMax(col, version)` grouped by (ts, window_s, service, method); the
 * percentile panels sample one row per interval (`toUInt32(ts) % $__interval_s = 0`): percentiles of windows
 * cannot be averaged. latency_profile_1s rows with an empty service are ingest's floor markers: excluded.
 */

export const CLICKHOUSE = { type: "grafana-clickhouse-datasource", uid: "tailwatch-clickhouse" } as const;
export const PROMETHEUS = { type: "prometheus", uid: "tailwatch-prometheus" } as const;

type Json = Record<string, unknown>;

export interface Dashboard {
  uid: string;
  title: string;
  file: string;
  json: Json;
}

/** A time bucket of `$__interval_s` seconds of a DateTime column, as a DateTime (both ClickHouse lines). */
const bucket = (column: string) => `toDateTime(intDiv(toUInt32(${column}), $__interval_s) * $__interval_s)`;

const SERVICES_SELECTED = "service IN (${service:singlequote})";

/** gRPC code number → name (the names requests_total's `code` label uses); unknown numbers as digits. */
const GRPC_CODE_NAME =
  `if(grpc_code <= 16, arrayElement(['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', ` +
  `'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', ` +
  `'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', ` +
  `'UNAUTHENTICATED'], grpc_code + 1), toString(grpc_code))`;

/** The latest version of every latency_percentiles row matching `where` (columns renamed: see the module doc). */
const latestPercentiles = (where: string) =>
  `SELECT ts, window_s, service, method,
    argMax(count, version) AS requests, argMax(rps, version) AS rate, argMax(error_rate, version) AS err_rate,
    argMax(p50_us, version) AS p50, argMax(p90_us, version) AS p90, argMax(p95_us, version) AS p95,
    argMax(p99_us, version) AS p99, argMax(p999_us, version) AS p999, argMax(max_us, version) AS pmax
  FROM profiler.latency_percentiles
  WHERE ${where}
  GROUP BY ts, window_s, service, method`;

// --- panels -----------------------------------------------------------------------------------------------

interface PanelSpec {
  title: string;
  type: "timeseries" | "stat" | "table" | "barchart";
  description: string;
  w: number;
  h: number;
  unit?: string;
  decimals?: number;
  targets: Json[];
  extra?: Json;
  overrides?: Json[];
}

function sqlTarget(refId: string, rawSql: string, queryType: "timeseries" | "table"): Json {
  return {
    refId,
    datasource: CLICKHOUSE,
    editorType: "sql",
    queryType,
    // The plugin's numeric format: 0 time series (long to wide, string columns become labels), 1 table.
    format: queryType === "timeseries" ? 0 : 1,
    rawSql: rawSql.trim().replace(/\n\s+/g, "\n  "),
  };
}

function promTarget(refId: string, expr: string, legendFormat: string, instant = false): Json {
  return {
    refId,
    datasource: PROMETHEUS,
    editorType: "code",
    expr,
    legendFormat,
    range: !instant,
    instant,
  };
}

function panel(spec: PanelSpec, id: number, x: number, y: number): Json {
  const datasource = spec.targets[0].datasource;
  const defaults: Json = {};
  if (spec.unit) defaults.unit = spec.unit;
  if (spec.decimals !== undefined) defaults.decimals = spec.decimals;
  const options: Json = spec.type === "timeseries"
    ? {
      legend: {
        displayMode: "table",
        placement: "bottom",
        showLegend: true,
        calcs: ["mean", "max", "lastNotNull"],
      },
      tooltip: { mode: "multi", sort: "desc" },
    }
    : spec.type === "stat"
    ? {
      reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false },
      colorMode: "value",
      graphMode: "none",
    }
    : spec.type === "table"
    ? { showHeader: true, cellHeight: "sm" }
    : {};
  if (spec.type === "timeseries") {
    defaults.custom = {
      drawStyle: "line",
      lineWidth: 1,
      fillOpacity: 0,
      showPoints: "never",
      spanNulls: false,
    };
  }
  return {
    id,
    type: spec.type,
    title: spec.title,
    description: spec.description,
    datasource,
    gridPos: { x, y, w: spec.w, h: spec.h },
    fieldConfig: { defaults, overrides: spec.overrides ?? [] },
    options,
    targets: spec.targets,
    ...spec.extra,
  };
}

/** Lays panels out left to right in rows of 24 columns. */
function layout(specs: PanelSpec[]): Json[] {
  const panels: Json[] = [];
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  specs.forEach((spec, i) => {
    if (x + spec.w > 24) {
      x = 0;
      y += rowHeight;
      rowHeight = 0;
    }
    panels.push(panel(spec, i + 1, x, y));
    x += spec.w;
    rowHeight = Math.max(rowHeight, spec.h);
  });
  return panels;
}

// --- variables --------------------------------------------------------------------------------------------

function queryVariable(
  name: string,
  label: string,
  query: string,
  options: { multi: boolean; includeAll: boolean },
): Json {
  return {
    name,
    label,
    type: "query",
    datasource: CLICKHOUSE,
    query,
    definition: query,
    // 2: refresh when the time range changes (the values come from the rows in range).
    refresh: 2,
    sort: 1,
    multi: options.multi,
    includeAll: options.includeAll,
    current: options.includeAll ? { selected: true, text: ["All"], value: ["$__all"] } : {},
    options: [],
    hide: 0,
  };
}

const SERVICE_VARIABLE = queryVariable(
  "service",
  "Service",
  "SELECT DISTINCT service FROM profiler.request_stats_1s WHERE $__timeFilter(ts) ORDER BY service",
  { multi: true, includeAll: true },
);

function dashboard(
  uid: string,
  title: string,
  description: string,
  variables: Json[],
  specs: PanelSpec[],
): Dashboard {
  return {
    uid,
    title,
    file: `${uid.replace(/^tailwatch-/, "")}.json`,
    json: {
      uid,
      title,
      description,
      tags: ["tailwatch"],
      timezone: "utc",
      editable: true,
      graphTooltip: 1,
      refresh: "10s",
      schemaVersion: 39,
      version: 1,
      time: { from: "now-30m", to: "now" },
      timepicker: {},
      links: [{
        type: "dashboards",
        tags: ["tailwatch"],
        asDropdown: true,
        title: "Tailwatch",
        includeVars: false,
      }],
      annotations: { list: [] },
      templating: { list: variables },
      panels: layout(specs),
    },
  };
}

// --- the dashboards ---------------------------------------------------------------------------------------

function overview(): Dashboard {
  return dashboard(
    "tailwatch-overview",
    "Tailwatch / Service overview",
    "Requests, errors and latency per service (ClickHouse rollups and the profiler's percentiles) and the " +
      "processes' own view (Prometheus).",
    [SERVICE_VARIABLE],
    [
      {
        title: "Requests in range",
        type: "stat",
        description: "Requests started in the time range (request_stats_1s).",
        w: 6,
        h: 4,
        unit: "short",
        targets: [sqlTarget(
          "A",
          `SELECT sum(requests) AS total_requests FROM profiler.request_stats_1s
          WHERE $__timeFilter(ts) AND ${SERVICES_SELECTED}`,
          "table",
        )],
      },
      {
        title: "Error rate in range",
        type: "stat",
        description: "Share of requests answered with a gRPC code other than OK (request_stats_1s).",
        w: 6,
        h: 4,
        unit: "percentunit",
        decimals: 2,
        targets: [sqlTarget(
          "A",
          `SELECT sum(errors) / sum(requests) AS error_rate FROM profiler.request_stats_1s
          WHERE $__timeFilter(ts) AND ${SERVICES_SELECTED}`,
          "table",
        )],
      },
      {
        title: "Slowest request in range",
        type: "stat",
        description: "The longest request that started in the range, exact (maxMerge of request_stats_1s).",
        w: 6,
        h: 4,
        unit: "ms",
        decimals: 1,
        targets: [sqlTarget(
          "A",
          `SELECT maxMerge(duration_max_us) / 1000 AS max_ms FROM profiler.request_stats_1s
          WHERE $__timeFilter(ts) AND ${SERVICES_SELECTED}`,
          "table",
        )],
      },
      {
        title: "Requests served (Prometheus, range)",
        type: "stat",
        description: "The services' own count (requests_total) over the dashboard's range.",
        w: 6,
        h: 4,
        unit: "short",
        targets: [promTarget("A", "sum(increase(requests_total[$__range]))", "requests", true)],
      },
      {
        title: "Requests per second",
        type: "timeseries",
        description:
          "Requests started per second, per service, averaged over each interval (request_stats_1s).",
        w: 12,
        h: 8,
        unit: "reqps",
        targets: [sqlTarget(
          "A",
          `SELECT ${bucket("ts")} AS time, service, sum(requests) / $__interval_s AS rps
          FROM profiler.request_stats_1s
          WHERE $__timeFilter(ts) AND ${SERVICES_SELECTED}
          GROUP BY time, service ORDER BY time, service`,
          "timeseries",
        )],
      },
      {
        title: "Error rate",
        type: "timeseries",
        description: "Share of each interval's requests with a gRPC code other than OK (request_stats_1s).",
        w: 12,
        h: 8,
        unit: "percentunit",
        targets: [sqlTarget(
          "A",
          `SELECT ${bucket("ts")} AS time, service, sum(errors) / sum(requests) AS error_rate
          FROM profiler.request_stats_1s
          WHERE $__timeFilter(ts) AND ${SERVICES_SELECTED}
          GROUP BY time, service ORDER BY time, service`,
          "timeseries",
        )],
      },
      {
        title: "p99 latency, whole service (60 s window)",
        type: "timeseries",
        description:
          "The profiler's p99 over the last 60 s (latency_percentiles, latest version of each row), " +
          "sampled once per interval.",
        w: 12,
        h: 8,
        unit: "ms",
        targets: [sqlTarget(
          "A",
          `SELECT ts AS time, service, p99 / 1000 AS p99_ms
          FROM (${
            latestPercentiles(
              `$__timeFilter(ts) AND window_s = 60 AND method = '' AND ${SERVICES_SELECTED}
              AND toUInt32(ts) % $__interval_s = 0`,
            )
          })
          ORDER BY time, service`,
          "timeseries",
        )],
      },
      {
        title: "Services",
        type: "table",
        description:
          "Per service over the range: requests, errors, mean and maximum latency (request_stats_1s).",
        w: 12,
        h: 8,
        targets: [sqlTarget(
          "A",
          `SELECT service, sum(requests) AS request_count, sum(errors) AS error_count,
            sum(errors) / sum(requests) AS error_rate,
            sum(duration_sum_us) / sum(requests) / 1000 AS mean_ms,
            maxMerge(duration_max_us) / 1000 AS max_ms
          FROM profiler.request_stats_1s
          WHERE $__timeFilter(ts) AND ${SERVICES_SELECTED}
          GROUP BY service ORDER BY service`,
          "table",
        )],
        overrides: [
          {
            matcher: { id: "byName", options: "error_rate" },
            properties: [{ id: "unit", value: "percentunit" }],
          },
          { matcher: { id: "byRegexp", options: ".*_ms" }, properties: [{ id: "unit", value: "ms" }] },
        ],
      },
      {
        title: "Requests per second (Prometheus)",
        type: "timeseries",
        description: "requests_total as the services count it, per process.",
        w: 8,
        h: 8,
        unit: "reqps",
        targets: [promTarget("A", "sum by (job) (rate(requests_total[$__rate_interval]))", "{{job}}")],
      },
      {
        title: "CPU per process",
        type: "timeseries",
        description: "CPU seconds per second (process_cpu_seconds_total): 1 = one core.",
        w: 8,
        h: 8,
        unit: "short",
        targets: [
          promTarget("A", "sum by (job) (rate(process_cpu_seconds_total[$__rate_interval]))", "{{job}}"),
        ],
      },
      {
        title: "Requests in flight",
        type: "timeseries",
        description:
          "Requests being handled (requests_in_flight); admission control refuses past MAX_IN_FLIGHT.",
        w: 8,
        h: 8,
        unit: "short",
        targets: [promTarget("A", "sum by (job) (requests_in_flight)", "{{job}}")],
      },
    ],
  );
}

function latency(): Dashboard {
  return dashboard(
    "tailwatch-latency",
    "Tailwatch / Method latency",
    "The profiler's rolling percentiles per method (latency_percentiles) and exact maxima per completion " +
      "second (latency_profile_1s).",
    [
      queryVariable(
        "service",
        "Service",
        "SELECT DISTINCT service FROM profiler.latency_percentiles WHERE $__timeFilter(ts) ORDER BY service",
        { multi: false, includeAll: false },
      ),
      {
        name: "window",
        label: "Window (s)",
        type: "custom",
        query: "10,60,300",
        current: { selected: true, text: "60", value: "60" },
        options: ["10", "60", "300"].map((v) => ({ selected: v === "60", text: v, value: v })),
        multi: false,
        includeAll: false,
        hide: 0,
      },
      queryVariable(
        "method",
        "Method",
        "SELECT DISTINCT method FROM profiler.latency_percentiles WHERE $__timeFilter(ts) " +
          "AND service = ${service:singlequote} AND method != '' ORDER BY method",
        { multi: true, includeAll: true },
      ),
    ],
    [
      {
        title: "Percentiles, whole service",
        type: "timeseries",
        description:
          "p50 to p99.9 and the maximum over the chosen window, for the whole service, sampled once " +
          "per interval (latest version of each row).",
        w: 24,
        h: 9,
        unit: "ms",
        targets: [sqlTarget(
          "A",
          `SELECT ts AS time, p50 / 1000 AS p50_ms, p90 / 1000 AS p90_ms, p95 / 1000 AS p95_ms,
            p99 / 1000 AS p99_ms, p999 / 1000 AS p999_ms, pmax / 1000 AS max_ms
          FROM (${
            latestPercentiles(
              `$__timeFilter(ts) AND window_s = \${window:raw} AND service = \${service:singlequote}
              AND method = '' AND toUInt32(ts) % $__interval_s = 0`,
            )
          })
          ORDER BY time`,
          "timeseries",
        )],
      },
      {
        title: "p99 by method",
        type: "timeseries",
        description: "p99 over the chosen window per method, sampled once per interval.",
        w: 12,
        h: 8,
        unit: "ms",
        targets: [sqlTarget(
          "A",
          `SELECT ts AS time, method, p99 / 1000 AS p99_ms
          FROM (${
            latestPercentiles(
              `$__timeFilter(ts) AND window_s = \${window:raw} AND service = \${service:singlequote}
              AND method IN (\${method:singlequote}) AND toUInt32(ts) % $__interval_s = 0`,
            )
          })
          ORDER BY time, method`,
          "timeseries",
        )],
      },
      {
        title: "Throughput by method",
        type: "timeseries",
        description: "Requests per second over the chosen window per method (the profiler's rps).",
        w: 12,
        h: 8,
        unit: "reqps",
        targets: [sqlTarget(
          "A",
          `SELECT ts AS time, method, rate AS rps
          FROM (${
            latestPercentiles(
              `$__timeFilter(ts) AND window_s = \${window:raw} AND service = \${service:singlequote}
              AND method IN (\${method:singlequote}) AND toUInt32(ts) % $__interval_s = 0`,
            )
          })
          ORDER BY time, method`,
          "timeseries",
        )],
      },
      {
        title: "Methods at the end of the range",
        type: "table",
        description: "The newest window of each method (and of the whole service) in the range.",
        w: 24,
        h: 8,
        targets: [sqlTarget(
          "A",
          `SELECT if(method = '', '(whole service)', method) AS method_name,
            argMax(requests, ts) AS count, argMax(rate, ts) AS rps, argMax(err_rate, ts) AS error_rate,
            argMax(p50, ts) / 1000 AS p50_ms, argMax(p90, ts) / 1000 AS p90_ms, argMax(p99, ts) / 1000 AS p99_ms,
            argMax(p999, ts) / 1000 AS p999_ms, argMax(pmax, ts) / 1000 AS max_ms
          FROM (${
            latestPercentiles(
              `$__timeFilter(ts) AND window_s = \${window:raw} AND service = \${service:singlequote}`,
            )
          })
          GROUP BY method ORDER BY method_name`,
          "table",
        )],
        overrides: [
          {
            matcher: { id: "byName", options: "error_rate" },
            properties: [{ id: "unit", value: "percentunit" }],
          },
          { matcher: { id: "byRegexp", options: ".*_ms" }, properties: [{ id: "unit", value: "ms" }] },
        ],
      },
      {
        title: "Slowest request per interval, by completion second",
        type: "timeseries",
        description:
          "The exact maximum of the requests that completed in each interval (latency_profile_1s, " +
          "by completion second; ingest's floor markers, service '', left out).",
        w: 12,
        h: 8,
        unit: "ms",
        targets: [sqlTarget(
          "A",
          `SELECT ${bucket("end_ts")} AS time, method, maxMerge(duration_max_us) / 1000 AS max_ms
          FROM profiler.latency_profile_1s
          WHERE $__timeFilter(end_ts) AND service != '' AND service = \${service:singlequote}
            AND method IN (\${method:singlequote})
          GROUP BY time, method ORDER BY time, method`,
          "timeseries",
        )],
      },
      {
        title: "Completed requests per second",
        type: "timeseries",
        description: "Requests that completed in each interval, per method (latency_profile_1s).",
        w: 12,
        h: 8,
        unit: "reqps",
        targets: [sqlTarget(
          "A",
          `SELECT ${bucket("end_ts")} AS time, method, sum(requests) / $__interval_s AS rps
          FROM profiler.latency_profile_1s
          WHERE $__timeFilter(end_ts) AND service != '' AND service = \${service:singlequote}
            AND method IN (\${method:singlequote})
          GROUP BY time, method ORDER BY time, method`,
          "timeseries",
        )],
      },
    ],
  );
}

function statusCodes(): Dashboard {
  return dashboard(
    "tailwatch-status-codes",
    "Tailwatch / Status codes",
    "gRPC codes and REST statuses per second and the methods that fail (request_stats_1s); the services' view " +
      "from Prometheus.",
    [SERVICE_VARIABLE],
    [
      {
        title: "Responses by gRPC code",
        type: "timeseries",
        description: "Requests per second by gRPC code (REST requests carry the code their status maps to).",
        w: 12,
        h: 8,
        unit: "reqps",
        targets: [sqlTarget(
          "A",
          `SELECT ${bucket("ts")} AS time, ${GRPC_CODE_NAME} AS code, sum(requests) / $__interval_s AS rps
          FROM profiler.request_stats_1s
          WHERE $__timeFilter(ts) AND ${SERVICES_SELECTED}
          GROUP BY time, code ORDER BY time, code`,
          "timeseries",
        )],
      },
      {
        title: "REST responses by HTTP status",
        type: "timeseries",
        description: "REST requests per second by HTTP status.",
        w: 12,
        h: 8,
        unit: "reqps",
        targets: [sqlTarget(
          "A",
          `SELECT ${
            bucket("ts")
          } AS time, toString(http_status) AS status, sum(requests) / $__interval_s AS rps
          FROM profiler.request_stats_1s
          WHERE $__timeFilter(ts) AND protocol = 'http' AND ${SERVICES_SELECTED}
          GROUP BY time, status ORDER BY time, status`,
          "timeseries",
        )],
      },
      {
        title: "Failing methods",
        type: "table",
        description: "Requests with a gRPC code other than OK in the range, by service, method and code.",
        w: 12,
        h: 8,
        targets: [sqlTarget(
          "A",
          `SELECT service, method, ${GRPC_CODE_NAME} AS code, sum(requests) AS request_count
          FROM profiler.request_stats_1s
          WHERE $__timeFilter(ts) AND grpc_code != 0 AND ${SERVICES_SELECTED}
          GROUP BY service, method, grpc_code
          ORDER BY request_count DESC, service, method, code
          LIMIT 100`,
          "table",
        )],
      },
      {
        title: "Requests by code (Prometheus)",
        type: "timeseries",
        description: "requests_total by code, all processes.",
        w: 12,
        h: 8,
        unit: "reqps",
        targets: [promTarget("A", "sum by (code) (rate(requests_total[$__rate_interval]))", "{{code}}")],
      },
      {
        title: "Admission rejections (Prometheus)",
        type: "timeseries",
        description: "Requests refused at once past the in-flight limit (RESOURCE_EXHAUSTED / 429).",
        w: 24,
        h: 6,
        unit: "reqps",
        targets: [
          promTarget("A", "sum by (job) (rate(admission_rejections_total[$__rate_interval]))", "{{job}}"),
        ],
      },
    ],
  );
}

function pipeline(): Dashboard {
  return dashboard(
    "tailwatch-pipeline",
    "Tailwatch / Pipeline",
    "Events from the services through NATS and ingest into ClickHouse: throughput, lag, freshness and the " +
      "counts that must agree (requests = events = rows = distinct event ids).",
    [],
    [
      {
        title: "Requests served (range)",
        type: "stat",
        description: "requests_total over the range: what the services answered.",
        w: 6,
        h: 4,
        unit: "short",
        targets: [promTarget("A", "sum(increase(requests_total[$__range]))", "requests", true)],
      },
      {
        title: "Events published + dropped (range)",
        type: "stat",
        description:
          "Every request emits one event: published (acked by JetStream) plus dropped must equal the " +
          "requests served.",
        w: 6,
        h: 4,
        unit: "short",
        targets: [
          promTarget(
            "A",
            "sum(increase(events_published_total[$__range])) + sum(increase(events_dropped_total[$__range]))",
            "events",
            true,
          ),
        ],
      },
      {
        title: "Rows in ClickHouse (range)",
        type: "stat",
        description: "Rows of request_events started in the range, distinct event ids and duplicate rows " +
          "(must be 0: ingest is exactly once).",
        w: 12,
        h: 4,
        unit: "short",
        targets: [sqlTarget(
          "A",
          `SELECT count() AS rows, uniqExact(event_id) AS distinct_event_ids,
            count() - uniqExact(event_id) AS duplicate_rows
          FROM profiler.request_events WHERE $__timeFilter(ts)`,
          "table",
        )],
      },
      {
        title: "Events published per second",
        type: "timeseries",
        description: "Events acked by JetStream per second, per service (events_published_total).",
        w: 8,
        h: 8,
        unit: "short",
        targets: [
          promTarget("A", "sum by (job) (rate(events_published_total[$__rate_interval]))", "{{job}}"),
        ],
      },
      {
        title: "Events dropped per second",
        type: "timeseries",
        description: "Events dropped because the buffer was full (events_dropped_total): must stay 0.",
        w: 8,
        h: 8,
        unit: "short",
        targets: [promTarget("A", "sum by (job) (rate(events_dropped_total[$__rate_interval]))", "{{job}}")],
      },
      {
        title: "Event buffer depth",
        type: "timeseries",
        description: "Events waiting in each service's buffer (events_buffer_depth).",
        w: 8,
        h: 8,
        unit: "short",
        targets: [promTarget("A", "sum by (job) (events_buffer_depth)", "{{job}}")],
      },
      {
        title: "Rows inserted per second",
        type: "timeseries",
        description: "Rows ingest inserted into request_events per second (ingest_rows_inserted_total).",
        w: 8,
        h: 8,
        unit: "short",
        targets: [promTarget("A", "sum(rate(ingest_rows_inserted_total[$__rate_interval]))", "rows/s")],
      },
      {
        title: "Ingest lag",
        type: "timeseries",
        description:
          "Messages not yet delivered to ingest (ingest_consumer_pending) and delivered but not yet " +
          "acked (ingest_consumer_ack_pending).",
        w: 8,
        h: 8,
        unit: "short",
        targets: [
          promTarget("A", "sum(ingest_consumer_pending)", "pending"),
          promTarget("B", "sum(ingest_consumer_ack_pending)", "ack pending"),
        ],
      },
      {
        title: "INSERT duration p99",
        type: "timeseries",
        description: "p99 of ingest's INSERT duration (ingest_insert_duration_seconds).",
        w: 8,
        h: 8,
        unit: "s",
        targets: [
          promTarget(
            "A",
            "histogram_quantile(0.99, sum by (le) (rate(ingest_insert_duration_seconds_bucket[$__rate_interval])))",
            "p99",
          ),
        ],
      },
      {
        title: "Seconds since the last commit",
        type: "stat",
        description: "Since ingest last committed and acked a batch (ingest_last_commit_timestamp_seconds).",
        w: 8,
        h: 4,
        unit: "s",
        decimals: 0,
        targets: [promTarget("A", "time() - max(ingest_last_commit_timestamp_seconds)", "seconds", true)],
      },
      {
        title: "Dead letters per second",
        type: "timeseries",
        description: "Events ingest could not store, by reason (ingest_dead_lettered_total).",
        w: 16,
        h: 4,
        unit: "short",
        targets: [
          promTarget(
            "A",
            "sum by (reason) (rate(ingest_dead_lettered_total[$__rate_interval]))",
            "{{reason}}",
          ),
        ],
      },
      {
        title: "Freshness: request start to INSERT sent",
        type: "timeseries",
        description:
          "ingested_at_ms - ts_ms of the rows started in each interval (rows the worker wrote; others " +
          "carry 0): how long after a request started its row was on its way into ClickHouse.",
        w: 24,
        h: 8,
        unit: "ms",
        targets: [sqlTarget(
          "A",
          `SELECT ${bucket("ts")} AS time,
            quantileExact(0.5)(ingested_at_ms - ts_ms) AS p50_ms,
            quantileExact(0.99)(ingested_at_ms - ts_ms) AS p99_ms,
            max(ingested_at_ms - ts_ms) AS max_ms
          FROM profiler.request_events
          WHERE $__timeFilter(ts) AND ingested_at_ms >= ts_ms AND ingested_at_ms > 0
          GROUP BY time ORDER BY time`,
          "timeseries",
        )],
      },
    ],
  );
}

function slowRequests(): Dashboard {
  const traceLink = [{
    matcher: { id: "byName", options: "trace_id" },
    properties: [{
      id: "links",
      value: [{
        title: "Open the trace in Tailwatch",
        url: "${web_url}/traces/${__value.raw}",
        targetBlank: true,
      }],
    }],
  }];
  return dashboard(
    "tailwatch-slow-requests",
    "Tailwatch / Slow requests",
    "The slowest requests and traces in the range, with their trace ids (request_events); a trace id opens " +
      "the trace in the Tailwatch web app.",
    [
      SERVICE_VARIABLE,
      {
        name: "web_url",
        label: "Tailwatch web",
        type: "textbox",
        query: "http://localhost:8080",
        current: { text: "http://localhost:8080", value: "http://localhost:8080" },
        hide: 0,
      },
    ],
    [
      {
        title: "Slowest requests",
        type: "table",
        description: "The 50 longest requests that started in the range.",
        w: 24,
        h: 10,
        targets: [sqlTarget(
          "A",
          `SELECT toDateTime(intDiv(ts_ms, 1000)) AS time, service, method, protocol, route,
            duration_us / 1000 AS duration_ms, grpc_code, http_status, trace_id, span_id, instance
          FROM profiler.request_events
          WHERE $__timeFilter(ts) AND ${SERVICES_SELECTED}
          ORDER BY duration_us DESC, ts_ms, trace_id, span_id
          LIMIT 50`,
          "table",
        )],
        overrides: [
          ...traceLink,
          { matcher: { id: "byName", options: "duration_ms" }, properties: [{ id: "unit", value: "ms" }] },
        ],
      },
      {
        title: "Slowest traces",
        type: "table",
        description:
          "Traces with a span started in the range, by their length (first span start to last span " +
          "end; ts_us, or ts_ms in rows from before it existed).",
        w: 24,
        h: 10,
        targets: [sqlTarget(
          "A",
          `SELECT trace_id, count() AS spans,
            arrayStringConcat(arraySort(groupUniqArray(service)), ',') AS services,
            toDateTime(intDiv(min(ts_ms), 1000)) AS started,
            (max(if(ts_us = 0, ts_ms * 1000, ts_us) + duration_us) - min(if(ts_us = 0, ts_ms * 1000, ts_us))) / 1000
              AS trace_ms,
            countIf(grpc_code != 0) AS failed_spans
          FROM profiler.request_events
          WHERE $__timeFilter(ts) AND trace_id != ''
          GROUP BY trace_id
          ORDER BY trace_ms DESC, trace_id
          LIMIT 50`,
          "table",
        )],
        overrides: [
          ...traceLink,
          { matcher: { id: "byName", options: "trace_ms" }, properties: [{ id: "unit", value: "ms" }] },
        ],
      },
      {
        title: "Requests slower than 100 ms per second",
        type: "timeseries",
        description: "Per service, the requests that took more than 100 ms, per second of each interval.",
        w: 24,
        h: 8,
        unit: "reqps",
        targets: [sqlTarget(
          "A",
          `SELECT ${bucket("ts")} AS time, service, countIf(duration_us > 100000) / $__interval_s AS slow_rps
          FROM profiler.request_events
          WHERE $__timeFilter(ts) AND ${SERVICES_SELECTED}
          GROUP BY time, service ORDER BY time, service`,
          "timeseries",
        )],
      },
    ],
  );
}

export function dashboards(): Dashboard[] {
  return [overview(), latency(), statusCodes(), pipeline(), slowRequests()];
}

export const DASHBOARD_DIR = new URL("./dashboards/", import.meta.url);

/** The file text of a dashboard: 2-space JSON and a final newline (what `deno fmt` keeps). */
export function dashboardText(d: Dashboard): string {
  return `${JSON.stringify(d.json, null, 2)}\n`;
}

if (import.meta.main) {
  await Deno.mkdir(DASHBOARD_DIR, { recursive: true });
  for (const d of dashboards()) {
    await Deno.writeTextFile(new URL(d.file, DASHBOARD_DIR), dashboardText(d));
    console.log(`wrote deploy/grafana/dashboards/${d.file}`);
  }
}
