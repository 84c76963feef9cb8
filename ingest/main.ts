/**
 * Tailwatch ingest: `deno run -A ingest/main.ts [command]`
 *
 *   (none) | run   the worker: JetStream REQUEST_EVENTS → ClickHouse, until SIGTERM/SIGINT (then exit 0)
 *   migrate        apply the migrations and exit
 *   retention      drop partitions older than the retention and exit
 *   rebuild        empty the projections and replay the stream from the start (stop the worker first;
 *                  --force skips that check); refuses when the stream no longer holds every message the
 *                  tables hold rows of, unless --keep-older (keep those rows, rebuild the rest)
 *   reconcile FROM TO   compare the rollups with the raw rows for start seconds FROM..TO (unix seconds) and
 *                  insert what they lack (stop the worker first)
 *
 * Configuration comes from the environment (see config.ts and README.md); a bad value exits with code 2.
 */
import { createLogger, type Logger, registerProcessMetrics } from "@tailwatch/runtime";
import { createClickHouse } from "./clickhouse.ts";
import { ConfigError, type IngestConfig, loadConfig } from "./config.ts";
import { serveMetrics } from "./metrics.ts";
import { applyMigrations } from "./migrations.ts";
import { rebuild, RebuildRefused } from "./rebuild.ts";
import { reconcileRollups } from "./rollups.ts";
import { applyRetention } from "./retention.ts";
import { createIngestWorker } from "./worker.ts";

const USAGE =
  "usage: deno run -A ingest/main.ts [run|migrate|retention|rebuild [--force] [--keep-older]|reconcile FROM TO]";

async function runWorker(config: IngestConfig, logger: Logger): Promise<number> {
  const worker = createIngestWorker({ config, logger });
  registerProcessMetrics(worker.registry);
  const server = serveMetrics(worker.registry, {
    hostname: config.metricsHost,
    port: config.metricsPort,
    ready: worker.readiness,
    onListen: (port) => logger.info("metrics listening", { host: config.metricsHost, port }),
  });
  let signals = 0;
  const onSignal = (signal: Deno.Signal) => () => {
    signals++;
    if (signals > 1) {
      logger.warn("second signal: exiting now; unacked messages will be redelivered", { signal });
      Deno.exit(1);
    }
    logger.info("signal received", { signal });
    worker.stop();
  };
  const handlers: [Deno.Signal, () => void][] = [["SIGTERM", onSignal("SIGTERM")], [
    "SIGINT",
    onSignal("SIGINT"),
  ]];
  for (const [signal, handler] of handlers) Deno.addSignalListener(signal, handler);
  try {
    await worker.run();
    return 0;
  } finally {
    for (const [signal, handler] of handlers) Deno.removeSignalListener(signal, handler);
    await server.close();
  }
}

export async function main(args: string[]): Promise<number> {
  const command = args[0] ?? "run";
  if (!["run", "migrate", "retention", "rebuild", "reconcile"].includes(command)) {
    console.error(USAGE);
    return 2;
  }
  let config: IngestConfig;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(JSON.stringify({ time: new Date().toISOString(), level: "error", msg: error.message }));
      console.error(`ingest: configuration error: ${error.message}`);
      return 2;
    }
    throw error;
  }
  const logger = createLogger(config.logLevel, { component: "ingest", command });
  // The one-shot commands' client (@clickhouse/client underneath); run and rebuild make their own.
  await using clickhouse = createClickHouse({
    url: config.clickhouseUrl,
    username: config.clickhouseUser,
    password: config.clickhousePassword,
  });
  try {
    switch (command) {
      case "migrate": {
        const applied = await applyMigrations({ clickhouse, database: config.database }, {
          lock: {
            onWait: (holder, ageS) =>
              logger.info("waiting for the migration lock", { holder, heartbeatAgeS: ageS }),
          },
        });
        logger.info("migrations up to date", { applied });
        return 0;
      }
      case "retention": {
        const dropped = await applyRetention(clickhouse, config.database, {
          rawDays: config.retentionRawDays,
          rollupDays: config.retentionRollupDays,
        });
        logger.info("retention applied", { dropped });
        return 0;
      }
      case "rebuild": {
        try {
          const result = await rebuild(config, logger, {
            force: args.includes("--force"),
            keepOlder: args.includes("--keep-older"),
          });
          const equal = JSON.stringify(result.before) === JSON.stringify(result.after);
          if (!equal) logger.warn("counts differ after the rebuild", { ...result });
          return 0;
        } catch (error) {
          if (!(error instanceof RebuildRefused)) throw error;
          logger.error(error.message, { ...error.lost });
          return 1;
        }
      }
      case "reconcile": {
        const [from, to] = [Number(args[1]), Number(args[2])];
        if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 0 || to < from) {
          console.error(`${USAGE}\nreconcile: FROM and TO must be unix seconds, FROM <= TO`);
          return 2;
        }
        const result = await reconcileRollups(clickhouse, {
          database: config.database,
          fromTs: from,
          toTs: to,
        });
        logger.info("rollups reconciled with the raw rows", { from, to, ...result });
        return result.statsCellsSurplus + result.profileCellsSurplus > 0 ? 1 : 0;
      }
      default:
        return await runWorker(config, logger);
    }
  } catch (error) {
    logger.error("failed", { error, stack: error instanceof Error ? error.stack : undefined });
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
