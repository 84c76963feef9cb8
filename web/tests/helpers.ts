/** What the web tests share: a migrated ClickHouse, rows they write, a web server on it. */
import { applyMigrations } from "@tailwatch/ingest/migrations";
import { CLICKHOUSE_ADMIN, CLICKHOUSE_READONLY, type ClickHouseServer } from "@tailwatch/testing";
import { loadWebConfig, type WebConfig } from "../config.ts";
import { toCells } from "../queries.ts";

export const ORDERS_CREATE = "orders.v1.OrderService/CreateOrder";
export const ORDERS_GET = "orders.v1.OrderService/GetOrder";
export const PAYMENTS_CHARGE = "payments.v1.PaymentService/Charge";

export interface TestEvent {
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
  trace_id: string;
  span_id: string;
  parent_span_id: string;
  instance: string;
  error_message: string;
  fault_injected: number;
}

export async function migrate(ch: ClickHouseServer): Promise<void> {
  await applyMigrations({ url: ch.url, ...CLICKHOUSE_ADMIN, database: "profiler" });
}

export async function insertJson(ch: ClickHouseServer, table: string, rows: object[]): Promise<void> {
  if (rows.length === 0) return;
  await ch.query(
    `INSERT INTO profiler.${table} FORMAT JSONEachRow\n${rows.map((r) => JSON.stringify(r)).join("\n")}`,
  );
}

/** Runs a statement as the read-only user (what "copy as SQL" promises) and returns its rows as cells. */
export async function readonlyCells(
  ch: ClickHouseServer,
  sql: string,
  columns: string[],
): Promise<unknown[][]> {
  const response = await fetch(ch.url, {
    method: "POST",
    body: `${sql}\nFORMAT JSONEachRow`,
    headers: {
      "X-ClickHouse-User": CLICKHOUSE_READONLY.username,
      "X-ClickHouse-Key": CLICKHOUSE_READONLY.password,
    },
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`readonly query failed: ${text}`);
  const rows = text.trim() === "" ? [] : text.trim().split("\n").map((line) => JSON.parse(line));
  return toCells(columns, rows);
}

export function webConfig(
  ch: ClickHouseServer,
  stateDir: string,
  extra: Record<string, string> = {},
): WebConfig {
  return loadWebConfig({
    WEB_PORT: "0",
    CLICKHOUSE_URL: ch.url,
    CLICKHOUSE_PASSWORD: CLICKHOUSE_READONLY.password,
    WEB_STATE_DIR: stateDir,
    WEB_METRICS_TARGETS: "",
    WEB_LOAD_RESULTS_DIR: `${stateDir}/results`,
    WEB_LOG_LEVEL: "error",
    ...extra,
  });
}

/** Exact quantile with ClickHouse's quantileExact rank: the value at floor(q * n) of the sorted values. */
export function quantileExact(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/** The profiler's bucket of a duration (native/profiler/include/tailwatch/buckets.h). */
export function bucketOf(us: number): number {
  if (us < 128) return us;
  const shift = Math.floor(Math.log2(us)) - 7;
  return 128 * shift + Math.floor(us / 2 ** shift);
}
