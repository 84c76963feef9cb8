/** Unit tests without servers: the SQL binder's literals, configuration validation, event decoding. */
import { create, toBinary } from "@bufbuild/protobuf";
import { type Protocol, RequestEventSchema } from "@tailwatch/proto/events/v1";
import { ConfigError, loadConfig } from "./config.ts";
import { decodeEvent, rowLine, tsvString } from "./event_row.ts";
import { appendEvent, EventScanner, RowWriter } from "./row_writer.ts";
import { ident, literal, sql, SqlBindError, sqlJoin } from "./sql.ts";
import { assert, assertEquals, seededRandom } from "@tailwatch/testing";
import { makeEvent } from "./test_helpers.ts";
import { parseAckReply } from "./pull.ts";

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

/** A random RequestEvent, valid or not: strings with escapes and non-ASCII, numbers of every size and sign. */
function randomEvent(random: () => number, i: number) {
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
  return event;
}

Deno.test("the fast path writes what protobuf-es and rowLine give, for random events and mangled bytes", () => {
  const seed = Number(Deno.env.get("INGEST_FUZZ_SEED") ?? 20261123);
  const random = seededRandom(seed);
  const scanner = new EventScanner();
  const probe = new EventScanner();
  const decoder = new TextDecoder();
  let fastPath = 0;
  let compared = 0;
  const compare = (payload: Uint8Array, what: string) => {
    compared++;
    if (probe.scan(payload)) fastPath++;
    const context = `seed ${seed}: ${what} ${[...payload].join(",")}`;
    const expected = decodeEvent(payload, compared);
    const writer = new RowWriter(16);
    let picked: [number, string] | undefined;
    const refused = appendEvent(scanner, payload, compared, (ts, service) => {
      picked = [ts, service];
      return writer;
    });
    if (!expected.ok) {
      assertEquals<unknown>(refused, expected, context);
      assertEquals(writer.rows, 0, context);
      return;
    }
    assertEquals(refused, undefined, context);
    assertEquals(picked, [expected.row.ts, expected.row.service], context);
    writer.stamp(1_234_567_890_123);
    assertEquals(decoder.decode(writer.body()), `${rowLine(expected.row)}\t1234567890123\n`, context);
  };
  for (let i = 0; i < 4000; i++) {
    const payload = toBinary(RequestEventSchema, randomEvent(random, i));
    compare(payload, "event");
    const kind = random();
    if (kind < 0.4) {
      const mangled = payload.slice();
      mangled[Math.floor(random() * mangled.length)] = Math.floor(random() * 256);
      compare(mangled, "byte changed");
    } else if (kind < 0.7) {
      compare(payload.subarray(0, Math.floor(random() * payload.length)), "truncated");
    } else {
      const at = Math.floor(random() * payload.length);
      const extra = Array.from({ length: 1 + Math.floor(random() * 4) }, () => Math.floor(random() * 256));
      compare(new Uint8Array([...payload.subarray(0, at), ...extra, ...payload.subarray(at)]), "inserted");
    }
  }
  for (let i = 0; i < 1000; i++) {
    compare(
      Uint8Array.from({ length: Math.floor(random() * 40) }, () => Math.floor(random() * 256)),
      "random",
    );
  }
  // Repeated fields (the last wins), a non-minimal varint, fault_injected = 2 (true for protobuf-es).
  const base = toBinary(RequestEventSchema, makeEvent(5));
  compare(new Uint8Array([...base, 0x22, 0x01, 0x78, 0x18, 0x80, 0x00]), "repeated service, long varint");
  compare(new Uint8Array([...base, 0x88, 0x01, 0x02]), "bool 2");
  assert(fastPath > 300, `the fast path took ${fastPath} of ${compared} payloads`);
  // Plain events (ASCII, valid) all take the fast path.
  for (let i = 0; i < 500; i++) {
    assert(probe.scan(toBinary(RequestEventSchema, makeEvent(i))), `makeEvent(${i}) takes the fast path`);
  }
});

Deno.test("a row writer drops rows by sequence and stamps every row", () => {
  const scanner = new EventScanner();
  const writer = new RowWriter(64);
  for (let i = 0; i < 50; i++) {
    appendEvent(
      scanner,
      toBinary(RequestEventSchema, makeEvent(i, 1_700_000_000_000 + i)),
      100 + i,
      () => writer,
    );
  }
  const kept = writer.without(new Set([100, 125, 149, 7]));
  kept.stamp(1_700_000_123_456);
  const lines = new TextDecoder().decode(kept.body()).split("\n");
  assertEquals(lines.pop(), "", "ends with a line feed");
  assertEquals(lines.length, 47);
  assertEquals(kept.seqs.length, 47);
  for (const [i, line] of lines.entries()) {
    const columns = line.split("\t");
    assertEquals(columns.length, 20, line);
    assertEquals(Number(columns[18]), kept.seqs[i]);
    assertEquals(columns[19], "1700000123456");
  }
  assert(!kept.seqs.includes(125) && kept.seqs.includes(126), "the right rows are gone");
});

Deno.test("rows as TabSeparated lines: columns in order, strings escaped", () => {
  assertEquals(tsvString("a\tb\nc\\d\re'\u0000"), "a\\tb\\nc\\\\d\\re'\u0000");
  assertEquals(tsvString("plain"), "plain");
  const decoded = decodeEvent(toBinary(RequestEventSchema, makeEvent(17, 1_700_000_000_123)), 9);
  assert(decoded.ok, "decodes");
  const columns = rowLine(decoded.row).split("\t");
  assertEquals(columns.length, 19);
  assertEquals(columns.slice(1, 3), ["1700000000", "1700000000123"]);
  assertEquals(columns[16], "unavailable: injected 'fault'\\n\\tline two");
  assertEquals(columns[18], "9");
});

Deno.test("parseAckReply reads stream sequence, delivery count and consumer sequence from the reply subject", () => {
  const parse = (reply: string, pad = "") => {
    // Embedded in a larger buffer, as in a read chunk.
    const bytes = new TextEncoder().encode(`${pad}${reply} 123\r\n`);
    return parseAckReply(bytes, pad.length, pad.length + reply.length);
  };
  assertEquals(parse("$JS.ACK.REQUEST_EVENTS.ingest.1.12345.17.1700000000000000000.9"), {
    seq: 12345,
    deliveries: 1,
    consumerSeq: 17,
  });
  assertEquals(parse("$JS.ACK._.hash.REQUEST_EVENTS.ingest.3.907.18.1700000000000000000.0", "HMSG x 1 "), {
    seq: 907,
    deliveries: 3,
    consumerSeq: 18,
  });
  assertEquals(parse("$JS.ACK.dom.hash.S.c.2.4503599627370496.1.1700000000000000000.0.rand"), {
    seq: 4503599627370496,
    deliveries: 2,
    consumerSeq: 1,
  });
  // Anything else is not a JetStream delivery.
  assertEquals(parse("_INBOX.abc"), undefined);
  assertEquals(parse("$JS.ACK.S.c.x.1.1.1.0"), undefined);
  assertEquals(parse("$JS.ACK.S.c.1..1.1.0"), undefined);
  assertEquals(parse("$JS.ACK.S.c.1.2.x.1.0"), undefined);
  assertEquals(parse("$JS.ACK.S.c.1.2.3.4"), undefined);
  assertEquals(parse("$JS.ACK.S.c.1.9007199254740993.3.1.0"), undefined, "above 2^53 - 1");
  assertEquals(parse("$JS.ACK.S.c.1.12345678901234567.3.1.0"), undefined, "17 digits");
});
