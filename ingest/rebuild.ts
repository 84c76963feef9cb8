/**
 * Rebuild: the tables are projections of the stream, so they can be thrown away and recomputed. Truncates
 * the raw table and the rollups, deletes the durable consumer, and replays REQUEST_EVENTS from its first
 * message through the normal worker (same batching, dedup and dead-lettering) until nothing is pending.
 * The worker must not be running meanwhile: rebuild refuses when the consumer has waiting pull requests.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { type Logger, REQUEST_EVENTS_STREAM } from "@tailwatch/kit";
import { type ClickHouse, createClickHouse } from "./clickhouse.ts";
import type { IngestConfig } from "./config.ts";
import { applyMigrations } from "./migrations.ts";
import { ident, sql } from "./sql.ts";
import { createIngestWorker, type IngestStats } from "./worker.ts";

/**
 * The projections a rebuild recomputes (latency_percentiles, the Buffer in front of
 * latency_percentiles_storage, is the profiler's output, not a projection: left alone).
 */
export const PROJECTION_TABLES = [
  "request_events",
  "request_stats_1s",
  "latency_profile_1s",
] as const;

export interface ProjectionCounts {
  rows: number;
  distinctEvents: number;
  statsRequests: number;
  /** Requests in the profiler's rollup (latency_profile_1s). */
  profileRequests: number;
}

/** Counts that a rebuild must leave unchanged. */
export async function projectionCounts(clickhouse: ClickHouse, database: string): Promise<ProjectionCounts> {
  const [raw] = await clickhouse.query<{ rows: string; distinct_events: string }>(
    sql`SELECT count() AS rows, uniqExact(event_id) AS distinct_events FROM ${
      ident(database, "request_events")
    }`,
  );
  const [stats] = await clickhouse.query<{ n: string }>(
    sql`SELECT sum(requests) AS n FROM ${ident(database, "request_stats_1s")}`,
  );
  const [profile] = await clickhouse.query<{ n: string }>(
    sql`SELECT sum(requests) AS n FROM ${ident(database, "latency_profile_1s")}`,
  );
  return {
    rows: Number(raw.rows),
    distinctEvents: Number(raw.distinct_events),
    statsRequests: Number(stats.n),
    profileRequests: Number(profile.n),
  };
}

export async function rebuild(
  config: IngestConfig,
  logger: Logger,
  options: { force?: boolean } = {},
): Promise<{ before: ProjectionCounts; after: ProjectionCounts; replay: IngestStats }> {
  const clickhouse = createClickHouse({
    url: config.clickhouseUrl,
    username: config.clickhouseUser,
    password: config.clickhousePassword,
  });
  await applyMigrations({ clickhouse, database: config.database });
  const before = await projectionCounts(clickhouse, config.database);
  const nc = await connect({ servers: config.natsUrl, name: "tailwatch-ingest-rebuild" });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.consumers.info(REQUEST_EVENTS_STREAM, config.durable).catch(() => undefined);
    if (info && info.num_waiting > 0 && !options.force) {
      throw new Error(
        `consumer ${config.durable} has ${info.num_waiting} waiting pull requests: a worker seems to be running; ` +
          "stop it first (or pass --force)",
      );
    }
    if (info) await jsm.consumers.delete(REQUEST_EVENTS_STREAM, config.durable);
  } finally {
    await nc.close();
  }
  for (const table of PROJECTION_TABLES) {
    await clickhouse.exec(sql`TRUNCATE TABLE ${ident(config.database, table)}`);
  }
  logger.info("projections truncated; replaying the stream from the start", { before });
  const worker = createIngestWorker({
    config: { ...config, migrateOnStart: false },
    logger,
    mode: "drain",
    deliverFromStart: true,
  });
  const replay = await worker.run();
  const after = await projectionCounts(clickhouse, config.database);
  logger.info("rebuild done", { before, after, replay });
  return { before, after, replay };
}
