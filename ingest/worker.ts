/**
 * The ingest worker: durable pull consumer on REQUEST_EVENTS → batches (by events, bytes and time) → decode →
 * one INSERT per batch and day-partition into `request_events` → ack. Exactly once through redelivery: see
 * ingest/README.md ("Exactly once"); any message is stored or dead-lettered ("Poison messages"); memory is
 * bounded in bytes ("Limits"); /readyz says when it is not doing its job ("Health").
 */
import {
  AckPolicy,
  type ConsumerInfo,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamManager,
  jetstreamManager,
  type StreamInfo,
} from "@nats-io/jetstream";
import { headers, nanos, type NatsConnection } from "@nats-io/transport-node";
import {
  checkRequestEventsStream,
  connectNats,
  createPullReceiver,
  type Delivery,
  describeNats,
  natsErrorKind,
  type PullReceiver,
  type PullTrouble,
} from "@tailwatch/nats";
import { createRegistry, type Logger, type Registry } from "@tailwatch/runtime";
import {
  BatchRanges,
  DEAD_LETTER_SUBJECT_PREFIX,
  EventScanner,
  INSERT_COLUMNS,
  type PoisonReason,
  REQUEST_EVENTS_STREAM,
  ROW_FORMAT,
  splitBatch,
  subjectCovers,
  subjectsOverlap,
} from "@tailwatch/events";
import { type ClickHouse, ClickHouseError, createClickHouse } from "./clickhouse.ts";
import type { IngestConfig } from "./config.ts";
import type { Readiness } from "./metrics.ts";
import { appendEvent, RowWriter } from "./row_writer.ts";
import { applyMigrations } from "./migrations.ts";
import { applyRetention } from "./retention.ts";
import { ackFloor, consumerFilters, createGlobalFloorTracker, type GlobalFloorTracker } from "./floor.ts";
import { reconcileRollups, writeFloorMarker } from "./rollups.ts";
import { ident, sql, sqlJoin } from "./sql.ts";

export interface IngestWorkerOptions {
  config: IngestConfig;
  logger: Logger;
  /** Where the worker's metrics go; a new registry by default. */
  registry?: Registry;
  /** "follow" (default) runs until stop(); "drain" returns once the consumer has nothing left to deliver. */
  mode?: "follow" | "drain";
  /** Deliver policy when the durable consumer has to be created. Default all (from the stream's start). */
  deliverFromStart?: boolean;
  /**
   * Called after each successful INSERT with the `ingested_at_ms` its rows carry (the send time), the time
   * it returned (its rows are visible from then on) and its row count. For measurements (bench.ts).
   */
  onInserted?: (sentAtMs: number, doneAtMs: number, rows: number) => void;
  /** Called for each message as it arrives from the pull receiver, with the time (epoch ms). For bench.ts. */
  onReceived?: (delivery: Delivery, atMs: number) => void;
}

export interface IngestStats {
  batches: number;
  rowsInserted: number;
  duplicatesSkipped: number;
  deadLettered: number;
  retries: number;
  /** Times the receiver stopped (continuity broke, the consumer went missing or unusable) and was resumed. */
  resyncs: number;
  /** Times the durable consumer was deleted and created again, or created because it was gone. */
  recreations: number;
  /** The slowest successful INSERT so far, in ms. */
  insertMsMax: number;
  /** The most bytes of messages held at once (received, not yet acked): at most INGEST_MAX_BYTES_IN_FLIGHT. */
  bytesInFlightMax: number;
}

export interface IngestWorker {
  /** Connects, migrates (if configured), consumes until stop() (or drained); resolves after a clean stop. */
  run(): Promise<IngestStats>;
  /** Asks for a graceful stop: the batch in hand is inserted and acked, then run() resolves. */
  stop(): void;
  /** True once connected, migrated and consuming, and none of readiness()'s troubles holds. */
  ready(): boolean;
  /** ready() and, when false, why (the body of a 503 /readyz). */
  readiness(): Readiness;
  stats(): IngestStats;
  readonly registry: Registry;
}

/**
 * Rows of one day-partition of a batch, as a RowBinary body (at most INGEST_BATCH_MAX rows: an INSERT is one
 * part, all or nothing), with what the dedup query needs and the query_id every attempt of its INSERT uses.
 */
interface RowGroup {
  writer: RowWriter;
  services: Set<string>;
  minTs: number;
  maxTs: number;
  queryId: string;
}

/**
 * A message that cannot be ingested, or (`event` set) one event of a RequestEventBatch message that cannot: it
 * is dead-lettered alone, with its place in the message, and the message's other events are ingested.
 */
interface Poison {
  msg: Delivery;
  reason: PoisonReason;
  detail: string;
  event?: { index: number; start: number; end: number };
}

/** A batch decoded and ready to insert. */
interface PreparedBatch {
  batch: Delivery[];
  /** The highest stream sequence of the batch's messages, and its message: the one acked (AckPolicy.All). */
  last: Delivery;
  groups: RowGroup[];
  poison: Poison[];
  /** Some event may be in the table already: ask the table (by event id) before inserting. */
  checkFirst: boolean;
  /** Payload bytes held by the batch's messages (released once it is acked). */
  bytes: number;
}

/** True when both lists hold the same subjects, in any order. */
function sameSubjects(a: readonly string[], b: readonly string[]): boolean {
  const left = [...a].sort();
  const right = [...b].sort();
  return left.length === right.length && left.every((subject, i) => subject === right[i]);
}

/** True for JetStream's "consumer not found" (any other failure is not evidence that it is gone). */
function isConsumerNotFound(error: unknown): boolean {
  return error instanceof JetStreamApiError && error.code === JetStreamApiCodes.ConsumerNotFound;
}

/**
 * Holds the worker's own INSERTs while a rollup repair compares rollups with raw rows (rollups.ts): an INSERT
 * whose raw part is committed and whose views are not fed yet would look like a gap and be added twice.
 * INSERTs share the gate; a repair takes it alone, after the INSERTs in flight returned.
 */
interface WriteGate {
  shared<T>(action: () => Promise<T>): Promise<T>;
  exclusive<T>(action: () => Promise<T>): Promise<T>;
}

function createWriteGate(): WriteGate {
  let holders = 0;
  let exclusiveHeld: Promise<void> | undefined;
  let onDrained: (() => void)[] = [];
  return {
    async shared(action) {
      while (exclusiveHeld) await exclusiveHeld;
      holders++;
      try {
        return await action();
      } finally {
        holders--;
        if (holders === 0) {
          const waiting = onDrained;
          onDrained = [];
          for (const resolve of waiting) resolve();
        }
      }
    },
    async exclusive(action) {
      while (exclusiveHeld) await exclusiveHeld;
      let release = () => {};
      exclusiveHeld = new Promise<void>((resolve) => release = resolve);
      try {
        while (holders > 0) await new Promise<void>((resolve) => onDrained.push(resolve));
        return await action();
      } finally {
        exclusiveHeld = undefined;
        release();
      }
    },
  };
}

/** Thrown inside the worker when a stop's grace period ran out while a batch was still failing. */
class AbandonBatch extends Error {}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** YYYYMMDD of a unix-seconds time in `timeZone`, i.e. the partition toYYYYMMDD(ts) puts it in. */
function createPartitionOf(timeZone: string): (tsSeconds: number) => number {
  // Every time zone offset is a multiple of 15 minutes, so a 15-minute slot never straddles a day boundary.
  const cache = new Map<number, number>();
  let format: Intl.DateTimeFormat | undefined;
  try {
    format = new Intl.DateTimeFormat("en-CA", {
      timeZone,
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
    });
  } catch {
    format = undefined; // unknown zone: one group per 15-minute slot is still never split by a partition
  }
  return (tsSeconds) => {
    const slot = Math.floor(tsSeconds / 900);
    let day = cache.get(slot);
    if (day === undefined) {
      day = format ? Number(format.format(new Date(slot * 900_000)).replaceAll("-", "")) : slot;
      if (cache.size > 10_000) cache.clear();
      cache.set(slot, day);
    }
    return day;
  };
}

/**
 * The most rows a message can make: its Tailwatch-Events count, bounded by what its bytes can hold (two bytes an
 * event at least), or 1 for a message of one event (or one that will be dead-lettered whole).
 */
function eventsOf(msg: Delivery): number {
  const count = msg.eventCount();
  if (!(count > 0)) return 1;
  return Math.max(1, Math.min(count, Math.floor((msg.dataEnd - msg.dataStart) / 2)));
}

interface BatchQueue {
  push(msg: Delivery): void;
  /**
   * Messages up to `maxEvents` events and `maxBytes` bytes (at least one message): when that much is there,
   * or `waitMs` after the first arrived, or at stop/idle, or at once when `hurry()` says so.
   */
  take(maxEvents: number, maxBytes: number, waitMs: number, idleMs: number, hurry: () => boolean): Promise<
    Delivery[]
  >;
  size(): number;
  oldestAt(): number;
  items(): readonly Delivery[];
  /** From now on take() returns at once with what is there (used at stop). */
  close(): void;
  /** Makes a waiting take() look again now. */
  wake(): void;
}

function createBatchQueue(fullEvents: number, fullBytes: number): BatchQueue {
  let items: Delivery[] = [];
  let counts: number[] = [];
  let events = 0;
  let bytes = 0;
  let firstAt = 0;
  let waiter: (() => void) | undefined;
  const wake = () => {
    const w = waiter;
    waiter = undefined;
    w?.();
  };
  let closed = false;
  return {
    push(msg) {
      if (items.length === 0) firstAt = Date.now();
      const n = eventsOf(msg);
      items.push(msg);
      counts.push(n);
      events += n;
      bytes += msg.size;
      if (items.length === 1 || events >= fullEvents || bytes >= fullBytes) wake();
    },
    async take(maxEvents, maxBytes, waitMs, idleMs, hurry) {
      const idleUntil = Date.now() + idleMs;
      for (;;) {
        const now = Date.now();
        if (
          events >= maxEvents || bytes >= maxBytes || (items.length > 0 && now - firstAt >= waitMs) ||
          closed || now >= idleUntil || hurry()
        ) {
          // The longest prefix within both limits, and at least one message.
          let cut = 0;
          let takenEvents = 0;
          let takenBytes = 0;
          while (cut < items.length) {
            const e = counts[cut];
            const b = items[cut].size;
            if (cut > 0 && (takenEvents + e > maxEvents || takenBytes + b > maxBytes)) break;
            takenEvents += e;
            takenBytes += b;
            cut++;
          }
          const out = cut === items.length ? items : items.slice(0, cut);
          items = cut === items.length ? [] : items.slice(cut);
          counts = cut === counts.length ? [] : counts.slice(cut);
          events -= takenEvents;
          bytes -= takenBytes;
          firstAt = items.length > 0 ? now : 0;
          return out;
        }
        const delay = items.length === 0 ? idleUntil - now : Math.min(idleUntil, firstAt + waitMs) - now;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            waiter = undefined;
            resolve();
          }, Math.max(1, delay));
          waiter = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    },
    size: () => items.length,
    oldestAt: () => firstAt,
    items: () => items,
    close() {
      closed = true;
      wake();
    },
    wake,
  };
}

/** Header values of a dead letter: printable ASCII (other characters escaped), at most `max` characters. */
function headerText(text: string, max: number): string {
  const escaped = text.slice(0, 4 * max).replace(/[^\x20-\x7e]/gu, (c) => {
    const code = c.codePointAt(0)!;
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`;
  }).trim();
  return escaped.length > max ? `${escaped.slice(0, max - 3)}...` : escaped;
}

/**
 * The start of every ingest INSERT's query_id (each is `tailwatch-ingest-<durable>-<uuid>`): a rollup repair
 * waits for all of them that run, every partition's and every other durable's (rollups.ts).
 */
const INSERT_QUERY_FAMILY = "tailwatch-ingest-";

/** Literal bytes ClickHouse reads as a query at most (max_query_size, 256 KiB): the dedup query stays below. */
const QUERY_BUDGET = 200 * 1024;
/** Event ids per dedup query (each about 40 bytes as a literal). */
const IDS_PER_QUERY = 4_000;
/** How many consumer recreations within RECREATION_WINDOW_MS make the worker "keep recreating it". */
const RECREATIONS_NOT_READY = 3;
const RECREATION_WINDOW_MS = 60_000;
/** A receiver connection down this long makes the worker not ready (a reconnect takes well under it). */
const DISCONNECTED_NOT_READY_MS = 2_000;
/**
 * A refusal from the NATS server (-ERR: a permission the user lacks) makes the worker not ready this long; a
 * lasting mistake repeats with every ack or pull request and keeps it so.
 */
const REFUSAL_NOT_READY_MS = 30_000;

/** Creates the worker; nothing connects until run(). */
export function createIngestWorker(options: IngestWorkerOptions): IngestWorker {
  const { config, logger } = options;
  const mode = options.mode ?? "follow";
  const registry = options.registry ?? createRegistry();
  const metrics = {
    batches: registry.counter("ingest_batches_total", "Batches inserted and acked."),
    batchSize: registry.histogram(
      "ingest_batch_size",
      "Messages per batch.",
      [1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000],
    ),
    batchEvents: registry.histogram(
      "ingest_batch_events",
      "Events (rows and poison) per batch.",
      [1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 1000000],
    ),
    insertSeconds: registry.histogram(
      "ingest_insert_duration_seconds",
      "Duration of one successful INSERT.",
      [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    ),
    rows: registry.counter("ingest_rows_inserted_total", "Rows inserted into request_events."),
    duplicates: registry.counter(
      "ingest_duplicates_skipped_total",
      "Events found already in the table (or twice in a batch) by event id and not inserted again.",
    ),
    deadLettered: registry.counter(
      "ingest_dead_lettered_total",
      "Messages (or events of batch messages) published to the dead-letter subject.",
      ["reason"],
    ),
    deadLettersTruncated: registry.counter(
      "ingest_dead_letters_truncated_total",
      "Dead letters whose payload was cut to fit max_payload (the original stays in the stream).",
    ),
    retries: registry.counter(
      "ingest_insert_retries_total",
      "Failed INSERT (or dedup query, or dead-letter publish) attempts retried.",
    ),
    pending: registry.gauge(
      "ingest_consumer_pending",
      "Messages of the stream not yet delivered to the consumer (num_pending).",
    ),
    ackPending: registry.gauge("ingest_consumer_ack_pending", "Messages delivered and not yet acked."),
    bytesInFlight: registry.gauge(
      "ingest_bytes_in_flight",
      "Bytes of messages received and not yet acked (bounded by INGEST_MAX_BYTES_IN_FLIGHT).",
    ),
    resyncs: registry.counter(
      "ingest_consumer_resyncs_total",
      "Times the receiver stopped (delivery continuity broke, the consumer went missing or unusable) and resumed.",
    ),
    consumerTrouble: registry.counter(
      "ingest_consumer_trouble_total",
      "Times pulling stopped because the consumer was missing (503, consumer deleted) or unusable (409).",
      ["kind"],
    ),
    recreations: registry.counter(
      "ingest_consumer_recreated_total",
      "Times the durable consumer was created again (it had unacked messages, was gone, or was unusable).",
      ["reason"],
    ),
    streamResets: registry.counter(
      "ingest_stream_resets_total",
      "Times the stream was found recreated or reverted (its sequences started over).",
    ),
    stalls: registry.counter(
      "ingest_stalls_total",
      "Times messages waited longer than INGEST_STALL_TIMEOUT_MS with no batch committed.",
    ),
    lastCommit: registry.gauge(
      "ingest_last_commit_timestamp_seconds",
      "When the last batch was committed and acked (unix seconds).",
    ),
    retentionDropped: registry.counter("ingest_retention_partitions_dropped_total", "Partitions dropped."),
    up: registry.gauge("ingest_ready", "1 while /readyz answers 200."),
    natsServerErrors: registry.counter(
      "ingest_nats_server_errors_total",
      "Errors (-ERR) the NATS server sent: a permission the user lacks, a refused connection, ...",
      ["kind"],
    ),
    rollupRepaired: registry.counter(
      "ingest_rollup_cells_repaired_total",
      "Rollup cells found short of the raw rows after a failed INSERT and completed (rollups.ts).",
      ["table"],
    ),
    rollupSurplus: registry.counter(
      "ingest_rollup_cells_surplus_total",
      "Rollup cells found holding more than the raw rows: not repairable by an INSERT; an error.",
      ["table"],
    ),
    floor: registry.gauge(
      "ingest_committed_floor_seq",
      "Every message of this worker's partition at or below this sequence is committed (rows and rollups) or " +
        "dead-lettered.",
    ),
    globalFloor: registry.gauge(
      "ingest_global_floor_seq",
      "Every stream message, of any partition, at or below this sequence is committed: the floor stamped on " +
        "rows and markers (with one partition, the committed floor).",
    ),
  };
  const stats: IngestStats = {
    batches: 0,
    rowsInserted: 0,
    duplicatesSkipped: 0,
    deadLettered: 0,
    retries: 0,
    resyncs: 0,
    recreations: 0,
    insertMsMax: 0,
    bytesInFlightMax: 0,
  };
  const clickhouse: ClickHouse = createClickHouse({
    url: config.clickhouseUrl,
    username: config.clickhouseUser,
    password: config.clickhousePassword,
    timeoutMs: config.insertTimeoutMs,
  });
  const table = { database: config.database, table: "request_events" };
  const queue = createBatchQueue(config.batchMax, config.batchMaxBytes);
  let stopping = false;
  let stopDeadline = Infinity;
  /** True between the start of consuming and the end of run(). */
  let consuming = false;
  /** The highest stream sequence delivered before (see prepareBatch). */
  let highWater = 0;
  /**
   * Every message at or below it is committed (raw rows and rollups) or dead-lettered: the last acked batch's
   * highest sequence, or the consumer's ack floor at start. Stamped on every row as ingest_floor_seq, and
   * written as a marker row into latency_profile_1s when no INSERT carries it (the profiler's notion of a
   * final batch: native/profiler/README.md).
   */
  let committedFloor = 0;
  /** The highest floor an INSERT or a marker has carried to ClickHouse. */
  let floorAnnounced = 0;
  /**
   * With several partitions, the floor of the whole stream (floor.ts): what rows and markers carry, since the
   * profiler treats every batch at or below any floor it sees as final, whichever worker wrote it.
   */
  let tracker: GlobalFloorTracker | undefined;
  /**
   * The floor stamped on rows (ingest_floor_seq) and written as a marker: every stream message at or below it
   * is committed. With one partition, the committed floor; with several, G over all partitions (floor.ts).
   */
  const stampFloor = (): number => {
    const floor = tracker === undefined ? committedFloor : tracker.value();
    metrics.globalFloor.set(floor);
    return floor;
  };
  const gate = createWriteGate();
  /** Batches taken from the queue and not yet acked (at most three: two being inserted, one decoded). */
  let inHand: { batch: Delivery[]; since: number }[] = [];
  /** Bytes (Delivery.size) of messages received and not yet acked: the receiver pulls within a bound of it. */
  let heldBytes = 0;
  /**
   * A message stored more than this long after its events started may be a publisher's retry that came after
   * the stream's duplicate window (its first copy then went through as another message): its events are
   * checked by id. Half the window, so that publishers' clocks may be off by that much.
   */
  let lateAfterMs = 0;
  /** The stream's creation time as JetStream reports it: another one means it was deleted and created again. */
  let streamCreated: string | undefined;

  // Health (readiness()): see ingest/README.md, "Health".
  /** Why pulling stopped (the consumer is missing or unusable), until it was resumed. */
  let consumerProblem: string | undefined;
  /** When the consumer was created again, newest last, within RECREATION_WINDOW_MS. */
  let recreatedAt: { at: number; reason: string }[] = [];
  let lastCommitAt = Date.now();
  /** Since when messages have been waiting (0: none waiting). */
  let pendingSince = 0;
  /** Messages the server still holds for the consumer, from the latest consumer info. */
  let serverPending = 0;
  let stalled = false;
  /** The receiver's connection, and since when it has been down (0: up). */
  let receiverConnected: () => boolean = () => true;
  let disconnectedSince = 0;
  /** What the worker waits for, while it has to (the stream missing or unfit, NATS refusing the connection). */
  let waitingFor: string | undefined;
  /** The NATS server's latest refusal (-ERR) on either connection, and when. */
  let refusal: { text: string; at: number } | undefined;
  const refusalLogged = new Map<string, number>();

  /** A -ERR from NATS: counted, logged as an error (each text at most every 10 s), not ready for a while. */
  function onServerError(text: string): void {
    const kind = natsErrorKind(text);
    metrics.natsServerErrors.inc({ kind });
    const now = Date.now();
    refusal = { text, at: now };
    const last = refusalLogged.get(text);
    if (last === undefined || now - last >= 10_000) {
      if (refusalLogged.size > 100) refusalLogged.clear();
      refusalLogged.set(text, now);
      logger.error("NATS refused", {
        error: text,
        kind,
        nats: describeNats(config.nats),
        hint: kind === "permissions"
          ? `the NATS user needs its consumer API, $JS.ACK.${REQUEST_EVENTS_STREAM}.>, ` +
            `${DEAD_LETTER_SUBJECT_PREFIX}.> and ${config.nats.inboxPrefix}.> (deploy/nats/auth.conf)`
          : undefined,
      });
    }
  }

  const stop = () => {
    if (stopping) return;
    stopping = true;
    stopDeadline = Date.now() + config.shutdownGraceMs;
    logger.info("stop requested; finishing the batch in hand", { graceMs: config.shutdownGraceMs });
    queue.close();
  };

  function readiness(): Readiness {
    const now = Date.now();
    const refused = refusal !== undefined && now - refusal.at < REFUSAL_NOT_READY_MS
      ? `NATS refused: ${refusal.text}`
      : undefined;
    if (!consuming) {
      if (stopping) return { ready: false, reason: "stopped" };
      const waiting = [waitingFor, refused].filter((text) => text !== undefined).join("; ");
      return { ready: false, reason: `starting (connecting, migrating)${waiting ? `: ${waiting}` : ""}` };
    }
    if (refused) return { ready: false, reason: refused };
    if (waitingFor !== undefined) return { ready: false, reason: waitingFor };
    // A consumer that keeps being recreated first: the trouble of the moment (consumerProblem, until the
    // latest recreation resumed pulling) is only its latest instance.
    const recent = recreatedAt.filter((r) => now - r.at < RECREATION_WINDOW_MS);
    if (recent.length >= RECREATIONS_NOT_READY) {
      return {
        ready: false,
        reason: `the consumer was recreated ${recent.length} times in the last ${
          RECREATION_WINDOW_MS / 1000
        } s (last: ${recent.at(-1)!.reason})`,
      };
    }
    if (consumerProblem !== undefined) return { ready: false, reason: `consumer: ${consumerProblem}` };
    if (disconnectedSince > 0 && now - disconnectedSince >= DISCONNECTED_NOT_READY_MS) {
      return {
        ready: false,
        reason: `not connected to NATS for ${Math.round((now - disconnectedSince) / 1000)} s`,
      };
    }
    if (stalled) {
      return {
        ready: false,
        reason:
          `no batch committed for ${Math.round((now - Math.max(lastCommitAt, pendingSince)) / 1000)} s ` +
          `while messages wait (${queue.size()} received, ${inHand.length} batches in hand, ${serverPending} ` +
          `more in the stream)`,
      };
    }
    return { ready: true, reason: "consuming" };
  }

  /** Re-evaluates the stall state (a transition into it is a counted, logged error) and the ready gauge. */
  function checkHealth(): void {
    const now = Date.now();
    if (receiverConnected()) disconnectedSince = 0;
    else if (disconnectedSince === 0) disconnectedSince = now;
    const waiting = queue.size() > 0 || inHand.length > 0 || serverPending > 0;
    if (!waiting) pendingSince = 0;
    else if (pendingSince === 0) pendingSince = now;
    const idleFor = waiting ? now - Math.max(lastCommitAt, pendingSince) : 0;
    const nowStalled = consuming && waiting && idleFor >= config.stallTimeoutMs;
    if (nowStalled && !stalled) {
      metrics.stalls.inc();
      logger.error("stalled: messages wait and no batch was committed", {
        forMs: idleFor,
        received: queue.size(),
        batchesInHand: inHand.length,
        pendingInStream: serverPending,
      });
    } else if (!nowStalled && stalled) {
      logger.info("no longer stalled: a batch was committed");
    }
    stalled = nowStalled;
    recreatedAt = recreatedAt.filter((r) => now - r.at < RECREATION_WINDOW_MS);
    metrics.bytesInFlight.set(heldBytes);
    metrics.up.set(readiness().ready ? 1 : 0);
  }

  function noteRecreation(reason: string): void {
    stats.recreations++;
    metrics.recreations.inc({ reason });
    recreatedAt.push({ at: Date.now(), reason });
    if (recreatedAt.length >= RECREATIONS_NOT_READY) {
      logger.error("the durable consumer keeps being recreated", {
        times: recreatedAt.length,
        windowS: RECREATION_WINDOW_MS / 1000,
        reason,
      });
    }
  }

  async function withRetry<T>(what: string, action: (attempt: number) => Promise<T>): Promise<T> {
    for (let attempt = 0;; attempt++) {
      try {
        return await action(attempt);
      } catch (error) {
        stats.retries++;
        metrics.retries.inc();
        // A stop before consuming gives up at once (nothing is in hand); while consuming, after the grace.
        if (stopping && (!consuming || Date.now() >= stopDeadline)) {
          throw new AbandonBatch(`${what}: ${error}`);
        }
        const delay = Math.min(config.retryMaxMs, config.retryBaseMs * 2 ** Math.min(attempt, 20));
        const jittered = Math.round(delay / 2 + Math.random() * delay / 2);
        logger.warn(`${what} failed; retrying`, { attempt: attempt + 1, retryInMs: jittered, error });
        await sleep(stopping ? Math.min(jittered, Math.max(0, stopDeadline - Date.now())) : jittered);
      }
    }
  }

  /**
   * Every INSERT of this durable's workers is named `<prefix><uuid>` in ClickHouse (query_id), so that a dedup
   * check can first wait for INSERTs still running on the server: one sent by a process killed a moment ago,
   * or one whose client timed out. ClickHouse keeps reading such an INSERT and may commit it after the
   * check looked (measured: a kill -9 test inserted a batch twice without this). Once it has left
   * system.processes it is committed or gone for good, and the check sees which. Every attempt of one group's
   * INSERT uses the same query_id, so that ClickHouse refuses a retry while the earlier attempt still runs
   * (and the earlier one, should it start late, while the retry runs).
   */
  const insertQueryPrefix = `tailwatch-ingest-${config.durable}-`;
  // Exactly this durable's: `<prefix><uuid>` (36 characters), not those of a durable whose name continues this
  // one's (partition 1's `tailwatch-ingest-1` after partition 0's `tailwatch-ingest`), which keep inserting.

  async function awaitNoInsertsInFlight(): Promise<void> {
    const deadline = Date.now() + 2 * config.insertTimeoutMs;
    for (;;) {
      const [running] = await clickhouse.query<{ n: string | number }>(
        sql`SELECT count() AS n FROM system.processes
          WHERE substring(query_id, 1, ${insertQueryPrefix.length}) = ${insertQueryPrefix}
            AND length(query_id) = ${insertQueryPrefix.length + 36}`,
      );
      if (Number(running.n) === 0) return;
      if (Date.now() > deadline) {
        throw new Error(`an earlier INSERT (query_id ${insertQueryPrefix}*) is still running in ClickHouse`);
      }
      await sleep(100);
    }
  }

  /**
   * The services filter of a group's queries, or undefined when listing them would not fit a query (many
   * services, or very long names): the queries then read every service of the group's seconds.
   */
  function servicesOf(group: RowGroup): string[] | undefined {
    let length = 0;
    for (const service of group.services) length += service.length + 4;
    return length <= 64 * 1024 ? [...group.services] : undefined;
  }

  /**
   * The event ids of `writer`'s rows that are in the table already. By id, not by stream sequence: a message's
   * rows may be split over INSERTs, a publisher's retry after the duplicate window is another message with the
   * same events, and a stream that was deleted or reverted hands out old sequences again for new events. The
   * same event always has the same start second and service, so the table's rows of the group's seconds and
   * services are read (one query that reads the primary key's range, measured at a quarter of the cost of
   * listing 4,000 ids) and matched here; when those seconds hold many more rows than the group (a group whose
   * events lie far apart in time), the group's ids are listed instead, a few thousand per query.
   */
  async function existingEventIds(group: RowGroup, writer: RowWriter): Promise<Set<string>> {
    await awaitNoInsertsInFlight();
    const ids = new Set<string>();
    for (let row = 0; row < writer.rows; row++) ids.add(writer.eventId(row));
    const services = servicesOf(group);
    const where = sql`${services === undefined ? sql`1` : sql`service IN (${sqlJoin(services)})`}
      AND ts >= ${new Date(group.minTs * 1000)} AND ts <= ${new Date(group.maxTs * 1000)}`;
    const source = ident(config.database, "request_events");
    const found = new Set<string>();
    const limit = Math.max(10_000, 4 * ids.size);
    const inRange = await clickhouse.query<{ id: string }>(
      sql`SELECT toString(event_id) AS id FROM ${source} WHERE ${where} LIMIT ${limit + 1}`,
    );
    if (inRange.length <= limit) {
      for (const row of inRange) if (ids.has(row.id)) found.add(row.id);
      return found;
    }
    const all = [...ids];
    const perQuery = services === undefined
      ? IDS_PER_QUERY
      : Math.max(100, Math.min(IDS_PER_QUERY, Math.floor((QUERY_BUDGET - 64 * 1024) / 40)));
    for (let i = 0; i < all.length; i += perQuery) {
      const rows = await clickhouse.query<{ id: string }>(
        sql`SELECT DISTINCT toString(event_id) AS id FROM ${source}
          WHERE ${where} AND event_id IN (${sqlJoin(all.slice(i, i + perQuery))})`,
      );
      for (const row of rows) found.add(row.id);
    }
    return found;
  }

  /**
   * After rows of this group were found in the table: an earlier INSERT of them committed its raw part, and
   * its views may have failed after that (ClickHouse 18.16 feeds them after the commit). Compares both
   * rollups with the raw rows over the group's seconds and services and inserts what they lack, with every
   * other INSERT of this worker held and none of its durable running in ClickHouse.
   */
  let unsettledLoggedAt = 0;
  async function repairRollups(group: RowGroup, batchSeq: number): Promise<void> {
    await gate.exclusive(async () => {
      await awaitNoInsertsInFlight();
      const services = servicesOf(group);
      const result = await reconcileRollups(clickhouse, {
        database: config.database,
        fromTs: group.minTs,
        toTs: group.maxTs,
        ...(services === undefined ? {} : { services }),
        batchSeq,
        floorSeq: stampFloor(),
        // Other workers (partitions, or other durables) insert the same seconds meanwhile: the repair counts
        // only cells no INSERT was half done in (rollups.ts).
        concurrentInsertPrefix: INSERT_QUERY_FAMILY,
        onUnsettled: (cells, round) => {
          const now = Date.now();
          if (now - unsettledLoggedAt < 10_000) return;
          unsettledLoggedAt = now;
          logger.info(
            "rollup repair: cells that differ were touched by other INSERTs meanwhile; looking again",
            {
              cells,
              round,
            },
          );
        },
      });
      metrics.rollupRepaired.inc({ table: "request_stats_1s" }, result.statsCellsRepaired);
      metrics.rollupRepaired.inc({ table: "latency_profile_1s" }, result.profileCellsRepaired);
      metrics.rollupSurplus.inc({ table: "request_stats_1s" }, result.statsCellsSurplus);
      metrics.rollupSurplus.inc({ table: "latency_profile_1s" }, result.profileCellsSurplus);
      if (result.statsCellsRepaired + result.profileCellsRepaired > 0) {
        logger.warn(
          "rollups were short of the raw rows (a view failed after the raw rows were committed): repaired",
          {
            ...result,
          },
        );
      }
      if (result.statsCellsSurplus + result.profileCellsSurplus > 0) {
        logger.error("rollup cells hold more than the raw rows; not repairable by an insert", { ...result });
      }
    });
  }

  /**
   * Inserts one group's rows exactly once: after any doubt (redelivery, failed attempt) asks first which of
   * its events are in the table already, and completes the rollups when an earlier INSERT of some of them
   * committed them (repairRollups). After an attempt that failed without an answer from ClickHouse (timeout,
   * broken connection) it first waits INGEST_INSERT_GRACE_MS: the request may still sit unread in the
   * server's backlog, not in system.processes yet. `batchSeq`: the batch's highest stream sequence, stamped on
   * its rows as ingest_batch_seq.
   */
  async function insertGroup(group: RowGroup, checkFirst: boolean, batchSeq: number): Promise<void> {
    let unanswered = false;
    await withRetry("insert", async (attempt) => {
      let writer = group.writer;
      if (checkFirst || attempt > 0) {
        if (unanswered && config.insertGraceMs > 0) await sleep(config.insertGraceMs);
        const existing = await existingEventIds(group, writer);
        if (existing.size > 0) {
          await repairRollups(group, batchSeq);
          writer = writer.withoutEvents(existing);
          const skipped = group.writer.rows - writer.rows;
          stats.duplicatesSkipped += skipped;
          metrics.duplicates.inc({}, skipped);
          logger.info("skipped rows already in the table", { skipped });
        }
      }
      if (writer.rows === 0) return;
      // ingested_at_ms: the worker's clock when it sends the INSERT that carries the row (see README).
      const sentAt = Date.now();
      const floorSeq = stampFloor();
      writer.stamp({ ingestedAtMs: sentAt, batchSeq, floorSeq });
      const started = performance.now();
      try {
        await gate.shared(() =>
          clickhouse.insertBody(table, INSERT_COLUMNS, ROW_FORMAT, writer.body(), { queryId: group.queryId })
        );
      } catch (error) {
        // No HTTP answer: the request may have reached the server, and may still run or start later.
        unanswered = !(error instanceof ClickHouseError && error.status !== undefined);
        throw error;
      }
      if (floorSeq > floorAnnounced) floorAnnounced = floorSeq;
      options.onInserted?.(sentAt, Date.now(), writer.rows);
      const insertMs = performance.now() - started;
      metrics.insertSeconds.observe(insertMs / 1000);
      if (insertMs > stats.insertMsMax) stats.insertMsMax = insertMs;
      stats.rowsInserted += writer.rows;
      metrics.rows.inc({}, writer.rows);
    });
  }

  /**
   * Writes the committed floor as a marker row (rollups.ts) when no INSERT has carried it yet. Best effort:
   * a marker that fails only makes the profiler re-read the last batches until the next one.
   */
  async function announceFloor(): Promise<void> {
    const floor = stampFloor();
    if (floor <= floorAnnounced) return;
    try {
      await writeFloorMarker(clickhouse, config.database, floor);
      if (floor > floorAnnounced) floorAnnounced = floor;
    } catch (error) {
      logger.debug("could not write the floor marker; will try again", { error });
    }
  }

  /** What this worker's pull requests need of the consumer: the largest batch, expiry and bytes it asks. */
  const pullLimits = { batch: 1, expiresMs: 30_000, requestBytes: 1 };

  /**
   * Notes the stream's identity and duplicate window; a stream deleted and created again (another creation
   * time) or reverted (its last sequence below what was committed) starts its sequences over: the floor and
   * the high-water mark of the old one mean nothing for it. Returns true for such a reset.
   */
  function noteStream(stream: StreamInfo): boolean {
    const windowNs = stream.config.duplicate_window ?? 0;
    lateAfterMs = windowNs / 1_000_000 / 2;
    const recreated = streamCreated !== undefined && stream.created !== streamCreated;
    const reverted = stream.state.last_seq < committedFloor;
    streamCreated = stream.created;
    if (!recreated && !reverted) return false;
    metrics.streamResets.inc();
    logger.error(
      "the stream was deleted and created again, or reverted: its sequences start over; events are checked " +
        "by id, the committed floor starts again from the new stream (a profiler that saw the old floor must " +
        "be restarted)",
      {
        recreated,
        reverted,
        created: stream.created,
        firstSeq: stream.state.first_seq,
        lastSeq: stream.state.last_seq,
        oldFloor: committedFloor,
      },
    );
    committedFloor = 0;
    floorAnnounced = 0;
    tracker?.reset();
    metrics.floor.set(0);
    return true;
  }

  /** True when the table holds any row: a consumer created anew may then hand out messages already inserted. */
  async function tableHasRows(): Promise<boolean> {
    const rows = await clickhouse.query(
      sql`SELECT 1 AS one FROM ${ident(config.database, "request_events")} LIMIT 1`,
    );
    return rows.length > 0;
  }

  /**
   * Creates the durable consumer, or recreates it at its ack floor + 1 when it has unacked messages (or
   * another ack policy or filter, or a configuration that refuses this worker's pull requests); raises
   * highWater to what an old consumer delivered. `whileRunning`: the worker was consuming (a consumer found
   * gone is then created at the committed floor + 1, not from the start).
   */
  async function ensureConsumer(jsm: JetStreamManager, whileRunning: boolean): Promise<void> {
    let info: ConsumerInfo | undefined;
    try {
      info = await jsm.consumers.info(REQUEST_EVENTS_STREAM, config.durable);
    } catch (error) {
      if (!isConsumerNotFound(error)) throw error;
    }
    const stream = await jsm.streams.info(REQUEST_EVENTS_STREAM);
    const reset = noteStream(stream);
    // nats-server matches every message's subject against a consumer's filter (a quarter of its CPU per
    // delivered message in the ingest bench, ingest/README.md): filters that cover every subject of the stream
    // select everything anyway, so the consumer gets none.
    const streamSubjects = stream.config.subjects ?? [];
    const filters = streamSubjects.length > 0 &&
        streamSubjects.every((subject) => config.filterSubjects.some((f) => subjectCovers(f, subject)))
      ? []
      : config.filterSubjects;
    // Two workers whose durables read the same subjects would both insert what they both get: while another
    // durable of this ingest that reads some of these subjects has a live worker (INGEST_PARTITIONS being
    // changed while the old workers still run), wait.
    await awaitNoOverlappingWorker(jsm, filters);
    // Acks are cumulative (AckPolicy.All: the last message of a batch acks the batch and everything
    // before it). Such an ack is safe only if this process saw every message below it, so messages that
    // an earlier process was handed and never acked must come again, in order, before anything new. The
    // server would redeliver them only after the ack wait, while new messages flow: so a durable with
    // unacked messages (or with another ack policy, which the server does not let us change) is
    // recreated to start at its ack floor + 1. The dedup check absorbs the overlap (README, "Exactly
    // once"). A durable that was created with another filter subject is recreated too, and so is one that
    // refuses this worker's pull requests (push based, or request limits below what it asks).
    const unusable = info === undefined ? undefined : (
      info.config.deliver_subject
        ? "push based"
        : (info.config.max_batch ?? 0) > 0 && info.config.max_batch! < pullLimits.batch
        ? `max_batch ${info.config.max_batch}`
        : (info.config.max_expires ?? 0) > 0 && info.config.max_expires! < nanos(pullLimits.expiresMs)
        ? `max_expires ${info.config.max_expires} ns`
        : (info.config.max_bytes ?? 0) > 0 && info.config.max_bytes! < pullLimits.requestBytes
        ? `max_bytes ${info.config.max_bytes}`
        : undefined
    );
    const recreate = info !== undefined && (
      info.config.ack_policy !== AckPolicy.All || info.num_ack_pending > 0 ||
      info.delivered.stream_seq > ackFloor(info) ||
      !sameSubjects(consumerFilters(info), filters) || unusable !== undefined
    );
    // A durable that was recreated (by this code: start sequence = the old one's ack floor + 1) no longer
    // knows what its earlier incarnations delivered: a process killed after recreating it (caught by the kill
    // -9 test: the next process found ack floor 0, delivered 2500, while the incarnation before had delivered
    // up to 4000 and inserted unacked batches above 2500, which then went in a second time). Any of those
    // deliveries is in the stream, so the stream's last sequence bounds them: every message up to it gets the
    // dedup check. A durable never recreated keeps its delivered sequence, which is enough (below). The same
    // holds for a durable that is gone while the table has rows (deleted by hand, lost with NATS's store, or
    // gone with its stream): whatever it delivered may be in the table.
    if (info && (recreate || info.config.deliver_policy === DeliverPolicy.StartSequence)) {
      if (stream.state.last_seq > highWater) highWater = stream.state.last_seq;
    }
    if (info === undefined && (whileRunning || reset || await tableHasRows())) {
      if (stream.state.last_seq > highWater || reset) highWater = stream.state.last_seq;
    }
    if (info && !recreate) {
      await jsm.consumers.update(REQUEST_EVENTS_STREAM, config.durable, {
        ack_wait: nanos(config.ackWaitMs),
        max_ack_pending: config.maxAckPending,
      });
      return;
    }
    let startSeq: number | undefined;
    if (info) {
      await jsm.consumers.delete(REQUEST_EVENTS_STREAM, config.durable);
      const reason = unusable !== undefined
        ? "unusable"
        : info.num_ack_pending > 0 || info.delivered.stream_seq > ackFloor(info)
        ? "unacked"
        : "config";
      (reason === "unusable" ? logger.error : logger.info)(
        "recreated the durable consumer at its ack floor + 1",
        {
          ackPolicy: info.config.ack_policy,
          ackFloor: ackFloor(info),
          delivered: info.delivered.stream_seq,
          ...(unusable !== undefined ? { unusable } : {}),
        },
      );
      noteRecreation(reason);
      // Everything up to what the old consumer delivered may have been inserted already.
      if (info.delivered.stream_seq > highWater) highWater = info.delivered.stream_seq;
      startSeq = ackFloor(info) + 1;
      // Filters that now read subjects the old ones did not (fewer partitions, down to one): messages of those
      // subjects above the ack floors of the durables that read them until now are not committed. Start at
      // the lowest of those floors (what comes again is checked by id: highWater is the stream's last).
      const before = consumerFilters(info);
      const widened = before.length > 0 &&
        (filters.length === 0 || filters.some((f) => !before.some((old) => subjectCovers(old, f))));
      if (widened) {
        for (const other of await familyConsumers(jsm)) {
          if (other.name === config.durable) continue;
          const otherFilters = consumerFilters(other);
          const reads = filters.length === 0 || otherFilters.length === 0 ||
            otherFilters.some((o) => filters.some((f) => subjectsOverlap(o, f)));
          if (reads && ackFloor(other) + 1 < startSeq) startSeq = ackFloor(other) + 1;
        }
        logger.info(
          "the durable now reads subjects other durables read: starting at their lowest ack floor",
          {
            startSeq,
            filters,
            before,
          },
        );
      }
    } else if (whileRunning) {
      // Gone while this worker consumed: everything at or below its committed floor is in the table; the rest
      // comes again (checked by id). From the stream's start if the stream itself started over.
      startSeq = reset || committedFloor === 0 ? undefined : committedFloor + 1;
      logger.error("the durable consumer was gone; created it again", {
        startSeq: startSeq ?? "the stream's first message",
        streamReset: reset,
      });
      noteRecreation("missing");
    }
    await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
      durable_name: config.durable,
      ack_policy: AckPolicy.All,
      ...(startSeq !== undefined
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: startSeq }
        : {
          deliver_policy: options.deliverFromStart === false && !whileRunning
            ? DeliverPolicy.New
            : DeliverPolicy.All,
        }),
      ack_wait: nanos(config.ackWaitMs),
      max_ack_pending: config.maxAckPending,
      max_deliver: -1,
      ...(filters.length === 1 ? { filter_subject: filters[0] } : {}),
      ...(filters.length > 1 ? { filter_subjects: filters } : {}),
    });
  }

  /** The durables of this ingest: INGEST_DURABLE and its partitions' (`<INGEST_DURABLE>-<n>`). */
  async function familyConsumers(jsm: JetStreamManager): Promise<ConsumerInfo[]> {
    const family = new RegExp(`^${config.durableBase}(-\\d+)?$`);
    const found: ConsumerInfo[] = [];
    for await (const info of jsm.consumers.list(REQUEST_EVENTS_STREAM)) {
      if (family.test(info.name)) found.push(info);
    }
    return found;
  }

  /**
   * Waits while another durable of this ingest reads some of `filters`' subjects and has a live worker: one
   * with a pull request waiting, or that took a message within the last minute and holds it unacked (a dead
   * worker's pull request expires within 30 s). That happens only while workers of two partition counts run
   * at once (INGEST_PARTITIONS changed without stopping the old ones first), with one partition too.
   */
  async function awaitNoOverlappingWorker(jsm: JetStreamManager, filters: string[]): Promise<void> {
    let loggedAt = 0;
    for (let attempt = 0;; attempt++) {
      const live = (await familyConsumers(jsm)).filter((other) => {
        if (other.name === config.durable) return false;
        const otherFilters = consumerFilters(other);
        const overlaps = filters.length === 0 || otherFilters.length === 0 ||
          otherFilters.some((o) => filters.some((f) => subjectsOverlap(o, f)));
        const lastActive = Date.parse(String(other.delivered.last_active ?? ""));
        const active = other.num_waiting > 0 ||
          (Number.isFinite(lastActive) && Date.now() - lastActive < 60_000 && other.num_ack_pending > 0);
        return overlaps && active;
      });
      if (live.length === 0) {
        if (attempt > 0) waitingFor = undefined;
        return;
      }
      const names = live.map((other) => other.name).join(", ");
      waitingFor = `durable ${names} reads some of the same subjects and its worker is alive: stop the old ` +
        "workers before changing INGEST_PARTITIONS (two workers would insert the same messages)";
      if (Date.now() - loggedAt >= 30_000) {
        loggedAt = Date.now();
        logger.error("waiting: another worker reads some of this partition's subjects", {
          durables: names,
          filters,
        });
      }
      checkHealth();
      if (stopping) throw new AbandonBatch("stopped while another worker read the same subjects");
      await sleep(2_000);
    }
  }

  /** What this worker needs of the stream (stream.ts, requestEventsStreamProblems). */
  const streamNeeds = { consumeSubjects: config.filterSubjects, keepsAcked: true };

  /**
   * Waits until the stream exists and fits this worker (the setup step creates and configures it; the worker
   * never does): not ready meanwhile, with the reason in /readyz and an error in the log when it changes (and
   * every minute). Checked at start and after the receiver stopped (the stream may have gone with NATS's store).
   */
  async function awaitStream(conn: NatsConnection): Promise<boolean> {
    let problem: string | undefined;
    let loggedAt = 0;
    for (let attempt = 0;; attempt++) {
      let problems: string[];
      try {
        problems = await checkRequestEventsStream(conn, streamNeeds);
      } catch (error) {
        problems = [`the stream check failed: ${error instanceof Error ? error.message : error}`];
      }
      if (problems.length === 0) {
        if (problem !== undefined) logger.info("the stream is there and fits; going on");
        waitingFor = undefined;
        return true;
      }
      const now = Date.now();
      const next = problems.join("; ");
      if (next !== problem || now - loggedAt >= 60_000) {
        loggedAt = now;
        logger.error("waiting for the stream (the setup step creates and configures it)", { problem: next });
      }
      problem = next;
      waitingFor = next;
      checkHealth();
      if (stopping) return false;
      await sleep(Math.min(5_000, 250 * 2 ** Math.min(attempt, 5)));
    }
  }

  function run(): Promise<IngestStats> {
    return runInner().catch((error) => {
      // Only the start-up steps let an AbandonBatch through: a stop asked for while they still retried.
      if (!(error instanceof AbandonBatch)) throw error;
      logger.info("stopped before consuming", { while: error.message });
      return stats;
    }).finally(() => {
      consuming = false;
      metrics.up.set(0);
    });
  }

  async function runInner(): Promise<IngestStats> {
    let nc: NatsConnection | undefined;
    let pull: PullReceiver | undefined;
    const timers: ReturnType<typeof setInterval>[] = [];
    try {
      // Start-up steps retry until they succeed or a stop is asked for: servers may come up after us.
      nc = await withRetry("connect to NATS", async () => {
        try {
          const connection = await connectNats(config.nats, {
            name: `tailwatch-ingest:${config.durable}`,
            maxReconnectAttempts: -1,
            reconnectTimeWait: 500,
            // A refused reconnect (a password being rotated) is tried again, not given up for good.
            ignoreAuthErrorAbort: true,
          }, logger);
          waitingFor = undefined;
          return connection;
        } catch (error) {
          const text = String(error instanceof Error ? error.message : error);
          // A refusal of the credentials is the server's -ERR: counted and said like any other.
          if (/authori[sz]ation|authentication/i.test(text)) onServerError(text);
          waitingFor = `connecting to NATS at ${describeNats(config.nats)}: ${text}`;
          throw error;
        }
      });
      const conn = nc;
      (async () => {
        for await (const status of conn.status()) {
          if (status.type === "disconnect" || status.type === "reconnect") logger.warn(`nats ${status.type}`);
          if (status.type === "error") {
            const text = String(status.error instanceof Error ? status.error.message : status.error);
            if (/violation/i.test(text)) onServerError(text);
          }
        }
      })().catch(() => {});
      if (!await awaitStream(conn)) return stats;
      const jsm = await jetstreamManager(conn);
      if (config.migrateOnStart) {
        // Under the migration lock (migrations.ts): workers that start together on a fresh database take
        // turns, and the second finds nothing left to do.
        const applied = await withRetry(
          "migrate",
          () =>
            applyMigrations({ clickhouse, database: config.database }, {
              lock: {
                onWait: (holder, ageS) => {
                  waitingFor = `migrating: waiting for the migration lock held by ${holder}`;
                  logger.info("waiting for the migration lock", { holder, heartbeatAgeS: ageS });
                },
              },
            }),
        );
        waitingFor = undefined;
        if (applied.length > 0) logger.info("migrations applied", { versions: applied });
      }
      // A pull request asks for at most requestBytes (max_bytes), which must let the largest message through.
      const maxPayload = conn.info?.max_payload ?? 1024 * 1024;
      pullLimits.batch = Math.min(config.batchMax, config.maxAckPending);
      pullLimits.requestBytes = Math.max(Math.floor(config.maxBytesInFlight / 4), maxPayload + 8 * 1024);
      await withRetry("ensure consumer", () => ensureConsumer(jsm, false));
      const timeZone = await withRetry("read server time zone", async () => {
        const rows = await clickhouse.query<{ tz: string }>(sql`SELECT timezone() AS tz`);
        return rows[0]?.tz ?? "UTC";
      });
      const partitionOf = createPartitionOf(timeZone);
      if (stopping) return stats;

      const consumerInfo = () => jsm.consumers.info(REQUEST_EVENTS_STREAM, config.durable);
      // Everything up to the consumer's last delivered sequence may have been inserted by an earlier process.
      const startInfo = await withRetry("read the consumer", consumerInfo);
      if (startInfo.delivered.stream_seq > highWater) highWater = startInfo.delivered.stream_seq;
      // Everything at or below the ack floor was committed by whoever acked it.
      committedFloor = ackFloor(startInfo);
      metrics.floor.set(committedFloor);
      if (config.partitions > 1) {
        // The floor of the whole stream (floor.ts): looked at once before anything is stamped, then every
        // second from the sibling partitions' consumers.
        const floors = createGlobalFloorTracker({
          source: {
            stream: async () => {
              const info = await jsm.streams.info(REQUEST_EVENTS_STREAM);
              return { lastSeq: info.state.last_seq, created: info.created };
            },
            consumer: (name) =>
              jsm.consumers.info(REQUEST_EVENTS_STREAM, name).catch((error) => {
                if (isConsumerNotFound(error)) return undefined;
                throw error;
              }),
            consumerNames: async () => {
              const names: string[] = [];
              for await (const info of jsm.consumers.list(REQUEST_EVENTS_STREAM)) names.push(info.name);
              return names;
            },
            firstAfter: async (filter, afterSeq) => {
              // MSG.GET with next_by_subj: the first message at or after `seq` whose subject matches.
              const found = await jsm.streams.getMessage(
                REQUEST_EVENTS_STREAM,
                { seq: afterSeq + 1, next_by_subj: filter } as unknown as { seq: number },
              );
              return found?.seq;
            },
          },
          durableBase: config.durableBase,
          partitions: config.partitions,
          self: config.partition,
          ownFloor: () => committedFloor,
          logger,
        });
        await withRetry("compute the global floor", () => floors.refresh());
        tracker = floors;
        let refreshing = false;
        timers.push(setInterval(() => {
          if (refreshing) return;
          refreshing = true;
          floors.refresh().then(stampFloor).catch((error) =>
            logger.debug("could not refresh the global floor; keeping it", { error })
          ).finally(() => refreshing = false);
        }, 1_000));
      }
      await announceFloor();
      const receiver: PullReceiver = createPullReceiver({
        nats: config.nats,
        name: `tailwatch-ingest-pull:${config.durable}`,
        stream: REQUEST_EVENTS_STREAM,
        durable: config.durable,
        batch: pullLimits.batch,
        requestBytes: pullLimits.requestBytes,
        maxBytesInFlight: config.maxBytesInFlight,
        heldBytes: () => heldBytes,
        expiresMs: pullLimits.expiresMs,
        logger,
        onServerError,
        onMessage: (msg) => {
          heldBytes += msg.size;
          if (heldBytes > stats.bytesInFlightMax) stats.bytesInFlightMax = heldBytes;
          options.onReceived?.(msg, Date.now());
          queue.push(msg);
        },
        onTrouble: (trouble: PullTrouble, reason: string) => {
          if (trouble !== "continuity") {
            consumerProblem = reason;
            metrics.consumerTrouble.inc({ kind: trouble });
            logger.error("pulling stopped: the consumer is missing or refuses the pull requests", {
              trouble,
              reason,
            });
            checkHealth();
          }
          queue.wake();
        },
      });
      pull = receiver;
      receiverConnected = () => receiver.connected;
      await receiver.start(startInfo.delivered.consumer_seq);
      /**
       * After the receiver stopped (pull.ts): once the batches before it are committed, check the consumer,
       * recreate it if it has unacked messages, is gone or unusable (ensureConsumer), and pull again.
       */
      const resync = async () => {
        await receiver.flush().catch(() => {});
        // The stream too may be gone (a NATS server that lost its store): the setup step creates it again;
        // until then the worker waits, not ready, and says why.
        if (!await awaitStream(conn)) throw new AbandonBatch("stopped while waiting for the stream");
        await withRetry("recreate the consumer", () => ensureConsumer(jsm, true));
        const info = await withRetry("read the consumer", consumerInfo);
        if (info.delivered.stream_seq > highWater) highWater = info.delivered.stream_seq;
        if (ackFloor(info) > committedFloor) {
          committedFloor = ackFloor(info);
          metrics.floor.set(committedFloor);
        }
        receiver.restart(info.delivered.consumer_seq);
        if (consumerProblem !== undefined) logger.info("pulling again", { after: consumerProblem });
        consumerProblem = undefined;
        stats.resyncs++;
        metrics.resyncs.inc();
        checkHealth();
      };

      // Keep slow batches from being redelivered: mark in-progress at a third of the ack wait.
      timers.push(setInterval(() => {
        const now = Date.now();
        const third = config.ackWaitMs / 3;
        for (const entry of inHand) {
          if (now - entry.since > third) { for (const msg of entry.batch) receiver.working(msg); }
        }
        if (queue.size() > 0 && now - queue.oldestAt() > third) {
          for (const msg of queue.items()) receiver.working(msg);
        }
      }, Math.max(250, Math.floor(config.ackWaitMs / 6))));
      const refreshPending = async () => {
        const info = await consumerInfo();
        metrics.pending.set(info.num_pending);
        metrics.ackPending.set(info.num_ack_pending);
        serverPending = info.num_pending;
        return info;
      };
      timers.push(setInterval(() => refreshPending().catch(() => {}), 5_000));
      timers.push(setInterval(checkHealth, 1_000));
      if (config.retentionIntervalS > 0 && mode === "follow") {
        let busy = false;
        const retention = async () => {
          if (busy) return;
          busy = true;
          try {
            const dropped = await applyRetention(clickhouse, config.database, {
              rawDays: config.retentionRawDays,
              rollupDays: config.retentionRollupDays,
            });
            metrics.retentionDropped.inc({}, dropped.length);
            if (dropped.length > 0) logger.info("retention dropped partitions", { dropped });
          } catch (error) {
            logger.warn("retention failed; will try again", { error });
          } finally {
            busy = false;
          }
        };
        timers.push(setInterval(retention, config.retentionIntervalS * 1000));
        retention();
      }

      consuming = true;
      lastCommitAt = Date.now();
      checkHealth();
      logger.info("consuming", {
        durable: config.durable,
        database: config.database,
        mode,
        timeZone,
        partition: config.partitions > 1 ? `${config.partition} of ${config.partitions}` : "all",
        filters: config.filterSubjects,
      });
      // Three batches in hand at most: while batches k and k+1 are inserted, batch k+2 is decoded. A batch of
      // first deliveries (no dedup check) is inserted alongside the one before it; a batch that needs the
      // dedup check waits until every batch before it is committed, so its query sees their rows. Acks stay
      // in batch order: a batch is acked only after the batch before it was.
      let firstBatch = true;
      /** Batches being committed, oldest first; each resolves to undefined (acked) or what went wrong. */
      const committing: Promise<unknown>[] = [];
      /** Waits for the oldest batch being committed; false when it was abandoned (stop grace over). */
      const settleOldest = async (): Promise<boolean> => {
        const outcome = await committing[0];
        committing.shift();
        if (outcome instanceof AbandonBatch) {
          logger.warn("stop grace period over: leaving the batch unacked for redelivery", { error: outcome });
          return false;
        }
        if (outcome !== undefined) throw outcome;
        return true;
      };
      const settle = async (limit = 0): Promise<boolean> => {
        while (committing.length > limit) if (!await settleOldest()) return false;
        return true;
      };
      for (;;) {
        if (stopping) receiver.pause();
        // Drain mode looks for the end sooner: 100 ms without a message, then asks the server.
        const batch = await queue.take(
          config.batchMax,
          config.batchMaxBytes,
          config.batchWaitMs,
          mode === "drain" ? 100 : 1_000,
          () => receiver.broken,
        );
        if (batch.length === 0) {
          if (!await settle()) break;
          if (stopping) break;
          // Idle: no INSERT carries the floor of the last batches to the profiler, a marker does.
          await announceFloor();
          if (receiver.broken && queue.size() === 0) {
            try {
              await resync();
            } catch (error) {
              if (error instanceof AbandonBatch) break; // a stop while the consumer could not be recreated
              throw error;
            }
            continue;
          }
          if (mode === "drain") {
            const info = await refreshPending().catch(() => undefined);
            if (info && info.num_pending === 0 && info.num_ack_pending === 0 && queue.size() === 0) break;
          }
          continue;
        }
        const inHandEntry = { batch, since: Date.now() };
        inHand.push(inHandEntry);
        const prepareStart = performance.now();
        const prepared = prepareBatch(batch, firstBatch, partitionOf);
        const waitStart = performance.now();
        firstBatch = false;
        if (!await settle(prepared.checkFirst ? 0 : 1)) break;
        logger.debug("batch decoded", {
          size: batch.length,
          decodeMs: Math.round(waitStart - prepareStart),
          waitedForPreviousMs: Math.round(performance.now() - waitStart),
          queued: queue.size(),
        });
        committing.push(
          commitBatch(conn, receiver, prepared, committing.at(-1)).then(
            () => undefined,
            (error: unknown) => error ?? new Error("batch failed"),
          ).finally(() => {
            inHand = inHand.filter((entry) => entry !== inHandEntry);
          }),
        );
      }
      while (committing.length > 0) await settleOldest();
      receiver.pause();
      logger.info("stopped", { ...stats });
      return stats;
    } finally {
      for (const timer of timers) clearInterval(timer);
      await pull?.close();
      pull = undefined;
      if (nc) {
        await nc.flush().catch(() => {});
        await nc.close().catch(() => {});
      }
    }
  }

  const scanner = new EventScanner();
  const batchRanges = new BatchRanges();

  /**
   * Decodes a batch into per-partition RowBinary bodies and poison messages (synchronous, CPU only). Whatever
   * a message holds, it becomes rows or poison: an unexpected failure while decoding one message undoes its
   * rows and dead-letters it whole.
   */
  function prepareBatch(
    batch: Delivery[],
    firstBatch: boolean,
    partitionOf: (ts: number) => number,
  ): PreparedBatch {
    metrics.batchSize.observe(batch.length);
    /** The group being filled per partition day; full groups (INGEST_BATCH_MAX rows) are in `groups` too. */
    const filling = new Map<number, RowGroup>();
    const groups: RowGroup[] = [];
    const seen = new Set<number>();
    const poison: PreparedBatch["poison"] = [];
    let checkFirst = firstBatch;
    let lastSlot = -1;
    let last: RowGroup | undefined;
    let storedAt = 0;
    let late = false;
    let events = 0;
    const newGroup = (day: number, ts: number): RowGroup => {
      const group: RowGroup = {
        writer: new RowWriter(),
        services: new Set(),
        minTs: ts,
        maxTs: ts,
        queryId: insertQueryPrefix + crypto.randomUUID(),
      };
      filling.set(day, group);
      groups.push(group);
      return group;
    };
    const pick = (ts: number, service: string): RowWriter => {
      // Every time zone offset is a multiple of 15 minutes: a 15-minute slot is in one partition.
      const slot = Math.floor(ts / 900);
      let group = slot === lastSlot ? last : undefined;
      if (!group || group.writer.rows >= config.batchMax) {
        const day = partitionOf(ts);
        group = filling.get(day);
        if (!group || group.writer.rows >= config.batchMax) group = newGroup(day, ts);
        lastSlot = slot;
        last = group;
      }
      group.services.add(service);
      if (ts < group.minTs) group.minTs = ts;
      if (ts > group.maxTs) group.maxTs = ts;
      // Stored long after it started (or its store time unknown): maybe a retry after the duplicate window.
      if (!(storedAt - ts * 1000 < lateAfterMs)) late = true;
      events++;
      return group.writer;
    };
    // First deliveries come in increasing stream sequence. A message at or below the highest sequence
    // seen before it (in this process, or delivered to the consumer before this process started) has been
    // delivered before, whether or not the server says so: a NATS crash can lose the consumer's delivery
    // state and hand a message out again as a first delivery. Such a batch, or one with a redelivered
    // message, is checked against the table before its INSERT; only then can it hold the same sequence twice.
    // So is a batch with a message JetStream could not deduplicate (no Nats-Msg-Id), or one stored long after
    // its events (late, above).
    let high = highWater;
    let top = batch[0];
    let topSeq = 0;
    let bytes = 0;
    const seqs = new Float64Array(batch.length);
    for (let i = 0; i < batch.length; i++) {
      const msg = batch[i];
      const s = msg.seq;
      seqs[i] = s;
      bytes += msg.size;
      if (s <= high || msg.deliveries > 1 || !msg.hasMsgId()) checkFirst = true;
      if (s > high) high = s;
      if (s > topSeq) {
        topSeq = s;
        top = msg;
      }
    }
    highWater = high;
    for (let i = 0; i < batch.length; i++) {
      const msg = batch[i];
      const seq = seqs[i];
      if (checkFirst) {
        if (seen.has(seq)) continue;
        seen.add(seq);
      }
      storedAt = msg.timestampMs;
      const poisonBefore = poison.length;
      try {
        const eventCount = msg.eventCount();
        if (eventCount === 0) {
          const refused = appendEvent(scanner, msg.chunk, seq, pick, msg.dataStart, msg.dataEnd);
          if (refused) poison.push({ msg, reason: refused.reason, detail: refused.detail });
          continue;
        }
        // A RequestEventBatch: split (and so checked) whole before any of its rows is written, and then its
        // events, all under the message's stream sequence, go to their partitions' writers.
        const unsplit = splitBatch(msg.chunk, msg.dataStart, msg.dataEnd, eventCount, batchRanges);
        if (unsplit !== undefined) {
          poison.push({ msg, reason: "undecodable", detail: unsplit });
          continue;
        }
        for (let index = 0; index < batchRanges.count; index++) {
          const start = batchRanges.starts[index];
          const end = batchRanges.ends[index];
          const refused = appendEvent(scanner, msg.chunk, seq, pick, start, end);
          if (refused) {
            poison.push({
              msg,
              reason: refused.reason,
              detail: refused.detail,
              event: { index, start, end },
            });
          }
        }
      } catch (error) {
        // Not a refusal decodeEvent knows: whatever it was, the message's rows go and the message is poison.
        for (const group of groups) group.writer.dropTrailing(seq);
        poison.length = poisonBefore;
        poison.push({
          msg,
          reason: "undecodable",
          detail: `ingest could not process it: ${error instanceof Error ? error.message : String(error)}`,
        });
        logger.error("a message failed to decode unexpectedly; dead-lettering it", { seq, error });
      }
    }
    if (late) checkFirst = true;
    metrics.batchEvents.observe(events + poison.length);
    const kept = groups.filter((group) => group.writer.rows > 0);
    if (checkFirst) dropRepeatedEvents(kept);
    return { batch, last: top, groups: kept, poison, checkFirst, bytes };
  }

  /** Keeps the first row of each event id in a checked batch (the same event in two messages of it). */
  function dropRepeatedEvents(groups: RowGroup[]): void {
    const ids = new Set<string>();
    for (const group of groups) {
      const repeated = new Set<number>();
      for (let row = 0; row < group.writer.rows; row++) {
        const id = group.writer.eventId(row);
        if (ids.has(id)) repeated.add(row);
        else ids.add(id);
      }
      if (repeated.size === 0) continue;
      group.writer = group.writer.withoutRows(repeated);
      stats.duplicatesSkipped += repeated.size;
      metrics.duplicates.inc({}, repeated.size);
      logger.info("skipped events that came twice in one batch", { skipped: repeated.size });
    }
  }

  /**
   * Publishes one dead letter (nats.js, core NATS): the original bytes (of the message, or of the event of a
   * batch message) with the reason and where the original is in headers. Header values are printable ASCII
   * (nats.js refuses CR and LF, and a message's own Nats-Msg-Id may hold anything). When the payload and the
   * headers would exceed the server's max_payload, the payload is cut to fit, and Tailwatch-Truncated and
   * Tailwatch-Original-Size say so: the whole original stays in the stream under Tailwatch-Stream-Seq.
   */
  function publishDeadLetter(nc: NatsConnection, { msg, reason, detail, event }: Poison): boolean {
    const fields: [string, string][] = [
      ["Tailwatch-Dead-Letter-Reason", reason],
      ["Tailwatch-Dead-Letter-Detail", headerText(detail, 500)],
      ["Tailwatch-Stream-Seq", String(msg.seq)],
      ["Tailwatch-Subject", headerText(msg.subject, 300)],
    ];
    const msgId = msg.header("Nats-Msg-Id");
    if (msgId) fields.push(["Tailwatch-Msg-Id", headerText(msgId, 300)]);
    if (event) fields.push(["Tailwatch-Event-Index", String(event.index)]);
    let data = event ? msg.chunk.subarray(event.start, event.end) : msg.data;
    const maxPayload = nc.info?.max_payload ?? 1024 * 1024;
    const headerBytes = (list: [string, string][]) =>
      "NATS/1.0\r\n\r\n".length + list.reduce((sum, [k, v]) => sum + k.length + 2 + v.length + 2, 0);
    let truncated = false;
    if (headerBytes(fields) + data.length > maxPayload) {
      fields.push(["Tailwatch-Truncated", "true"], ["Tailwatch-Original-Size", String(data.length)]);
      data = data.subarray(0, Math.max(0, maxPayload - headerBytes(fields) - 64));
      truncated = true;
    }
    const h = headers();
    for (const [name, value] of fields) h.set(name, value);
    nc.publish(`${DEAD_LETTER_SUBJECT_PREFIX}.${reason}`, data, { headers: h });
    return truncated;
  }

  /** Inserts a prepared batch (exactly once), dead-letters its poison, then acks every message of it. */
  async function commitBatch(
    nc: NatsConnection,
    receiver: PullReceiver,
    prepared: PreparedBatch,
    /** The commit of the batch before it (resolves to undefined once that batch was acked). */
    previous: Promise<unknown> | undefined,
  ): Promise<void> {
    const { batch, last, groups, poison, checkFirst } = prepared;
    const commitStart = performance.now();
    // One INSERT per group (day-partition, at most INGEST_BATCH_MAX rows): an INSERT is atomic only within
    // one partition and one block (one part).
    for (const group of groups) await insertGroup(group, checkFirst, last.seq);
    // Acks in batch order: this batch's cumulative ack also covers the batch before it.
    const before = await previous;
    if (before !== undefined) {
      throw before instanceof AbandonBatch ? new AbandonBatch(`an earlier batch: ${before.message}`) : before;
    }
    if (poison.length > 0) {
      // Published (again, if the flush fails: a dead letter may then come twice, never not at all) before the
      // ack that lets the originals go.
      let truncated = 0;
      await withRetry("publish dead letters", async () => {
        truncated = 0;
        for (const entry of poison) if (publishDeadLetter(nc, entry)) truncated++;
        await Promise.race([
          nc.flush(),
          sleep(config.insertTimeoutMs).then(() => Promise.reject(new Error("NATS flush timed out"))),
        ]);
      });
      metrics.deadLettersTruncated.inc({}, truncated);
      for (const { msg, reason, detail, event } of poison) {
        stats.deadLettered++;
        metrics.deadLettered.inc({ reason });
        logger.warn(event ? "dead-lettered an event of a message" : "dead-lettered a message", {
          seq: msg.seq,
          subject: msg.subject.slice(0, 300),
          reason,
          detail: detail.slice(0, 500),
          ...(event ? { eventIndex: event.index } : {}),
        });
      }
    }
    // AckPolicy.All: acking the batch's highest message acks it and every message before it. Batches are
    // delivered and committed in order, and the consumer starts at its ack floor + 1, so every message below
    // it has been inserted (or dead-lettered) by now. A lost ack only means a redelivery, which the dedup
    // check absorbs.
    receiver.ack(last); // the highest sequence: a redelivered message may come after higher ones
    await receiver.flush().catch((error) => logger.warn("flushing acks failed", { error }));
    if (last.seq > committedFloor) {
      committedFloor = last.seq;
      metrics.floor.set(committedFloor);
    }
    heldBytes -= prepared.bytes;
    metrics.bytesInFlight.set(heldBytes);
    receiver.more();
    lastCommitAt = Date.now();
    metrics.lastCommit.set(lastCommitAt / 1000);
    stats.batches++;
    metrics.batches.inc();
    logger.debug("batch done", {
      size: batch.length,
      groups: groups.length,
      poison: poison.length,
      commitMs: Math.round(performance.now() - commitStart),
    });
  }

  return {
    run,
    stop,
    ready: () => readiness().ready,
    readiness,
    stats: () => ({ ...stats }),
    registry,
  };
}
