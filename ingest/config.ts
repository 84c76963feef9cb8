/**
 * The worker's configuration: read from the environment once at start, validated into a typed object with
 * the kit's `createEnvReader`. Bad values make one `ConfigError` naming every variable at fault; main.ts
 * prints it and exits with code 2.
 */
import { ConfigError, createEnvReader, type Env } from "@tailwatch/runtime";
import { MAX_EVENT_PARTITIONS, partitionFilterSubjects, REQUEST_EVENTS_SUBJECTS } from "@tailwatch/events";
import { type NatsConfig, readNatsConfig } from "@tailwatch/nats";

export interface IngestConfig {
  /**
   * NATS_URL (server(s), comma-separated, `nats://` or `tls://`; default "nats://127.0.0.1:4222"), NATS_USER
   * and NATS_PASSWORD or NATS_TOKEN (or credentials in the URL, once), NATS_INBOX_PREFIX (default
   * `_INBOX_<user>`): the kit's nats_config.ts. Both of the worker's connections (nats.js for the consumer and
   * dead letters, the wire client for pulls and acks) use them.
   */
  nats: NatsConfig;
  /** CLICKHOUSE_URL: ClickHouse HTTP interface. Default "http://127.0.0.1:8123". */
  clickhouseUrl: string;
  /** CLICKHOUSE_USER: the admin user (migrations, inserts, retention). Default "tailwatch_admin". */
  clickhouseUser: string;
  /** CLICKHOUSE_PASSWORD: its password. Default "" (empty). */
  clickhousePassword: string;
  /** CLICKHOUSE_DATABASE: database of the projections. Default "profiler". */
  database: string;
  /**
   * This worker's durable consumer on stream REQUEST_EVENTS: INGEST_DURABLE (default "tailwatch-ingest") for
   * partition 0 (and with one partition), `<INGEST_DURABLE>-<partition>` for the others (`partitionDurable`).
   */
  durable: string;
  /** INGEST_DURABLE: the name every partition's durable is made from (the workers find each other by it). */
  durableBase: string;
  /**
   * INGEST_PARTITIONS: how many workers share the stream, one partition each (1 to 1024). Default 1: one
   * worker reads every event. Independent of the services: they publish to at most this many partitions
   * (EVENT_PARTITIONS; a publisher with fewer leaves some workers idle, one with 1 is read by partition 0).
   */
  partitions: number;
  /**
   * INGEST_PARTITION: the partition this worker reads, 0..INGEST_PARTITIONS-1: a number, or a StatefulSet pod
   * name (`ingest-3`), whose ordinal is taken (k8s: the downward API's metadata.name). Default 0.
   */
  partition: number;
  /**
   * INGEST_FILTER_SUBJECT: with one partition, the subjects this worker's consumer reads. Default
   * "events.requests.>" (every event, unpartitioned or partitioned). Not allowed with INGEST_PARTITIONS > 1,
   * where the partition decides.
   */
  filterSubject: string;
  /**
   * What this worker's durable consumes: [filterSubject] with one partition, else the partition's subjects
   * (`events.requests.*.<partition>`, and for partition 0 also `events.requests.*`: the kit's
   * partitionFilterSubjects).
   */
  filterSubjects: string[];
  /**
   * INGEST_BATCH_MAX: most events per batch and per INSERT (1..1,000,000; ClickHouse writes an INSERT of up to
   * max_insert_block_size = 1,048,576 rows as one part). A batch message counts for its events. Default 20000.
   */
  batchMax: number;
  /**
   * INGEST_BATCH_MAX_BYTES: most message bytes per batch (64 KiB..1 GiB; a single larger message still makes a
   * batch of its own). Default 16 MiB.
   */
  batchMaxBytes: number;
  /**
   * INGEST_MAX_BYTES_IN_FLIGHT: the memory bound: bytes of messages received and not yet acked, plus what open
   * pull requests may still bring (>= INGEST_BATCH_MAX_BYTES). Default 4 x INGEST_BATCH_MAX_BYTES.
   */
  maxBytesInFlight: number;
  /** INGEST_BATCH_WAIT_MS: longest wait after a batch's first event before it is inserted. Default 250. */
  batchWaitMs: number;
  /** INGEST_ACK_WAIT_MS: consumer ack wait (redelivery after it); > 2 x insert timeout. Default 60000. */
  ackWaitMs: number;
  /**
   * INGEST_MAX_ACK_PENDING: most unacked messages (the consumer's max_ack_pending; a message may hold many
   * events; memory is bounded in bytes by INGEST_MAX_BYTES_IN_FLIGHT). Default 3 x batch max.
   */
  maxAckPending: number;
  /** INGEST_INSERT_TIMEOUT_MS: timeout of one INSERT or dedup query. Default 20000. */
  insertTimeoutMs: number;
  /**
   * INGEST_INSERT_GRACE_MS: after an INSERT attempt that failed without an answer from ClickHouse (a timeout,
   * a broken connection), how long the retry waits before it checks what is in the table: the request may sit
   * unread in the server's backlog, where system.processes does not show it yet. 0..600000. Default 2000.
   */
  insertGraceMs: number;
  /**
   * INGEST_STALL_TIMEOUT_MS: /readyz turns false (and a stall is counted and logged as an error) once messages
   * have been waiting this long with no batch committed. 1000..3,600,000. Default 15000.
   */
  stallTimeoutMs: number;
  /** INGEST_RETRY_BASE_MS: first retry delay after a failed insert (doubles, jittered). Default 200. */
  retryBaseMs: number;
  /** INGEST_RETRY_MAX_MS: longest retry delay. Default 5000. */
  retryMaxMs: number;
  /** INGEST_SHUTDOWN_GRACE_MS: how long SIGTERM waits for the batch in hand before leaving it unacked. Default 30000. */
  shutdownGraceMs: number;
  /** INGEST_METRICS_HOST: address of /metrics, /healthz, /readyz. Default "127.0.0.1". */
  metricsHost: string;
  /** INGEST_METRICS_PORT: its port; 0 picks a free one. Default 9464. */
  metricsPort: number;
  /** INGEST_RETENTION_RAW_DAYS: days of raw events kept (partitions older are dropped). Default 30. */
  retentionRawDays: number;
  /** INGEST_RETENTION_ROLLUP_DAYS: days of rollups and percentiles kept. Default 400. */
  retentionRollupDays: number;
  /** INGEST_RETENTION_INTERVAL_S: how often the worker applies retention; 0 disables. Default 3600. */
  retentionIntervalS: number;
  /** INGEST_MIGRATE_ON_START: apply migrations when the worker starts ("true"/"false"). Default true. */
  migrateOnStart: boolean;
  /** INGEST_LOG_LEVEL: "debug", "info", "warn" or "error". Default "info". */
  logLevel: "debug" | "info" | "warn" | "error";
}

export { ConfigError };

const MIB = 1024 * 1024;
const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const CONSUMER_NAME = /^[A-Za-z0-9_-]+$/;
const SUBJECT = /^[A-Za-z0-9_*>-]+(\.[A-Za-z0-9_*>-]+)*$/;

/** The durable consumer of `partition`: the base name for partition 0 (and with one partition), else `<base>-<p>`. */
export function partitionDurable(base: string, partition: number): string {
  return partition === 0 ? base : `${base}-${partition}`;
}

/** INGEST_PARTITION's value: a number, or a StatefulSet pod name ending in `-<ordinal>`; undefined if neither. */
export function parsePartition(text: string): number | undefined {
  const match = /^(?:\d+|.*-(\d+))$/.exec(text.trim());
  if (!match) return undefined;
  const value = Number(match[1] ?? text.trim());
  return Number.isSafeInteger(value) ? value : undefined;
}

/** Reads and validates the configuration; throws one ConfigError naming every bad value. */
export function loadConfig(env: Env = Deno.env.toObject()): IngestConfig {
  const read = createEnvReader(env);
  const matching = (name: string, fallback: string, pattern: RegExp, what: string) => {
    const value = read.string(name, fallback);
    if (!pattern.test(value)) read.problems.push(`${name} must be ${what}, got ${JSON.stringify(value)}`);
    return value;
  };
  const nats = readNatsConfig(read);
  const batchMax = read.integer("INGEST_BATCH_MAX", 20_000, 1, 1_000_000);
  const insertTimeoutMs = read.integer("INGEST_INSERT_TIMEOUT_MS", 20_000, 100, 3_600_000);
  const ackWaitMs = read.integer("INGEST_ACK_WAIT_MS", 60_000, 1_000, 3_600_000);
  if (ackWaitMs < 2 * insertTimeoutMs) {
    read.problems.push(
      `INGEST_ACK_WAIT_MS=${ackWaitMs} must be at least twice INGEST_INSERT_TIMEOUT_MS=${insertTimeoutMs}`,
    );
  }
  const maxAckPending = read.integer("INGEST_MAX_ACK_PENDING", 3 * batchMax, 1, 10_000_000);
  if (maxAckPending < batchMax) {
    read.problems.push(
      `INGEST_MAX_ACK_PENDING=${maxAckPending} is smaller than INGEST_BATCH_MAX=${batchMax}`,
    );
  }
  const batchMaxBytes = read.integer("INGEST_BATCH_MAX_BYTES", 16 * MIB, 64 * 1024, 1024 * MIB);
  const maxBytesInFlight = read.integer(
    "INGEST_MAX_BYTES_IN_FLIGHT",
    4 * batchMaxBytes,
    4 * MIB,
    64 * 1024 * MIB,
  );
  if (maxBytesInFlight < batchMaxBytes) {
    read.problems.push(
      `INGEST_MAX_BYTES_IN_FLIGHT=${maxBytesInFlight} is smaller than INGEST_BATCH_MAX_BYTES=${batchMaxBytes}`,
    );
  }
  const batchWaitMs = read.integer("INGEST_BATCH_WAIT_MS", 250, 1, 600_000);
  const stallTimeoutMs = read.integer("INGEST_STALL_TIMEOUT_MS", 15_000, 1_000, 3_600_000);
  if (stallTimeoutMs < 2 * batchWaitMs) {
    read.problems.push(
      `INGEST_STALL_TIMEOUT_MS=${stallTimeoutMs} must be at least twice INGEST_BATCH_WAIT_MS=${batchWaitMs}`,
    );
  }
  const retryBaseMs = read.integer("INGEST_RETRY_BASE_MS", 200, 1, 600_000);
  const retryMaxMs = read.integer("INGEST_RETRY_MAX_MS", 5_000, 1, 600_000);
  if (retryMaxMs < retryBaseMs) {
    read.problems.push(
      `INGEST_RETRY_MAX_MS=${retryMaxMs} is smaller than INGEST_RETRY_BASE_MS=${retryBaseMs}`,
    );
  }
  const partitions = read.integer("INGEST_PARTITIONS", 1, 1, MAX_EVENT_PARTITIONS);
  const partitionText = read.string("INGEST_PARTITION", "0");
  let partition = parsePartition(partitionText);
  if (partition === undefined || partition >= partitions) {
    read.problems.push(
      `INGEST_PARTITION must be a partition from 0 to ${partitions - 1} (INGEST_PARTITIONS=${partitions}), ` +
        `or a StatefulSet pod name ending in one (ingest-3), got ${JSON.stringify(partitionText)}`,
    );
    partition = 0;
  }
  const filterSubject = matching("INGEST_FILTER_SUBJECT", REQUEST_EVENTS_SUBJECTS, SUBJECT, "a NATS subject");
  if (partitions > 1 && (env.INGEST_FILTER_SUBJECT ?? "").trim() !== "") {
    read.problems.push(
      `INGEST_FILTER_SUBJECT cannot be set with INGEST_PARTITIONS=${partitions}: the partition decides the ` +
        "subjects (events.requests.*.<partition>)",
    );
  }
  const durableBase = matching(
    "INGEST_DURABLE",
    "tailwatch-ingest",
    CONSUMER_NAME,
    "a consumer name ([A-Za-z0-9_-]+)",
  );
  const config: IngestConfig = {
    nats,
    clickhouseUrl: read.url("CLICKHOUSE_URL", "http://127.0.0.1:8123", ["http:", "https:"]),
    clickhouseUser: read.string("CLICKHOUSE_USER", "tailwatch_admin"),
    clickhousePassword: env.CLICKHOUSE_PASSWORD ?? "",
    database: matching("CLICKHOUSE_DATABASE", "profiler", NAME, "a database name ([A-Za-z_][A-Za-z0-9_]*)"),
    durable: partitionDurable(durableBase, partition),
    durableBase,
    partitions,
    partition,
    filterSubject,
    filterSubjects: partitions === 1 ? [filterSubject] : partitionFilterSubjects(partition, partitions),
    batchMax,
    batchMaxBytes,
    maxBytesInFlight,
    batchWaitMs,
    ackWaitMs,
    maxAckPending,
    insertTimeoutMs,
    insertGraceMs: read.integer("INGEST_INSERT_GRACE_MS", 2_000, 0, 600_000),
    stallTimeoutMs,
    retryBaseMs,
    retryMaxMs,
    shutdownGraceMs: read.integer("INGEST_SHUTDOWN_GRACE_MS", 30_000, 0, 3_600_000),
    metricsHost: read.string("INGEST_METRICS_HOST", "127.0.0.1"),
    metricsPort: read.integer("INGEST_METRICS_PORT", 9464, 0, 65_535),
    retentionRawDays: read.integer("INGEST_RETENTION_RAW_DAYS", 30, 1, 100_000),
    retentionRollupDays: read.integer("INGEST_RETENTION_ROLLUP_DAYS", 400, 1, 100_000),
    retentionIntervalS: read.integer("INGEST_RETENTION_INTERVAL_S", 3600, 0, 365 * 86_400),
    migrateOnStart: read.boolean("INGEST_MIGRATE_ON_START", true),
    logLevel: read.oneOf("INGEST_LOG_LEVEL", "info", ["debug", "info", "warn", "error"] as const),
  };
  read.done();
  return config;
}
