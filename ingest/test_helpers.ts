/**
 * Helpers for ingest's tests and benchmark, and for tests elsewhere that need ingest running: RequestEvent
 * builders, a JetStream publisher that sets Nats-Msg-Id, a test configuration, `eventually`, and ingest as a
 * process of its own (`startIngestProcess`). Assertions and the seeded PRNG are @tailwatch/testing's.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { jetstream } from "@nats-io/jetstream";
import { headers, type NatsConnection } from "@nats-io/transport-node";
import {
  Protocol,
  type RequestEvent,
  RequestEventBatchSchema,
  RequestEventSchema,
} from "@tailwatch/proto/events/v1";
import { EVENT_COUNT_HEADER, type RequestEventRow, requestEventSubject } from "@tailwatch/events";
import { AssertionError, CLICKHOUSE_ADMIN, type ManagedProcess, spawnLogged } from "@tailwatch/testing";
import { type IngestConfig, loadConfig } from "./config.ts";
import { type ClickHouse, ClickHouseError, exceptionDetails, parseJsonEachRow } from "./clickhouse.ts";
import { END_SECOND_OF_EVENT } from "./rollups.ts";
import { ident, type Sql, sql, sqlJoin } from "./sql.ts";

const SERVICES = ["catalog", "orders", "payments"] as const;

export interface IngestProcessOptions {
  natsUrl: string;
  clickhouseUrl: string;
  /** CLICKHOUSE_DATABASE; unset (ingest's default, "profiler") when not given. */
  database?: string;
  /** INGEST_METRICS_PORT on 127.0.0.1; 0 (a free port the process picks) when not given. */
  metricsPort?: number;
  /** Where the process's output goes. */
  logPath: string;
  /** More variables (e.g. INGEST_BATCH_WAIT_MS); the process has the test's environment, then these. */
  env?: Record<string, string>;
}

/**
 * ingest/main.ts as a process of its own, as in production, writing as ClickHouse's admin user, logging warnings
 * and errors only. Does not wait for it: poll its /readyz where a test needs it ready.
 */
export function startIngestProcess(options: IngestProcessOptions): Promise<ManagedProcess> {
  return spawnLogged(
    Deno.execPath(),
    ["run", "-A", new URL("./main.ts", import.meta.url).pathname],
    options.logPath,
    {
      env: {
        ...Deno.env.toObject(),
        NATS_URL: options.natsUrl,
        CLICKHOUSE_URL: options.clickhouseUrl,
        CLICKHOUSE_USER: CLICKHOUSE_ADMIN.username,
        CLICKHOUSE_PASSWORD: CLICKHOUSE_ADMIN.password,
        ...(options.database !== undefined ? { CLICKHOUSE_DATABASE: options.database } : {}),
        INGEST_METRICS_HOST: "127.0.0.1",
        INGEST_METRICS_PORT: String(options.metricsPort ?? 0),
        INGEST_LOG_LEVEL: "warn",
        ...options.env,
      },
    },
  );
}

/** A plausible RequestEvent; `i` varies the fields, `startTimeMs` defaults to now. */
export function makeEvent(i: number, startTimeMs: number = Date.now()): RequestEvent {
  const service = SERVICES[i % SERVICES.length];
  const grpc = i % 4 !== 0;
  return create(RequestEventSchema, {
    eventId: crypto.randomUUID(),
    startTimeMs: BigInt(startTimeMs),
    durationUs: BigInt(50 + (i * 7919) % 200_000),
    service,
    method: `/${service}.v1.Service/Method${i % 5}`,
    protocol: grpc ? Protocol.GRPC : Protocol.HTTP,
    route: grpc ? "" : `GET /v1/${service}/{id}`,
    grpcCode: i % 17 === 0 ? 14 : 0,
    httpStatus: i % 17 === 0 ? 503 : 200,
    requestBytes: BigInt(i % 1000),
    responseBytes: BigInt((i * 3) % 5000),
    traceId: "0af7651916cd43dd8448eb211c80319c",
    spanId: "b7ad6b7169203331",
    parentSpanId: i % 3 === 0 ? "" : "00f067aa0ba902b7",
    instance: "test-instance-1",
    errorMessage: i % 17 === 0 ? "unavailable: injected 'fault'\n\tline two" : "",
    faultInjected: i % 17 === 0,
  });
}

/** Publishes events to JetStream with Nats-Msg-Id = event id, `window` publishes in flight at a time. */
export async function publishEvents(nc: NatsConnection, events: RequestEvent[], window = 256): Promise<void> {
  const js = jetstream(nc);
  const inFlight = new Set<Promise<unknown>>();
  for (const event of events) {
    const p = js.publish(requestEventSubject(event.service), toBinary(RequestEventSchema, event), {
      msgID: event.eventId,
      timeout: 30_000,
    });
    const tracked = p.finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
    if (inFlight.size >= window) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
}

/**
 * Publishes `events` as one RequestEventBatch message, as the services do: the Tailwatch-Events header
 * (`countHeader`, the number of events unless a test wants it wrong) and Nats-Msg-Id = the first event's id.
 */
export function publishEventBatch(
  nc: NatsConnection,
  events: RequestEvent[],
  countHeader: string = String(events.length),
): Promise<unknown> {
  const h = headers();
  h.set(EVENT_COUNT_HEADER, countHeader);
  const data = toBinary(RequestEventBatchSchema, create(RequestEventBatchSchema, { events }));
  return jetstream(nc).publish(requestEventSubject(events[0].service), data, {
    msgID: events[0].eventId,
    headers: h,
    timeout: 30_000,
  });
}

/** Publishes events in batch messages of `perMessage` (publishEventBatch), `window` in flight at a time. */
export async function publishEventBatches(
  nc: NatsConnection,
  events: RequestEvent[],
  perMessage: number,
  window = 64,
): Promise<void> {
  const inFlight = new Set<Promise<unknown>>();
  for (let i = 0; i < events.length; i += perMessage) {
    const p = publishEventBatch(nc, events.slice(i, i + perMessage));
    const tracked = p.finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
    if (inFlight.size >= window) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
}

/** A unique, valid ClickHouse database name for one test. */
export function uniqueDatabase(prefix = "t"): string {
  return `${prefix}_${crypto.randomUUID().replaceAll("-", "").slice(0, 16)}`;
}

/** The environment a test worker runs with (small batches, short ack wait, no metrics port clash). */
export function testEnv(
  natsUrl: string,
  clickhouseUrl: string,
  password: string,
  database: string,
  overrides: Record<string, string> = {},
): Record<string, string> {
  return {
    NATS_URL: natsUrl,
    CLICKHOUSE_URL: clickhouseUrl,
    CLICKHOUSE_USER: "tailwatch_admin",
    CLICKHOUSE_PASSWORD: password,
    CLICKHOUSE_DATABASE: database,
    INGEST_BATCH_MAX: "2000",
    INGEST_BATCH_WAIT_MS: "100",
    INGEST_ACK_WAIT_MS: "4000",
    INGEST_INSERT_TIMEOUT_MS: "2000",
    INGEST_RETRY_BASE_MS: "100",
    INGEST_RETRY_MAX_MS: "1000",
    INGEST_METRICS_PORT: "0",
    INGEST_RETENTION_INTERVAL_S: "0",
    INGEST_LOG_LEVEL: "info",
    ...overrides,
  };
}

export function testConfig(...args: Parameters<typeof testEnv>): IngestConfig {
  return loadConfig(testEnv(...args));
}

/** Polls until `probe` returns true; throws with `what` after `timeoutMs`. */
export async function eventually(
  what: string,
  probe: () => Promise<boolean> | boolean,
  timeoutMs = 60_000,
  intervalMs = 200,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      if (await probe()) return;
      last = undefined;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new AssertionError(`timed out waiting for ${what}${last ? `: ${last}` : ""}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** A random RequestEvent, valid or not: strings with escapes and non-ASCII, numbers of every size and sign. */
export function randomEvent(random: () => number, i: number): RequestEvent {
  const pick = <T>(items: readonly T[]) => items[Math.floor(random() * items.length)];
  const text = () => {
    const pieces = [
      "a",
      "Z",
      "\t",
      "\n",
      "\r",
      "\\",
      "'",
      "é",
      "日本",
      "😀",
      "\u0000",
      "\ufeff",
      "x".repeat(70),
      " ",
    ];
    let out = "";
    for (let n = Math.floor(random() * 6); n > 0; n--) out += pick(pieces);
    return out;
  };
  const int64 = () =>
    pick([
      0n,
      1n,
      127n,
      128n,
      16_383n,
      16_384n,
      2n ** 48n,
      2n ** 49n,
      2n ** 53n,
      2n ** 62n,
      -1n,
      -(2n ** 40n),
    ]) +
    BigInt(Math.floor(random() * 3));
  const event = makeEvent(i, Date.UTC(2026, 0, 1) + Math.floor(random() * 1e9));
  if (random() < 0.3) event.eventId = pick(["", "x", crypto.randomUUID().toUpperCase(), text()]);
  if (random() < 0.2) {
    event.startTimeMs = pick([int64(), BigInt(Date.UTC(1970, 5)), BigInt(Date.UTC(2100, 0))]);
  }
  for (const key of ["durationUs", "requestBytes", "responseBytes"] as const) {
    if (random() < 0.2) event[key] = int64();
  }
  for (const key of ["service", "method", "route", "traceId", "instance", "errorMessage"] as const) {
    if (random() < 0.3) event[key] = text();
  }
  if (random() < 0.2) event.protocol = pick([0, 1, 2, 3, 1000]) as Protocol; // open enum: unknown values too
  if (random() < 0.2) event.grpcCode = pick([0, 14, 255, 256, 2 ** 31, 2 ** 32 - 1]);
  if (random() < 0.2) event.httpStatus = pick([200, 65_535, 65_536, 2 ** 32 - 1]);
  if (random() < 0.5) event.faultInjected = random() < 0.5;
  if (random() < 0.5) {
    const fromMs = event.startTimeMs > 0n && event.startTimeMs < 2n ** 50n
      ? event.startTimeMs * 1000n + BigInt(i % 1000)
      : 0n;
    event.startTimeUs = pick([fromMs, int64()]);
  }
  if (random() < 0.3) event.loadRunId = pick(["run-1", text()]);
  return event;
}

/** A row read back from a RowBinary body: the ingest columns and the columns stamped at INSERT. */
export interface RowBinaryRow {
  row: RequestEventRow;
  ingested_at_ms: number;
  ingest_batch_seq: number;
  ingest_floor_seq: number;
}

/**
 * Reads an INSERT body of row_writer.ts back, written from ClickHouse's description of RowBinary (and the
 * column types of migrations 0001, 0004, 0009, 0011 and 0012), not from the writer: the tests compare what it reads with
 * decodeEvent's rows. UUID: two little-endian UInt64 halves, checked against the server in ingest_test.ts.
 */
export function readRowBinary(body: Uint8Array): RowBinaryRow[] {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }); // a leading U+FEFF is text
  let at = 0;
  const u8 = () => body[at++];
  const u16 = () => (at += 2, view.getUint16(at - 2, true));
  const u32 = () => (at += 4, view.getUint32(at - 4, true));
  const u64 = () => {
    const value = view.getBigUint64(at, true);
    at += 8;
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new AssertionError(`UInt64 ${value} above 2^53 - 1`);
    return Number(value);
  };
  const string = () => {
    let length = 0;
    for (let shift = 0;; shift += 7) {
      const byte = u8();
      length += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) break;
    }
    at += length;
    if (at > body.length) throw new AssertionError("a String runs past the body");
    return text.decode(body.subarray(at - length, at));
  };
  const uuid = () => {
    const hex = (from: number) =>
      [...body.subarray(from, from + 8)].reverse().map((b) => b.toString(16).padStart(2, "0")).join("");
    const digits = hex(at) + hex(at + 8);
    at += 16;
    return `${digits.slice(0, 8)}-${digits.slice(8, 12)}-${digits.slice(12, 16)}-${digits.slice(16, 20)}-${
      digits.slice(20)
    }`;
  };
  const rows: RowBinaryRow[] = [];
  while (at < body.length) {
    const row: RequestEventRow = {
      event_id: uuid(),
      ts: u32(),
      ts_ms: u64(),
      service: string(),
      method: string(),
      protocol: string() as RequestEventRow["protocol"],
      route: string(),
      grpc_code: u8(),
      http_status: u16(),
      duration_us: u64(),
      request_bytes: u64(),
      response_bytes: u64(),
      trace_id: string(),
      span_id: string(),
      parent_span_id: string(),
      instance: string(),
      error_message: string(),
      fault_injected: u8() as 0 | 1,
      stream_seq: u64(),
      ts_us: u64(),
      load_run_id: string(),
    };
    rows.push({ row, ingested_at_ms: u64(), ingest_batch_seq: u64(), ingest_floor_seq: u64() });
  }
  if (at !== body.length) throw new AssertionError("the last row runs past the body");
  return rows;
}

type Row = Record<string, string | number | string[] | number[]>;

/** Adds a line to `differences` per key whose value differs (the first 20 of `table`). */
export function compareMaps(
  table: string,
  expected: Map<string, string>,
  actual: Map<string, string>,
  differences: string[],
): void {
  let reported = 0;
  const report = (line: string) => {
    if (reported++ < 20) differences.push(`${table}: ${line}`);
  };
  for (const [key, value] of expected) {
    const got = actual.get(key);
    if (got !== value) report(`${key}: raw rows give ${value}, the table ${got ?? "nothing"}`);
  }
  for (const [key, value] of actual) {
    if (!expected.has(key)) report(`${key}: the table has ${value}, the raw rows nothing`);
  }
  if (reported > 20) differences.push(`${table}: ... ${reported - 20} more`);
}

/**
 * The rollups' half of the invariant (native/profiler/tests/derived.ts states the whole): each rollup equals
 * an independent query over the raw rows, key by key.
 * - `request_stats_1s`, per start second and (service, method, protocol, grpc_code, http_status): requests,
 *   errors, duration sum and max.
 * - `latency_profile_1s`, per completion second, start second and (service, method): requests, errors, max
 *   and the histogram bucket by bucket (floor markers, rows without requests, left out).
 */
export async function rollupDifferences(
  clickhouse: ClickHouse,
  database: string,
): Promise<{ differences: string[]; compared: { stats: number; profile: number } }> {
  const raw = ident(database, "request_events");
  const differences: string[] = [];
  const statsKey = (r: Row) =>
    [r.ts, r.service, r.method, r.protocol, r.grpc_code, r.http_status].join(" | ");
  const statsValue = (r: Row) => [r.requests, r.errors, r.duration_sum, r.duration_max].join(" ");
  const statsExpected = await clickhouse.query<Row>(
    sql`SELECT toUInt32(ts) AS ts, service, method, protocol, grpc_code, http_status, count() AS requests,
        countIf(grpc_code != 0) AS errors, sum(duration_us) AS duration_sum, max(duration_us) AS duration_max
      FROM ${raw} GROUP BY ts, service, method, protocol, grpc_code, http_status`,
  );
  const statsActual = await clickhouse.query<Row>(
    sql`SELECT toUInt32(ts) AS ts, service, method, protocol, grpc_code, http_status, sum(requests) AS requests,
        sum(errors) AS errors, sum(duration_sum_us) AS duration_sum, maxMerge(duration_max_us) AS duration_max
      FROM ${ident(database, "request_stats_1s")}
      GROUP BY ts, service, method, protocol, grpc_code, http_status`,
  );
  compareMaps(
    "request_stats_1s",
    new Map(statsExpected.map((r) => [statsKey(r), statsValue(r)])),
    new Map(statsActual.map((r) => [statsKey(r), statsValue(r)])),
    differences,
  );

  const profileKey = (r: Row) => [r.end_ts, r.ts, r.service, r.method].join(" | ");
  const profileValue = (r: Row) => {
    const buckets = (r.buckets as (string | number)[]).map(Number);
    const counts = (r.counts as (string | number)[]).map(Number);
    const histogram = buckets.map((b, i) => `${b}:${counts[i]}`).join(",");
    return `${r.requests} ${r.errors} ${r.duration_max} [${histogram}]`;
  };
  const profileExpected = await clickhouse.query<Row>(
    sql`SELECT toUInt32(${END_SECOND_OF_EVENT}) AS end_ts, toUInt32(ts) AS ts, service, method,
        count() AS requests, countIf(grpc_code != 0) AS errors, max(duration_us) AS duration_max,
        (sumMap([toUInt16(if(duration_us < 128, duration_us, 128 * toUInt64(floor(log2(duration_us)) - 7)
          + bitShiftRight(duration_us, toUInt64(floor(log2(duration_us)) - 7))))], [toUInt64(1)]) AS h).1
          AS buckets,
        h.2 AS counts
      FROM ${raw} GROUP BY end_ts, ts, service, method`,
  );
  const profileActual = await clickhouse.query<Row>(
    sql`SELECT toUInt32(end_ts) AS end_ts, toUInt32(ts) AS ts, service, method, sum(requests) AS requests,
        sum(errors) AS errors, maxMerge(duration_max_us) AS duration_max,
        (sumMap(histogramMap.bucket, histogramMap.count) AS h).1 AS buckets, h.2 AS counts
      FROM ${ident(database, "latency_profile_1s")} WHERE service != '' GROUP BY end_ts, ts, service, method`,
  );
  compareMaps(
    "latency_profile_1s",
    new Map(profileExpected.map((r) => [profileKey(r), profileValue(r)])),
    new Map(profileActual.map((r) => [profileKey(r), profileValue(r)])),
    differences,
  );

  return { differences, compared: { stats: statsExpected.length, profile: profileExpected.length } };
}

const ROOT = new URL("../", import.meta.url).pathname;

/** The Python with chDB: $TAILWATCH_PYTHON, else the virtual environment ./dev makes (.venv). */
export function chdbPython(): string {
  return Deno.env.get("TAILWATCH_PYTHON") ?? `${ROOT}.venv/bin/python`;
}

/**
 * A current ClickHouse engine (chDB, in a Python process of its own: testing/chdb_runner.py) behind ingest's
 * ClickHouse interface, so that the same migrations, queries and checks run on 18.16 and on a current
 * release. Statements run one at a time in a session whose data is in a temporary directory, removed on
 * dispose. Throws at start when chDB is not installed (./dev installs it): a test never passes without it.
 */
export async function startChdb(): Promise<ClickHouse & AsyncDisposable & { version: string }> {
  const dir = await Deno.makeTempDir({ prefix: "tailwatch-chdb-" });
  const child = new Deno.Command(chdbPython(), {
    args: [`${ROOT}testing/chdb_runner.py`, dir],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const readLine = async (): Promise<string> => {
    for (;;) {
      const newline = buffered.indexOf("\n");
      if (newline >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        return line;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error("chDB runner exited (is chDB installed? ./dev makes .venv)");
      buffered += value;
    }
  };
  const hello = JSON.parse(await readLine()) as { version: string };
  let next = 0;
  let queue: Promise<unknown> = Promise.resolve();
  const run = (text: string): Promise<string> => {
    const id = next++;
    const result = queue.then(async () => {
      await writer.write(new TextEncoder().encode(JSON.stringify({ id, sql: text }) + "\n"));
      const answer = JSON.parse(await readLine()) as {
        id: number;
        ok: boolean;
        body?: string;
        error?: string;
      };
      if (answer.id !== id) throw new Error(`chDB runner answered ${answer.id} for ${id}`);
      if (!answer.ok) {
        // The engine's exception text, as a server's: its code (and name) on the error, as clickhouse.ts does.
        const error = answer.error ?? "unknown error";
        throw new ClickHouseError(`chDB: ${error}`, { ...exceptionDetails(error), answered: true });
      }
      return answer.body ?? "";
    });
    queue = result.catch(() => {});
    return result;
  };
  const insert = (table: { database: string; table: string }, columns: readonly string[], format: string) =>
    sql`INSERT INTO ${ident(table.database, table.table)} (${sqlJoin(columns.map((c) => ident(c)))}) FORMAT `
      .text + format;
  return {
    url: `chdb:${dir}`,
    version: hello.version,
    async exec(statement) {
      await run(statement.text);
    },
    async query<T>(statement: Sql): Promise<T[]> {
      return parseJsonEachRow<T>(await run(`${statement.text}\nFORMAT JSONEachRow`));
    },
    async insertJsonEachRow(table, columns, rows) {
      if (rows.length === 0) return;
      await run(
        `${insert(table, columns, "JSONEachRow")}\n${rows.map((row) => JSON.stringify(row)).join("\n")}`,
      );
    },
    insertBody() {
      return Promise.reject(
        new Error("chDB adapter: binary bodies are not supported (use insertJsonEachRow)"),
      );
    },
    ping: () => Promise.resolve(true),
    async [Symbol.asyncDispose]() {
      await writer.close().catch(() => {});
      await child.status;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
