/**
 * The ingest worker: durable pull consumer on REQUEST_EVENTS → batches (by events, bytes and time) → decode →
 * one INSERT per batch and day-partition into `request_events` → ack. Exactly once through redelivery: see
 * ingest/README.md ("Exactly once"); any message is stored or dead-lettered ("Poison messages"); memory is
 * bounded in bytes ("Limits"); /readyz says when it is not doing its job ("Health").
 *
 * This file is the public face and the order of things; the steps live beside it, each over the state record
 * of worker_state.ts:
 * - startup.ts: connect to NATS, migrate, size the pull requests, read the time zone, retention timer;
 * - consumer.ts: the stream waited for, the durable consumer created or recreated (consumer lifecycle);
 * - committed_floor.ts: the committed and global floors, stamped on rows or written as markers;
 * - receiver.ts: the pull receiver created, resynced after it stopped, its messages marked in progress;
 * - consume.ts: the loop from queue to batch to commit, idle work, drain;
 * - batch.ts: the batch queue (limits in events and bytes) and the builder (rows per day-partition);
 * - commit.ts: INSERT with stamps after the dedup check (dedup.ts), rollup repair (rollup_repair.ts),
 *   dead letters (dead_letter.ts), ack; the pipeline that keeps acks in batch order;
 * - readiness.ts: health and /readyz; retry.ts: retries and the stop's grace period.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Delivery, PullReceiver } from "@tailwatch/nats";
import type { Logger, Registry } from "@tailwatch/runtime";
import { type BatchBuilder, createBatchBuilder, createPartitionOf } from "./batch.ts";
import { announceFloor, setCommittedFloor, startGlobalFloor } from "./committed_floor.ts";
import type { IngestConfig } from "./config.ts";
import { consume } from "./consume.ts";
import { awaitStream, consumerInfo, ensureConsumer, floorSource } from "./consumer.ts";
import { ackFloor } from "./floor.ts";
import type { Readiness } from "./metrics.ts";
import { checkHealth, readiness } from "./readiness.ts";
import { createReceiver, refreshPending, startProgressMarks } from "./receiver.ts";
import { AbandonBatch, withRetry } from "./retry.ts";
import {
  connectToNats,
  migrate,
  readTimeZone,
  setPullLimits,
  startRetention,
  watchNatsStatus,
} from "./startup.ts";
import { createWorkerContext, type WorkerContext } from "./worker_state.ts";

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

/** Creates the worker; nothing connects until run(). */
export function createIngestWorker(options: IngestWorkerOptions): IngestWorker {
  const ctx = createWorkerContext(options);
  const builder = createBatchBuilder(ctx);
  return {
    run: () => run(ctx, builder),
    stop: () => requestStop(ctx),
    ready: () => readiness(ctx).ready,
    readiness: () => readiness(ctx),
    stats: () => ({ ...ctx.stats }),
    registry: ctx.registry,
  };
}

/**
 * Asks for a graceful stop (once): the batch in hand is still committed within INGEST_SHUTDOWN_GRACE_MS, the
 * queue stops waiting for more, and start-up steps give up at their next failure.
 */
function requestStop(ctx: WorkerContext): void {
  const { state, config } = ctx;
  if (state.stopping) return;
  state.stopping = true;
  state.stopDeadline = Date.now() + config.shutdownGraceMs;
  ctx.logger.info("stop requested; finishing the batch in hand", { graceMs: config.shutdownGraceMs });
  ctx.queue.close();
}

/** run(): a session, where a stop asked for during start-up ends it quietly; never ready afterwards. */
function run(ctx: WorkerContext, builder: BatchBuilder): Promise<IngestStats> {
  return runSession(ctx, builder).catch((error) => {
    // Only the start-up steps let an AbandonBatch through: a stop asked for while they still retried.
    if (!(error instanceof AbandonBatch)) throw error;
    ctx.logger.info("stopped before consuming", { while: error.message });
    return ctx.stats;
  }).finally(() => {
    ctx.state.consuming = false;
    ctx.metrics.up.set(0);
  });
}

/** What a session holds open: released (timers cleared, receiver and connection closed) however it ends. */
interface SessionResources {
  nc: NatsConnection | undefined;
  pull: PullReceiver | undefined;
  timers: ReturnType<typeof setInterval>[];
}

/**
 * Start-up, then consuming until stopped or drained, then shutdown: connect, wait for the stream, migrate,
 * ensure the consumer, read the time zone, take the floors from the consumer (and the other partitions'),
 * start the receiver and the timers, consume.
 */
async function runSession(ctx: WorkerContext, builder: BatchBuilder): Promise<IngestStats> {
  const { config, logger, state, health, stats } = ctx;
  const resources: SessionResources = { nc: undefined, pull: undefined, timers: [] };
  const { timers } = resources;
  try {
    resources.nc = await connectToNats(ctx);
    const conn = resources.nc;
    watchNatsStatus(ctx, conn);
    if (!await awaitStream(ctx, conn)) return stats;
    const jsm = await jetstreamManager(conn);
    if (config.migrateOnStart) await migrate(ctx);
    setPullLimits(ctx, conn);
    await withRetry(ctx, "ensure consumer", () => ensureConsumer(ctx, jsm, false));
    const timeZone = await readTimeZone(ctx);
    const partitionOf = createPartitionOf(timeZone);
    if (state.stopping) return stats;

    // Everything up to the consumer's last delivered sequence may have been inserted by an earlier process.
    const startInfo = await withRetry(ctx, "read the consumer", () => consumerInfo(ctx, jsm));
    if (startInfo.delivered.stream_seq > state.highWater) state.highWater = startInfo.delivered.stream_seq;
    // Everything at or below the ack floor was committed by whoever acked it.
    setCommittedFloor(ctx, ackFloor(startInfo));
    const floorTimer = await startGlobalFloor(ctx, floorSource(jsm));
    if (floorTimer !== undefined) timers.push(floorTimer);
    await announceFloor(ctx);

    const receiver = createReceiver(ctx);
    resources.pull = receiver;
    await receiver.start(startInfo.delivered.consumer_seq);
    timers.push(startProgressMarks(ctx, receiver));
    timers.push(setInterval(() => refreshPending(ctx, jsm).catch(() => {}), 5_000));
    timers.push(setInterval(() => checkHealth(ctx), 1_000));
    const retentionTimer = startRetention(ctx);
    if (retentionTimer !== undefined) timers.push(retentionTimer);

    state.consuming = true;
    health.lastCommitAt = Date.now();
    checkHealth(ctx);
    logger.info("consuming", {
      durable: config.durable,
      database: config.database,
      mode: ctx.mode,
      timeZone,
      partition: config.partitions > 1 ? `${config.partition} of ${config.partitions}` : "all",
      filters: config.filterSubjects,
    });
    await consume(ctx, { conn, jsm, receiver, builder, partitionOf });
    receiver.pause();
    logger.info("stopped", { ...stats });
    return stats;
  } finally {
    await releaseSession(resources);
  }
}

/** Clears the session's timers, closes the receiver, flushes and closes the connection (errors ignored). */
async function releaseSession(resources: SessionResources): Promise<void> {
  for (const timer of resources.timers) clearInterval(timer);
  await resources.pull?.close();
  resources.pull = undefined;
  const { nc } = resources;
  if (nc) {
    await nc.flush().catch(() => {});
    await nc.close().catch(() => {});
  }
}
