/**
 * The ingest worker: durable pull consumer on REQUEST_EVENTS → batches (by size and by time) → decode →
 * one INSERT per batch and day-partition into `request_events` → ack. Exactly once through redelivery: see
 * ingest/README.md ("Exactly once").
 */
import {
  AckPolicy,
  type ConsumerInfo,
  DeliverPolicy,
  type JetStreamManager,
  jetstreamManager,
} from "@nats-io/jetstream";
import { connect, headers, nanos, type NatsConnection } from "@nats-io/transport-node";
import {
  createRegistry,
  DEAD_LETTER_SUBJECT_PREFIX,
  ensureRequestEventsStream,
  type Logger,
  type Registry,
  REQUEST_EVENTS_STREAM,
} from "@tailwatch/kit";
import { type ClickHouse, createClickHouse } from "./clickhouse.ts";
import type { IngestConfig } from "./config.ts";
import { INSERT_COLUMNS, type PoisonReason, ROW_FORMAT } from "./event_row.ts";
import { appendEvent, BatchRanges, EventScanner, RowWriter, splitBatch } from "./row_writer.ts";
import { applyMigrations } from "./migrations.ts";
import { createPullReceiver, type Delivery, type PullReceiver } from "./pull.ts";
import { applyRetention } from "./retention.ts";
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
  /** Times delivery continuity broke and the consumer was recreated at its ack floor + 1 (pull.ts). */
  resyncs: number;
  /** The slowest successful INSERT so far, in ms. */
  insertMsMax: number;
}

export interface IngestWorker {
  /** Connects, migrates (if configured), consumes until stop() (or drained); resolves after a clean stop. */
  run(): Promise<IngestStats>;
  /** Asks for a graceful stop: the batch in hand is inserted and acked, then run() resolves. */
  stop(): void;
  /** True once connected, migrated and consuming. */
  ready(): boolean;
  stats(): IngestStats;
  readonly registry: Registry;
}

/** One day-partition's rows of a batch, as a RowBinary body, with what the dedup query needs. */
interface RowGroup {
  writer: RowWriter;
  services: Set<string>;
  minTs: number;
  maxTs: number;
  minSeq: number;
  maxSeq: number;
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
  /** Some message may have been inserted before: ask the table before inserting. */
  checkFirst: boolean;
}

/** True when both lists hold the same subjects, in any order. */
function sameSubjects(a: string[] | undefined, b: string[]): boolean {
  const left = [...(a ?? [])].sort();
  const right = [...b].sort();
  return left.length === right.length && left.every((subject, i) => subject === right[i]);
}

/**
 * The stream sequence below which a consumer has everything acked. A consumer made to start at sequence S
 * reports ack floor 0 until it acks something, but everything below S was acked by the consumer it replaced
 * (it starts at that one's ack floor + 1): recreating it from 1 would replay the whole stream.
 */
function ackFloor(info: ConsumerInfo): number {
  const start = info.config.deliver_policy === DeliverPolicy.StartSequence
    ? info.config.opt_start_seq ?? 1
    : 1;
  return Math.max(info.ack_floor.stream_seq, start - 1);
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

interface BatchQueue {
  push(msg: Delivery): void;
  /** Up to `max` messages: when `max` are there, or `waitMs` after the first arrived, or at stop/idle. */
  take(max: number, waitMs: number, idleMs: number): Promise<Delivery[]>;
  size(): number;
  oldestAt(): number;
  items(): readonly Delivery[];
  /** From now on take() returns at once with what is there (used at stop). */
  close(): void;
  /** Makes a waiting take() look again now. */
  wake(): void;
}

function createBatchQueue(batchMax: number): BatchQueue {
  let items: Delivery[] = [];
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
      items.push(msg);
      if (items.length === 1 || items.length >= batchMax) wake();
    },
    async take(max, waitMs, idleMs) {
      const idleUntil = Date.now() + idleMs;
      for (;;) {
        const now = Date.now();
        if (
          items.length >= max || (items.length > 0 && now - firstAt >= waitMs) || closed || now >= idleUntil
        ) {
          const out = items.length <= max ? items : items.slice(0, max);
          items = items.length <= max ? [] : items.slice(max);
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
    insertSeconds: registry.histogram(
      "ingest_insert_duration_seconds",
      "Duration of one successful INSERT.",
      [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    ),
    rows: registry.counter("ingest_rows_inserted_total", "Rows inserted into request_events."),
    duplicates: registry.counter(
      "ingest_duplicates_skipped_total",
      "Redelivered events found already in the table and not inserted again.",
    ),
    deadLettered: registry.counter(
      "ingest_dead_lettered_total",
      "Messages sent to the dead-letter subject.",
      ["reason"],
    ),
    retries: registry.counter(
      "ingest_insert_retries_total",
      "Failed INSERT (or dedup query) attempts retried.",
    ),
    pending: registry.gauge(
      "ingest_consumer_pending",
      "Messages of the stream not yet delivered to the consumer (num_pending).",
    ),
    ackPending: registry.gauge("ingest_consumer_ack_pending", "Messages delivered and not yet acked."),
    resyncs: registry.counter(
      "ingest_consumer_resyncs_total",
      "Times delivery continuity broke (a delivery this process did not see) and the consumer was recreated.",
    ),
    retentionDropped: registry.counter("ingest_retention_partitions_dropped_total", "Partitions dropped."),
    up: registry.gauge("ingest_ready", "1 when connected, migrated and consuming."),
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
      "Every stream message at or below this sequence is committed (rows and rollups) or dead-lettered.",
    ),
  };
  const stats: IngestStats = {
    batches: 0,
    rowsInserted: 0,
    duplicatesSkipped: 0,
    deadLettered: 0,
    retries: 0,
    resyncs: 0,
    insertMsMax: 0,
  };
  const clickhouse: ClickHouse = createClickHouse({
    url: config.clickhouseUrl,
    username: config.clickhouseUser,
    password: config.clickhousePassword,
    timeoutMs: config.insertTimeoutMs,
  });
  const table = { database: config.database, table: "request_events" };
  const queue = createBatchQueue(config.batchMax);
  let stopping = false;
  let stopDeadline = Infinity;
  let isReady = false;
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
  const gate = createWriteGate();
  /** Batches taken from the queue and not yet acked (at most three: two being inserted, one decoded). */
  let inHand: { batch: Delivery[]; since: number }[] = [];

  const stop = () => {
    if (stopping) return;
    stopping = true;
    stopDeadline = Date.now() + config.shutdownGraceMs;
    logger.info("stop requested; finishing the batch in hand", { graceMs: config.shutdownGraceMs });
    queue.close();
  };

  async function withRetry<T>(what: string, action: (attempt: number) => Promise<T>): Promise<T> {
    for (let attempt = 0;; attempt++) {
      try {
        return await action(attempt);
      } catch (error) {
        stats.retries++;
        metrics.retries.inc();
        if (stopping && Date.now() >= stopDeadline) throw new AbandonBatch(`${what}: ${error}`);
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
   * system.processes it is committed or gone for good, and the check sees which.
   */
  const insertQueryPrefix = `tailwatch-ingest-${config.durable}-`;

  async function awaitNoInsertsInFlight(): Promise<void> {
    const deadline = Date.now() + 2 * config.insertTimeoutMs;
    for (;;) {
      const [running] = await clickhouse.query<{ n: string | number }>(
        sql`SELECT count() AS n FROM system.processes
          WHERE substring(query_id, 1, ${insertQueryPrefix.length}) = ${insertQueryPrefix}`,
      );
      if (Number(running.n) === 0) return;
      if (Date.now() > deadline) {
        throw new Error(`an earlier INSERT (query_id ${insertQueryPrefix}*) is still running in ClickHouse`);
      }
      await sleep(100);
    }
  }

  async function existingSeqs(group: RowGroup): Promise<Set<number>> {
    await awaitNoInsertsInFlight();
    const found = await clickhouse.query<{ stream_seq: string | number }>(
      sql`SELECT stream_seq FROM ${ident(config.database, "request_events")}
        WHERE service IN (${sqlJoin([...group.services])})
          AND ts >= ${new Date(group.minTs * 1000)} AND ts <= ${new Date(group.maxTs * 1000)}
          AND stream_seq >= ${group.minSeq} AND stream_seq <= ${group.maxSeq}`,
    );
    return new Set(found.map((row) => Number(row.stream_seq)));
  }

  /**
   * After rows of this group were found in the table: an earlier INSERT of them committed its raw part, and
   * its views may have failed after that (ClickHouse 18.16 feeds them after the commit). Compares both
   * rollups with the raw rows over the group's seconds and services and inserts what they lack, with every
   * other INSERT of this worker held and none of its durable running in ClickHouse.
   */
  async function repairRollups(group: RowGroup, batchSeq: number): Promise<void> {
    await gate.exclusive(async () => {
      await awaitNoInsertsInFlight();
      const result = await reconcileRollups(clickhouse, {
        database: config.database,
        fromTs: group.minTs,
        toTs: group.maxTs,
        services: [...group.services],
        batchSeq,
        floorSeq: committedFloor,
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
   * Inserts one partition's rows exactly once: after any doubt (redelivery, failed attempt) asks first, and
   * completes the rollups when an earlier INSERT of some of the rows committed them (repairRollups).
   * `batchSeq`: the batch's highest stream sequence, stamped on its rows as ingest_batch_seq.
   */
  async function insertGroup(group: RowGroup, checkFirst: boolean, batchSeq: number): Promise<void> {
    await withRetry("insert", async (attempt) => {
      let writer = group.writer;
      if (checkFirst || attempt > 0) {
        const existing = await existingSeqs(group);
        if (existing.size > 0) {
          await repairRollups(group, batchSeq);
          writer = writer.without(existing);
          const skipped = group.writer.rows - writer.rows;
          stats.duplicatesSkipped += skipped;
          metrics.duplicates.inc({}, skipped);
          logger.info("skipped rows already in the table", { skipped });
        }
      }
      if (writer.rows === 0) return;
      // ingested_at_ms: the worker's clock when it sends the INSERT that carries the row (see README).
      const sentAt = Date.now();
      const floorSeq = committedFloor;
      writer.stamp({ ingestedAtMs: sentAt, batchSeq, floorSeq });
      const started = performance.now();
      await gate.shared(() =>
        clickhouse.insertBody(table, INSERT_COLUMNS, ROW_FORMAT, writer.body(), {
          queryId: insertQueryPrefix + crypto.randomUUID(),
        })
      );
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
    const floor = committedFloor;
    if (floor <= floorAnnounced) return;
    try {
      await writeFloorMarker(clickhouse, config.database, floor);
      if (floor > floorAnnounced) floorAnnounced = floor;
    } catch (error) {
      logger.debug("could not write the floor marker; will try again", { error });
    }
  }

  /**
   * Creates the durable consumer, or recreates it at its ack floor + 1 when it has unacked messages (or
   * another ack policy or filter); raises highWater to what an old consumer delivered.
   */
  async function ensureConsumer(jsm: JetStreamManager): Promise<void> {
    const info = await jsm.consumers.info(REQUEST_EVENTS_STREAM, config.durable).catch(() => undefined);
    const stream = await jsm.streams.info(REQUEST_EVENTS_STREAM);
    // nats-server matches every message's subject against a consumer's filter (a quarter of its CPU per
    // delivered message in the ingest bench, ingest/README.md): a filter that is the stream's only subject
    // selects everything anyway, so the consumer gets none.
    const filter = sameSubjects(stream.config.subjects, [config.filterSubject]) ? "" : config.filterSubject;
    // Acks are cumulative (AckPolicy.All: the last message of a batch acks the batch and everything
    // before it). Such an ack is safe only if this process saw every message below it, so messages that
    // an earlier process was handed and never acked must come again, in order, before anything new. The
    // server would redeliver them only after the ack wait, while new messages flow: so a durable with
    // unacked messages (or with another ack policy, which the server does not let us change) is
    // recreated to start at its ack floor + 1. The dedup check absorbs the overlap (README, "Exactly
    // once"). A durable that was created with another filter subject is recreated too.
    const recreate = info !== undefined && (
      info.config.ack_policy !== AckPolicy.All || info.num_ack_pending > 0 ||
      info.delivered.stream_seq > ackFloor(info) ||
      (info.config.filter_subject ?? "") !== filter
    );
    // A durable that was recreated (by this code: start sequence = the old one's ack floor + 1) no longer
    // knows what its earlier incarnations delivered: a process killed after recreating it (caught by the kill
    // -9 test: the next process found ack floor 0, delivered 2500, while the incarnation before had delivered
    // up to 4000 and inserted unacked batches above 2500, which then went in a second time). Any of those
    // deliveries is in the stream, so the stream's last sequence bounds them: every message up to it gets the
    // dedup check. A durable never recreated keeps its delivered sequence, which is enough (below).
    if (info && (recreate || info.config.deliver_policy === DeliverPolicy.StartSequence)) {
      if (stream.state.last_seq > highWater) highWater = stream.state.last_seq;
    }
    if (info && !recreate) {
      await jsm.consumers.update(REQUEST_EVENTS_STREAM, config.durable, {
        ack_wait: nanos(config.ackWaitMs),
        max_ack_pending: config.maxAckPending,
      });
      return;
    }
    if (info) {
      await jsm.consumers.delete(REQUEST_EVENTS_STREAM, config.durable);
      logger.info("recreated the durable consumer at its ack floor + 1", {
        ackPolicy: info.config.ack_policy,
        ackFloor: ackFloor(info),
        delivered: info.delivered.stream_seq,
      });
      // Everything up to what the old consumer delivered may have been inserted already.
      if (info.delivered.stream_seq > highWater) highWater = info.delivered.stream_seq;
    }
    await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
      durable_name: config.durable,
      ack_policy: AckPolicy.All,
      ...(info
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: ackFloor(info) + 1 }
        : { deliver_policy: options.deliverFromStart === false ? DeliverPolicy.New : DeliverPolicy.All }),
      ack_wait: nanos(config.ackWaitMs),
      max_ack_pending: config.maxAckPending,
      max_deliver: -1,
      ...(filter === "" ? {} : { filter_subject: filter }),
    });
  }

  function run(): Promise<IngestStats> {
    return runInner().finally(() => {
      isReady = false;
      metrics.up.set(0);
    });
  }

  async function runInner(): Promise<IngestStats> {
    let nc: NatsConnection | undefined;
    let pull: PullReceiver | undefined;
    const timers: ReturnType<typeof setInterval>[] = [];
    try {
      // Start-up steps retry until they succeed or a stop is asked for: servers may come up after us.
      nc = await withRetry("connect to NATS", () =>
        connect({
          servers: config.natsUrl,
          name: `tailwatch-ingest:${config.durable}`,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 500,
        }));
      const conn = nc;
      (async () => {
        for await (const status of conn.status()) {
          if (status.type === "disconnect" || status.type === "reconnect") logger.warn(`nats ${status.type}`);
        }
      })().catch(() => {});
      await withRetry("ensure stream", () => ensureRequestEventsStream(conn));
      const jsm = await jetstreamManager(conn);
      await withRetry("ensure consumer", () => ensureConsumer(jsm));
      if (config.migrateOnStart) {
        const applied = await withRetry(
          "migrate",
          () => applyMigrations({ clickhouse, database: config.database }),
        );
        if (applied.length > 0) logger.info("migrations applied", { versions: applied });
      }
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
      await announceFloor();
      const receiver: PullReceiver = createPullReceiver({
        servers: config.natsUrl,
        name: `tailwatch-ingest-pull:${config.durable}`,
        stream: REQUEST_EVENTS_STREAM,
        durable: config.durable,
        batch: Math.min(config.batchMax, config.maxAckPending),
        logger,
        onMessage: options.onReceived
          ? (msg) => {
            options.onReceived?.(msg, Date.now());
            queue.push(msg);
          }
          : (msg) => queue.push(msg),
        onBroken: () => queue.wake(),
      });
      pull = receiver;
      await receiver.start(startInfo.delivered.consumer_seq);
      /**
       * After delivery continuity broke (pull.ts): once the batches before the break are committed, recreate
       * the consumer at its ack floor + 1 (ensureConsumer: it has unacked messages) and pull again.
       */
      const resync = async () => {
        await receiver.flush().catch(() => {});
        await withRetry("recreate the consumer", () => ensureConsumer(jsm));
        const info = await withRetry("read the consumer", consumerInfo);
        if (info.delivered.stream_seq > highWater) highWater = info.delivered.stream_seq;
        receiver.restart(info.delivered.consumer_seq);
        stats.resyncs++;
        metrics.resyncs.inc();
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
        return info;
      };
      timers.push(setInterval(() => refreshPending().catch(() => {}), 5_000));
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

      isReady = true;
      metrics.up.set(1);
      logger.info("consuming", { durable: config.durable, database: config.database, mode, timeZone });
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
        const batch = await queue.take(config.batchMax, config.batchWaitMs, mode === "drain" ? 100 : 1_000);
        if (batch.length === 0) {
          if (!await settle()) break;
          if (stopping) break;
          // Idle: no INSERT carries the floor of the last batches to the profiler, a marker does.
          await announceFloor();
          if (receiver.broken && queue.size() === 0) {
            await resync();
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

  /** Decodes a batch into per-partition RowBinary bodies and poison messages (synchronous, CPU only). */
  function prepareBatch(
    batch: Delivery[],
    firstBatch: boolean,
    partitionOf: (ts: number) => number,
  ): PreparedBatch {
    metrics.batchSize.observe(batch.length);
    const groups = new Map<number, RowGroup>();
    const seen = new Set<number>();
    const poison: PreparedBatch["poison"] = [];
    let checkFirst = firstBatch;
    let seq = 0;
    let lastSlot = -1;
    let last: RowGroup | undefined;
    const pick = (ts: number, service: string): RowWriter => {
      // Every time zone offset is a multiple of 15 minutes: a 15-minute slot is in one partition.
      const slot = Math.floor(ts / 900);
      let group = slot === lastSlot ? last : undefined;
      if (!group) {
        const day = partitionOf(ts);
        group = groups.get(day);
        if (!group) {
          group = {
            writer: new RowWriter(),
            services: new Set(),
            minTs: ts,
            maxTs: ts,
            minSeq: seq,
            maxSeq: seq,
          };
          groups.set(day, group);
        }
        lastSlot = slot;
        last = group;
      }
      group.services.add(service);
      if (ts < group.minTs) group.minTs = ts;
      if (ts > group.maxTs) group.maxTs = ts;
      if (seq < group.minSeq) group.minSeq = seq;
      if (seq > group.maxSeq) group.maxSeq = seq;
      return group.writer;
    };
    // First deliveries come in increasing stream sequence. A message at or below the highest sequence
    // seen before it (in this process, or delivered to the consumer before this process started) has been
    // delivered before, whether or not the server says so: a NATS crash can lose the consumer's delivery
    // state and hand a message out again as a first delivery. Such a batch, or one with a redelivered
    // message, is checked against the table before its INSERT; only then can it hold the same sequence twice.
    let high = highWater;
    let top = batch[0];
    let topSeq = 0;
    const seqs = new Float64Array(batch.length);
    for (let i = 0; i < batch.length; i++) {
      const { seq: s, deliveries } = batch[i];
      seqs[i] = s;
      if (s <= high || deliveries > 1) checkFirst = true;
      if (s > high) high = s;
      if (s > topSeq) {
        topSeq = s;
        top = batch[i];
      }
    }
    highWater = high;
    for (let i = 0; i < batch.length; i++) {
      const msg = batch[i];
      seq = seqs[i];
      if (checkFirst) {
        if (seen.has(seq)) continue;
        seen.add(seq);
      }
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
          poison.push({ msg, reason: refused.reason, detail: refused.detail, event: { index, start, end } });
        }
      }
    }
    return { batch, last: top, groups: [...groups.values()], poison, checkFirst };
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
    // One INSERT per day-partition: an INSERT is atomic only within one partition (one part).
    for (const group of groups) await insertGroup(group, checkFirst, last.seq);
    // Acks in batch order: this batch's cumulative ack also covers the batch before it.
    const before = await previous;
    if (before !== undefined) {
      throw before instanceof AbandonBatch ? new AbandonBatch(`an earlier batch: ${before.message}`) : before;
    }
    for (const { msg, reason, detail, event } of poison) {
      const h = headers();
      h.set("Tailwatch-Dead-Letter-Reason", reason);
      h.set("Tailwatch-Dead-Letter-Detail", detail.replace(/[\r\n]+/g, " ").slice(0, 500));
      h.set("Tailwatch-Stream-Seq", String(msg.seq));
      h.set("Tailwatch-Subject", msg.subject);
      const msgId = msg.header("Nats-Msg-Id");
      if (msgId) h.set("Tailwatch-Msg-Id", msgId);
      if (event) h.set("Tailwatch-Event-Index", String(event.index));
      const data = event ? msg.chunk.subarray(event.start, event.end) : msg.data;
      nc.publish(`${DEAD_LETTER_SUBJECT_PREFIX}.${reason}`, data, { headers: h });
      stats.deadLettered++;
      metrics.deadLettered.inc({ reason });
      logger.warn(event ? "dead-lettered an event of a message" : "dead-lettered a message", {
        seq: msg.seq,
        subject: msg.subject,
        reason,
        detail,
        ...(event ? { eventIndex: event.index } : {}),
      });
    }
    if (poison.length > 0) await nc.flush().catch(() => {});
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
    ready: () => isReady,
    stats: () => ({ ...stats }),
    registry,
  };
}
