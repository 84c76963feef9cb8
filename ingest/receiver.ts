/**
 * The pull receiver's lifecycle in the worker (ingest/README.md, "Receiving"): created with the pull limits,
 * feeding the batch queue within INGEST_MAX_BYTES_IN_FLIGHT; after it stopped (continuity broke, the consumer
 * went missing or unusable) resynced once the batches before are committed; its messages kept from being
 * redelivered while they wait; the consumer's pending counts read for metrics, health and drain mode.
 */
import type { ConsumerInfo, JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { REQUEST_EVENTS_STREAM } from "@tailwatch/events";
import { createPullReceiver, type PullReceiver, type PullTrouble } from "@tailwatch/nats";
import { raiseCommittedFloor } from "./committed_floor.ts";
import { awaitStream, consumerInfo, ensureConsumer } from "./consumer.ts";
import { ackFloor } from "./floor.ts";
import { checkHealth, onServerError } from "./readiness.ts";
import { AbandonBatch, withRetry } from "./retry.ts";
import type { WorkerContext } from "./worker_state.ts";

/**
 * A pull receiver for this worker's durable (not started): every message it receives is counted in heldBytes
 * (and bytesInFlightMax), reported to onReceived and queued; trouble other than a continuity break is this
 * worker's consumer problem (not ready) until resync() resumes pulling; any trouble wakes the queue so that
 * the consume loop sees `receiver.broken`.
 */
export function createReceiver(ctx: WorkerContext): PullReceiver {
  const { config, logger, state, stats, metrics, health, queue, pullLimits } = ctx;
  const receiver: PullReceiver = createPullReceiver({
    nats: config.nats,
    name: `tailwatch-ingest-pull:${config.durable}`,
    stream: REQUEST_EVENTS_STREAM,
    durable: config.durable,
    batch: pullLimits.batch,
    requestBytes: pullLimits.requestBytes,
    maxBytesInFlight: config.maxBytesInFlight,
    heldBytes: () => state.heldBytes,
    expiresMs: pullLimits.expiresMs,
    logger,
    onServerError: (text) => onServerError(ctx, text),
    onMessage: (msg) => {
      state.heldBytes += msg.size;
      if (state.heldBytes > stats.bytesInFlightMax) stats.bytesInFlightMax = state.heldBytes;
      ctx.options.onReceived?.(msg, Date.now());
      queue.push(msg);
    },
    onTrouble: (trouble: PullTrouble, reason: string) => {
      if (trouble !== "continuity") {
        health.consumerProblem = reason;
        metrics.consumerTrouble.inc({ kind: trouble });
        logger.error("pulling stopped: the consumer is missing or refuses the pull requests", {
          trouble,
          reason,
        });
        checkHealth(ctx);
      }
      queue.wake();
    },
  });
  health.receiverConnected = () => receiver.connected;
  return receiver;
}

/**
 * After the receiver stopped (pull.ts): once the batches before it are committed, check the consumer,
 * recreate it if it has unacked messages, is gone or unusable (ensureConsumer), and pull again from its
 * delivered sequence. Throws AbandonBatch when a stop came while the stream or the consumer could not be had.
 */
export async function resync(
  ctx: WorkerContext,
  conn: NatsConnection,
  jsm: JetStreamManager,
  receiver: PullReceiver,
): Promise<void> {
  const { state, health, stats, metrics, logger } = ctx;
  await receiver.flush().catch(() => {});
  // The stream too may be gone (a NATS server that lost its store): the setup step creates it again;
  // until then the worker waits, not ready, and says why.
  if (!await awaitStream(ctx, conn)) throw new AbandonBatch("stopped while waiting for the stream");
  await withRetry(ctx, "recreate the consumer", () => ensureConsumer(ctx, jsm, true));
  const info = await withRetry(ctx, "read the consumer", () => consumerInfo(ctx, jsm));
  if (info.delivered.stream_seq > state.highWater) state.highWater = info.delivered.stream_seq;
  raiseCommittedFloor(ctx, ackFloor(info));
  receiver.restart(info.delivered.consumer_seq);
  if (health.consumerProblem !== undefined) logger.info("pulling again", { after: health.consumerProblem });
  health.consumerProblem = undefined;
  stats.resyncs++;
  metrics.resyncs.inc();
  checkHealth(ctx);
}

/**
 * Keeps slow batches from being redelivered: every ackWait/6 (at least 250 ms), marks in progress the
 * messages of batches in hand, and of the queue, that have waited more than a third of the ack wait.
 */
export function startProgressMarks(
  ctx: WorkerContext,
  receiver: PullReceiver,
): ReturnType<typeof setInterval> {
  const { config, state, queue } = ctx;
  return setInterval(() => {
    const now = Date.now();
    const third = config.ackWaitMs / 3;
    for (const entry of state.inHand) {
      if (now - entry.since > third) { for (const msg of entry.batch) receiver.working(msg); }
    }
    if (queue.size() > 0 && now - queue.oldestAt() > third) {
      for (const msg of queue.items()) receiver.working(msg);
    }
  }, Math.max(250, Math.floor(config.ackWaitMs / 6)));
}

/** Reads the consumer's info and sets the pending gauges and the health's serverPending from it. */
export async function refreshPending(ctx: WorkerContext, jsm: JetStreamManager): Promise<ConsumerInfo> {
  const info = await consumerInfo(ctx, jsm);
  ctx.metrics.pending.set(info.num_pending);
  ctx.metrics.ackPending.set(info.num_ack_pending);
  ctx.health.serverPending = info.num_pending;
  return info;
}
