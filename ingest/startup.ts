/**
 * The worker's start-up steps before it consumes, each retried until it succeeds or a stop is asked for
 * (servers may come up after the worker): connect to NATS, migrate, size the pull requests, read the
 * ClickHouse time zone; and the periodic retention it runs alongside.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { connectNats, describeNats } from "@tailwatch/nats";
import { applyMigrations } from "./migrations.ts";
import { onServerError } from "./readiness.ts";
import { applyRetention } from "./retention.ts";
import { withRetry } from "./retry.ts";
import { sql } from "./sql.ts";
import type { WorkerContext } from "./worker_state.ts";

/**
 * Connects to NATS (reconnecting forever afterwards, a refused reconnect tried again). Until it is connected,
 * readiness says what it waits for; a refusal of the credentials counts as the server's -ERR.
 */
export function connectToNats(ctx: WorkerContext): Promise<NatsConnection> {
  const { config, logger, health } = ctx;
  return withRetry(ctx, "connect to NATS", async () => {
    try {
      const connection = await connectNats(config.nats, {
        name: `tailwatch-ingest:${config.durable}`,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 500,
        // A refused reconnect (a password being rotated) is tried again, not given up for good.
        ignoreAuthErrorAbort: true,
      }, logger);
      health.waitingFor = undefined;
      return connection;
    } catch (error) {
      const text = String(error instanceof Error ? error.message : error);
      // A refusal of the credentials is the server's -ERR: counted and said like any other.
      if (/authori[sz]ation|authentication/i.test(text)) onServerError(ctx, text);
      health.waitingFor = `connecting to NATS at ${describeNats(config.nats)}: ${text}`;
      throw error;
    }
  });
}

/** Logs the connection's disconnects and reconnects; a permissions violation counts as the server's -ERR. */
export function watchNatsStatus(ctx: WorkerContext, conn: NatsConnection): void {
  (async () => {
    for await (const status of conn.status()) {
      if (status.type === "disconnect" || status.type === "reconnect") ctx.logger.warn(`nats ${status.type}`);
      if (status.type === "error") {
        const text = String(status.error instanceof Error ? status.error.message : status.error);
        if (/violation/i.test(text)) onServerError(ctx, text);
      }
    }
  })().catch(() => {});
}

/**
 * Applies the migrations under the migration lock (migrations.ts): workers that start together on a fresh
 * database take turns, and the second finds nothing left to do. Readiness says whose lock it waits for.
 */
export async function migrate(ctx: WorkerContext): Promise<void> {
  const { config, logger, health } = ctx;
  const applied = await withRetry(
    ctx,
    "migrate",
    () =>
      applyMigrations({ clickhouse: ctx.clickhouse, database: config.database }, {
        lock: {
          onWait: (holder, ageS) => {
            health.waitingFor = `migrating: waiting for the migration lock held by ${holder}`;
            logger.info("waiting for the migration lock", { holder, heartbeatAgeS: ageS });
          },
        },
      }),
  );
  health.waitingFor = undefined;
  if (applied.length > 0) logger.info("migrations applied", { versions: applied });
}

/**
 * Sizes this worker's pull requests: at most INGEST_BATCH_MAX (and max_ack_pending) messages, and a byte limit
 * (max_bytes) that lets the largest message the server accepts through.
 */
export function setPullLimits(ctx: WorkerContext, conn: NatsConnection): void {
  const { config, pullLimits } = ctx;
  const maxPayload = conn.info?.max_payload ?? 1024 * 1024;
  pullLimits.batch = Math.min(config.batchMax, config.maxAckPending);
  pullLimits.requestBytes = Math.max(Math.floor(config.maxBytesInFlight / 4), maxPayload + 8 * 1024);
}

/** The ClickHouse server's time zone (toYYYYMMDD partitions by it), UTC when it does not say. */
export function readTimeZone(ctx: WorkerContext): Promise<string> {
  return withRetry(ctx, "read server time zone", async () => {
    const rows = await ctx.clickhouse.query<{ tz: string }>(sql`SELECT timezone() AS tz`);
    return rows[0]?.tz ?? "UTC";
  });
}

/**
 * In follow mode with INGEST_RETENTION_INTERVAL_S set: drops partitions past retention now and then every
 * interval (one run at a time; a failure is logged and tried again next time). Returns the timer, if any.
 */
export function startRetention(ctx: WorkerContext): ReturnType<typeof setInterval> | undefined {
  const { config, logger, metrics } = ctx;
  if (!(config.retentionIntervalS > 0 && ctx.mode === "follow")) return undefined;
  let busy = false;
  const retention = async () => {
    if (busy) return;
    busy = true;
    try {
      const dropped = await applyRetention(ctx.clickhouse, config.database, {
        rawDays: config.retentionRawDays,
        rollupDays: config.retentionRollupDays,
      });
      metrics.retentionDropped.inc({}, dropped.length);
      if (dropped.length > 0) logger.info("retention dropped partitions", { dropped });
    } catch (error) {
      logger.warn("retention failed; will try again", { error });
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(retention, config.retentionIntervalS * 1000);
  retention();
  return timer;
}
