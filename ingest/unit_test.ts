/** Unit tests without servers: the SQL binder's literals, configuration validation, event decoding. */
import { create, toBinary } from "@bufbuild/protobuf";
import { RequestEventSchema } from "@tailwatch/proto/events/v1";
import { ConfigError, loadConfig } from "./config.ts";
import { decodeEvent } from "./event_row.ts";
import { ident, literal, sql, SqlBindError, sqlJoin } from "./sql.ts";
import { assert, assertEquals, makeEvent } from "./test_helpers.ts";

function assertThrows(fn: () => unknown, type: new (...args: never[]) => Error, message: string): void {
  try {
    fn();
  } catch (error) {
    assert(error instanceof type, `${message}: wrong error ${error}`);
    return;
  }
  throw new Error(`${message}: expected a throw`);
}

Deno.test("sql binds strings, numbers, dates, arrays and identifiers as literals", () => {
  assertEquals(sql`SELECT ${"it's"}`.text, "SELECT 'it\\'s'");
  assertEquals(literal("a\\b\n\t\r\0\x01\x7fé😀"), "'a\\\\b\\n\\t\\r\\0\\x01\\x7fé😀'");
  assertEquals(literal(42), "42");
  assertEquals(literal(-5), "(-5)");
  assertEquals(sql`SELECT 1-${-5}`.text, "SELECT 1-(-5)", "never becomes the comment 1--5");
  assertEquals(literal(-0), "0");
  assertEquals(literal(0.1), "0.1");
  assertEquals(literal(1e21), "1e+21");
  assertEquals(literal(12345678901234567890n), "12345678901234567890");
  assertEquals(literal(-3n), "(-3)");
  assertEquals(literal(true), "1");
  assertEquals(literal(null), "NULL");
  assertEquals(literal(new Date(1_700_000_000_999)), "toDateTime(1700000000)");
  assertEquals(literal(["a", 1, [2, null]]), "['a', 1, [2, NULL]]");
  assertEquals(literal([]), "[]");
  assertEquals(literal(ident("db", "we`ird\\")), "`db`.`we\\`ird\\\\`");
  assertEquals(sql`SELECT ${sql`1 + ${2}`} AS x`.text, "SELECT 1 + 2 AS x", "fragments nest verbatim");
  assertEquals(sqlJoin([ident("a"), ident("b")]).text, "`a`, `b`");
});

Deno.test("sql refuses values that cannot be bound faithfully", () => {
  assertThrows(() => literal(NaN), SqlBindError, "NaN");
  assertThrows(() => literal(Infinity), SqlBindError, "Infinity");
  assertThrows(() => literal(new Date(NaN)), SqlBindError, "invalid Date");
  assertThrows(() => literal("\ud800"), SqlBindError, "lone surrogate");
  assertThrows(() => literal(undefined as unknown as string), SqlBindError, "undefined");
  assertThrows(() => literal({} as unknown as string), SqlBindError, "plain object");
  assertThrows(() => ident(""), SqlBindError, "empty identifier");
  assertThrows(() => ident("a\0b"), SqlBindError, "NUL in identifier");
});

Deno.test("configuration: defaults, overrides, and a clear error for a bad value", () => {
  const defaults = loadConfig({});
  assertEquals(defaults.batchMax, 20_000);
  assertEquals(defaults.batchWaitMs, 250);
  assertEquals(defaults.metricsPort, 9464);
  assertEquals(defaults.database, "profiler");
  assertEquals(defaults.natsUrl, ["nats://127.0.0.1:4222"]);
  assertEquals(loadConfig({ INGEST_BATCH_MAX: "500", INGEST_METRICS_PORT: "0" }).batchMax, 500);
  const bad: Record<string, string>[] = [
    { INGEST_BATCH_MAX: "abc" },
    { INGEST_BATCH_MAX: "0" },
    { INGEST_METRICS_PORT: "70000" },
    { CLICKHOUSE_URL: "ftp://x" },
    { CLICKHOUSE_DATABASE: "a;DROP" },
    { INGEST_ACK_WAIT_MS: "5000", INGEST_INSERT_TIMEOUT_MS: "4000" },
    { INGEST_MIGRATE_ON_START: "maybe" },
    { INGEST_LOG_LEVEL: "loud" },
    { NATS_URL: "not a url" },
  ];
  for (const env of bad) assertThrows(() => loadConfig(env), ConfigError, JSON.stringify(env));
});

Deno.test("main exits with code 2 and names the variable on a bad configuration", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./main.ts", import.meta.url).pathname],
    env: { INGEST_BATCH_MAX: "lots" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(output.code, 2);
  assert(new TextDecoder().decode(output.stderr).includes("INGEST_BATCH_MAX"), "error names the variable");
});

Deno.test("decodeEvent turns an event into a row and a bad one into a reason", () => {
  const event = makeEvent(3, 1_700_000_000_123);
  const decoded = decodeEvent(toBinary(RequestEventSchema, event), 7);
  assert(decoded.ok, "decodes");
  assertEquals([decoded.row.ts, decoded.row.ts_ms, decoded.row.stream_seq], [
    1_700_000_000,
    1_700_000_000_123,
    7,
  ]);
  assertEquals(decodeEvent(new Uint8Array([0xff, 0xff]), 1).ok, false);
  const cases: [Partial<ReturnType<typeof makeEvent>>, string][] = [
    [{ eventId: "x" }, "invalid_event_id"],
    [{ startTimeMs: -1n }, "invalid_start_time"],
    [{ protocol: 0 }, "invalid_protocol"],
    [{ durationUs: -5n }, "invalid_number"],
    [{ grpcCode: 300 }, "invalid_number"],
    [{ service: "" }, "missing_service"],
  ];
  for (const [patch, reason] of cases) {
    const bad = create(RequestEventSchema, { ...makeEvent(1), ...patch });
    const result = decodeEvent(toBinary(RequestEventSchema, bad), 1);
    assertEquals(
      result.ok ? "ok" : result.reason,
      reason,
      JSON.stringify(patch, (_k, v) => typeof v === "bigint" ? String(v) : v),
    );
  }
});
