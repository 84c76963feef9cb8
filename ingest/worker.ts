/**
 * The ingest worker: durable pull consumer on REQUEST_EVENTS → batches (by size and by time) → decode →
 * one INSERT per batch and day-partition into `request_events` → ack. Exactly once through redelivery: see
 * ingest/README.md ("Exactly once").
 */
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type JsMsg } from "@nats-io/jetstream";
import { connect, headers, nanos, type NatsConnection } from "@nats-io/transport-node";
import {
  DEAD_LETTER_SUBJECT_PREFIX,
  ensureRequestEventsStream,
  REQUEST_EVENTS_STREAM,
} from "../services/kit/stream.ts";
import { type ClickHouse, createClickHouse } from "./clickhouse.ts";
import type { IngestConfig } from "./config.ts";
import { decodeEvent, type PoisonReason, REQUEST_EVENT_COLUMNS, type RequestEventRow } from "./event_row.ts";
import type { Logger } from "./log.ts";
import { createRegistry, type Registry } from "./metrics.ts";
import { applyMigrations } from "./migrations.ts";
import { applyRetention } from "./retention.ts";
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
}

export interface IngestStats {
  batches: number;
  rowsInserted: number;
  duplicatesSkipped: number;
  deadLettered: number;
  retries: number;
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
  push(msg: JsMsg): void;
  /** Up to `max` messages: when `max` are there, or `waitMs` after the first arrived, or at stop/idle. */
  take(max: number, waitMs: number, idleMs: number): Promise<JsMsg[]>;
  size(): number;
  oldestAt(): number;
  items(): readonly JsMsg[];
  /** From now on take() returns at once with what is there (used at stop). */
  close(): void;
}

function createBatchQueue(batchMax: number): BatchQueue {
  let items: JsMsg[] = [];
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
    deadLettered: registry.counter("ingest_dead_lettered_total", "Messages sent to the dead-letter subject."),
    retries: registry.counter(
      "ingest_insert_retries_total",
      "Failed INSERT (or dedup query) attempts retried.",
    ),
    pending: registry.gauge(
      "ingest_consumer_pending",
      "Messages of the stream not yet delivered to the consumer (num_pending).",
    ),
    ackPending: registry.gauge("ingest_consumer_ack_pending", "Messages delivered and not yet acked."),
    retentionDropped: registry.counter("ingest_retention_partitions_dropped_total", "Partitions dropped."),
    up: registry.gauge("ingest_ready", "1 when connected, migrated and consuming."),
  };
  const stats: IngestStats = {
    batches: 0,
    rowsInserted: 0,
    duplicatesSkipped: 0,
    deadLettered: 0,
    retries: 0,
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
  let inHand: JsMsg[] = [];
  let inHandSince = 0;

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

  async function existingSeqs(rows: RequestEventRow[]): Promise<Set<number>> {
    let minTs = Infinity, maxTs = -Infinity, minSeq = Infinity, maxSeq = -Infinity;
    const services = new Set<string>();
    for (const row of rows) {
      if (row.ts < minTs) minTs = row.ts;
      if (row.ts > maxTs) maxTs = row.ts;
      if (row.stream_seq < minSeq) minSeq = row.stream_seq;
      if (row.stream_seq > maxSeq) maxSeq = row.stream_seq;
      services.add(row.service);
    }
    const found = await clickhouse.query<{ stream_seq: string | number }>(
      sql`SELECT stream_seq FROM ${ident(config.database, "request_events")}
        WHERE service IN (${sqlJoin([...services])}) AND ts >= ${new Date(minTs * 1000)} AND ts <= ${new Date(
        maxTs * 1000,
      )}
          AND stream_seq >= ${minSeq} AND stream_seq <= ${maxSeq}`,
    );
    return new Set(found.map((row) => Number(row.stream_seq)));
  }

  /** Inserts one partition's rows exactly once: after any doubt (redelivery, failed attempt) asks first. */
  async function insertGroup(rows: RequestEventRow[], checkFirst: boolean): Promise<void> {
    await withRetry("insert", async (attempt) => {
      let toInsert = rows;
      if (checkFirst || attempt > 0) {
        const existing = await existingSeqs(rows);
        if (existing.size > 0) {
          toInsert = rows.filter((row) => !existing.has(row.stream_seq));
          stats.duplicatesSkipped += rows.length - toInsert.length;
          metrics.duplicates.inc(rows.length - toInsert.length);
          logger.info("skipped rows already in the table", { skipped: rows.length - toInsert.length });
        }
      }
      if (toInsert.length === 0) return;
      const started = performance.now();
      await clickhouse.insertJsonEachRow(table, REQUEST_EVENT_COLUMNS, toInsert);
      metrics.insertSeconds.observe((performance.now() - started) / 1000);
      stats.rowsInserted += toInsert.length;
      metrics.rows.inc(toInsert.length);
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
      await withRetry("ensure consumer", async () => {
        const info = await jsm.consumers.info(REQUEST_EVENTS_STREAM, config.durable).catch(() => undefined);
        if (info) {
          await jsm.consumers.update(REQUEST_EVENTS_STREAM, config.durable, {
            ack_wait: nanos(config.ackWaitMs),
            max_ack_pending: config.maxAckPending,
          });
        } else {
          await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
            durable_name: config.durable,
            ack_policy: AckPolicy.Explicit,
            deliver_policy: options.deliverFromStart === false ? DeliverPolicy.New : DeliverPolicy.All,
            ack_wait: nanos(config.ackWaitMs),
            max_ack_pending: config.maxAckPending,
            max_deliver: -1,
            filter_subject: config.filterSubject,
          });
        }
      });
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

      const js = jetstream(conn);
      const consumer = await js.consumers.get(REQUEST_EVENTS_STREAM, config.durable);
      const messages = await consumer.consume({
        max_messages: Math.min(config.batchMax, config.maxAckPending),
        callback: (msg) => queue.push(msg),
      });
      (async () => {
        for await (const status of messages.status()) {
          if (status.type !== "next" && status.type !== "heartbeat" && status.type !== "debug") {
            logger.warn("consumer status", { status: status.type });
          }
        }
      })().catch(() => {});

      // Keep slow batches from being redelivered: mark in-progress at a third of the ack wait.
      timers.push(setInterval(() => {
        const now = Date.now();
        const third = config.ackWaitMs / 3;
        if (inHand.length > 0 && now - inHandSince > third) { for (const msg of inHand) msg.working(); }
        if (queue.size() > 0 && now - queue.oldestAt() > third) {
          for (const msg of queue.items()) msg.working();
        }
      }, Math.max(250, Math.floor(config.ackWaitMs / 6))));
      const refreshPending = async () => {
        const info = await consumer.info(false);
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
            metrics.retentionDropped.inc(dropped.length);
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
      let firstBatch = true;
      for (;;) {
        if (stopping) messages.stop();
        const batch = await queue.take(config.batchMax, config.batchWaitMs, 1_000);
        if (batch.length === 0) {
          if (stopping) break;
          if (mode === "drain") {
            const info = await refreshPending().catch(() => undefined);
            if (info && info.num_pending === 0 && info.num_ack_pending === 0 && queue.size() === 0) break;
          }
          continue;
        }
        inHand = batch;
        inHandSince = Date.now();
        try {
          await processBatch(conn, batch, firstBatch, partitionOf);
        } catch (error) {
          if (error instanceof AbandonBatch) {
            logger.warn("stop grace period over: leaving the batch unacked for redelivery", { error });
            break;
          }
          throw error;
        } finally {
          inHand = [];
        }
        firstBatch = false;
      }
      messages.stop();
      logger.info("stopped", { ...stats });
      return stats;
    } finally {
      for (const timer of timers) clearInterval(timer);
      if (nc) {
        await nc.flush().catch(() => {});
        await nc.close().catch(() => {});
      }
    }
  }

  async function processBatch(
    nc: NatsConnection,
    batch: JsMsg[],
    firstBatch: boolean,
    partitionOf: (ts: number) => number,
  ): Promise<void> {
    metrics.batchSize.observe(batch.length);
    const groups = new Map<number, RequestEventRow[]>();
    const seen = new Set<number>();
    const poison: { msg: JsMsg; reason: PoisonReason; detail: string }[] = [];
    let redelivered = firstBatch;
    for (const msg of batch) {
      if (msg.redelivered) redelivered = true;
      if (seen.has(msg.seq)) continue; // the same message twice (redelivered while still in hand)
      seen.add(msg.seq);
      const decoded = decodeEvent(msg.data, msg.seq);
      if (!decoded.ok) {
        poison.push({ msg, reason: decoded.reason, detail: decoded.detail });
        continue;
      }
      const day = partitionOf(decoded.row.ts);
      let group = groups.get(day);
      if (!group) groups.set(day, group = []);
      group.push(decoded.row);
    }
    // One INSERT per day-partition: an INSERT is atomic only within one partition (one part).
    for (const rows of groups.values()) await insertGroup(rows, redelivered);
    for (const { msg, reason, detail } of poison) {
      const h = headers();
      h.set("Tailwatch-Dead-Letter-Reason", reason);
      h.set("Tailwatch-Dead-Letter-Detail", detail.replace(/[\r\n]+/g, " ").slice(0, 500));
      h.set("Tailwatch-Stream-Seq", String(msg.seq));
      h.set("Tailwatch-Subject", msg.subject);
      const msgId = msg.headers?.get("Nats-Msg-Id");
      if (msgId) h.set("Tailwatch-Msg-Id", msgId);
      nc.publish(`${DEAD_LETTER_SUBJECT_PREFIX}.${reason}`, msg.data, { headers: h });
      stats.deadLettered++;
      metrics.deadLettered.inc(1, { reason });
      logger.warn("dead-lettered a message", { seq: msg.seq, subject: msg.subject, reason, detail });
    }
    if (poison.length > 0) await nc.flush().catch(() => {});
    for (const msg of batch) msg.ack();
    // A lost ack only means a redelivery, which the dedup check absorbs.
    await nc.flush().catch((error) => logger.warn("flushing acks failed", { error }));
    stats.batches++;
    metrics.batches.inc();
    logger.debug("batch done", { size: batch.length, groups: groups.size, poison: poison.length });
  }

  return {
    run,
    stop,
    ready: () => isReady,
    stats: () => ({ ...stats }),
    registry,
  };
}
