/**
 * The consume loop: batches taken from the queue, decoded (batch.ts) and handed to the commit pipeline
 * (commit.ts), until a stop (the batch in hand is still committed), the end of the stream in drain mode, or a
 * stop's grace period running out. While idle it announces the floor, resyncs a receiver that stopped, and in
 * drain mode asks the server whether anything is left.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { PullReceiver } from "@tailwatch/nats";
import type { BatchBuilder } from "./batch.ts";
import { createCommitPipeline } from "./commit.ts";
import { announceFloor } from "./committed_floor.ts";
import { refreshPending, resync } from "./receiver.ts";
import { AbandonBatch } from "./retry.ts";
import type { InHandBatch, WorkerContext } from "./worker_state.ts";

/** What the loop consumes with: the connections, the started receiver, the decoder and the day-partitioning. */
export interface ConsumeSession {
  conn: NatsConnection;
  jsm: JetStreamManager;
  receiver: PullReceiver;
  builder: BatchBuilder;
  partitionOf: (ts: number) => number;
}

/**
 * Consumes until stopped (or drained): resolves once every batch taken is acked or, after a stop's grace
 * period, abandoned (left unacked for redelivery). Rethrows a batch's failure that is not an abandon.
 */
export async function consume(ctx: WorkerContext, session: ConsumeSession): Promise<void> {
  const { config, logger, mode, state, queue } = ctx;
  const { conn, jsm, receiver, builder, partitionOf } = session;
  const pipeline = createCommitPipeline(ctx, conn, receiver);
  let firstBatch = true;
  for (;;) {
    if (state.stopping) receiver.pause();
    // Drain mode looks for the end sooner: 100 ms without a message, then asks the server.
    const batch = await queue.take(
      config.batchMax,
      config.batchMaxBytes,
      config.batchWaitMs,
      mode === "drain" ? 100 : 1_000,
      () => receiver.broken,
    );
    if (batch.length === 0) {
      if (!await pipeline.settle()) break;
      if (state.stopping) break;
      // Idle: no INSERT carries the floor of the last batches to the profiler, a marker does.
      await announceFloor(ctx);
      if (receiver.broken && queue.size() === 0) {
        try {
          await resync(ctx, conn, jsm, receiver);
        } catch (error) {
          if (error instanceof AbandonBatch) break; // a stop while the consumer could not be recreated
          throw error;
        }
        continue;
      }
      if (mode === "drain") {
        const info = await refreshPending(ctx, jsm).catch(() => undefined);
        if (info && info.num_pending === 0 && info.num_ack_pending === 0 && queue.size() === 0) break;
      }
      continue;
    }
    const inHandEntry: InHandBatch = { batch, since: Date.now() };
    state.inHand.push(inHandEntry);
    const prepareStart = performance.now();
    const prepared = builder.prepare(batch, firstBatch, partitionOf);
    const waitStart = performance.now();
    firstBatch = false;
    // A batch that needs the dedup check waits for every batch before it; one of first deliveries, for all
    // but the one just before it (CommitPipeline).
    if (!await pipeline.settle(prepared.checkFirst ? 0 : 1)) break;
    logger.debug("batch decoded", {
      size: batch.length,
      decodeMs: Math.round(waitStart - prepareStart),
      waitedForPreviousMs: Math.round(performance.now() - waitStart),
      queued: queue.size(),
    });
    pipeline.push(prepared, inHandEntry);
  }
  await pipeline.settleAll();
}
