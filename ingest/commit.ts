/**
 * Committing batches (ingest/README.md, "Exactly once"): each row group inserted exactly once (dedup check
 * after any doubt, the same query_id for every attempt, a grace after an unanswered attempt), the poison
 * dead-lettered, then one cumulative ack, the committed floor raised and the bytes released. The pipeline
 * keeps at most two batches being committed and acks them in batch order.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import type { PullReceiver } from "@tailwatch/nats";
import { INSERT_COLUMNS, ROW_FORMAT } from "@tailwatch/events";
import { ClickHouseError } from "./clickhouse.ts";
import type { PreparedBatch, RowGroup } from "./batch.ts";
import { floorCarried, raiseCommittedFloor, stampBatchSeq, stampFloor } from "./committed_floor.ts";
import { publishDeadLetters } from "./dead_letter.ts";
import { existingEventIds } from "./dedup.ts";
import { AbandonBatch, sleep, withRetry } from "./retry.ts";
import { repairRollups } from "./rollup_repair.ts";
import type { InHandBatch, WorkerContext } from "./worker_state.ts";

/**
 * Inserts one group's rows exactly once: after any doubt (redelivery, failed attempt) asks first which of
 * its events are in the table already, and completes the rollups when an earlier INSERT of some of them
 * committed them (repairRollups). After an attempt that failed without an answer from ClickHouse (timeout,
 * broken connection) it first waits INGEST_INSERT_GRACE_MS: the request may still sit unread in the
 * server's backlog, not in system.processes yet. `streamSeq`: the batch's highest stream sequence, stamped on
 * its rows as ingest_batch_seq (stampBatchSeq).
 */
async function insertGroup(
  ctx: WorkerContext,
  group: RowGroup,
  checkFirst: boolean,
  streamSeq: number,
): Promise<void> {
  const { config, stats, metrics, logger } = ctx;
  const batchSeq = stampBatchSeq(ctx, streamSeq);
  let unanswered = false;
  await withRetry(ctx, "insert", async (attempt) => {
    let writer = group.writer;
    if (checkFirst || attempt > 0) {
      if (unanswered && config.insertGraceMs > 0) await sleep(config.insertGraceMs);
      const existing = await existingEventIds(ctx, group, writer);
      if (existing.size > 0) {
        await repairRollups(ctx, group, batchSeq);
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
    const floorSeq = stampFloor(ctx);
    writer.stamp({ ingestedAtMs: sentAt, batchSeq, floorSeq });
    const started = performance.now();
    try {
      await ctx.rollups.gate.shared(() =>
        ctx.clickhouse.insertBody(ctx.table, INSERT_COLUMNS, ROW_FORMAT, writer.body(), {
          queryId: group.queryId,
        })
      );
    } catch (error) {
      // No HTTP answer: the request may have reached the server, and may still run or start later.
      unanswered = !(error instanceof ClickHouseError && error.status !== undefined);
      throw error;
    }
    floorCarried(ctx, floorSeq);
    ctx.options.onInserted?.(sentAt, Date.now(), writer.rows);
    const insertMs = performance.now() - started;
    metrics.insertSeconds.observe(insertMs / 1000);
    if (insertMs > stats.insertMsMax) stats.insertMsMax = insertMs;
    stats.rowsInserted += writer.rows;
    metrics.rows.inc({}, writer.rows);
  });
}

/**
 * Inserts a prepared batch (exactly once), dead-letters its poison, then acks every message of it: only once
 * `previous` (the commit of the batch before it) resolved to undefined, i.e. that batch was acked, so that
 * acks stay in batch order. Throws what made it fail (an AbandonBatch after a stop's grace period).
 */
async function commitBatch(
  ctx: WorkerContext,
  nc: NatsConnection,
  receiver: PullReceiver,
  prepared: PreparedBatch,
  previous: Promise<unknown> | undefined,
): Promise<void> {
  const { state, health, stats, metrics, logger } = ctx;
  const { batch, last, groups, poison, checkFirst } = prepared;
  const commitStart = performance.now();
  // One INSERT per group (day-partition, at most INGEST_BATCH_MAX rows): an INSERT is atomic only within
  // one partition and one block (one part).
  for (const group of groups) await insertGroup(ctx, group, checkFirst, last.seq);
  // Acks in batch order: this batch's cumulative ack also covers the batch before it.
  const before = await previous;
  if (before !== undefined) {
    throw before instanceof AbandonBatch ? new AbandonBatch(`an earlier batch: ${before.message}`) : before;
  }
  // Published (again, if the flush fails: a dead letter may then come twice, never not at all) before the
  // ack that lets the originals go.
  if (poison.length > 0) await publishDeadLetters(ctx, nc, poison);
  // AckPolicy.All: acking the batch's highest message acks it and every message before it. Batches are
  // delivered and committed in order, and the consumer starts at its ack floor + 1, so every message below
  // it has been inserted (or dead-lettered) by now. A lost ack only means a redelivery, which the dedup
  // check absorbs.
  receiver.ack(last); // the highest sequence: a redelivered message may come after higher ones
  await receiver.flush().catch((error) => logger.warn("flushing acks failed", { error }));
  raiseCommittedFloor(ctx, last.seq);
  state.heldBytes -= prepared.bytes;
  metrics.bytesInFlight.set(state.heldBytes);
  receiver.more();
  health.lastCommitAt = Date.now();
  metrics.lastCommit.set(health.lastCommitAt / 1000);
  stats.batches++;
  metrics.batches.inc();
  logger.debug("batch done", {
    size: batch.length,
    groups: groups.length,
    poison: poison.length,
    commitMs: Math.round(performance.now() - commitStart),
  });
}

/**
 * Batches being committed, oldest first. Three batches are in hand at most: while batches k and k+1 are
 * inserted, batch k+2 is decoded. A batch of first deliveries (no dedup check) is inserted alongside the one
 * before it; a batch that needs the dedup check waits until every batch before it is committed (settle(0)),
 * so its query sees their rows. Acks stay in batch order: a batch is acked only after the batch before it was.
 */
export interface CommitPipeline {
  /** Starts committing `prepared` (behind the batch before it); `entry` leaves state.inHand once it is done. */
  push(prepared: PreparedBatch, entry: InHandBatch): void;
  /** Waits until at most `limit` batches are being committed; false when one was abandoned (stop grace over). */
  settle(limit?: number): Promise<boolean>;
  /** Waits for every batch being committed (an abandoned one is logged and the rest still awaited). */
  settleAll(): Promise<void>;
}

/** A commit pipeline for one receiver; a batch's failure other than an abandon is thrown by settle(). */
export function createCommitPipeline(
  ctx: WorkerContext,
  nc: NatsConnection,
  receiver: PullReceiver,
): CommitPipeline {
  /** Each resolves to undefined (acked) or what went wrong. */
  const committing: Promise<unknown>[] = [];
  /** Waits for the oldest batch being committed; false when it was abandoned (stop grace over). */
  const settleOldest = async (): Promise<boolean> => {
    const outcome = await committing[0];
    committing.shift();
    if (outcome instanceof AbandonBatch) {
      ctx.logger.warn("stop grace period over: leaving the batch unacked for redelivery", { error: outcome });
      return false;
    }
    if (outcome !== undefined) throw outcome;
    return true;
  };
  return {
    push(prepared, entry) {
      committing.push(
        commitBatch(ctx, nc, receiver, prepared, committing.at(-1)).then(
          () => undefined,
          (error: unknown) => error ?? new Error("batch failed"),
        ).finally(() => {
          ctx.state.inHand = ctx.state.inHand.filter((other) => other !== entry);
        }),
      );
    },
    async settle(limit = 0) {
      while (committing.length > limit) if (!await settleOldest()) return false;
      return true;
    },
    async settleAll() {
      while (committing.length > 0) await settleOldest();
    },
  };
}
