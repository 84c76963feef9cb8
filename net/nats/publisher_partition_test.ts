/**
 * The event sink with partitions (EVENT_PARTITIONS) against a real nats-server: each message goes whole to one
 * of `events.requests.<service>.<p>`, the partitions get equal shares of the events (within one message), every
 * event is stored once, one partition keeps the unpartitioned subject, and a stream that does not take the
 * partitioned subjects (one made before 2026-12, `events.requests.*`) holds the events back, not ready, until
 * the setup step widens it.
 */
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { assert, assertEquals, startNatsServer, waitUntil } from "@tailwatch/testing";
import { createEventSink, type EventSink, type RequestEventInit } from "./publisher.ts";
import { createRegistry, type Logger } from "@tailwatch/runtime";
import { applyRequestEventsStream } from "./stream_setup.ts";
import { EVENT_COUNT_HEADER, REQUEST_EVENTS_STREAM } from "@tailwatch/events";
import { sampleEvent } from "@tailwatch/events/testing";

const options = { sanitizeOps: false, sanitizeResources: false };

/** Says nothing: the tests read readiness, not the log. */
const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };

function event(index: number): RequestEventInit {
  return sampleEvent({ durationUs: BigInt(100 + index) });
}

/** Every stored message's subject and its number of events (its Tailwatch-Events header, 1 without). */
async function storedMessages(url: string): Promise<{ subject: string; events: number }[]> {
  const nc = await connect({ servers: url });
  try {
    const total = (await (await jetstreamManager(nc)).streams.info(REQUEST_EVENTS_STREAM)).state.messages;
    const reader = await jetstream(nc).consumers.get(REQUEST_EVENTS_STREAM, { headers_only: true });
    const found: { subject: string; events: number }[] = [];
    while (found.length < total) {
      for await (const m of await reader.fetch({ max_messages: 1000, expires: 2_000 })) {
        found.push({ subject: m.subject, events: Number(m.headers?.get(EVENT_COUNT_HEADER) || "1") });
      }
    }
    return found;
  } finally {
    await nc.close();
  }
}

/** Emits `total` events in bursts of 1..`burst`, a few milliseconds apart: messages of many sizes. */
async function emitBursts(sink: EventSink, total: number, burst: number): Promise<void> {
  for (let i = 0; i < total;) {
    const n = Math.min(total - i, 1 + Math.floor(Math.random() * burst));
    for (let k = 0; k < n; k++) assert(sink.emit(event(i++)), "accepted");
    await new Promise((resolve) => setTimeout(resolve, 3));
  }
}

Deno.test(
  "partitions: messages spread over events.requests.<service>.<p>, equal in events, each event once",
  options,
  async () => {
    await using nats = await startNatsServer();
    await applyRequestEventsStream(nats.url);
    const sink = createEventSink({
      service: "catalog",
      nats: nats.url,
      capacity: 100_000,
      concurrency: 4096,
      eventsPerMessage: 16,
      publishIntervalMs: 2,
      partitions: 4,
      logger: quiet,
      metrics: createRegistry(),
    });
    try {
      await emitBursts(sink, 5_000, 40);
      assert(await sink.flush(20_000), "every event acknowledged");
    } finally {
      await sink.close(5_000);
    }
    const messages = await storedMessages(nats.url);
    const events = new Map<string, number>();
    const counts = new Map<string, number>();
    for (const { subject, events: n } of messages) {
      events.set(subject, (events.get(subject) ?? 0) + n);
      counts.set(subject, (counts.get(subject) ?? 0) + 1);
      assert(n <= 16, `a message holds at most eventsPerMessage: ${n}`);
    }
    assertEquals(
      [...events.keys()].sort(),
      [0, 1, 2, 3].map((p) => `events.requests.catalog.${p}`),
      "the four partitions' subjects, nothing else",
    );
    assertEquals([...events.values()].reduce((a, b) => a + b, 0), 5_000, "every event stored once");
    const shares = [...events.values()];
    assert(
      Math.max(...shares) - Math.min(...shares) <= 16,
      `equal within one message: ${JSON.stringify([...events])}`,
    );
    assert(new Set(messages.map((m) => m.events)).size > 3, "messages of many sizes");
  },
);

Deno.test("partitions: one partition publishes on the unpartitioned subject", options, async () => {
  await using nats = await startNatsServer();
  await applyRequestEventsStream(nats.url);
  const sink = createEventSink({
    service: "catalog",
    nats: nats.url,
    capacity: 1000,
    concurrency: 64,
    publishIntervalMs: 2,
    logger: quiet,
    metrics: createRegistry(),
  });
  try {
    await emitBursts(sink, 200, 10);
    assert(await sink.flush(10_000));
  } finally {
    await sink.close(2_000);
  }
  const subjects = new Set((await storedMessages(nats.url)).map((m) => m.subject));
  assertEquals([...subjects], ["events.requests.catalog"]);
});

Deno.test(
  "partitions: a stream of the unpartitioned subjects only holds the events back until it is widened",
  options,
  async () => {
    await using nats = await startNatsServer();
    // What the setup step made before 2026-12.
    await applyRequestEventsStream(nats.url, { subjects: ["events.requests.*"] });
    const sink = createEventSink({
      service: "catalog",
      nats: nats.url,
      capacity: 1000,
      concurrency: 64,
      publishIntervalMs: 2,
      partitions: 2,
      logger: quiet,
      metrics: createRegistry(),
    });
    try {
      await waitUntil(
        "not ready, naming the partitioned subjects",
        () =>
          /do not take events\.requests\.catalog\.0, events\.requests\.catalog\.1/.test(
            sink.readiness().reason,
          ),
        10_000,
      );
      for (let i = 0; i < 100; i++) sink.emit(event(i));
      await new Promise((resolve) => setTimeout(resolve, 300));
      assertEquals(sink.pending(), 100, "held in the buffer");
      // The setup step of this version: events.requests.> (a superset: the stream is updated in place).
      assertEquals(await applyRequestEventsStream(nats.url), "updated");
      assert(await sink.flush(20_000), "published once the stream takes them");
      assert(sink.readiness().ready, sink.readiness().reason);
    } finally {
      await sink.close(2_000);
    }
    const stored = await storedMessages(nats.url);
    assertEquals(stored.reduce((sum, m) => sum + m.events, 0), 100);
    assert(stored.every((m) => /^events\.requests\.catalog\.[01]$/.test(m.subject)));
  },
);
