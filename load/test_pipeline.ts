/**
 * For load's tests: the whole pipeline on free ports, as processes (nats-server, clickhouse-server with the
 * migrations, the ingest worker, catalog, payments and orders), as a StackTarget a load run can drive and check.
 */
import { applyMigrations } from "@tailwatch/ingest/migrations";
import { applyRequestEventsStream } from "@tailwatch/nats";
import { CLICKHOUSE_ADMIN, startClickHouseServer, startNatsServer } from "@tailwatch/testing";
import { startStackProcesses } from "./processes.ts";
import type { StackTarget } from "./target.ts";
import { startIngestProcess } from "@tailwatch/ingest/testing";

export interface TestPipeline extends AsyncDisposable {
  target: StackTarget;
  /** The pid of a service process (to freeze it, for example). */
  pids: Record<string, number>;
  logDir: string;
}

export async function startTestPipeline(env: Record<string, string> = {}): Promise<TestPipeline> {
  const logDir = await Deno.makeTempDir({ prefix: "tailwatch-load-test-" });
  const stack = new AsyncDisposableStack();
  try {
    stack.defer(() => Deno.remove(logDir, { recursive: true }).catch(() => {}));
    const nats = stack.use(await startNatsServer());
    await applyRequestEventsStream(nats.url); // the setup step's stream: ingest and the services only check it
    const clickhouse = stack.use(await startClickHouseServer());
    const database = `tw_load_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    await applyMigrations({ url: clickhouse.url, ...CLICKHOUSE_ADMIN, database });
    const ingest = stack.use(
      await startIngestProcess({
        natsUrl: nats.url,
        clickhouseUrl: clickhouse.url,
        database,
        logPath: `${logDir}/ingest.log`,
      }),
    );
    const services = stack.use(await startStackProcesses({ NATS_URL: nats.url, ...env }, logDir));
    const pids: Record<string, number> = {
      catalog: services.catalog.process.pid,
      payments: services.payments.process.pid,
      orders: services.orders.process.pid,
      ingest: ingest.pid,
    };
    const address = (s: { grpcPort: number; httpPort: number }) => ({
      grpc: `127.0.0.1:${s.grpcPort}`,
      http: `http://127.0.0.1:${s.httpPort}`,
    });
    const target: StackTarget = {
      label: "test pipeline (private ports)",
      services: {
        catalog: address(services.catalog),
        orders: address(services.orders),
        payments: address(services.payments),
      },
      clickhouse: { url: clickhouse.url, ...CLICKHOUSE_ADMIN, database },
      processes: () => ({ ...pids }),
      settleTimeoutMs: 45_000,
    };
    const moved = stack.move();
    return { target, pids, logDir, [Symbol.asyncDispose]: () => moved.disposeAsync() };
  } catch (error) {
    await stack.disposeAsync();
    throw error;
  }
}
