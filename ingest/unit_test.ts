/** Unit tests without servers: the SQL binder's literals, configuration validation, event decoding. */
import { create, toBinary } from "@bufbuild/protobuf";
import { RequestEventBatchSchema, RequestEventSchema } from "@tailwatch/proto/events/v1";
import { ConfigError, loadConfig } from "./config.ts";
import { BatchRanges, decodeEvent, EventScanner, splitBatch } from "@tailwatch/events";
import { appendEvent, RowWriter } from "./row_writer.ts";
import { ident, literal, sql, SqlBindError, sqlJoin } from "./sql.ts";
import { assert, assertEquals, seededRandom } from "@tailwatch/testing";
import { makeEvent, randomEvent, readRowBinary } from "./test_helpers.ts";

const STAMP = { ingestedAtMs: 1_234_567_890_123, batchSeq: 77, floorSeq: 70 };
import { Delivery, parseAckReply } from "@tailwatch/nats";

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
  assertEquals(defaults.nats, { servers: ["nats://127.0.0.1:4222"], inboxPrefix: "_INBOX" });
  // Credentials from NATS_USER/NATS_PASSWORD or from the URL (taken out of it), once; a per-user inbox prefix.
  const ingestUser = {
    servers: ["nats://n1:4222", "tls://n2:4333"],
    user: "ingest",
    pass: "p@ss",
    inboxPrefix: "_INBOX_ingest",
  };
  assertEquals(
    loadConfig({ NATS_URL: "nats://n1:4222,tls://n2:4333", NATS_USER: "ingest", NATS_PASSWORD: "p@ss" }).nats,
    ingestUser,
  );
  assertEquals(
    loadConfig({ NATS_URL: "nats://ingest:p%40ss@n1:4222,tls://ingest:p%40ss@n2:4333" }).nats,
    ingestUser,
  );
  assertEquals(loadConfig({ NATS_TOKEN: "t0k" }).nats.token, "t0k");
  assertEquals(
    loadConfig({ NATS_USER: "u", NATS_PASSWORD: "p", NATS_INBOX_PREFIX: "_I.x" }).nats.inboxPrefix,
    "_I.x",
  );
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
    { NATS_USER: "ingest" },
    { NATS_PASSWORD: "secret" },
    { NATS_USER: "ingest", NATS_PASSWORD: "p", NATS_TOKEN: "t" },
    { NATS_URL: "nats://a:b@n1:4222", NATS_USER: "a", NATS_PASSWORD: "b" },
    { NATS_URL: "nats://a:b@n1:4222,nats://a:c@n2:4222" },
    { NATS_USER: "u", NATS_PASSWORD: "p", NATS_INBOX_PREFIX: "_INBOX.>" },
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

Deno.test("the fast path writes the rows of protobuf-es, for random events and mangled bytes", () => {
  const seed = Number(Deno.env.get("INGEST_FUZZ_SEED") ?? 20261123);
  const random = seededRandom(seed);
  const scanner = new EventScanner();
  const probe = new EventScanner();
  let fastPath = 0;
  let compared = 0;
  const compare = (payload: Uint8Array, what: string) => {
    compared++;
    if (probe.scan(payload)) fastPath++;
    const context = `seed ${seed}: ${what} ${[...payload].join(",")}`;
    const expected = decodeEvent(payload, compared);
    // The payload alone, and the same bytes read where they lie in a larger buffer (as the worker reads
    // them in the chunk they arrived in) between random bytes: both must give the same result.
    const before = Math.floor(random() * 8);
    const framed = new Uint8Array(before + payload.length + Math.floor(random() * 8));
    for (let i = 0; i < framed.length; i++) framed[i] = Math.floor(random() * 256);
    framed.set(payload, before);
    const run = (start?: number, end?: number) => {
      const writer = new RowWriter(16);
      let picked: [number, string] | undefined;
      const pick = (ts: number, service: string) => {
        picked = [ts, service];
        return writer;
      };
      const refused = start === undefined
        ? appendEvent(scanner, payload, compared, pick)
        : appendEvent(scanner, framed, compared, pick, start, end);
      writer.stamp(STAMP);
      return { refused, picked, rows: writer.rows, body: [...writer.body()] };
    };
    const embedded = run(before, before + payload.length);
    const alone = run();
    assertEquals(embedded, alone, `${context} (read inside a larger buffer)`);
    const { refused, picked } = alone;
    if (!expected.ok) {
      assertEquals<unknown>(refused, expected, context);
      assertEquals(alone.rows, 0, context);
      return;
    }
    assertEquals(refused, undefined, context);
    assertEquals(picked, [expected.row.ts, expected.row.service], context);
    // The body read back (by a reader of its own) holds decodeEvent's row, and both write paths give the
    // same bytes for it.
    assertEquals(
      readRowBinary(Uint8Array.from(alone.body)),
      [{ row: expected.row, ingested_at_ms: 1_234_567_890_123, ingest_batch_seq: 77, ingest_floor_seq: 70 }],
      context,
    );
    const reference = new RowWriter(16);
    reference.appendRow(expected.row);
    reference.stamp(STAMP);
    assertEquals(alone.body, [...reference.body()], context);
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
  // Strings of 128 bytes and more: a two-byte length.
  const long = create(RequestEventSchema, {
    ...makeEvent(6),
    errorMessage: "x".repeat(300),
    route: "r".repeat(128),
  });
  compare(toBinary(RequestEventSchema, long), "long strings");
  assert(fastPath > 300, `the fast path took ${fastPath} of ${compared} payloads`);
  // Plain events (ASCII, valid) all take the fast path.
  for (let i = 0; i < 500; i++) {
    assert(probe.scan(toBinary(RequestEventSchema, makeEvent(i))), `makeEvent(${i}) takes the fast path`);
  }
});

Deno.test("RowBinary: a UUID is its two halves as little-endian UInt64s, numbers little-endian", () => {
  // The bytes clickhouse-server 18.16 answers for SELECT toUUID('00112233-4455-6677-8899-aabbccddeeff'),
  // toDateTime(1700000000), toUInt16(513) FORMAT RowBinary.
  const event = create(RequestEventSchema, {
    ...makeEvent(1, 1_700_000_000_123),
    eventId: "00112233-4455-6677-8899-AABBCCDDEEFF",
    httpStatus: 513,
  });
  const writer = new RowWriter(16);
  appendEvent(new EventScanner(), toBinary(RequestEventSchema, event), 1, () => writer);
  const body = writer.body();
  assertEquals(
    [...body.subarray(0, 16)],
    [0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88],
  );
  assertEquals([...body.subarray(16, 20)], [0x00, 0xf1, 0x53, 0x65], "ts 1700000000 as UInt32");
  const [read] = readRowBinary(body);
  assertEquals(read.row.event_id, "00112233-4455-6677-8899-aabbccddeeff");
  assertEquals(read.row.http_status, 513);
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
  kept.stamp({ ingestedAtMs: 1_700_000_123_456, batchSeq: 149, floorSeq: 99 });
  const rows = readRowBinary(kept.body());
  assertEquals(rows.length, 47);
  assertEquals(kept.seqs.length, 47);
  for (const [i, { row, ingested_at_ms, ingest_batch_seq, ingest_floor_seq }] of rows.entries()) {
    assertEquals(row.stream_seq, kept.seqs[i]);
    assertEquals(row.ts_ms, 1_700_000_000_000 + row.stream_seq - 100);
    assertEquals(ingested_at_ms, 1_700_000_123_456);
    assertEquals([ingest_batch_seq, ingest_floor_seq], [149, 99]);
  }
  assert(!kept.seqs.includes(125) && kept.seqs.includes(126), "the right rows are gone");
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
    timestampMs: 1_700_000_000_000,
  });
  assertEquals(parse("$JS.ACK._.hash.REQUEST_EVENTS.ingest.3.907.18.1700000000000000000.0", "HMSG x 1 "), {
    seq: 907,
    deliveries: 3,
    consumerSeq: 18,
    timestampMs: 1_700_000_000_000,
  });
  assertEquals(parse("$JS.ACK.dom.hash.S.c.2.4503599627370496.1.1700000000000000000.0.rand"), {
    seq: 4503599627370496,
    deliveries: 2,
    consumerSeq: 1,
    timestampMs: 1_700_000_000_000,
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

Deno.test("splitBatch gives each event's bytes of a RequestEventBatch, in order, and refuses a malformed one", () => {
  const events = Array.from({ length: 300 }, (_, i) => makeEvent(i));
  // An error message long enough for a two-byte length.
  events[5].errorMessage = "x".repeat(400);
  const batch = toBinary(RequestEventBatchSchema, create(RequestEventBatchSchema, { events }));
  // Inside a larger chunk, as the worker receives it.
  const chunk = new Uint8Array(batch.length + 20);
  chunk.set(batch, 7);
  const ranges = new BatchRanges();
  assertEquals(splitBatch(chunk, 7, 7 + batch.length, events.length, ranges), undefined);
  assertEquals(ranges.count, events.length);
  for (let i = 0; i < events.length; i++) {
    assertEquals(
      [...chunk.subarray(ranges.starts[i], ranges.ends[i])],
      [...toBinary(RequestEventSchema, events[i])],
      `event ${i}`,
    );
  }
  const refusal = (bytes: Uint8Array, expected: number) =>
    splitBatch(bytes, 0, bytes.length, expected, ranges);
  assert(refusal(batch, 299)?.includes("more events than"), "more events than the header says");
  assert(refusal(batch, 301)?.includes("300 events, but"), "fewer events than the header says");
  assert(refusal(batch, Number.NaN)?.includes("not a positive count"), "a header that is not a count");
  assert(refusal(batch.subarray(0, batch.length - 3), 300)?.includes("past the message's end"), "truncated");
  assert(refusal(Uint8Array.of(0x10, 0x01), 1)?.includes("a field other than events"), "another field");
  assert(refusal(Uint8Array.of(0x0a, 0x80), 1)?.includes("truncated or overlong"), "a cut length");
});

Deno.test("a delivery's Tailwatch-Events header is read as its event count, 0 when absent", () => {
  const delivery = (headerBlock: string) => {
    const bytes = new TextEncoder().encode(`${headerBlock}payload`);
    const dataStart = headerBlock.length;
    return new Delivery(bytes, 0, 0, 0, 0, 0, dataStart, bytes.length, 1, 1);
  };
  assertEquals(delivery("NATS/1.0\r\nNats-Msg-Id: a\r\n\r\n").eventCount(), 0);
  assertEquals(delivery("NATS/1.0\r\nNats-Msg-Id: a\r\nTailwatch-Events: 256\r\n\r\n").eventCount(), 256);
  assertEquals(delivery("NATS/1.0\r\ntailwatch-events:7\r\nNats-Msg-Id: a\r\n\r\n").eventCount(), 7);
  assert(Number.isNaN(delivery("NATS/1.0\r\nTailwatch-Events: 7x\r\n\r\n").eventCount()), "not a number");
  assert(Number.isNaN(delivery("NATS/1.0\r\nTailwatch-Events: \r\n\r\n").eventCount()), "empty");
});

Deno.test("a delivery's headers are read as nats-server reads them: counts, Nats-Msg-Id, header-less", () => {
  const delivery = (headerBlock: string, payload = "payload") => {
    const bytes = new TextEncoder().encode(`${headerBlock}${payload}`);
    return new Delivery(bytes, 0, 0, 0, 0, 0, headerBlock.length, bytes.length, 1, 1);
  };
  // Header-less (a MSG): no count, no id.
  const plain = delivery("");
  assertEquals([plain.eventCount(), plain.hasMsgId(), plain.header("Nats-Msg-Id")], [0, false, undefined]);
  // A count is a positive decimal of at most 10 digits; 0, 11 digits, a sign or trailing text are not counts.
  assertEquals(delivery("NATS/1.0\r\nTailwatch-Events: 9999999999\r\n\r\n").eventCount(), 9999999999);
  for (const bad of ["0", "12345678901", "-1", "+5", "5 ", "0x10"]) {
    assert(Number.isNaN(delivery(`NATS/1.0\r\nTailwatch-Events: ${bad}\r\n\r\n`).eventCount()), bad);
  }
  // A header line starts after a CRLF: a bare LF inside another value starts nothing.
  assertEquals(delivery("NATS/1.0\r\nX: a\nTailwatch-Events: 5\r\n\r\n").eventCount(), 0);
  // Nats-Msg-Id as JetStream reads it: exact name, after a CRLF, a colon, a value.
  assertEquals(delivery("NATS/1.0\r\nNats-Msg-Id: a\r\n\r\n").hasMsgId(), true);
  assertEquals(delivery("NATS/1.0\r\nNats-Msg-Id:\r\n\r\n").hasMsgId(), false, "empty");
  assertEquals(delivery("NATS/1.0\r\nnats-msg-id: a\r\n\r\n").hasMsgId(), false, "another case");
  assertEquals(delivery("NATS/1.0\r\nX-Nats-Msg-Id: a\r\n\r\n").hasMsgId(), false, "a longer name");
  assertEquals(delivery("NATS/1.0\r\nNats-Msg-Id: with\nLF\r\n\r\n").header("Nats-Msg-Id"), "with\nLF");
});

Deno.test("splitBatch refuses an absurd count before allocating anything for it", () => {
  const ranges = new BatchRanges();
  const one = Uint8Array.of(0x78);
  for (const count of [9_999_999_999, 2 ** 31, 2]) {
    const refusal = splitBatch(one, 0, one.length, count, ranges);
    assert(refusal?.includes("more than 1 bytes can hold"), `${count}: ${refusal}`);
  }
  assert(ranges.starts.length <= 256, "nothing grew");
  // A real batch larger than the initial ranges grows them as its events are found.
  const events = Array.from({ length: 600 }, (_, i) => makeEvent(i));
  const batch = toBinary(RequestEventBatchSchema, create(RequestEventBatchSchema, { events }));
  assertEquals(splitBatch(batch, 0, batch.length, 600, ranges), undefined);
  assertEquals(ranges.count, 600);
});

Deno.test("a 200 kB service is written like any other (it once overflowed the stack)", () => {
  const event = makeEvent(1, 1_700_000_000_000);
  event.service = "s".repeat(200_000);
  const payload = toBinary(RequestEventSchema, event);
  const writer = new RowWriter();
  const services: string[] = [];
  const refused = appendEvent(new EventScanner(), payload, 5, (_ts, service) => {
    services.push(service);
    return writer;
  });
  assertEquals(refused, undefined);
  assertEquals(services[0].length, 200_000);
  writer.stamp(STAMP);
  assertEquals(readRowBinary(writer.body())[0].row.service, event.service);
});

Deno.test("a row writer gives each row's event id, drops rows by event id, and undoes a message's rows", () => {
  const writer = new RowWriter();
  const scanner = new EventScanner();
  const events = Array.from({ length: 6 }, (_, i) => makeEvent(i, 1_700_000_000_000 + i));
  events[3].eventId = events[3].eventId.toUpperCase();
  events.forEach((event, i) =>
    appendEvent(scanner, toBinary(RequestEventSchema, event), i < 4 ? 10 : 11, () => writer)
  );
  assertEquals(
    Array.from({ length: writer.rows }, (_, row) => writer.eventId(row)),
    events.map((event) => event.eventId.toLowerCase()),
    "as ClickHouse writes a UUID",
  );
  const kept = writer.withoutEvents(new Set([events[1].eventId, events[3].eventId.toLowerCase()]));
  assertEquals(kept.rows, 4);
  kept.stamp(STAMP);
  assertEquals(
    readRowBinary(kept.body()).map((r) => r.row.event_id),
    [0, 2, 4, 5].map((i) => events[i].eventId),
  );
  writer.dropTrailing(11);
  assertEquals(writer.rows, 4, "the last message's rows undone");
  writer.dropTrailing(11);
  assertEquals(writer.rows, 4, "nothing more: the rows before carry another sequence");
  writer.stamp(STAMP);
  assertEquals(readRowBinary(writer.body()).length, 4);
  assertEquals(writer.withoutRows(new Set([0, 3])).rows, 2);
});

Deno.test("configuration: limits in bytes, the insert grace and the stall timeout are validated", () => {
  const defaults = loadConfig({});
  assertEquals(
    [defaults.batchMaxBytes, defaults.maxBytesInFlight, defaults.insertGraceMs, defaults.stallTimeoutMs],
    [16 * 1024 * 1024, 64 * 1024 * 1024, 2_000, 15_000],
  );
  const bad: Record<string, string>[] = [
    { INGEST_BATCH_MAX_BYTES: "1000" },
    { INGEST_BATCH_MAX_BYTES: String(2 ** 31) },
    { INGEST_BATCH_MAX_BYTES: String(32 * 1024 * 1024), INGEST_MAX_BYTES_IN_FLIGHT: String(8 * 1024 * 1024) },
    { INGEST_MAX_BYTES_IN_FLIGHT: "1024" },
    { INGEST_INSERT_GRACE_MS: "-1" },
    { INGEST_STALL_TIMEOUT_MS: "500" },
    { INGEST_STALL_TIMEOUT_MS: "2000", INGEST_BATCH_WAIT_MS: "1500" },
  ];
  for (const env of bad) assertThrows(() => loadConfig(env), ConfigError, JSON.stringify(env));
  assertEquals(loadConfig({ INGEST_BATCH_MAX_BYTES: String(1024 * 1024) }).maxBytesInFlight, 4 * 1024 * 1024);
});
