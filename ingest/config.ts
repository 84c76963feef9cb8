/**
 * The worker's configuration: read from the environment once at start, validated into a typed object.
 * A bad value is a `ConfigError` naming the variable; main.ts prints it and exits with code 2.
 */

export interface IngestConfig {
  /** NATS_URL: NATS server(s), comma-separated. Default "nats://127.0.0.1:4222". */
  natsUrl: string[];
  /** CLICKHOUSE_URL: ClickHouse HTTP interface. Default "http://127.0.0.1:8123". */
  clickhouseUrl: string;
  /** CLICKHOUSE_USER: the admin user (migrations, inserts, retention). Default "tailwatch_admin". */
  clickhouseUser: string;
  /** CLICKHOUSE_PASSWORD: its password. Default "" (empty). */
  clickhousePassword: string;
  /** CLICKHOUSE_DATABASE: database of the projections. Default "profiler". */
  database: string;
  /** INGEST_DURABLE: durable consumer name on stream REQUEST_EVENTS. Default "tailwatch-ingest". */
  durable: string;
  /** INGEST_FILTER_SUBJECT: subjects this worker's consumer reads. Default "events.requests.*". */
  filterSubject: string;
  /** INGEST_BATCH_MAX: most events per INSERT (1..1,000,000). Default 20000. */
  batchMax: number;
  /** INGEST_BATCH_WAIT_MS: longest wait after a batch's first event before it is inserted. Default 250. */
  batchWaitMs: number;
  /** INGEST_ACK_WAIT_MS: consumer ack wait (redelivery after it); > 2 x insert timeout. Default 60000. */
  ackWaitMs: number;
  /** INGEST_MAX_ACK_PENDING: most unacked events in flight, bounds memory (>= batch max). Default 2 x batch. */
  maxAckPending: number;
  /** INGEST_INSERT_TIMEOUT_MS: timeout of one INSERT or dedup query. Default 20000. */
  insertTimeoutMs: number;
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

export class ConfigError extends Error {
  override name = "ConfigError";
}

type Env = Record<string, string | undefined>;

function text(env: Env, name: string, fallback: string, pattern?: RegExp, what?: string): string {
  const raw = env[name];
  const value = raw === undefined || raw === "" ? fallback : raw;
  if (pattern && !pattern.test(value)) {
    throw new ConfigError(`${name}=${JSON.stringify(value)} is not ${what ?? `matching ${pattern}`}`);
  }
  return value;
}

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return fallback;
  if (!/^\d+$/.test(raw.trim())) {
    throw new ConfigError(`${name}=${JSON.stringify(raw)} is not a whole number`);
  }
  const value = Number(raw.trim());
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name}=${raw} is out of range [${min}, ${max}]`);
  }
  return value;
}

function boolean(env: Env, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new ConfigError(`${name}=${JSON.stringify(raw)} is not a boolean (true/false)`);
}

function url(value: string, name: string, schemes: string[]): string {
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new ConfigError(`${name}=${JSON.stringify(value)} is not a URL`);
  }
  if (!schemes.includes(parsed.protocol.replace(/:$/, ""))) {
    throw new ConfigError(`${name}=${JSON.stringify(value)} must use ${schemes.join(" or ")}`);
  }
  return value;
}

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const CONSUMER_NAME = /^[A-Za-z0-9_-]+$/;
const SUBJECT = /^[A-Za-z0-9_*>-]+(\.[A-Za-z0-9_*>-]+)*$/;

/** Reads and validates the configuration; throws ConfigError on the first bad value. */
export function loadConfig(env: Env = Deno.env.toObject()): IngestConfig {
  const natsUrl = text(env, "NATS_URL", "nats://127.0.0.1:4222").split(",").map((u) => u.trim()).filter(
    Boolean,
  );
  for (const u of natsUrl) url(u, "NATS_URL", ["nats", "tls", "ws", "wss"]);
  const batchMax = integer(env, "INGEST_BATCH_MAX", 20_000, 1, 1_000_000);
  const insertTimeoutMs = integer(env, "INGEST_INSERT_TIMEOUT_MS", 20_000, 100, 3_600_000);
  const ackWaitMs = integer(env, "INGEST_ACK_WAIT_MS", 60_000, 1_000, 3_600_000);
  if (ackWaitMs < 2 * insertTimeoutMs) {
    throw new ConfigError(
      `INGEST_ACK_WAIT_MS=${ackWaitMs} must be at least twice INGEST_INSERT_TIMEOUT_MS=${insertTimeoutMs}`,
    );
  }
  const maxAckPending = integer(env, "INGEST_MAX_ACK_PENDING", 2 * batchMax, 1, 10_000_000);
  if (maxAckPending < batchMax) {
    throw new ConfigError(
      `INGEST_MAX_ACK_PENDING=${maxAckPending} is smaller than INGEST_BATCH_MAX=${batchMax}`,
    );
  }
  const retryBaseMs = integer(env, "INGEST_RETRY_BASE_MS", 200, 1, 600_000);
  const retryMaxMs = integer(env, "INGEST_RETRY_MAX_MS", 5_000, 1, 600_000);
  if (retryMaxMs < retryBaseMs) {
    throw new ConfigError(
      `INGEST_RETRY_MAX_MS=${retryMaxMs} is smaller than INGEST_RETRY_BASE_MS=${retryBaseMs}`,
    );
  }
  const retentionRawDays = integer(env, "INGEST_RETENTION_RAW_DAYS", 30, 1, 100_000);
  const retentionRollupDays = integer(env, "INGEST_RETENTION_ROLLUP_DAYS", 400, 1, 100_000);
  const logLevel = text(
    env,
    "INGEST_LOG_LEVEL",
    "info",
    /^(debug|info|warn|error)$/,
    "debug, info, warn or error",
  );
  return {
    natsUrl,
    clickhouseUrl: url(text(env, "CLICKHOUSE_URL", "http://127.0.0.1:8123"), "CLICKHOUSE_URL", [
      "http",
      "https",
    ]),
    clickhouseUser: text(env, "CLICKHOUSE_USER", "tailwatch_admin"),
    clickhousePassword: env.CLICKHOUSE_PASSWORD ?? "",
    database: text(env, "CLICKHOUSE_DATABASE", "profiler", NAME, "a database name ([A-Za-z_][A-Za-z0-9_]*)"),
    durable: text(
      env,
      "INGEST_DURABLE",
      "tailwatch-ingest",
      CONSUMER_NAME,
      "a consumer name ([A-Za-z0-9_-]+)",
    ),
    filterSubject: text(env, "INGEST_FILTER_SUBJECT", "events.requests.*", SUBJECT, "a NATS subject"),
    batchMax,
    batchWaitMs: integer(env, "INGEST_BATCH_WAIT_MS", 250, 1, 600_000),
    ackWaitMs,
    maxAckPending,
    insertTimeoutMs,
    retryBaseMs,
    retryMaxMs,
    shutdownGraceMs: integer(env, "INGEST_SHUTDOWN_GRACE_MS", 30_000, 0, 3_600_000),
    metricsHost: text(env, "INGEST_METRICS_HOST", "127.0.0.1"),
    metricsPort: integer(env, "INGEST_METRICS_PORT", 9464, 0, 65_535),
    retentionRawDays,
    retentionRollupDays,
    retentionIntervalS: integer(env, "INGEST_RETENTION_INTERVAL_S", 3600, 0, 365 * 86_400),
    migrateOnStart: boolean(env, "INGEST_MIGRATE_ON_START", true),
    logLevel: logLevel as IngestConfig["logLevel"],
  };
}
