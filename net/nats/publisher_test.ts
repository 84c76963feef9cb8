/**
 * The event sink against a real nats-server: every accepted event is stored exactly once, whatever happens to
 * the connection, and the counters add up (accepted = published + pending; refused = dropped).
 */
import { fromBinary } from "@bufbuild/protobuf";
import { jetstreamManager, StorageType } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { RequestEventSchema } from "@tailwatch/proto/events/v1";
import {
  assert,
  assertEquals,
  freePort,
  readStreamMessages,
  startNatsServer,
  waitUntil,
} from "@tailwatch/testing";
import { createEventSink, type RequestEventInit } from "./publisher.ts";
import { createLogger, createRegistry, type Logger } from "@tailwatch/runtime";
import { createNatsWire } from "./wire.ts";
import { parseNatsUrl } from "./protocol.ts";
import { applyRequestEventsStream } from "./stream_setup.ts";
import { eventsOfMessage, REQUEST_EVENTS_STREAM } from "@tailwatch/events";
import { sampleEvent } from "@tailwatch/events/testing";

const options = { sanitizeOps: false, sanitizeResources: false };

/** A nats-server with the stream, applied as the setup step does (the sink only checks it). */
async function natsWithStream() {
  const nats = await startNatsServer();
  await applyRequestEventsStream(nats.url);
  return nats;
}

/** A logger that keeps what it is told (level and message), for assertions on the log. */
function capturingLogger(): Logger & { lines: { level: string; msg: string; fields: unknown }[] } {
  const lines: { level: string; msg: string; fields: unknown }[] = [];
  const make = (): Logger => ({
    debug: (msg, fields) => void lines.push({ level: "debug", msg, fields }),
    info: (msg, fields) => void lines.push({ level: "info", msg, fields }),
    warn: (msg, fields) => void lines.push({ level: "warn", msg, fields }),
    error: (msg, fields) => void lines.push({ level: "error", msg, fields }),
    child: () => make(),
  });
  return Object.assign(make(), { lines });
}

function event(index: number): RequestEventInit {
  const notFound = index % 7 === 0;
  return sampleEvent({
    durationUs: BigInt(100 + index),
    route: "/catalog.v1.CatalogService/GetProduct",
    grpcCode: notFound ? 5 : 0,
    httpStatus: notFound ? 404 : 200,
    errorMessage: notFound ? "product not found: ünïcødé" : "",
    startTimeUs: BigInt(Date.now()) * 1000n + 123n,
    loadRunId: index % 3 === 0 ? "run-42" : "",
  });
}

/**
 * Stored events, in stream order: the Nats-Msg-Id header and the event count of the message each came in, its
 * place in that message, and the decoded event's id and duration.
 */
async function storedEvents(natsUrl: string) {
  const messages = await readStreamMessages(natsUrl, REQUEST_EVENTS_STREAM);
  return messages.flatMap((message) =>
    eventsOfMessage(message.data, message.eventCount).map((decoded, index, all) => ({
      msgId: message.msgId,
      countHeader: message.eventCount,
      messageEvents: all.length,
      index,
      eventId: decoded.eventId,
      durationUs: decoded.durationUs,
    }))
  );
}

function sinkFor(
  natsUrl: string,
  overrides: { capacity?: number; publishTimeoutMs?: number; eventsPerMessage?: number; logger?: Logger } =
    {},
) {
  const metrics = createRegistry();
  const sink = createEventSink({
    service: "catalog",
    nats: natsUrl,
    capacity: overrides.capacity ?? 100_000,
    concurrency: 64,
    publishIntervalMs: 5,
    publishTimeoutMs: overrides.publishTimeoutMs,
    eventsPerMessage: overrides.eventsPerMessage,
    logger: overrides.logger ?? createLogger("error"),
    metrics,
  });
  const counter = (name: string) => {
    const line = metrics.render().split("\n").find((l) => l.startsWith(`${name} `));
    return line === undefined ? 0 : Number(line.split(" ")[1]);
  };
  return { sink, counter, metrics };
}

Deno.test(
  "every emitted event is stored once, with its fields, in messages of at most eventsPerMessage",
  options,
  async () => {
    await using nats = await natsWithStream();
    const { sink, counter } = sinkFor(nats.url, { eventsPerMessage: 40 });
    const emitted = Array.from({ length: 3000 }, (_, i) => event(i));
    // In bursts across turns, as requests come: frames of one burst share a page and a socket write.
    for (let i = 0; i < emitted.length; i += 250) {
      for (const e of emitted.slice(i, i + 250)) assert(sink.emit(e), "accepted");
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    assert(await sink.flush(20_000), "flushed");
    assertEquals(sink.pending(), 0);
    assertEquals(counter("events_published_total"), emitted.length);
    assertEquals(counter("events_dropped_total"), 0);
    const stored = await storedEvents(nats.url);
    assertEquals(stored.length, emitted.length);
    assertEquals(stored.map((s) => s.eventId).sort(), emitted.map((e) => e.eventId).sort());
    assert(stored.every((s) => s.messageEvents <= 40), "no message holds more than eventsPerMessage");
    assert(stored.some((s) => s.messageEvents === 40), "bursts fill whole messages");
    const firsts = stored.filter((s) => s.index === 0);
    assert(firsts.every((s) => s.msgId === s.eventId), "a message's Nats-Msg-Id is its first event's id");
    assert(
      stored.every((s) => s.countHeader === (s.messageEvents > 1 ? String(s.messageEvents) : undefined)),
      "Tailwatch-Events gives the count of a message of several events, and only of those",
    );
    // Emission order is kept: across messages (stream order) and within them.
    assertEquals(stored.map((s) => s.eventId), emitted.map((e) => e.eventId));
    const byId = new Map(emitted.map((e) => [e.eventId, e]));
    assert(stored.every((s) => byId.get(s.eventId)?.durationUs === s.durationUs), "fields round-trip");
    await sink.close(5000);
  },
);

Deno.test("with eventsPerMessage 1 every event is a message of its own under its id", options, async () => {
  await using nats = await natsWithStream();
  const { sink, counter } = sinkFor(nats.url, { eventsPerMessage: 1 });
  const emitted = Array.from({ length: 300 }, (_, i) => event(i));
  for (const e of emitted) assert(sink.emit(e), "accepted");
  assert(await sink.flush(20_000), "flushed");
  assertEquals(counter("events_published_total"), emitted.length);
  const messages = await readStreamMessages(nats.url, REQUEST_EVENTS_STREAM);
  assertEquals(messages.length, emitted.length);
  assert(messages.every((m) => m.eventCount === undefined), "no Tailwatch-Events header");
  const decoded = messages.map((m) => fromBinary(RequestEventSchema, m.data));
  assertEquals(decoded.map((e) => e.eventId), emitted.map((e) => e.eventId));
  assert(messages.every((m, i) => m.msgId === decoded[i].eventId), "Nats-Msg-Id is the event id");
  await sink.close(5000);
});

Deno.test("an event id published twice is stored once and counted as a duplicate", options, async () => {
  await using nats = await natsWithStream();
  const { sink, counter } = sinkFor(nats.url);
  const first = event(1);
  sink.emit(first);
  assert(await sink.flush(10_000), "first flushed");
  sink.emit({ ...first, durationUs: 999n });
  assert(await sink.flush(10_000), "second flushed");
  assertEquals(counter("events_published_total"), 2);
  assertEquals(counter("events_duplicate_acks_total"), 1);
  const stored = await storedEvents(nats.url);
  assertEquals(stored.length, 1);
  assertEquals(stored[0].durationUs, first.durationUs, "the first copy stays");
  await sink.close(5000);
});

Deno.test("events emitted while NATS restarts are all stored, once", options, async () => {
  await using nats = await natsWithStream();
  const { sink, counter } = sinkFor(nats.url, { publishTimeoutMs: 2000 });
  const emitted: RequestEventInit[] = [];
  const emitSome = async (rounds: number) => {
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < 50; i++) {
        const e = event(emitted.length);
        emitted.push(e);
        assert(sink.emit(e), "accepted");
      }
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  };
  await emitSome(20);
  const emitting = emitSome(200);
  await new Promise((resolve) => setTimeout(resolve, 100));
  // Frozen first, so that writes sent just before the crash are surely waiting for acks that never come (a
  // crash between two writes would leave nothing to publish again).
  Deno.kill(nats.pid!, "SIGSTOP");
  await new Promise((resolve) => setTimeout(resolve, 50));
  await nats.stop("SIGKILL");
  await new Promise((resolve) => setTimeout(resolve, 1000));
  await nats.start();
  await emitting;
  assert(await sink.flush(30_000), `flushed (pending ${sink.pending()})`);
  const stored = await storedEvents(nats.url);
  assertEquals(new Set(stored.map((s) => s.eventId)).size, stored.length, "no event stored twice");
  assertEquals(stored.length, emitted.length, "no event lost");
  assertEquals(counter("events_published_total"), emitted.length);
  assert(counter("events_publish_retries_total") > 0, "the restart caused retries");
  await sink.close(5000);
});

Deno.test(
  "batches whose ack does not come in time are published again, and stored once",
  options,
  async () => {
    await using nats = await natsWithStream();
    const { sink, counter } = sinkFor(nats.url, { publishTimeoutMs: 400 });
    for (let i = 0; i < 50; i++) sink.emit(event(i));
    assert(await sink.flush(10_000), "first events flushed");
    // A frozen server keeps the connection open and answers nothing: only the ack timeout can notice.
    Deno.kill(nats.pid!, "SIGSTOP");
    const emitted = Array.from({ length: 200 }, (_, i) => event(i));
    try {
      for (const e of emitted) sink.emit(e);
      await waitUntil("a timed-out batch published again", () => counter("events_publish_retries_total") > 0);
    } finally {
      Deno.kill(nats.pid!, "SIGCONT");
    }
    assert(await sink.flush(20_000), `flushed (pending ${sink.pending()})`);
    const stored = await storedEvents(nats.url);
    assertEquals(stored.length, 250, "every event stored once");
    assertEquals(new Set(stored.map((s) => s.eventId)).size, 250);
    assertEquals(counter("events_published_total"), 250);
    assertEquals(counter("events_dropped_total"), 0);
    assert(
      counter("events_duplicate_acks_total") > 0,
      "the copies written before the freeze were stored first",
    );
    await sink.close(5000);
  },
);

Deno.test(
  "a stream deleted under the sink: not ready, named, events kept; published once the setup step creates it again",
  options,
  async () => {
    await using nats = await natsWithStream();
    const { sink, counter } = sinkFor(nats.url);
    for (let i = 0; i < 100; i++) sink.emit(event(i));
    assert(await sink.flush(10_000), "first events flushed");
    assertEquals(sink.readiness(), { ready: true, reason: "events: publishing" });
    const nc = await connect({ servers: nats.url });
    await (await jetstreamManager(nc)).streams.delete(REQUEST_EVENTS_STREAM);
    const after = Array.from({ length: 300 }, (_, i) => event(i));
    for (const e of after) sink.emit(e);
    // The sink never creates the stream: it waits, not ready, and says what is missing.
    await waitUntil("not ready: the stream is missing", () => /does not exist/.test(sink.readiness().reason));
    assertEquals(sink.readiness().ready, false);
    assert(sink.readiness().reason.includes("setup step"), sink.readiness().reason);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    assertEquals(sink.pending(), 300, "every event kept");
    assertEquals(
      await (await jetstreamManager(nc)).streams.info(REQUEST_EVENTS_STREAM).then(
        () => "there",
        () => "gone",
      ),
      "gone",
      "nobody but the setup step creates it",
    );
    assertEquals(await applyRequestEventsStream(nc), "created");
    await nc.close();
    assert(await sink.flush(20_000), `flushed (pending ${sink.pending()})`);
    const stored = await storedEvents(nats.url);
    assertEquals(stored.map((s) => s.eventId).sort(), after.map((e) => e.eventId).sort());
    assertEquals(counter("events_published_total"), 400);
    assert(counter("events_publish_retries_total") > 0, "the refused batch was published again");
    await waitUntil("ready again", () => sink.readiness().ready);
    await sink.close(5000);
  },
);

Deno.test(
  "a stream that does not fit the publisher is named in readiness and the log; nothing is published to it",
  options,
  async () => {
    await using nats = await startNatsServer();
    const nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    // Another service's subjects only, in memory, with a 2 s duplicate window: three mistakes.
    await jsm.streams.add({
      name: REQUEST_EVENTS_STREAM,
      subjects: ["events.requests.orders"],
      storage: StorageType.Memory,
      duplicate_window: 2_000_000_000,
    });
    const logger = capturingLogger();
    const { sink, counter } = sinkFor(nats.url, { logger });
    for (let i = 0; i < 20; i++) sink.emit(event(i));
    await waitUntil("the check's verdict", () => /do not take/.test(sink.readiness().reason));
    const reason = sink.readiness().reason;
    for (const words of ["events.requests.catalog", "storage is memory", "duplicate window is 2 s"]) {
      assert(reason.includes(words), `${words} in: ${reason}`);
    }
    assert(
      logger.lines.some((line) => line.level === "error" && /waiting for the stream/.test(line.msg)),
      JSON.stringify(logger.lines),
    );
    assertEquals(counter("events_ready"), 0);
    assertEquals(
      (await jsm.streams.info(REQUEST_EVENTS_STREAM)).state.messages,
      0,
      "nothing published to it",
    );
    // The setup step replaces it (storage cannot be changed in place): the events go out.
    await jsm.streams.delete(REQUEST_EVENTS_STREAM);
    assertEquals(await applyRequestEventsStream(nc), "created");
    assert(await sink.flush(20_000), `flushed (pending ${sink.pending()})`);
    assertEquals((await storedEvents(nats.url)).length, 20);
    assertEquals(counter("events_ready"), 1);
    await nc.close();
    await sink.close(5000);
  },
);

Deno.test(
  "with NATS not up yet events wait in the buffer; past its capacity they are dropped and counted",
  options,
  async () => {
    const port = freePort();
    const url = `nats://127.0.0.1:${port}`;
    const { sink, counter } = sinkFor(url, { capacity: 100 });
    const accepted = Array.from({ length: 150 }, (_, i) => sink.emit(event(i))).filter(Boolean).length;
    assertEquals(accepted, 100);
    assertEquals(counter("events_dropped_total"), 50);
    assertEquals(sink.pending(), 100);
    assertEquals(counter("events_nats_connected"), 0);
    const dir = await Deno.makeTempDir();
    const server = new Deno.Command("nats-server", {
      args: ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", `${dir}/js`],
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      await waitUntil("NATS up and the stream there (the setup step)", async () => {
        await applyRequestEventsStream(url);
        return true;
      }, 20_000);
      assert(await sink.flush(20_000), "flushed once NATS is up");
      assertEquals(counter("events_published_total"), 100);
      assertEquals((await storedEvents(url)).length, 100);
      await sink.close(5000);
    } finally {
      server.kill("SIGKILL");
      await server.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  "the wire client reads a message larger than its read buffer and answers flush",
  options,
  async () => {
    await using nats = await natsWithStream();
    const received: number[] = [];
    const big = new Uint8Array(1_000_000).map((_, i) => i % 251);
    let intact = true;
    const wire = createNatsWire({
      servers: [parseNatsUrl(nats.url)],
      name: "wire-test",
      logger: createLogger("error"),
      onConnected: () => wire.writeText("SUB wire.test 7\r\n"),
      onMessage(message) {
        const payload = message.buf.subarray(message.payloadStart, message.end);
        received.push(payload.length);
        if (payload.length === big.length) intact = payload.every((byte, i) => byte === big[i]);
      },
    });
    await waitUntil("wire connected", () => wire.connected);
    await wire.flush();
    for (const size of [10, 200_000, big.length, 20]) {
      const head = new TextEncoder().encode(`PUB wire.test ${size}\r\n`);
      wire.write(head);
      wire.write(big.subarray(0, size));
      wire.writeText("\r\n");
    }
    await wire.flush();
    await waitUntil("four messages", () => received.length === 4);
    assertEquals(received, [10, 200_000, big.length, 20]);
    assert(intact, "the large message arrives intact");
    await wire.close();
  },
);

Deno.test("a NATS URL of another scheme is refused", () => {
  let message = "";
  try {
    parseNatsUrl("http://127.0.0.1:4222");
  } catch (error) {
    message = String(error);
  }
  assert(message.includes("nats:// or tls://"), message);
  assertEquals(parseNatsUrl("nats://secret@127.0.0.1").token, "secret");
  assertEquals(parseNatsUrl("nats://u:p%40ss@[::1]:4333"), {
    hostname: "::1",
    port: 4333,
    tls: false,
    user: "u",
    pass: "p@ss",
  });
});

Deno.test(
  "a message JetStream refuses in the middle of a write is published again; events count only when stored",
  options,
  async () => {
    // Until 2026-12 only a write's last message asked for an ack: nats-server drops a message it cannot store
    // without a word when it has no reply subject (here: over the stream's max_msg_size; in production a full
    // ingest queue, which answers 429 only to messages with a reply), and its events were counted as
    // published while the stream never had them.
    await using nats = await natsWithStream();
    const { sink, counter } = sinkFor(nats.url, { eventsPerMessage: 2 });
    sink.emit(event(0));
    assert(await sink.flush(10_000), "warm-up flushed (the stream exists)");
    const nc = await connect({ servers: nats.url });
    const limitMessageSize = async (max_msg_size: number) => {
      const jsm = await jetstreamManager(nc);
      const { config } = await jsm.streams.info(REQUEST_EVENTS_STREAM);
      await jsm.streams.update(REQUEST_EVENTS_STREAM, { ...config, max_msg_size });
    };
    try {
      await limitMessageSize(2_000);
      // Three messages of two events in one write; the second is too large for the stream.
      const emitted = Array.from({ length: 6 }, (_, i) => event(i + 1));
      emitted[2] = { ...emitted[2], errorMessage: "x".repeat(5_000) };
      for (const e of emitted) assert(sink.emit(e), "accepted");
      await waitUntil("the refusal", () => counter("events_publish_refused_total") >= 1, 10_000);
      await waitUntil("the others' acks", () => counter("events_published_total") === 5, 10_000);
      assertEquals((await storedEvents(nats.url)).length, 5, "the first and the third message are stored");
      assertEquals(counter("events_published_total"), 5, "and only their events are counted");
      assertEquals(sink.pending(), 2, "the refused message's events are still pending");
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert(counter("events_publish_retries_total") >= 4, "and published again (its two events, twice)");
      assertEquals(counter("events_published_total"), 5, "refused again: still not counted");
      await limitMessageSize(-1);
      assert(await sink.flush(20_000), `flushed once the stream takes it (pending ${sink.pending()})`);
      const stored = await storedEvents(nats.url);
      assertEquals(stored.length, 7, "every event stored");
      assertEquals(new Set(stored.map((s) => s.eventId)).size, 7, "once");
      assertEquals(counter("events_published_total"), 7, "counted once each, when stored");
    } finally {
      await nc.close();
    }
    await sink.close(5000);
  },
);
