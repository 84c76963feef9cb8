/**
 * The ingest worker's Prometheus metrics (ingest/README.md lists them): created once per worker in its registry,
 * then counted and set by the steps (batch.ts, commit.ts, dead_letter.ts, readiness.ts, ...).
 */
import type { Registry } from "@tailwatch/runtime";

/** The worker's metrics, by what they measure. */
export type WorkerMetrics = ReturnType<typeof createWorkerMetrics>;

/** Registers every metric of the worker in `registry` (names, help texts and buckets are the public contract). */
export function createWorkerMetrics(registry: Registry) {
  return {
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
}
