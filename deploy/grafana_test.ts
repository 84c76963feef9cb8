/**
 * Every ClickHouse query of the Grafana dashboards (deploy/grafana/dashboards/*.json), run as Grafana would run
 * it: variables interpolated, grafana-clickhouse-datasource's macros expanded for a fixed range and interval
 * (deploy/grafana/expand.ts), as the read-only user on ClickHouse 18.16 and on chDB (a current engine), both
 * holding the same known rows (the real migrations, raw events through the real materialized views, versioned
 * percentile rows, floor markers). For each query: it runs on both lines; the columns are what the panel type
 * needs (a time series: a DateTime `time` first, numbers, string columns as labels, ordered by time; a stat: one
 * row of numbers); the values equal what this file computes from the same rows in TypeScript, independently of
 * ClickHouse; both lines give the same answer. The dashboard variables' queries run too. Also: the JSON files
 * are what deploy/grafana/dashboards.ts makes, every datasource uid is provisioned, every macro is allowed.
 * PromQL panels are run against a real Prometheus in deploy/prometheus_test.ts.
 */
import { applyMigrations } from "@tailwatch/ingest/migrations";
import {
  assert,
  assertEquals,
  CLICKHOUSE_ADMIN,
  CLICKHOUSE_READONLY,
  seededRandom,
  startClickHouseServer,
} from "@tailwatch/testing";
import { CLICKHOUSE, dashboards, dashboardText, PROMETHEUS } from "./grafana/dashboards.ts";
import {
  expandClickHouseMacros,
  interpolateVariables,
  panelQueries,
  type TimeRange,
  type VariableValues,
} from "./grafana/expand.ts";
import {
  asIngestClickHouse,
  dateTimeToUnix,
  httpEngine,
  type QueryResult,
  type SqlEngine,
  startChdbEngine,
} from "./test_helpers.ts";
import { Code } from "@tailwatch/grpc";

// --- the known rows ----------------------------------------------------------------------------------------

/** The range the panels are run for: [T0, T0 + 600] s, interval 10 s. Rows exist 25 s either side too. */
const T0 = 1765000000;
const RANGE_S = 600;
const INTERVAL_S = 10;
const RANGE: TimeRange = {
  fromMs: T0 * 1000,
  toMs: (T0 + RANGE_S) * 1000 + 999,
  intervalMs: INTERVAL_S * 1000,
};
const inRange = (s: number) => s >= T0 && s <= T0 + RANGE_S;
const bucketOf = (s: number) => Math.floor(s / INTERVAL_S) * INTERVAL_S;

const KEYS = [
  { service: "catalog", method: "/catalog.v1.CatalogService/GetProduct", route: "GET /v1/products/{id}" },
  { service: "catalog", method: "/catalog.v1.CatalogService/ListProducts", route: "GET /v1/products" },
  { service: "orders", method: "/orders.v1.OrderService/CreateOrder", route: "POST /v1/orders" },
  { service: "payments", method: "/payments.v1.PaymentService/Charge", route: "POST /v1/payments" },
];
const HTTP_STATUS_OF: Record<number, number> = { 0: 200, 5: 404, 8: 429, 13: 500, 14: 503 };

interface Event {
  event_id: string;
  ts: number;
  ts_ms: number;
  ts_us: number;
  service: string;
  method: string;
  protocol: string;
  route: string;
  grpc_code: number;
  http_status: number;
  duration_us: number;
  request_bytes: number;
  response_bytes: number;
  trace_id: string;
  span_id: string;
  parent_span_id: string;
  instance: string;
  error_message: string;
  fault_injected: number;
  stream_seq: number;
  ingested_at_ms: number;
  ingest_batch_seq: number;
  ingest_floor_seq: number;
  load_run_id: string;
}

const hex = (random: () => number, digits: number) =>
  Array.from({ length: digits }, () => Math.floor(random() * 16).toString(16)).join("");

function makeEvents(): Event[] {
  const random = seededRandom(27);
  const events: Event[] = [];
  let traceId = "";
  let rootSpan = "";
  for (let s = T0 - 25; s <= T0 + RANGE_S + 25; s++) {
    KEYS.forEach((key, k) => {
      const n = 1 + (s * 31 + k * 7) % 3;
      for (let j = 0; j < n; j++) {
        const i = events.length;
        const slow = random() < 0.03;
        const duration = slow ? 100_000 + Math.floor(random() * 400_000) : 150 + Math.floor(random() * 6000);
        const roll = random();
        const code = roll < 0.9 ? 0 : [14, 5, 8, 13][Math.floor(random() * 4)];
        const http = random() < 0.25;
        const tsMs = s * 1000 + Math.floor(random() * 1000);
        if (i % 3 === 0) {
          traceId = hex(random, 32);
          rootSpan = "";
        }
        const spanId = hex(random, 16);
        const ingested = random() < 0.05 ? 0 : i === 4242 ? tsMs - 5 : tsMs + 40 + Math.floor(random() * 960);
        events.push({
          event_id: uuidFrom(random),
          ts: s,
          ts_ms: tsMs,
          ts_us: random() < 0.1 ? 0 : tsMs * 1000 + Math.floor(random() * 1000),
          service: key.service,
          method: key.method,
          protocol: http ? "http" : "grpc",
          route: http ? key.route : "",
          grpc_code: code,
          http_status: http ? HTTP_STATUS_OF[code] : 0,
          duration_us: duration,
          request_bytes: Math.floor(random() * 500),
          response_bytes: Math.floor(random() * 5000),
          trace_id: i % 97 === 5 ? "" : traceId,
          span_id: spanId,
          parent_span_id: rootSpan,
          instance: `${key.service}-1`,
          error_message: code === 0 ? "" : "injected",
          fault_injected: code === 0 ? 0 : 1,
          stream_seq: i + 1,
          ingested_at_ms: ingested,
          ingest_batch_seq: Math.floor(i / 500) * 500 + 500,
          ingest_floor_seq: Math.floor(i / 500) * 500,
          load_run_id: "",
        });
        if (rootSpan === "") rootSpan = spanId;
      }
    });
  }
  // Two rows written twice (a duplicate the pipeline dashboard must show).
  events.push({ ...events[100], stream_seq: events.length + 1 });
  events.push({ ...events[2000], stream_seq: events.length + 2 });
  return events;
}

function uuidFrom(random: () => number): string {
  const h = hex(random, 32);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20)}`;
}

/** The second a request completed in, as migration 0009's view computes it. */
const endSecond = (e: Event) =>
  Math.floor(e.ts_ms / 1000) + Math.floor(((e.ts_ms % 1000) * 1000 + e.duration_us) / 1e6);

interface PercentileRow {
  ts: number;
  window_s: number;
  service: string;
  method: string;
  count: number;
  errors: number;
  rps: number;
  error_rate: number;
  p50_us: number;
  p90_us: number;
  p95_us: number;
  p99_us: number;
  p999_us: number;
  max_us: number;
  version: number;
  ingest_floor_seq: number;
}

const PERCENTILE_KEYS = [
  ...KEYS.map((k) => ({ service: k.service, method: k.method })),
  ...["catalog", "orders", "payments"].map((service) => ({ service, method: "" })),
];

/** Every (ts, window, key) has a row; some were first written with wrong values and a lower version. */
function makePercentiles(): { all: PercentileRow[]; latest: PercentileRow[] } {
  const all: PercentileRow[] = [];
  const latest: PercentileRow[] = [];
  for (let ts = T0 - 20; ts <= T0 + RANGE_S + 20; ts++) {
    [10, 60, 300].forEach((window, w) => {
      PERCENTILE_KEYS.forEach((key, k) => {
        const p50 = 800 + (ts * 13 + w * 101 + k * 37) % 4000;
        const count = 20 + (ts * 7 + k) % 90;
        const errors = (ts + k) % 5;
        const row: PercentileRow = {
          ts,
          window_s: window,
          ...key,
          count,
          errors,
          rps: count / window,
          error_rate: errors / count,
          p50_us: p50,
          p90_us: p50 + 400 + k,
          p95_us: p50 + 900 + w,
          p99_us: p50 + 2500 + ((ts * 3) % 700),
          p999_us: p50 + 9000,
          max_us: p50 + 12000 + k * 11,
          version: 2,
          ingest_floor_seq: 1000,
        };
        if ((ts + k + w) % 5 === 0) {
          // Larger than the right values and smaller ones alike, so neither max() nor min() passes for argMax.
          all.push({
            ...row,
            version: 1,
            p50_us: 999_999_999,
            p90_us: 1,
            p95_us: 999_999_999,
            p99_us: 999_999_999,
            p999_us: 1,
            count: 7,
            rps: 1e9,
            error_rate: 0.5,
            max_us: 3,
          });
        }
        if ((ts + k) % 11 === 0) {
          // A correction: version 3 replaces version 2, written before it to prove the order does not matter.
          const corrected = { ...row, version: 3, p99_us: row.p99_us + 1234, count: row.count + 1 };
          corrected.rps = corrected.count / window;
          corrected.error_rate = corrected.errors / corrected.count;
          all.push(corrected, row);
          latest.push(corrected);
        } else {
          all.push(row);
          latest.push(row);
        }
      });
    });
  }
  return { all, latest };
}

const EVENTS = makeEvents();
const PERCENTILES = makePercentiles();
/** Floor markers of ingest (service '') inside the range, with a huge max: a panel that keeps them shows it. */
const MARKER_SECONDS = [T0 + 5, T0 + 300, T0 + 599];

// --- what each panel must show, computed here from the rows ------------------------------------------------

type Row = Record<string, string | number>;

const grouped = <T>(items: T[], key: (item: T) => string): Map<string, T[]> => {
  const map = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const list = map.get(k);
    if (list) list.push(item);
    else map.set(k, [item]);
  }
  return map;
};
const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);
const max = (values: number[]) => values.reduce((a, b) => Math.max(a, b), -Infinity);
/** ClickHouse's quantileExact: the value at 0-based position floor(q * n) of the sorted values. */
const quantileExact = (q: number, values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
};
const codeName = (code: number) => Code[code] ?? String(code);
const rangeEvents = (services?: string[]) =>
  EVENTS.filter((e) => inRange(e.ts) && (services === undefined || services.includes(e.service)));

/** Rows per (time bucket, label) of the events in range: `value` of each group. */
function perBucket(
  events: Event[],
  second: (e: Event) => number,
  label: [string, (e: Event) => string] | undefined,
  values: Record<string, (group: Event[]) => number>,
): Row[] {
  const rows: Row[] = [];
  for (
    const group of grouped(events, (e) => `${bucketOf(second(e))}\u0000${label ? label[1](e) : ""}`).values()
  ) {
    const row: Row = { time: bucketOf(second(group[0])) };
    if (label) row[label[0]] = label[1](group[0]);
    for (const [name, f] of Object.entries(values)) row[name] = f(group);
    rows.push(row);
  }
  return rows;
}

const ALL_SERVICES = ["catalog", "orders", "payments"];
const LATENCY_SERVICE = "catalog";
const LATENCY_WINDOW = 60;
const latencyPercentiles = (methodFilter: (m: string) => boolean, sampled = true) =>
  PERCENTILES.latest.filter((r) =>
    inRange(r.ts) && r.window_s === LATENCY_WINDOW && r.service === LATENCY_SERVICE &&
    methodFilter(r.method) &&
    (!sampled || r.ts % INTERVAL_S === 0)
  );

/** Expected rows per "<dashboard uid> / <panel title>"; `ordered` when the panel's SQL orders them exactly. */
const EXPECTED: Record<string, { rows: () => Row[]; ordered?: boolean }> = {
  "tailwatch-overview / Requests in range": { rows: () => [{ total_requests: rangeEvents().length }] },
  "tailwatch-overview / Error rate in range": {
    rows:
      () => [{ error_rate: rangeEvents().filter((e) => e.grpc_code !== 0).length / rangeEvents().length }],
  },
  "tailwatch-overview / Slowest request in range": {
    rows: () => [{ max_ms: max(rangeEvents().map((e) => e.duration_us)) / 1000 }],
  },
  "tailwatch-overview / Requests per second": {
    rows: () =>
      perBucket(rangeEvents(), (e) => e.ts, ["service", (e) => e.service], {
        rps: (g) => g.length / INTERVAL_S,
      }),
  },
  "tailwatch-overview / Error rate": {
    rows: () =>
      perBucket(rangeEvents(), (e) => e.ts, ["service", (e) => e.service], {
        error_rate: (g) => g.filter((e) => e.grpc_code !== 0).length / g.length,
      }),
  },
  "tailwatch-overview / p99 latency, whole service (60 s window)": {
    rows: () =>
      PERCENTILES.latest.filter((r) =>
        inRange(r.ts) && r.ts % INTERVAL_S === 0 && r.window_s === 60 && r.method === ""
      )
        .map((r) => ({ time: r.ts, service: r.service, p99_ms: r.p99_us / 1000 })),
  },
  "tailwatch-overview / Services": {
    ordered: true,
    rows: () =>
      [...grouped(rangeEvents(), (e) => e.service).entries()].sort(([a], [b]) => a < b ? -1 : 1).map((
        [service, g],
      ) => ({
        service,
        request_count: g.length,
        error_count: g.filter((e) => e.grpc_code !== 0).length,
        error_rate: g.filter((e) => e.grpc_code !== 0).length / g.length,
        mean_ms: sum(g.map((e) => e.duration_us)) / g.length / 1000,
        max_ms: max(g.map((e) => e.duration_us)) / 1000,
      })),
  },
  "tailwatch-latency / Percentiles, whole service": {
    rows: () =>
      latencyPercentiles((m) => m === "").map((r) => ({
        time: r.ts,
        p50_ms: r.p50_us / 1000,
        p90_ms: r.p90_us / 1000,
        p95_ms: r.p95_us / 1000,
        p99_ms: r.p99_us / 1000,
        p999_ms: r.p999_us / 1000,
        max_ms: r.max_us / 1000,
      })),
  },
  "tailwatch-latency / p99 by method": {
    rows: () =>
      latencyPercentiles((m) => m !== "").map((r) => ({
        time: r.ts,
        method: r.method,
        p99_ms: r.p99_us / 1000,
      })),
  },
  "tailwatch-latency / Throughput by method": {
    rows: () =>
      latencyPercentiles((m) => m !== "").map((r) => ({ time: r.ts, method: r.method, rps: r.rps })),
  },
  "tailwatch-latency / Methods at the end of the range": {
    ordered: true,
    rows: () =>
      latencyPercentiles(() => true, false).filter((r) => r.ts === T0 + RANGE_S)
        .map((r) => ({
          method_name: r.method === "" ? "(whole service)" : r.method,
          count: r.count,
          rps: r.rps,
          error_rate: r.error_rate,
          p50_ms: r.p50_us / 1000,
          p90_ms: r.p90_us / 1000,
          p99_ms: r.p99_us / 1000,
          p999_ms: r.p999_us / 1000,
          max_ms: r.max_us / 1000,
        })).sort((a, b) => a.method_name < b.method_name ? -1 : 1),
  },
  "tailwatch-latency / Slowest request per interval, by completion second": {
    rows: () =>
      perBucket(
        EVENTS.filter((e) => inRange(endSecond(e)) && e.service === LATENCY_SERVICE),
        endSecond,
        ["method", (e) => e.method],
        { max_ms: (g) => max(g.map((e) => e.duration_us)) / 1000 },
      ),
  },
  "tailwatch-latency / Completed requests per second": {
    rows: () =>
      perBucket(
        EVENTS.filter((e) => inRange(endSecond(e)) && e.service === LATENCY_SERVICE),
        endSecond,
        ["method", (e) => e.method],
        { rps: (g) => g.length / INTERVAL_S },
      ),
  },
  "tailwatch-status-codes / Responses by gRPC code": {
    rows: () =>
      perBucket(rangeEvents(), (e) => e.ts, ["code", (e) => codeName(e.grpc_code)], {
        rps: (g) => g.length / INTERVAL_S,
      }),
  },
  "tailwatch-status-codes / REST responses by HTTP status": {
    rows: () =>
      perBucket(rangeEvents().filter((e) => e.protocol === "http"), (e) => e.ts, [
        "status",
        (e) => String(e.http_status),
      ], { rps: (g) => g.length / INTERVAL_S }),
  },
  "tailwatch-status-codes / Failing methods": {
    ordered: true,
    rows: () =>
      [
        ...grouped(rangeEvents().filter((e) => e.grpc_code !== 0), (e) =>
          `${e.service} ${e.method} ${e.grpc_code}`)
          .values(),
      ]
        .map((g) => ({
          service: g[0].service,
          method: g[0].method,
          code: codeName(g[0].grpc_code),
          request_count: g.length,
        }))
        .sort((a, b) =>
          b.request_count - a.request_count || (a.service < b.service ? -1 : a.service > b.service ? 1 : 0) ||
          (a.method < b.method ? -1 : a.method > b.method ? 1 : 0) ||
          (a.code < b.code ? -1 : a.code > b.code ? 1 : 0)
        ).slice(0, 100),
  },
  "tailwatch-pipeline / Rows in ClickHouse (range)": {
    rows: () => {
      const events = rangeEvents();
      const distinct = new Set(events.map((e) => e.event_id)).size;
      return [{
        rows: events.length,
        distinct_event_ids: distinct,
        duplicate_rows: events.length - distinct,
      }];
    },
  },
  "tailwatch-pipeline / Freshness: request start to INSERT sent": {
    rows: () =>
      perBucket(
        rangeEvents().filter((e) => e.ingested_at_ms > 0 && e.ingested_at_ms >= e.ts_ms),
        (e) => e.ts,
        undefined,
        {
          p50_ms: (g) => quantileExact(0.5, g.map((e) => e.ingested_at_ms - e.ts_ms)),
          p99_ms: (g) => quantileExact(0.99, g.map((e) => e.ingested_at_ms - e.ts_ms)),
          max_ms: (g) => max(g.map((e) => e.ingested_at_ms - e.ts_ms)),
        },
      ),
  },
  "tailwatch-slow-requests / Slowest requests": {
    ordered: true,
    rows: () =>
      rangeEvents().sort((a, b) =>
        b.duration_us - a.duration_us || a.ts_ms - b.ts_ms ||
        (a.trace_id < b.trace_id ? -1 : a.trace_id > b.trace_id ? 1 : 0) ||
        (a.span_id < b.span_id ? -1 : a.span_id > b.span_id ? 1 : 0)
      ).slice(0, 50).map((e) => ({
        time: Math.floor(e.ts_ms / 1000),
        service: e.service,
        method: e.method,
        protocol: e.protocol,
        route: e.route,
        duration_ms: e.duration_us / 1000,
        grpc_code: e.grpc_code,
        http_status: e.http_status,
        trace_id: e.trace_id,
        span_id: e.span_id,
        instance: e.instance,
      })),
  },
  "tailwatch-slow-requests / Slowest traces": {
    ordered: true,
    rows: () => {
      const start = (e: Event) => (e.ts_us === 0 ? e.ts_ms * 1000 : e.ts_us);
      return [...grouped(rangeEvents().filter((e) => e.trace_id !== ""), (e) => e.trace_id).values()].map((
        g,
      ) => ({
        trace_id: g[0].trace_id,
        spans: g.length,
        services: [...new Set(g.map((e) => e.service))].sort().join(","),
        started: Math.floor(Math.min(...g.map((e) => e.ts_ms)) / 1000),
        trace_ms: (max(g.map((e) => start(e) + e.duration_us)) - Math.min(...g.map(start))) / 1000,
        failed_spans: g.filter((e) => e.grpc_code !== 0).length,
      })).sort((a, b) => b.trace_ms - a.trace_ms || (a.trace_id < b.trace_id ? -1 : 1)).slice(0, 50);
    },
  },
  "tailwatch-slow-requests / Requests slower than 100 ms per second": {
    rows: () =>
      perBucket(rangeEvents(), (e) => e.ts, ["service", (e) => e.service], {
        slow_rps: (g) => g.filter((e) => e.duration_us > 100_000).length / INTERVAL_S,
      }),
  },
};

/** The values the variable queries must offer, and the selection the panels run with. */
const EXPECTED_VARIABLES: Record<string, { options: string[]; selected: string[] }> = {
  "tailwatch-overview / service": { options: ALL_SERVICES, selected: ALL_SERVICES },
  "tailwatch-status-codes / service": { options: ALL_SERVICES, selected: ALL_SERVICES },
  "tailwatch-slow-requests / service": { options: ALL_SERVICES, selected: ALL_SERVICES },
  "tailwatch-latency / service": { options: ALL_SERVICES, selected: [LATENCY_SERVICE] },
  "tailwatch-latency / method": {
    options: KEYS.filter((k) => k.service === LATENCY_SERVICE).map((k) => k.method),
    selected: KEYS.filter((k) => k.service === LATENCY_SERVICE).map((k) => k.method),
  },
};

// --- running and checking ----------------------------------------------------------------------------------

const NUMERIC = /^(U?Int(8|16|32|64|128|256)|Float(32|64)|Decimal.*)$/;

/** A result as rows keyed by column name: numbers as numbers, DateTime as unix seconds. */
function toRows(result: QueryResult, timeZone: string): Row[] {
  return result.rows.map((values) => {
    const row: Row = {};
    result.names.forEach((name, i) => {
      const type = result.types[i];
      const v = values[i];
      if (type === "DateTime") row[name] = dateTimeToUnix(String(v), timeZone);
      else if (NUMERIC.test(type)) row[name] = Number(v);
      else row[name] = String(v);
    });
    return row;
  });
}

const rowKey = (row: Row) =>
  JSON.stringify(Object.keys(row).sort().map((k) => typeof row[k] === "number" ? "" : row[k]));

function sameNumber(a: number, b: number): boolean {
  if (Number.isNaN(a) || Number.isNaN(b)) return Number.isNaN(a) && Number.isNaN(b);
  return Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));
}

/** Asserts two row lists are equal (numbers within 1e-9 relative), in order or as sets (by their text columns). */
function assertRowsEqual(actual: Row[], expected: Row[], ordered: boolean, what: string): void {
  assertEquals(actual.length, expected.length, `${what}: number of rows`);
  const sortRows = (rows: Row[]) =>
    ordered ? rows : [...rows].sort((a, b) => {
      const ka = `${a.time ?? ""} ${rowKey(a)}`;
      const kb = `${b.time ?? ""} ${rowKey(b)}`;
      return ka < kb ? -1 : ka > kb ? 1 : 0;
    });
  const a = sortRows(actual);
  const e = sortRows(expected);
  for (let i = 0; i < a.length; i++) {
    assertEquals(Object.keys(a[i]).sort(), Object.keys(e[i]).sort(), `${what}: columns`);
    for (const key of Object.keys(e[i])) {
      const av = a[i][key];
      const ev = e[i][key];
      const ok = typeof ev === "number" && typeof av === "number" ? sameNumber(av, ev) : av === ev;
      assert(
        ok,
        `${what}: row ${i} column ${key}: got ${av}, expected ${ev}\n  row: ${
          JSON.stringify(a[i])
        }\n  expected: ${JSON.stringify(e[i])}`,
      );
    }
  }
}

/** The column layout each panel type needs from the plugin's answer. */
function checkShape(what: string, panelType: string, format: number, result: QueryResult, rows: Row[]): void {
  assert(rows.length > 0, `${what}: no rows (the known data should fill every panel)`);
  if (format === 0) {
    assertEquals(result.names[0], "time", `${what}: a time series' first column is 'time'`);
    assertEquals(result.types[0], "DateTime", `${what}: 'time' is a DateTime`);
    const numeric = result.types.slice(1).filter((t) => NUMERIC.test(t)).length;
    assert(numeric > 0, `${what}: a time series needs a numeric column`);
    for (const t of result.types.slice(1)) {
      assert(NUMERIC.test(t) || t === "String", `${what}: column type ${t}`);
    }
    const seen = new Set<string>();
    for (let i = 0; i < rows.length; i++) {
      if (i > 0) assert(Number(rows[i].time) >= Number(rows[i - 1].time), `${what}: rows ordered by time`);
      const labels = `${rows[i].time} ${rowKey(rows[i])}`;
      assert(!seen.has(labels), `${what}: two rows for ${labels} (a long-to-wide frame would be ambiguous)`);
      seen.add(labels);
    }
  } else if (panelType === "stat") {
    assertEquals(rows.length, 1, `${what}: a stat panel reads one row`);
    for (const t of result.types) assert(NUMERIC.test(t), `${what}: a stat shows numbers, got ${t}`);
  }
}

async function insertKnownRows(admin: SqlEngine): Promise<void> {
  const insert = async (table: string, rows: object[]) => {
    for (let i = 0; i < rows.length; i += 5000) {
      await admin.run(
        `INSERT INTO profiler.${table} FORMAT JSONEachRow\n` +
          rows.slice(i, i + 5000).map((r) => JSON.stringify(r)).join("\n"),
      );
    }
  };
  await insert("request_events", EVENTS);
  await insert("latency_percentiles", PERCENTILES.all);
  for (const second of MARKER_SECONDS) {
    await admin.run(
      `INSERT INTO profiler.latency_profile_1s (ingest_batch_seq, end_ts, ts, service, method, requests, errors,
        duration_max_us, ingest_floor_seq, histogramMap.bucket, histogramMap.count)
      SELECT 9000, toDateTime(${second}), toDateTime(${second}), '', '', 0, 0,
        arrayReduce('maxState', [toUInt64(999999999)]), arrayReduce('maxState', [toUInt64(9000)]), [], []`,
    );
  }
}

interface Line {
  name: string;
  reader: SqlEngine;
  timeZone: string;
}

/** Runs one query on a line, with its text in the error when it fails. */
async function runOn(line: Line, sql: string, what: string): Promise<{ result: QueryResult; rows: Row[] }> {
  let result: QueryResult;
  try {
    result = await line.reader.select(sql);
  } catch (error) {
    throw new Error(`${what} failed on ${line.name}:\n${error}\n--- SQL ---\n${sql}`);
  }
  return { result, rows: toRows(result, line.timeZone) };
}

Deno.test("Grafana: every ClickHouse panel and variable, on ClickHouse 18.16 and on chDB, equals the known rows", async (t) => {
  const files = new Map<string, Record<string, unknown>>();
  await t.step("the JSON files are what dashboards.ts makes; datasources are provisioned", async () => {
    for (const d of dashboards()) {
      const path = new URL(`./grafana/dashboards/${d.file}`, import.meta.url);
      const text = await Deno.readTextFile(path);
      assertEquals(
        text,
        dashboardText(d),
        `${d.file} is stale: run deno run -A deploy/grafana/dashboards.ts`,
      );
      files.set(d.uid, JSON.parse(text));
    }
    const provisioned = await Deno.readTextFile(
      new URL("./grafana/provisioning/datasources/tailwatch.yaml", import.meta.url),
    );
    for (const uid of [CLICKHOUSE.uid, PROMETHEUS.uid]) {
      assert(provisioned.includes(`uid: ${uid}`), `datasource ${uid}`);
    }
    const uids = new Set<string>();
    for (const [uid, json] of files) {
      for (const q of panelQueries(json)) {
        assert(
          ([CLICKHOUSE.uid, PROMETHEUS.uid] as string[]).includes(q.datasourceUid),
          `${uid} / ${q.panel}: datasource`,
        );
        if (q.datasourceUid === CLICKHOUSE.uid) {
          const key = `${uid} / ${q.panel}`;
          assert(
            EXPECTED[key],
            `${key}: no expectation in grafana_test.ts (every ClickHouse panel is checked)`,
          );
          uids.add(key);
        }
      }
    }
    assertEquals([...uids].sort(), Object.keys(EXPECTED).sort(), "every expectation has its panel");
  });

  await using server = await startClickHouseServer();
  await using chdb = await startChdbEngine();
  const admin18 = httpEngine(
    "ClickHouse 18.16 (admin)",
    server.url,
    CLICKHOUSE_ADMIN.username,
    CLICKHOUSE_ADMIN.password,
  );
  const lines: Line[] = [];

  await t.step("both lines: the real migrations, then the known rows", async () => {
    await applyMigrations({
      url: server.url,
      username: CLICKHOUSE_ADMIN.username,
      password: CLICKHOUSE_ADMIN.password,
      database: "profiler",
    });
    await applyMigrations({ clickhouse: asIngestClickHouse(chdb), database: "profiler" });
    await insertKnownRows(admin18);
    await insertKnownRows(chdb);
    const reader = httpEngine(
      "ClickHouse 18.16 (tailwatch_reader)",
      server.url,
      CLICKHOUSE_READONLY.username,
      CLICKHOUSE_READONLY.password,
    );
    lines.push({ name: "ClickHouse 18.16", reader, timeZone: await reader.timezone() });
    lines.push({ name: chdb.name, reader: chdb, timeZone: await chdb.timezone() });
    // The reader really is read-only: what Grafana runs cannot write.
    let refused = false;
    try {
      await reader.run("INSERT INTO profiler.request_events (service) VALUES ('x')");
    } catch {
      refused = true;
    }
    assert(refused, "tailwatch_reader cannot INSERT");
  });

  for (const d of dashboards()) {
    await t.step(d.title, async () => {
      const json = files.get(d.uid)!;
      const variables: VariableValues = {};
      for (const v of (json.templating as { list: Array<Record<string, unknown>> }).list) {
        const name = String(v.name);
        if (v.type === "custom" || v.type === "textbox" || v.type === "constant") {
          variables[name] = [String((v.current as { value: string }).value)];
          continue;
        }
        const sql = expandClickHouseMacros(interpolateVariables(String(v.query), variables), RANGE);
        const expected = EXPECTED_VARIABLES[`${d.uid} / ${name}`];
        assert(expected, `${d.uid} / ${name}: no expected options`);
        for (const line of lines) {
          const { result } = await runOn(line, sql, `variable ${d.uid} / ${name}`);
          assertEquals(
            result.rows.map((r) => String(r[0])),
            expected.options,
            `${d.uid} / ${name} on ${line.name}`,
          );
        }
        variables[name] = v.includeAll ? expected.options : [expected.options[0]];
        assertEquals(variables[name], expected.selected);
      }
      for (const q of panelQueries(json).filter((q) => q.datasourceUid === CLICKHOUSE.uid)) {
        const what = `${d.uid} / ${q.panel}`;
        const sql = expandClickHouseMacros(interpolateVariables(String(q.target.rawSql), variables), RANGE);
        assert(!/\$\{?\w/.test(sql), `${what}: unexpanded variable left in\n${sql}`);
        const expectation = EXPECTED[what];
        const expected = expectation.rows();
        const answers: Row[][] = [];
        for (const line of lines) {
          const { result, rows } = await runOn(line, sql, what);
          checkShape(`${what} on ${line.name}`, q.panelType, Number(q.target.format), result, rows);
          assertRowsEqual(rows, expected, expectation.ordered ?? false, `${what} on ${line.name}`);
          answers.push(rows);
        }
        assertRowsEqual(answers[1], answers[0], true, `${what}: chDB and 18.16 give the same rows`);
      }
    });
  }
});
