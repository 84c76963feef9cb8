/**
 * The global floor of several partition workers (floor.ts) and the partition settings (config.ts), without
 * servers: G over partition observations, the tracker against a fake JetStream (sibling consumers busy, caught
 * up, missing, left by a larger count; a stream that starts over), and INGEST_PARTITIONS / INGEST_PARTITION.
 */
import type { ConsumerInfo } from "@nats-io/jetstream";
import { createLogger } from "@tailwatch/runtime";
import {
  partitionFilterSubjects,
  requestEventsStreamProblems,
  requestEventSubject,
  subjectCovers,
  subjectsOverlap,
} from "@tailwatch/events";
import { assert, assertEquals } from "@tailwatch/testing";
import { ConfigError, loadConfig, parsePartition, partitionDurable } from "./config.ts";
import {
  createGlobalFloorTracker,
  type FloorSource,
  globalFloor,
  partitionFloor,
  type PartitionObservation,
} from "./floor.ts";

Deno.test("a partition's floor: its ack floor while busy, up to the next message or the last sequence", () => {
  const last = 1000;
  assertEquals(partitionFloor({ ackFloor: 400, busy: true }, last), 400, "busy: the ack floor only");
  assertEquals(partitionFloor({ ackFloor: 400, busy: false, next: 700 }, last), 699, "caught up to 699");
  assertEquals(
    partitionFloor({ ackFloor: 400, busy: false }, last),
    1000,
    "nothing above: the last sequence",
  );
  assertEquals(
    partitionFloor({ ackFloor: 0, busy: false, next: 5 }, last),
    4,
    "no consumer: first message - 1",
  );
  assertEquals(partitionFloor({ ackFloor: 0, busy: false }, last), 1000, "no consumer, no message");
  assertEquals(
    partitionFloor({ ackFloor: 1200, busy: false }, last),
    1200,
    "an ack floor above the last read",
  );
  const partitions: PartitionObservation[] = [
    { ackFloor: 900, busy: true },
    { ackFloor: 300, busy: false, next: 950 },
    { ackFloor: 0, busy: false },
  ];
  assertEquals(globalFloor(partitions, last), 900, "the lowest partition floor");
  assertEquals(globalFloor([], last), last);
  // With one partition G is that partition's floor: the committed floor while it has work.
  assertEquals(globalFloor([{ ackFloor: 42, busy: true }], last), 42);
});

/** A fake JetStream: the stream's last sequence and creation, consumers, and which subject each message has. */
function fakeSource() {
  const state = {
    lastSeq: 0,
    created: "2026-12-01T00:00:00Z",
    consumers: new Map<string, ConsumerInfo>(),
    /** Stream messages: sequence → subject. */
    subjects: new Map<number, string>(),
    calls: 0,
  };
  const matches = (filter: string, subject: string) => subjectCovers(filter, subject);
  const source: FloorSource = {
    stream: () => {
      state.calls++;
      return Promise.resolve({ lastSeq: state.lastSeq, created: state.created });
    },
    consumer: (name) => Promise.resolve(state.consumers.get(name)),
    consumerNames: () => Promise.resolve([...state.consumers.keys()]),
    firstAfter: (filter, afterSeq) => {
      const seqs = [...state.subjects.entries()].filter(([seq, subject]) =>
        seq > afterSeq && matches(filter, subject)
      ).map(([seq]) => seq);
      return Promise.resolve(seqs.length === 0 ? undefined : Math.min(...seqs));
    },
  };
  const publish = (subject: string) => {
    state.lastSeq++;
    state.subjects.set(state.lastSeq, subject);
    return state.lastSeq;
  };
  const consumer = (name: string, fields: {
    ackFloor: number;
    pending?: number;
    ackPending?: number;
    delivered?: number;
    filters?: string[];
  }) => {
    state.consumers.set(name, {
      name,
      config: {
        durable_name: name,
        ...(fields.filters && fields.filters.length > 1 ? { filter_subjects: fields.filters } : {}),
        ...(fields.filters && fields.filters.length === 1 ? { filter_subject: fields.filters[0] } : {}),
      },
      ack_floor: { stream_seq: fields.ackFloor, consumer_seq: 0 },
      delivered: { stream_seq: fields.delivered ?? fields.ackFloor, consumer_seq: 0 },
      num_pending: fields.pending ?? 0,
      num_ack_pending: fields.ackPending ?? 0,
      num_waiting: 0,
      num_redelivered: 0,
    } as unknown as ConsumerInfo);
  };
  return { state, source, publish, consumer };
}

Deno.test("the tracker: G over every partition, never down, the own floor, missing and leftover durables", async () => {
  const { state, source, publish, consumer } = fakeSource();
  const logger = createLogger("error");
  let own = 0;
  let clock = 0;
  const tracker = createGlobalFloorTracker({
    source,
    durableBase: "ingest",
    partitions: 3,
    self: 1,
    ownFloor: () => own,
    logger,
    listEveryMs: 0,
    now: () => clock,
  });
  const p = (service: string, partition: number) => publish(requestEventSubject(service, partition));
  // Sequences: 1 (p0), 2 (p1), 3 (p2), 4 (p0), 5 (p1), 6 (p2), 7 unpartitioned (read by p0).
  p("orders", 0), p("orders", 1), p("catalog", 2), p("orders", 0), p("payments", 1), p("catalog", 2);
  publish(requestEventSubject("orders"));
  // Partition 2's worker never started: its durable is missing, its first message is 3.
  consumer("ingest", { ackFloor: 4, pending: 1 }); // busy: 7 waits
  consumer("ingest-1", { ackFloor: 5 }); // caught up
  assertEquals(await tracker.refresh(), 2, "held by partition 2's first message (3) - 1");
  assert(tracker.holders().some((who) => who.includes("ingest-2")), tracker.holders().join());
  // Partition 2 starts and commits everything of its own; partition 0 still has 7.
  consumer("ingest-2", { ackFloor: 6 });
  assertEquals(await tracker.refresh(), 4, "partition 0's ack floor");
  // Partition 0 commits 7: everything is committed, G reaches the last sequence.
  consumer("ingest", { ackFloor: 7 });
  assertEquals(await tracker.refresh(), 7);
  // A consumer that says "nothing pending" while a message of its subjects is stored (the server counts
  // pending messages in a goroutine of its own): the look-up by subject finds it.
  const lagging = p("orders", 0); // 8
  p("payments", 1); // 9, partition 1 (this worker) has not taken it
  consumer("ingest-1", { ackFloor: 5, pending: 1 });
  assertEquals(await tracker.refresh(), 7, "never down, and not past 8");
  consumer("ingest-1", { ackFloor: 5 }); // the server's count lags: the own floor and the look-up decide
  own = 9;
  assertEquals(await tracker.refresh(), lagging - 1, "partition 0 reports nothing pending, but 8 is there");
  consumer("ingest", { ackFloor: 8 });
  assertEquals(await tracker.refresh(), 9);
  // A durable left by a larger count (ingest-3 of 4) with a message nobody takes: G waits for it.
  const stranded = publish("events.requests.orders.3"); // 10
  consumer("ingest-3", { ackFloor: 2, pending: 1, filters: ["events.requests.*.3"] });
  clock += 1;
  assertEquals(await tracker.refresh(), 9, "never down");
  p("orders", 1); // 11
  own = 11;
  assertEquals(await tracker.refresh(), 9, `held by the stranded ${stranded}`);
  consumer("ingest-3", { ackFloor: 10, filters: ["events.requests.*.3"] });
  assertEquals(await tracker.refresh(), 11);
  // The stream is deleted and made again: its sequences start over, so does G.
  state.created = "2026-12-02T00:00:00Z";
  state.lastSeq = 0;
  state.subjects.clear();
  state.consumers.clear();
  p("orders", 0);
  own = 0;
  assertEquals(await tracker.refresh(), 0, "partition 0's first message is 1: G starts again below it");
});

Deno.test("partition settings: INGEST_PARTITIONS, INGEST_PARTITION (a number or a pod name), filters, names", () => {
  const base = { CLICKHOUSE_PASSWORD: "x" };
  const single = loadConfig(base);
  assertEquals([single.partitions, single.partition, single.durable], [1, 0, "tailwatch-ingest"]);
  assertEquals(single.filterSubjects, ["events.requests.>"], "one worker reads every event");
  const third = loadConfig({ ...base, INGEST_PARTITIONS: "4", INGEST_PARTITION: "ingest-2" });
  assertEquals([third.partition, third.durable, third.durableBase], [
    2,
    "tailwatch-ingest-2",
    "tailwatch-ingest",
  ]);
  assertEquals(third.filterSubjects, ["events.requests.*.2"]);
  const first = loadConfig({ ...base, INGEST_PARTITIONS: "4", INGEST_PARTITION: "0" });
  assertEquals(first.durable, "tailwatch-ingest", "partition 0 keeps the durable of one worker");
  assertEquals(first.filterSubjects, ["events.requests.*", "events.requests.*.0"]);
  assertEquals(parsePartition("ingest-12"), 12);
  assertEquals(parsePartition("7"), 7);
  assertEquals(parsePartition("ingest"), undefined);
  assertEquals(partitionDurable("d", 0), "d");
  assertEquals(partitionDurable("d", 3), "d-3");
  for (
    const [env, named] of [
      [{ INGEST_PARTITIONS: "4", INGEST_PARTITION: "4" }, "INGEST_PARTITION"],
      [{ INGEST_PARTITIONS: "4", INGEST_PARTITION: "ingest" }, "INGEST_PARTITION"],
      [{ INGEST_PARTITIONS: "0" }, "INGEST_PARTITIONS"],
      [{ INGEST_PARTITIONS: "2", INGEST_FILTER_SUBJECT: "events.requests.orders" }, "INGEST_FILTER_SUBJECT"],
    ] as const
  ) {
    try {
      loadConfig({ ...base, ...env });
      throw new Error(`accepted ${JSON.stringify(env)}`);
    } catch (error) {
      assert(error instanceof ConfigError, String(error));
      assert(error.message.includes(named), error.message);
    }
  }
});

Deno.test("partition subjects: each event subject is read by exactly one partition", () => {
  for (const partitions of [1, 2, 4, 7]) {
    const filters = Array.from({ length: partitions }, (_, p) => partitionFilterSubjects(p, partitions));
    const subjects = [
      requestEventSubject("orders"),
      ...Array.from({ length: partitions }, (_, p) => requestEventSubject("catalog", p)),
    ];
    if (partitions === 1) subjects.push(requestEventSubject("catalog", 5));
    for (const subject of subjects) {
      const readers = filters.filter((list) => list.some((f) => subjectCovers(f, subject)));
      assertEquals(readers.length, 1, `${subject} with ${partitions} partitions`);
    }
    for (let a = 0; a < partitions; a++) {
      for (let b = a + 1; b < partitions; b++) {
        assert(
          !filters[a].some((x) => filters[b].some((y) => subjectsOverlap(x, y))),
          `partitions ${a} and ${b} overlap`,
        );
      }
    }
  }
  assert(subjectsOverlap("events.requests.*.1", "events.requests.orders.>"));
  assert(subjectsOverlap("events.requests.>", "events.requests.*"));
  assert(!subjectsOverlap("events.requests.*", "events.requests.*.1"));
  assert(!subjectsOverlap("events.requests.*.1", "events.requests.*.2"));
  assert(!subjectsOverlap("a.>", "a"));
  // A stream taking only unpartitioned subjects does not take a partitioned publisher's.
  const problems = requestEventsStreamProblems({ subjects: ["events.requests.*"] }, {
    publishSubjects: [requestEventSubject("orders", 0), requestEventSubject("orders", 1)],
  });
  assertEquals(problems.length, 1);
  assert(problems[0].includes("events.requests.orders.0, events.requests.orders.1"), problems[0]);
  // One worker reads every event: a stream of the unpartitioned subjects only (before 2026-12) must be widened
  // by the setup step first, and the worker says so.
  const [narrow] = requestEventsStreamProblems({ subjects: ["events.requests.*"] }, {
    consumeSubjects: ["events.requests.>"],
  });
  assert(narrow.includes("do not cover events.requests.>"), narrow);
  assertEquals(
    requestEventsStreamProblems({ subjects: ["events.requests.>"] }, {
      consumeSubjects: partitionFilterSubjects(0, 4),
    }),
    [],
  );
});
