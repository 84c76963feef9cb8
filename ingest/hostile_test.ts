/**
 * Ingest against what any client with publish rights can put on the stream, and against a consumer, a stream
 * and a ClickHouse that misbehave (issue 24): real nats-server and clickhouse-server (one for the file), a
 * fresh nats-server and database per step. Messages are published with the NATS protocol itself (the kit's
 * wire client), so that headers nats.js refuses (a bare LF) and header-less messages can be sent.
 * INGEST_TEST_ONLY=<regex> runs only the matching steps; INGEST_FUZZ_SEED=<n> reproduces the fuzz.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { AckPolicy, DeliverPolicy, jetstreamManager } from "@nats-io/jetstream";
import { connect, type Msg, type NatsConnection } from "@nats-io/transport-node";
import { type RequestEvent, RequestEventBatchSchema, RequestEventSchema } from "@tailwatch/proto/events/v1";
import {
  applyRequestEventsStream,
  createNatsWire,
  createPullReceiver,
  type Delivery,
  type NatsWire,
  parseNatsUrl,
  type PullTrouble,
} from "@tailwatch/nats";
import { createLogger } from "@tailwatch/runtime";
import {
  DEAD_LETTER_SUBJECT_PREFIX,
  decodeEvent,
  REQUEST_EVENTS_STREAM,
  requestEventSubject,
} from "@tailwatch/events";
import {
  assert,
  assertEquals,
  CLICKHOUSE_ADMIN,
  type ClickHouseServer,
  type NatsServer,
  seededRandom,
  startClickHouseServer,
  startNatsServer,
} from "@tailwatch/testing";
import { type ClickHouse, createClickHouse } from "./clickhouse.ts";
import { applyMigrations } from "./migrations.ts";
import { serveMetrics } from "./metrics.ts";
import { ident, sql } from "./sql.ts";
import {
  eventually,
  makeEvent,
  publishEventBatch,
  publishEvents,
  randomEvent,
  testConfig,
  uniqueDatabase,
} from "./test_helpers.ts";
import { createIngestWorker, type IngestWorker } from "./worker.ts";

const only = Deno.env.get("INGEST_TEST_ONLY");
const quietLogger = createLogger((Deno.env.get("INGEST_TEST_LOG") ?? "error") as "error", { test: true });
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What JetStream answered a publish: the stream sequence (and whether it was a duplicate), or an error. */
interface PubAnswer {
  seq?: number;
  duplicate?: boolean;
  error?: string;
}

/**
 * A JetStream publisher that writes the protocol itself: `publish` sends PUB (no header block) or HPUB with
 * the header block given byte for byte, and resolves with JetStream's answer.
 */
async function rawPublisher(url: string) {
  const inbox = `_INBOX.raw${crypto.randomUUID().replaceAll("-", "")}`;
  const waiting = new Map<number, (answer: PubAnswer) => void>();
  let next = 0;
  const wire: NatsWire = createNatsWire({
    servers: [parseNatsUrl(url)],
    name: "hostile-test-publisher",
    logger: quietLogger,
    onConnected: () => wire.writeText(`SUB ${inbox}.* 1\r\n`),
    onMessage(message) {
      const subject = decoder.decode(message.buf.subarray(message.subjectStart, message.subjectEnd));
      const token = Number(subject.slice(inbox.length + 1));
      const body = decoder.decode(message.buf.subarray(message.headerEnd, message.end));
      const resolve = waiting.get(token);
      waiting.delete(token);
      if (!resolve) return;
      try {
        const answer = JSON.parse(body) as {
          seq?: number;
          duplicate?: boolean;
          error?: { description?: string };
        };
        resolve(
          answer.error
            ? { error: answer.error.description ?? "error" }
            : { seq: answer.seq, duplicate: answer.duplicate },
        );
      } catch {
        resolve({ error: body || "status" });
      }
    },
  });
  for (let i = 0; i < 200 && !wire.connected; i++) await sleep(25);
  await wire.flush();
  return {
    publish(subject: string, header: Uint8Array | undefined, payload: Uint8Array): Promise<PubAnswer> {
      const token = next++;
      const answer = new Promise<PubAnswer>((resolve) => waiting.set(token, resolve));
      const reply = `${inbox}.${token}`;
      if (header === undefined) {
        wire.writeText(`PUB ${subject} ${reply} ${payload.length}\r\n`);
      } else {
        wire.writeText(`HPUB ${subject} ${reply} ${header.length} ${header.length + payload.length}\r\n`);
        wire.write(header);
      }
      wire.write(payload);
      wire.writeText("\r\n");
      return Promise.race([answer, sleep(10_000).then(() => ({ error: "no answer within 10 s" }))]);
    },
    close: () => wire.close(),
  };
}

/** A header block: `NATS/1.0`, each `name: value` line, the blank line (values as given, byte for byte). */
function headerBlock(fields: [string, string][]): Uint8Array {
  return encoder.encode(`NATS/1.0\r\n${fields.map(([k, v]) => `${k}: ${v}\r\n`).join("")}\r\n`);
}

const sameBytes = (a: Uint8Array, b: Uint8Array) =>
  a.length === b.length && a.every((byte, i) => byte === b[i]);
const eventBytes = (event: RequestEvent) => toBinary(RequestEventSchema, event);
const batchBytes = (events: RequestEvent[]) =>
  toBinary(RequestEventBatchSchema, create(RequestEventBatchSchema, { events }));

/** Collects every dead letter from now on. */
async function subscribeDeadLetters(nc: NatsConnection) {
  const deadLetters: Msg[] = [];
  const sub = nc.subscribe(`${DEAD_LETTER_SUBJECT_PREFIX}.>`, {
    callback: (_error, msg) => void deadLetters.push(msg),
  });
  await nc.flush();
  return { deadLetters, sub };
}

/** event_id → rows, over the whole table. */
async function rowsById(clickhouse: ClickHouse, database: string): Promise<Map<string, number>> {
  const rows = await clickhouse.query<{ id: string; n: string }>(
    sql`SELECT toString(event_id) AS id, count() AS n FROM ${ident(database, "request_events")} GROUP BY id`,
  );
  return new Map(rows.map((row) => [row.id, Number(row.n)]));
}

async function rowCount(
  clickhouse: ClickHouse,
  database: string,
): Promise<{ rows: number; distinct: number }> {
  const [row] = await clickhouse.query<{ rows: string; distinct_ids: string }>(
    sql`SELECT count() AS rows, uniqExact(event_id) AS distinct_ids FROM ${
      ident(database, "request_events")
    }`,
  );
  return { rows: Number(row.rows), distinct: Number(row.distinct_ids) };
}

/** The sum of a metric's samples (every label set, or those whose labels include `labels`). */
function metricSum(page: string, name: string, labels = ""): number {
  return page.split("\n")
    .filter((line) => (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) && line.includes(labels))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0);
}

/** Runs `body` with a fresh nats-server (with the stream) and a database that is dropped afterwards. */
async function withFixture(
  server: ClickHouseServer,
  body: (
    f: { nats: NatsServer; nc: NatsConnection; clickhouse: ClickHouse; database: string },
  ) => Promise<void>,
): Promise<void> {
  await using nats = await startNatsServer();
  const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  const database = uniqueDatabase("hostile");
  const clickhouse = createClickHouse({ url: server.url, ...CLICKHOUSE_ADMIN });
  try {
    await applyRequestEventsStream(nc);
    await applyMigrations({ clickhouse, database });
    await body({ nats, nc, clickhouse, database });
  } finally {
    await nc.close().catch(() => {});
    await clickhouse.exec(sql`DROP DATABASE IF EXISTS ${ident(database)}`).catch(() => {});
  }
}

/** A worker running in follow mode; `stop()` stops it and returns its stats; `exited` tells whether run() ended. */
function follow(worker: IngestWorker) {
  let exited = false;
  let failure: unknown;
  const running = worker.run().then(
    (stats) => {
      exited = true;
      return stats;
    },
    (error) => {
      exited = true;
      failure = error;
      throw error;
    },
  );
  return {
    get exited() {
      return exited;
    },
    get failure() {
      return failure;
    },
    async stop() {
      worker.stop();
      return await running;
    },
  };
}

/**
 * A ClickHouse HTTP proxy for faults ClickHouse itself will not produce on demand: `refuseInserts` answers
 * INSERTs into request_events with 503; `delayFirstInsert` holds the first such INSERT that long before
 * passing it on, whether or not its client is still waiting (as a request sitting in the server's backlog).
 */
function clickhouseProxy(target: string) {
  const state = { refuseInserts: false, delayFirstInsert: 0, delayed: 0 };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
    const url = new URL(request.url);
    const body = new Uint8Array(await request.arrayBuffer());
    const query = url.searchParams.get("query") ?? "";
    const isInsert = query.startsWith("INSERT INTO") && query.includes("request_events");
    if (isInsert && state.refuseInserts) {
      return new Response("Code: 252. DB::Exception: Too many parts (proxy)", { status: 503 });
    }
    if (isInsert && state.delayFirstInsert > 0 && state.delayed === 0) {
      state.delayed++;
      await sleep(state.delayFirstInsert);
    }
    const answer = await fetch(`${target}${url.pathname}${url.search}`, {
      method: request.method,
      headers: request.headers,
      body: request.method === "GET" ? undefined : body,
    });
    return new Response(await answer.arrayBuffer(), { status: answer.status, headers: answer.headers });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    state,
    close: () => server.shutdown(),
  };
}

Deno.test("ingest survives any message, and a consumer, a stream and a ClickHouse that misbehave", async (t) => {
  await using server = await startClickHouseServer();
  const step = (name: string, fn: () => Promise<void>) =>
    t.step({ name, ignore: only !== undefined && !new RegExp(only).test(name), fn });

  await step(
    "header-less messages, absurd counts, a 200 kB service, a bare LF in Nats-Msg-Id, near max_payload: each stored or dead-lettered, and ingest goes on",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const { deadLetters, sub } = await subscribeDeadLetters(nc);
        const raw = await rawPublisher(nats.url);
        const maxPayload = nc.info?.max_payload ?? 1024 * 1024;
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
        const worker = createIngestWorker({ config, logger: quietLogger });
        await using metrics = serveMetrics(worker.registry, {
          hostname: "127.0.0.1",
          port: 0,
          ready: worker.readiness,
        });
        const running = follow(worker);
        const good: string[] = [];
        const publishGood = async (n: number) => {
          const events = Array.from({ length: n }, (_, i) => makeEvent(i));
          await publishEvents(nc, events);
          good.push(...events.map((e) => e.eventId));
        };
        const subject = requestEventSubject("catalog");
        const seqOf = async (answer: Promise<PubAnswer>) => {
          const { seq, error } = await answer;
          assert(seq !== undefined, `stored: ${error}`);
          return seq;
        };
        try {
          await publishGood(50);
          // 1. Without headers (a plain PUB, as `nats pub` sends it): garbage, then a valid event.
          const garbage = await seqOf(raw.publish(subject, undefined, encoder.encode("garbage")));
          const plain = makeEvent(1);
          await seqOf(raw.publish(subject, undefined, eventBytes(plain)));
          good.push(plain.eventId);
          // 2. Counts that are absurd or not counts.
          const absurd = await seqOf(
            raw.publish(subject, headerBlock([["Tailwatch-Events", "9999999999"]]), encoder.encode("x")),
          );
          const notCounts: number[] = [];
          for (const count of ["abc", "0", "-1", "12345678901", "7 "]) {
            notCounts.push(
              await seqOf(
                raw.publish(subject, headerBlock([["Tailwatch-Events", count]]), batchBytes([makeEvent(2)])),
              ),
            );
          }
          // 3. A valid event whose service is 200 kB (String.fromCharCode(...bytes) overflowed the stack).
          const longService = makeEvent(3);
          longService.service = "s".repeat(200_000);
          // (Its subject is not its service: a subject of 200 kB is refused by the server.)
          await seqOf(
            raw.publish(
              subject,
              headerBlock([["Nats-Msg-Id", longService.eventId]]),
              eventBytes(longService),
            ),
          );
          good.push(longService.eventId);
          // 4. A Nats-Msg-Id with a bare LF (nats.js refuses CR and LF in a header value it sends).
          const lf = await seqOf(
            raw.publish(
              subject,
              headerBlock([["Nats-Msg-Id", "evil\nid\r"]]),
              encoder.encode("not an event"),
            ),
          );
          // 5. Near max_payload: garbage (its dead letter must be cut to fit), and a valid event.
          const nearHeader = headerBlock([["Nats-Msg-Id", crypto.randomUUID()]]);
          const nearGarbage = new Uint8Array(maxPayload - nearHeader.length - 10).fill(0xff);
          const near = await seqOf(raw.publish(subject, nearHeader, nearGarbage));
          const big = makeEvent(4);
          big.errorMessage = "e".repeat(maxPayload - 2_000);
          await publishEvents(nc, [big]);
          good.push(big.eventId);
          // And afterwards, ordinary traffic goes on.
          await publishGood(200);

          await eventually(
            "every good event a row",
            async () => (await rowCount(clickhouse, database)).rows >= good.length,
            30_000,
          );
          await eventually("the dead letters", () => deadLetters.length >= 9, 10_000);
          assert(!running.exited, `the worker is still running (${running.failure ?? ""})`);
          const byId = await rowsById(clickhouse, database);
          assertEquals(byId.size, good.length, "no other rows");
          for (const id of good) assertEquals(byId.get(id), 1, `event ${id} once`);
          const [serviceLength] = await clickhouse.query<{ n: string }>(
            sql`SELECT length(service) AS n FROM ${
              ident(database, "request_events")
            } WHERE event_id = ${longService.eventId}`,
          );
          assertEquals(Number(serviceLength.n), 200_000, "the long service is stored whole");
          const dead = new Map(deadLetters.map((m) => [Number(m.headers?.get("Tailwatch-Stream-Seq")), m]));
          for (const seq of [garbage, absurd, ...notCounts, lf, near]) {
            assert(dead.has(seq), `message ${seq} dead-lettered`);
            assertEquals(
              dead.get(seq)!.headers?.get("Tailwatch-Dead-Letter-Reason"),
              "undecodable",
              `message ${seq}`,
            );
          }
          assert(
            dead.get(absurd)!.headers!.get("Tailwatch-Dead-Letter-Detail").includes(
              "more than 1 bytes can hold",
            ),
            dead.get(absurd)!.headers!.get("Tailwatch-Dead-Letter-Detail"),
          );
          assertEquals(
            dead.get(lf)!.headers?.get("Tailwatch-Msg-Id"),
            "evil\\x0aid",
            "control characters escaped (the value trimmed, as nats.js trims)",
          );
          const cut = dead.get(near)!;
          assertEquals(cut.headers?.get("Tailwatch-Truncated"), "true");
          assertEquals(cut.headers?.get("Tailwatch-Original-Size"), String(nearGarbage.length));
          assert(
            cut.data.length < nearGarbage.length && cut.data.every((b) => b === 0xff),
            "a prefix of the original",
          );
          assert(sameBytes(dead.get(garbage)!.data, encoder.encode("garbage")), "the original bytes");
          const page = await (await fetch(`http://127.0.0.1:${metrics.port}/metrics`)).text();
          assertEquals(metricSum(page, "ingest_dead_lettered_total"), deadLetters.length);
          assertEquals(metricSum(page, "ingest_dead_letters_truncated_total"), 1);
          const ready = await fetch(`http://127.0.0.1:${metrics.port}/readyz`);
          assertEquals([ready.status, await ready.text()], [200, "ready: consuming\n"]);
          const info = await (await jetstreamManager(nc)).consumers.info(
            REQUEST_EVENTS_STREAM,
            config.durable,
          );
          assertEquals([info.num_pending, info.num_ack_pending], [0, 0], "everything acked");
          assertEquals(worker.stats().resyncs, 0, "no delivery went unseen (a header-less one used to)");
        } finally {
          sub.unsubscribe();
          await raw.close();
          await running.stop();
        }
      });
    },
  );

  await step(
    "fuzz: random header sets and payloads through nats-server, every good event a row once, every bad one a dead letter with its reason",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const seed = Number(Deno.env.get("INGEST_FUZZ_SEED") ?? 20261207);
        const random = seededRandom(seed);
        const pick = <T>(items: readonly T[]) => items[Math.floor(random() * items.length)];
        const maxPayload = nc.info?.max_payload ?? 1024 * 1024;
        const { deadLetters, sub } = await subscribeDeadLetters(nc);
        const raw = await rawPublisher(nats.url);
        /** What must come of each stored message: rows (event ids) and dead letters (event index, reason). */
        const expectedRows = new Set<string>();
        const expectedDead = new Map<string, string>();
        const kinds = new Map<string, number>();
        const note = (kind: string) => kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
        /** Each event's bytes, reference-decoded: a row, or a dead letter at `key` with the reason. */
        const expectEvent = (bytes: Uint8Array, key: string) => {
          const decoded = decodeEvent(bytes, 1);
          if (decoded.ok) expectedRows.add(decoded.row.event_id);
          else expectedDead.set(key, decoded.reason);
        };
        /** The reference reading of a batch payload (the worker's rule, written out here separately). */
        const splitEvents = (payload: Uint8Array, count: number): Uint8Array[] | undefined => {
          const events: Uint8Array[] = [];
          let pos = 0;
          while (pos < payload.length) {
            if (payload[pos++] !== 0x0a) return undefined;
            let length = 0;
            let shift = 1;
            for (let n = 0;; n++) {
              if (pos >= payload.length || n === 5) return undefined;
              const byte = payload[pos++];
              length += (byte & 0x7f) * shift;
              shift *= 128;
              if (byte < 0x80) break;
            }
            if (pos + length > payload.length) return undefined;
            events.push(payload.subarray(pos, pos + length));
            pos += length;
          }
          return events.length === count ? events : undefined;
        };
        const fresh = (i: number) => {
          const event = random() < 0.6 ? makeEvent(i) : randomEvent(random, i);
          return event;
        };
        const text = (n: number) =>
          Array.from({ length: n }, () => String.fromCharCode(32 + Math.floor(random() * 95))).join("");
        const stored: { seq: number; fields: [string, string][] | undefined; payload: Uint8Array }[] = [];
        const total = 220;
        for (let i = 0; i < total; i++) {
          // The payload.
          let payload: Uint8Array;
          let countValue: string | undefined;
          const shape = random();
          if (shape < 0.3) {
            payload = eventBytes(fresh(i));
            note("event");
          } else if (shape < 0.5) {
            const events = Array.from(
              { length: 1 + Math.floor(random() * 40) },
              (_, k) => fresh(i * 100 + k),
            );
            payload = batchBytes(events);
            countValue = pick([
              String(events.length),
              String(events.length),
              String(events.length + 1),
              "9999999999",
            ]);
            note("batch");
          } else if (shape < 0.6) {
            const whole = random() < 0.5 ? eventBytes(fresh(i)) : batchBytes([fresh(i), fresh(i + 1)]);
            payload = whole.subarray(0, Math.floor(random() * whole.length));
            if (random() < 0.5) countValue = pick(["2", "1"]);
            note("truncated");
          } else if (shape < 0.7) {
            payload = Uint8Array.from(
              { length: Math.floor(random() * 300) },
              () => Math.floor(random() * 256),
            );
            note("random bytes");
          } else if (shape < 0.75) {
            payload = new Uint8Array(0);
            note("empty");
          } else if (shape < 0.82) {
            const event = makeEvent(i);
            if (random() < 0.5) event.service = "h".repeat(130_000 + Math.floor(random() * 20_000));
            else event.errorMessage = text(200_000);
            payload = eventBytes(event);
            note("huge field");
          } else if (shape < 0.86) {
            payload = new Uint8Array(0); // sized below, once the header block is known
            note("near max_payload");
          } else {
            const event = makeEvent(i);
            event.method = `/x.v1/${text(20)}\u0001\u007f`;
            event.route = "\t\r\n";
            payload = eventBytes(event);
            note("control characters");
          }
          // The headers: none at all, or a random set.
          let fields: [string, string][] | undefined;
          if (random() < 0.2 && countValue === undefined) {
            note("header-less");
          } else {
            fields = [];
            const msgId = pick([
              crypto.randomUUID(),
              crypto.randomUUID(),
              "",
              `with\nLF ${i}`,
              `with\rCR ${i}`,
              text(400),
              `\u0001\u0002 ${i}`,
            ]);
            if (random() < 0.8) fields.push(["Nats-Msg-Id", msgId]);
            if (countValue !== undefined) {
              fields.push([pick(["Tailwatch-Events", "tailwatch-events"]), countValue]);
            } else if (random() < 0.1) fields.push(["Tailwatch-Events", pick(["abc", "0", " 5", "", "-3"])]);
            if (random() < 0.2) fields.push(["X-Junk", text(30)]);
            if (random() < 0.1) fields.push(["Tailwatch-Events", "3"]); // a second one: the first counts
            if (random() < 0.05) fields.push(["", "an empty name"]);
          }
          const header = fields === undefined ? undefined : headerBlock(fields);
          if (shape >= 0.82 && shape < 0.86) {
            const size = maxPayload - (header?.length ?? 0) - Math.floor(random() * 50);
            if (random() < 0.5) {
              payload = new Uint8Array(size).fill(0xab);
            } else {
              const event = makeEvent(i);
              event.errorMessage = "m".repeat(size - 400);
              payload = eventBytes(event);
            }
          }
          const subject = requestEventSubject(pick(["catalog", "orders", "payments", "x-y_z", "Weird9"]));
          const answer = await raw.publish(subject, header, payload);
          if (answer.seq === undefined || answer.duplicate) {
            note(answer.duplicate ? "refused: duplicate" : `refused: ${answer.error}`);
            continue;
          }
          stored.push({ seq: answer.seq, fields, payload });
          // A few messages go twice: JetStream's duplicate window keeps the first when they carry a Nats-Msg-Id.
          if (random() < 0.05) {
            const again = await raw.publish(subject, header, payload);
            if (again.seq !== undefined && !again.duplicate) stored.push({ seq: again.seq, fields, payload });
          }
        }
        // The expectation, from the reference decoder and the header rules (first Tailwatch-Events line, any
        // case; a positive decimal of at most 10 digits after spaces; anything else makes the message
        // undecodable as a whole).
        const bySeq = new Map<number, (typeof stored)[number]>();
        for (const message of stored) {
          bySeq.set(message.seq, message);
          const countField = message.fields?.find(([k]) => k.toLowerCase() === "tailwatch-events");
          if (countField === undefined) {
            expectEvent(message.payload, `${message.seq}/`);
            continue;
          }
          const match = /^[ \t]*([0-9]{1,10})$/.exec(countField[1]);
          const count = match ? Number(match[1]) : 0;
          const events = count > 0 ? splitEvents(message.payload, count) : undefined;
          if (events === undefined) {
            expectedDead.set(`${message.seq}/`, "undecodable");
            continue;
          }
          events.forEach((bytes, index) => expectEvent(bytes, `${message.seq}/${index}`));
        }
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database, {
          INGEST_BATCH_MAX: "300",
          INGEST_BATCH_MAX_BYTES: String(512 * 1024),
          INGEST_MAX_BYTES_IN_FLIGHT: String(4 * 1024 * 1024),
        });
        const stats = await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
        try {
          await eventually(
            "every dead letter",
            () => deadLetters.length >= expectedDead.size,
            15_000,
          );
          await sleep(300);
        } finally {
          sub.unsubscribe();
          await raw.close();
        }
        const byId = await rowsById(clickhouse, database);
        const missing = [...expectedRows].filter((id) => byId.get(id) !== 1);
        const extra = [...byId.keys()].filter((id) => !expectedRows.has(id));
        assertEquals(missing, [], `seed ${seed}: good events not stored exactly once`);
        assertEquals(extra, [], `seed ${seed}: rows of no good event`);
        const got = new Map<string, string>();
        for (const msg of deadLetters) {
          const key = `${msg.headers?.get("Tailwatch-Stream-Seq")}/${
            msg.headers?.get("Tailwatch-Event-Index") ?? ""
          }`;
          assert(!got.has(key), `seed ${seed}: dead letter ${key} once`);
          got.set(key, msg.headers?.get("Tailwatch-Dead-Letter-Reason") ?? "");
          const truncated = msg.headers?.get("Tailwatch-Truncated") === "true";
          const original = bySeq.get(Number(msg.headers?.get("Tailwatch-Stream-Seq")));
          assert(original !== undefined, `seed ${seed}: dead letter ${key} of a stored message`);
          if (!truncated && !msg.headers?.get("Tailwatch-Event-Index")) {
            assert(
              sameBytes(msg.data, original.payload),
              `seed ${seed}: dead letter ${key} carries the original`,
            );
          }
          if (truncated) {
            assertEquals(msg.headers?.get("Tailwatch-Original-Size"), String(original.payload.length));
          }
        }
        assertEquals(
          [...got].sort(),
          [...expectedDead].sort(),
          `seed ${seed}: every bad message (or event) dead-lettered once, with the reference's reason`,
        );
        assert(
          stats.bytesInFlightMax <= config.maxBytesInFlight,
          `held ${stats.bytesInFlightMax} bytes at most`,
        );
        for (
          const kind of [
            "event",
            "batch",
            "truncated",
            "random bytes",
            "empty",
            "huge field",
            "near max_payload",
            "header-less",
          ]
        ) {
          assert((kinds.get(kind) ?? 0) > 0, `the fuzz made a ${kind} message`);
        }
        console.log(
          `ingest fuzz (seed ${seed}): ${stored.length} messages, ${expectedRows.size} rows, ${expectedDead.size} dead letters; ${
            JSON.stringify(Object.fromEntries(kinds))
          }`,
        );
      });
    },
  );

  await step(
    "the pull receiver reports a consumer that is gone (503, 409) or refuses its requests (409) once, and passes on a header-less delivery",
    async () => {
      await using nats = await startNatsServer();
      const nc = await connect({ servers: nats.url });
      const raw = await rawPublisher(nats.url);
      try {
        await applyRequestEventsStream(nc);
        const jsm = await jetstreamManager(nc);
        const receiverFor = (durable: string) => {
          const troubles: [PullTrouble, string][] = [];
          const received: Delivery[] = [];
          const receiver = createPullReceiver({
            nats: nats.url,
            name: `hostile-${durable}`,
            stream: REQUEST_EVENTS_STREAM,
            durable,
            batch: 100,
            requestBytes: 2 * 1024 * 1024,
            maxBytesInFlight: 8 * 1024 * 1024,
            heldBytes: () => 0,
            reconnectWaitMs: 100,
            logger: quietLogger,
            onMessage: (delivery) => received.push(delivery),
            onTrouble: (trouble, reason) => troubles.push([trouble, reason]),
          });
          return { receiver, troubles, received };
        };
        // No such consumer (deleted while no pull request waited, or lost with NATS's store): 503.
        {
          const { receiver, troubles } = receiverFor("nobody");
          await receiver.start(0);
          await eventually("the trouble", () => troubles.length > 0, 5_000);
          await sleep(700);
          assertEquals(
            troubles.map(([kind]) => kind),
            ["missing"],
            "reported once, not asked again every 500 ms",
          );
          assert(troubles[0][1].includes("503"), troubles[0][1]);
          assert(receiver.broken, "stopped pulling until restarted");
          await receiver.close();
        }
        // Request limits below what it asks: 409 Exceeded MaxRequestBatch; a push consumer: 409 push based.
        for (
          const [durable, config, words] of [
            ["small", { max_batch: 5 }, "exceeded maxrequestbatch"],
            ["pushed", { deliver_subject: "somewhere.else" }, "push based"],
          ] as const
        ) {
          await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
            durable_name: durable,
            ack_policy: AckPolicy.Explicit,
            ...config,
          });
          const { receiver, troubles } = receiverFor(durable);
          await receiver.start(0);
          await eventually(`the trouble of ${durable}`, () => troubles.length > 0, 5_000);
          await sleep(700);
          assertEquals(troubles.map(([kind]) => kind), ["unusable"], `${durable}: reported once`);
          assert(troubles[0][1].includes(words), troubles[0][1]);
          await receiver.close();
        }
        // A message published without headers arrives as a MSG, not an HMSG: passed on like any other (it
        // used to be dropped, and the consumer sequence then broke on every try).
        await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
          durable_name: "plain",
          ack_policy: AckPolicy.All,
          deliver_policy: DeliverPolicy.New,
        });
        const { receiver, troubles, received } = receiverFor("plain");
        await receiver.start(0);
        await raw.publish(requestEventSubject("catalog"), undefined, encoder.encode("no headers"));
        await raw.publish(
          requestEventSubject("catalog"),
          headerBlock([["Nats-Msg-Id", "m2"]]),
          encoder.encode("some"),
        );
        await eventually("two deliveries", () => received.length === 2, 5_000);
        assertEquals(troubles, []);
        assertEquals(decoder.decode(received[0].data), "no headers");
        assertEquals([received[0].eventCount(), received[0].header("Nats-Msg-Id"), received[0].hasMsgId()], [
          0,
          undefined,
          false,
        ]);
        assertEquals([received[1].header("Nats-Msg-Id"), received[1].hasMsgId()], ["m2", true]);
        // Deleted while a pull request waits: 409 Consumer Deleted.
        await jsm.consumers.delete(REQUEST_EVENTS_STREAM, "plain");
        await eventually("the trouble", () => troubles.length > 0, 5_000);
        assertEquals(troubles.map(([kind]) => kind), ["missing"]);
        assert(troubles[0][1].includes("consumer deleted"), troubles[0][1]);
        await receiver.close();
      } finally {
        await raw.close();
        await nc.close();
      }
    },
  );

  await step(
    "the consumer deleted while the worker runs, then NATS restarted with its store lost: recreated each time, and the new stream's sequences are not taken for inserted rows",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
        const worker = createIngestWorker({ config, logger: quietLogger });
        const running = follow(worker);
        const notReady = new Set<string>();
        const sampler = setInterval(() => {
          const readiness = worker.readiness();
          if (!readiness.ready) notReady.add(readiness.reason.replace(/[0-9]+/g, "N"));
        }, 50);
        let published = 0;
        const publish = async (n: number) => {
          await publishEvents(nc, Array.from({ length: n }, (_, i) => makeEvent(published + i)));
          published += n;
        };
        try {
          await eventually("consuming", () => worker.ready(), 30_000);
          await publish(500);
          await eventually("500 rows", async () => (await rowCount(clickhouse, database)).rows >= 500);
          await (await jetstreamManager(nc)).consumers.delete(REQUEST_EVENTS_STREAM, config.durable);
          await publish(300);
          await eventually("800 rows", async () => (await rowCount(clickhouse, database)).rows >= 800);
          // NATS loses its store: stream and consumer gone; every pull request is then answered 503.
          await nats.stop("SIGKILL");
          await Deno.remove(nats.storeDir, { recursive: true });
          await sleep(2_500);
          await nats.start();
          await eventually("the stream there again", async () => {
            await applyRequestEventsStream(nc);
            return true;
          }, 20_000);
          await publish(400);
          await eventually(
            "1200 rows",
            async () => (await rowCount(clickhouse, database)).rows >= 1200,
            30_000,
          );
          await eventually("ready again", () => worker.ready(), 10_000);
        } finally {
          clearInterval(sampler);
          await running.stop();
        }
        assertEquals(await rowCount(clickhouse, database), { rows: 1200, distinct: 1200 });
        const reused = await clickhouse.query<{ n: string }>(
          sql`SELECT count() AS n FROM (SELECT stream_seq FROM ${ident(database, "request_events")}
            GROUP BY stream_seq HAVING count() > 1)`,
        );
        assertEquals(Number(reused[0].n), 400, "the new stream's 400 sequences were the old one's too");
        // What the profiler reads: the new stream's numbers are above every number the old one's rows carry.
        const epochs = await clickhouse.query<{ seq_offset: string }>(
          sql`SELECT seq_offset FROM ${ident(database, "stream_epochs")} ORDER BY seq_offset`,
        );
        assertEquals(epochs.length, 2, "one offset per stream");
        assertEquals(Number(epochs[0].seq_offset), 0, "the first stream keeps its own numbers");
        const offset = Number(epochs[1].seq_offset);
        const stamps = async () =>
          (await clickhouse.query<Record<string, string>>(
            sql`SELECT countIf(ingest_batch_seq <= ${offset}) AS old_rows,
                countIf(ingest_batch_seq > ${offset}) AS new_rows,
                countIf(ingest_batch_seq > ${offset} AND ingest_batch_seq - ${offset} < stream_seq) AS below_seq,
                countIf(ingest_batch_seq <= ${offset} AND ingest_floor_seq > ${offset}) AS old_floor_above,
                countIf(ingest_batch_seq > ${offset} AND ingest_floor_seq != 0 AND ingest_floor_seq <= ${offset})
                  AS new_floor_below
              FROM ${ident(database, "request_events")}`,
          ))[0];
        assertEquals(
          await stamps(),
          { old_rows: "800", new_rows: "400", below_seq: "0", old_floor_above: "0", new_floor_below: "0" },
          `the new stream's batches and floors stamped above ${offset}`,
        );
        const [old] = await clickhouse.query<{ batch: string; floor: string }>(
          sql`SELECT max(ingest_batch_seq) AS batch, maxMerge(ingest_floor_seq) AS floor
            FROM ${ident(database, "latency_profile_1s")} WHERE ingest_batch_seq <= ${offset}`,
        );
        assert(Number(old.batch) <= offset && Number(old.floor) <= offset, `old numbers below ${offset}`);
        // A worker started again on the same stream uses the same offset.
        const again = createIngestWorker({ config, logger: quietLogger });
        const runningAgain = follow(again);
        try {
          await eventually("consuming again", () => again.ready(), 30_000);
          await publish(100);
          await eventually("1300 rows", async () => (await rowCount(clickhouse, database)).rows >= 1300);
        } finally {
          await runningAgain.stop();
        }
        assertEquals(
          (await stamps()).new_rows,
          "500",
          "after a restart, the same stream's rows carry the same offset",
        );
        assertEquals(
          (await clickhouse.query(sql`SELECT 1 FROM ${ident(database, "stream_epochs")}`)).length,
          2,
          "no new offset for the same stream",
        );
        const page = worker.registry.render();
        assert(metricSum(page, "ingest_consumer_recreated_total", `reason="missing"`) >= 2, page);
        assert(metricSum(page, "ingest_consumer_trouble_total", `kind="missing"`) >= 2, "missing, counted");
        assert(metricSum(page, "ingest_stream_resets_total") >= 1, "the stream reset was noticed");
        assert(
          [...notReady].some((reason) =>
            reason.includes("not connected to NATS") || reason.startsWith("consumer:")
          ),
          `readiness went false while NATS or the consumer was gone: ${[...notReady]}`,
        );
      });
    },
  );

  await step(
    "a durable made push based or with request limits below the worker's is recreated as the worker's; one that keeps being recreated makes /readyz 503",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
        const jsm = await jetstreamManager(nc);
        let published = 0;
        const publish = async (n: number) => {
          await publishEvents(nc, Array.from({ length: n }, (_, i) => makeEvent(published + i)));
          published += n;
        };
        for (
          const replaced of [
            { ack_policy: AckPolicy.Explicit, deliver_subject: "elsewhere.push" },
            { ack_policy: AckPolicy.All, max_batch: 5 },
            { ack_policy: AckPolicy.All, max_expires: 1_000_000_000 },
          ]
        ) {
          await publish(200);
          await jsm.consumers.delete(REQUEST_EVENTS_STREAM, config.durable).catch(() => {});
          await jsm.consumers.add(REQUEST_EVENTS_STREAM, { durable_name: config.durable, ...replaced });
          const stats = await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
          assert(stats.recreations >= 1, `recreated: ${JSON.stringify(replaced)}`);
          assertEquals(await rowCount(clickhouse, database), { rows: published, distinct: published });
          const info = await jsm.consumers.info(REQUEST_EVENTS_STREAM, config.durable);
          assertEquals(
            [info.config.deliver_subject ?? "", info.config.max_batch ?? 0, info.config.max_expires ?? 0],
            ["", 0, 0],
          );
        }
        // Deleted three times in a row while the worker runs: not ready, and why.
        const worker = createIngestWorker({ config, logger: quietLogger });
        await using metrics = serveMetrics(worker.registry, {
          hostname: "127.0.0.1",
          port: 0,
          ready: worker.readiness,
        });
        const running = follow(worker);
        try {
          await eventually("consuming", () => worker.ready(), 30_000);
          for (let k = 0; k < 3; k++) {
            const before = worker.stats().recreations;
            await jsm.consumers.delete(REQUEST_EVENTS_STREAM, config.durable);
            await eventually("recreated", () => worker.stats().recreations > before, 10_000);
          }
          const answer = await fetch(`http://127.0.0.1:${metrics.port}/readyz`);
          const body = await answer.text();
          assertEquals(answer.status, 503, body);
          assert(body.includes("recreated 3 times"), body);
          await publish(100);
          await eventually("rows", async () => (await rowCount(clickhouse, database)).rows >= published);
        } finally {
          await running.stop();
        }
        assertEquals(await rowCount(clickhouse, database), { rows: published, distinct: published });
        assertEquals(
          metricSum(worker.registry.render(), "ingest_consumer_recreated_total", `reason="missing"`),
          3,
        );
      });
    },
  );

  await step(
    "limits in events and bytes: messages of 256 events never make an INSERT above INGEST_BATCH_MAX rows, and the bytes held stay within INGEST_MAX_BYTES_IN_FLIGHT",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const events: RequestEvent[] = [];
        for (let m = 0; m < 12; m++) {
          const batch = Array.from({ length: 256 }, (_, i) => makeEvent(m * 256 + i));
          // A third of the messages carry long error messages: about 450 kB each.
          if (m % 3 === 0) { for (const event of batch) event.errorMessage = "x".repeat(1_600); }
          await publishEventBatch(nc, batch);
          events.push(...batch);
        }
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database, {
          INGEST_BATCH_MAX: "100",
          INGEST_BATCH_MAX_BYTES: String(64 * 1024),
          INGEST_MAX_BYTES_IN_FLIGHT: String(4 * 1024 * 1024),
        });
        const inserts: number[] = [];
        const stats = await createIngestWorker({
          config,
          logger: quietLogger,
          mode: "drain",
          onInserted: (_sent, _done, rows) => inserts.push(rows),
        }).run();
        assertEquals(await rowCount(clickhouse, database), { rows: events.length, distinct: events.length });
        assert(Math.max(...inserts) <= 100, `INSERTs of at most 100 rows (largest ${Math.max(...inserts)})`);
        assert(inserts.length >= events.length / 100, `${inserts.length} INSERTs`);
        assert(
          stats.bytesInFlightMax <= config.maxBytesInFlight,
          `held at most ${stats.bytesInFlightMax} bytes (limit ${config.maxBytesInFlight}; the stream holds ${
            events.length * 300
          }+)`,
        );
      });
    },
  );

  await step(
    "an INSERT that timed out while still unread by ClickHouse: the retry waits INGEST_INSERT_GRACE_MS and finds its rows (without the wait they went in twice)",
    async () => {
      for (const graceMs of [0, 2_000]) {
        await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
          const proxy = clickhouseProxy(server.url);
          try {
            // The first INSERT is held 1.5 s by the proxy, as a request the server has not read yet, while the
            // worker's attempt times out after 0.5 s and retries at once.
            proxy.state.delayFirstInsert = 1_500;
            await publishEvents(nc, Array.from({ length: 200 }, (_, i) => makeEvent(i)));
            const config = testConfig(nats.url, proxy.url, CLICKHOUSE_ADMIN.password, database, {
              INGEST_INSERT_TIMEOUT_MS: "500",
              INGEST_ACK_WAIT_MS: "4000",
              INGEST_RETRY_BASE_MS: "50",
              INGEST_RETRY_MAX_MS: "100",
              INGEST_INSERT_GRACE_MS: String(graceMs),
            });
            const stats = await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
            await sleep(2_000); // the held INSERT has reached ClickHouse by now, whatever came of it
            assertEquals(proxy.state.delayed, 1, "the first INSERT was held");
            const { rows } = await rowCount(clickhouse, database);
            if (graceMs > 0) {
              assertEquals(rows, 200, "exactly once");
              assertEquals(stats.duplicatesSkipped, 200, "the retry found the held INSERT's rows");
            } else {
              assertEquals(rows, 400, "without the grace, the held INSERT and the retry both went in");
            }
          } finally {
            await proxy.close();
          }
        });
      }
    },
  );

  await step(
    "a publisher's retry after the duplicate window (the same events, another message) and an event published twice without headers: one row each",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const raw = await rawPublisher(nats.url);
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
        try {
          // Events that started 20 minutes ago, stored now: past half the stream's 10-minute window.
          const startedAt = Date.now() - 20 * 60_000;
          const singles = Array.from({ length: 100 }, (_, i) => makeEvent(i, startedAt));
          await publishEvents(nc, singles);
          const first = await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
          assertEquals(first.rowsInserted, 100);
          // What a retry after the window amounts to: the same events under Nats-Msg-Ids JetStream no longer
          // remembers (here, other ids), so the stream stores them again as new messages.
          for (const event of singles) {
            await raw.publish(
              requestEventSubject(event.service),
              headerBlock([["Nats-Msg-Id", `retry-${event.eventId}`]]),
              eventBytes(event),
            );
          }
          const batch = Array.from({ length: 50 }, (_, i) => makeEvent(i, startedAt));
          for (const id of ["batch-a", "batch-b"]) {
            await raw.publish(
              requestEventSubject("orders"),
              headerBlock([["Nats-Msg-Id", id], ["Tailwatch-Events", "50"]]),
              batchBytes(batch),
            );
          }
          // Fresh, but without a Nats-Msg-Id: JetStream cannot tell the copies apart.
          const plain = makeEvent(7);
          for (let k = 0; k < 2; k++) {
            await raw.publish(requestEventSubject("catalog"), undefined, eventBytes(plain));
          }
          const second = await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
          assertEquals(second.rowsInserted, 51, "the batch once, the plain event once");
          assertEquals(second.duplicatesSkipped, 100 + 50 + 1);
        } finally {
          await raw.close();
        }
        assertEquals(await rowCount(clickhouse, database), { rows: 151, distinct: 151 });
      });
    },
  );

  await step(
    "/readyz is 503 with the reason while messages wait and nothing is committed (ClickHouse refusing INSERTs); the stall is counted",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const proxy = clickhouseProxy(server.url);
        const config = testConfig(nats.url, proxy.url, CLICKHOUSE_ADMIN.password, database, {
          INGEST_STALL_TIMEOUT_MS: "1000",
        });
        const worker = createIngestWorker({ config, logger: quietLogger });
        await using metrics = serveMetrics(worker.registry, {
          hostname: "127.0.0.1",
          port: 0,
          ready: worker.readiness,
        });
        const running = follow(worker);
        const readyz = async () => {
          const answer = await fetch(`http://127.0.0.1:${metrics.port}/readyz`);
          return { status: answer.status, body: await answer.text() };
        };
        try {
          await eventually("ready", async () => (await readyz()).status === 200, 30_000);
          proxy.state.refuseInserts = true;
          await publishEvents(nc, Array.from({ length: 100 }, (_, i) => makeEvent(i)));
          let seen = { status: 0, body: "" };
          await eventually("not ready", async () => (seen = await readyz()).status === 503, 10_000);
          assert(seen.body.includes("no batch committed"), seen.body);
          const page = await (await fetch(`http://127.0.0.1:${metrics.port}/metrics`)).text();
          assertEquals(metricSum(page, "ingest_stalls_total"), 1);
          assertEquals(metricSum(page, "ingest_ready"), 0);
          proxy.state.refuseInserts = false;
          await eventually("rows", async () => (await rowCount(clickhouse, database)).rows >= 100, 30_000);
          await eventually("ready again", async () => (await readyz()).status === 200, 10_000);
        } finally {
          await running.stop();
          await proxy.close();
        }
        assertEquals(await rowCount(clickhouse, database), { rows: 100, distinct: 100 });
      });
    },
  );
});
