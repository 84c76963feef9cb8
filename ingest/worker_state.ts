/**
 * The state record of one ingest worker (worker.ts): what every step (batch.ts, commit.ts, consumer.ts,
 * readiness.ts, committed_floor.ts, ...) reads and writes, in one place. The steps are module-level functions
 * that take this record; nothing else holds state between them.
 */
import type { Delivery } from "@tailwatch/nats";
import { createRegistry, type Logger, type Registry } from "@tailwatch/runtime";
import { type ClickHouse, createClickHouse } from "./clickhouse.ts";
import type { IngestConfig } from "./config.ts";
import { type BatchQueue, createBatchQueue } from "./batch.ts";
import { type CommittedFloor, createCommittedFloor } from "./committed_floor.ts";
import { INSERT_QUERY_FAMILY } from "./dedup.ts";
import { createHealth, type Health } from "./readiness.ts";
import { createRollupRepairState, type RollupRepairState } from "./rollup_repair.ts";
import { createWorkerMetrics, type WorkerMetrics } from "./worker_metrics.ts";
import type { IngestStats, IngestWorkerOptions } from "./worker.ts";

/** A batch taken from the queue and not yet acked, and since when (its messages are marked in progress). */
export interface InHandBatch {
  batch: Delivery[];
  since: number;
}

/** What this worker's pull requests need of the consumer: the largest batch, expiry and bytes it asks. */
export interface PullLimits {
  batch: number;
  expiresMs: number;
  requestBytes: number;
}

/** The worker's lifecycle and delivery bookkeeping (the floor and health have records of their own). */
export interface WorkerState {
  stopping: boolean;
  /** When a stop's grace period ends (Infinity until a stop is asked for). */
  stopDeadline: number;
  /** True between the start of consuming and the end of run(). */
  consuming: boolean;
  /** The highest stream sequence delivered before (see batch.ts, prepareBatch). */
  highWater: number;
  /**
   * A message stored more than this long after its events started may be a publisher's retry that came after
   * the stream's duplicate window (its first copy then went through as another message): its events are
   * checked by id. Half the window, so that publishers' clocks may be off by that much.
   */
  lateAfterMs: number;
  /** The stream's creation time as JetStream reports it: another one means it was deleted and created again. */
  streamCreated: string | undefined;
  /** Batches taken from the queue and not yet acked (at most three: two being inserted, one decoded). */
  inHand: InHandBatch[];
  /** Bytes (Delivery.size) of messages received and not yet acked: the receiver pulls within a bound of it. */
  heldBytes: number;
}

/** Everything the worker's steps share: configuration, clients, metrics, stats and the mutable records. */
export interface WorkerContext {
  readonly config: IngestConfig;
  readonly logger: Logger;
  readonly options: IngestWorkerOptions;
  /** "follow" runs until stop(); "drain" returns once the consumer has nothing left to deliver. */
  readonly mode: "follow" | "drain";
  readonly registry: Registry;
  readonly metrics: WorkerMetrics;
  readonly stats: IngestStats;
  readonly clickhouse: ClickHouse;
  readonly table: { database: string; table: string };
  /** Messages received and not yet taken into a batch. */
  readonly queue: BatchQueue;
  /**
   * Every INSERT of this durable's workers is named `<prefix><uuid>` in ClickHouse (query_id), so that a dedup
   * check can first wait for INSERTs still running on the server: one sent by a process killed a moment ago,
   * or one whose client timed out. ClickHouse keeps reading such an INSERT and may commit it after the
   * check looked (measured: a kill -9 test inserted a batch twice without this). Once it has left
   * system.processes it is committed or gone for good, and the check sees which. Every attempt of one group's
   * INSERT uses the same query_id, so that ClickHouse refuses a retry while the earlier attempt still runs
   * (and the earlier one, should it start late, while the retry runs). See dedup.ts, awaitNoInsertsInFlight.
   */
  readonly insertQueryPrefix: string;
  /**
   * Set once the NATS connection's max_payload is known (startup.ts, setPullLimits); read by ensureConsumer
   * and the receiver.
   */
  readonly pullLimits: PullLimits;
  readonly state: WorkerState;
  readonly floor: CommittedFloor;
  readonly health: Health;
  readonly rollups: RollupRepairState;
}

/** The worker's context before anything connects: no I/O, every record at its starting value. */
export function createWorkerContext(options: IngestWorkerOptions): WorkerContext {
  const { config, logger } = options;
  const registry = options.registry ?? createRegistry();
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
  return {
    config,
    logger,
    options,
    mode: options.mode ?? "follow",
    registry,
    metrics: createWorkerMetrics(registry),
    stats,
    clickhouse: createClickHouse({
      url: config.clickhouseUrl,
      username: config.clickhouseUser,
      password: config.clickhousePassword,
      timeoutMs: config.insertTimeoutMs,
    }),
    table: { database: config.database, table: "request_events" },
    queue: createBatchQueue(config.batchMax, config.batchMaxBytes),
    // Exactly this durable's: `<prefix><uuid>` (36 characters), not those of a durable whose name continues
    // this one's (partition 1's `tailwatch-ingest-1` after partition 0's `tailwatch-ingest`), which keep
    // inserting.
    insertQueryPrefix: `${INSERT_QUERY_FAMILY}${config.durable}-`,
    pullLimits: { batch: 1, expiresMs: 30_000, requestBytes: 1 },
    state: {
      stopping: false,
      stopDeadline: Infinity,
      consuming: false,
      highWater: 0,
      lateAfterMs: 0,
      streamCreated: undefined,
      inHand: [],
      heldBytes: 0,
    },
    floor: createCommittedFloor(),
    health: createHealth(),
    rollups: createRollupRepairState(),
  };
}
