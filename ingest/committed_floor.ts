/**
 * The committed floor and how it reaches ClickHouse (ingest/README.md, "Exactly once"; the profiler's notion of
 * a final batch: native/profiler/README.md): every message at or below it is committed (raw rows and rollups)
 * or dead-lettered. It is stamped on every row as ingest_floor_seq, and written as a marker row into
 * latency_profile_1s when no INSERT carries it. With several partitions, what rows and markers carry is the
 * floor of the whole stream (floor.ts), kept fresh every second.
 */
import { createGlobalFloorTracker, type FloorSource, type GlobalFloorTracker } from "./floor.ts";
import { withRetry } from "./retry.ts";
import { writeFloorMarker } from "./rollups.ts";
import type { WorkerContext } from "./worker_state.ts";

/** The floors this worker knows. */
export interface CommittedFloor {
  /**
   * Every message of this worker's partition at or below it is committed or dead-lettered: the last acked
   * batch's highest sequence, or the consumer's ack floor at start.
   */
  committed: number;
  /** The highest floor an INSERT or a marker has carried to ClickHouse. */
  announced: number;
  /**
   * With several partitions, the floor of the whole stream (floor.ts): what rows and markers carry, since the
   * profiler treats every batch at or below any floor it sees as final, whichever worker wrote it.
   */
  tracker: GlobalFloorTracker | undefined;
  /**
   * Added to every stream sequence written to ClickHouse (ingest_batch_seq, ingest_floor_seq), so that they
   * keep growing when the stream starts over (stream_epoch.ts); set for the stream `seqOffsetStream` (its
   * creation time) before anything is consumed from it.
   */
  seqOffset: number;
  seqOffsetStream: string | undefined;
}

export function createCommittedFloor(): CommittedFloor {
  return { committed: 0, announced: 0, tracker: undefined, seqOffset: 0, seqOffsetStream: undefined };
}

/**
 * The floor stamped on rows (ingest_floor_seq) and written as a marker: every stream message at or below it
 * is committed. With one partition, the committed floor; with several, G over all partitions (floor.ts); plus
 * the stream's offset, except 0 (nothing committed yet: no claim). Sets ingest_global_floor_seq (the stream's
 * own numbering).
 */
export function stampFloor(ctx: WorkerContext): number {
  const floor = ctx.floor.tracker === undefined ? ctx.floor.committed : ctx.floor.tracker.value();
  ctx.metrics.globalFloor.set(floor);
  return floor === 0 ? 0 : floor + ctx.floor.seqOffset;
}

/** A batch's highest stream sequence as stamped on its rows (ingest_batch_seq): plus the stream's offset. */
export function stampBatchSeq(ctx: WorkerContext, streamSeq: number): number {
  return streamSeq + ctx.floor.seqOffset;
}

/** Sets the committed floor (the consumer's ack floor at start), whatever it was. */
export function setCommittedFloor(ctx: WorkerContext, seq: number): void {
  ctx.floor.committed = seq;
  ctx.metrics.floor.set(ctx.floor.committed);
}

/** Raises the committed floor to `seq` (an acked batch, the consumer's ack floor); never lowers it. */
export function raiseCommittedFloor(ctx: WorkerContext, seq: number): void {
  if (seq > ctx.floor.committed) setCommittedFloor(ctx, seq);
}

/** Notes that an INSERT carried `floor` to ClickHouse (no marker needed for it). */
export function floorCarried(ctx: WorkerContext, floor: number): void {
  if (floor > ctx.floor.announced) ctx.floor.announced = floor;
}

/** The stream started over (consumer.ts, noteStream): the old floors mean nothing for the new one. */
export function resetFloor(ctx: WorkerContext): void {
  ctx.floor.committed = 0;
  ctx.floor.announced = 0;
  ctx.floor.tracker?.reset();
  ctx.metrics.floor.set(0);
}

/**
 * Writes the committed floor as a marker row (rollups.ts) when no INSERT has carried it yet. Best effort:
 * a marker that fails only makes the profiler re-read the last batches until the next one.
 */
export async function announceFloor(ctx: WorkerContext): Promise<void> {
  const floor = stampFloor(ctx);
  if (floor <= ctx.floor.announced) return;
  try {
    await writeFloorMarker(ctx.clickhouse, ctx.config.database, floor);
    floorCarried(ctx, floor);
  } catch (error) {
    ctx.logger.debug("could not write the floor marker; will try again", { error });
  }
}

/**
 * With several partitions: computes the floor of the whole stream once (retried) before anything is stamped,
 * then refreshes it every second from the sibling partitions' consumers (`source`: consumer.ts, floorSource; a
 * failed refresh keeps the old one). Returns the refresh timer, or undefined with one partition (the committed
 * floor is then the stream's).
 */
export async function startGlobalFloor(
  ctx: WorkerContext,
  source: FloorSource,
): Promise<ReturnType<typeof setInterval> | undefined> {
  const { config, logger } = ctx;
  if (config.partitions <= 1) return undefined;
  const floors = createGlobalFloorTracker({
    source,
    durableBase: config.durableBase,
    partitions: config.partitions,
    self: config.partition,
    ownFloor: () => ctx.floor.committed,
    logger,
  });
  await withRetry(ctx, "compute the global floor", () => floors.refresh());
  ctx.floor.tracker = floors;
  let refreshing = false;
  return setInterval(() => {
    if (refreshing) return;
    refreshing = true;
    floors.refresh().then(() => stampFloor(ctx)).catch((error) =>
      logger.debug("could not refresh the global floor; keeping it", { error })
    ).finally(() => refreshing = false);
  }, 1_000);
}
