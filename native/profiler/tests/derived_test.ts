/**
 * Numbers that equal the raw rows, after the disturbances that break such numbers. One pipeline runs for
 * the whole suite: a private nats-server and clickhouse-server, the ingest worker as a process of its own
 * (`deno run ingest/main.ts`, so that it can be killed with SIGKILL) and the profiler daemon (windows 10,
 * 60 and 300 s). A load publisher puts request events on the stream as the services do (some one per
 * message, most in RequestEventBatch messages). After each disturbance the load stops and the invariant of
 * derived.ts (every rollup and every percentile window equals an independent query over the raw rows, key
 * by key) must hold once the pipeline has caught up: the check is repeated until it passes or 90 s pass,
 * and the last differences are the failure message.
 *
 * Disturbances: forced merges (OPTIMIZE ... FINAL); requests slower than the settle time and events that
 * reach the stream half a minute after they completed; ClickHouse frozen (SIGSTOP) and then killed and
 * restarted under load; the ingest worker killed with SIGKILL under load; a materialized view failing for
 * a while (its rows reach request_events, the INSERT fails, the worker's retry must complete the rollups);
 * a rebuild; the stream deleted and created again (its sequences start over below every batch number the
 * profiler has seen). Binaries: profilerBinaries() (built when missing).
 */
import { create } from "@bufbuild/protobuf";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { REQUEST_EVENTS_STREAM } from "@tailwatch/events";
import { Protocol, type RequestEvent, RequestEventSchema } from "@tailwatch/proto/events/v1";
import { applyMigrations } from "@tailwatch/ingest/migrations";
import { type ClickHouse, createClickHouse, loadConfig, rebuild } from "@tailwatch/ingest";
import { ident, sql, trustedSqlText } from "@tailwatch/ingest/sql";
import { publishEventBatch, publishEvents, testEnv, uniqueDatabase } from "@tailwatch/ingest/testing";
import { applyRequestEventsStream } from "@tailwatch/nats";
import { createLogger } from "@tailwatch/runtime";
import {
  assert,
  CLICKHOUSE_ADMIN,
  type ClickHouseServer,
  type ManagedProcess,
  type NatsServer,
  spawnLogged,
  startClickHouseServer,
  startNatsServer,
  waitUntil,
} from "@tailwatch/testing";
import { connectionFlags, profilerBinaries } from "../binaries.ts";
import { checkDerived } from "./derived.ts";

const ROOT = new URL("../../../", import.meta.url).pathname;
const WINDOWS = [10, 60, 300];
const METHODS = {
  catalog: ["/catalog.v1.CatalogService/GetProduct", "/catalog.v1.CatalogService/ListProducts"],
  orders: ["/orders.v1.OrderService/CreateOrder"],
  payments: ["/payments.v1.PaymentService/Charge"],
} as const;
type Service = keyof typeof METHODS;
const SERVICES = Object.keys(METHODS) as Service[];
/** Events per second of the background load. */
const RATE = 150;

let counter = 0;
/** One request event: it completed at `endMs`, after `durationUs`; about 4 % fail. */
function requestEvent(endMs: number, durationUs: number, method?: string): RequestEvent {
  const i = counter++;
  const service = SERVICES[i % SERVICES.length];
  const methods = METHODS[service];
  const failed = i % 23 === 0;
  const startMs = Math.round(endMs - durationUs / 1000);
  return create(RequestEventSchema, {
    eventId: crypto.randomUUID(),
    startTimeMs: BigInt(startMs),
    durationUs: BigInt(Math.round(durationUs)),
    service,
    method: method ?? methods[i % methods.length],
    protocol: i % 5 === 0 ? Protocol.HTTP : Protocol.GRPC,
    route: i % 5 === 0 ? `GET /v1/${service}` : "",
    grpcCode: failed ? 14 : 0,
    httpStatus: failed ? 503 : 200,
    requestBytes: BigInt(20 + i % 300),
    responseBytes: BigInt(100 + i % 3000),
    traceId: crypto.randomUUID().replaceAll("-", ""),
    spanId: crypto.randomUUID().replaceAll("-", "").slice(0, 16),
    parentSpanId: "",
    instance: `${service}-derived-test`,
    errorMessage: failed ? "unavailable" : "",
    faultInjected: false,
  });
}

/** A plausible duration: log-normal around 2 ms, in µs. */
function duration(): number {
  const normal = Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
  return Math.max(30, 2000 * Math.exp(0.9 * normal));
}

/** Publishes RATE events a second, ending now, as the services do, until stopped. */
function startLoad(nc: NatsConnection): { stop(): Promise<void>; published(): number } {
  let running = true;
  let published = 0;
  const loop = (async () => {
    while (running) {
      const tickStart = Date.now();
      const events = Array.from({ length: RATE / 10 }, () => requestEvent(Date.now(), duration()));
      const single = events.splice(0, 3);
      await Promise.all([
        publishEvents(nc, single),
        ...SERVICES.map((service) => {
          const mine = events.filter((e) => e.service === service);
          return mine.length > 0 ? publishEventBatch(nc, mine) : Promise.resolve();
        }),
      ]);
      published += RATE / 10;
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, 100 - (Date.now() - tickStart))));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
    },
    published: () => published,
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Pipeline {
  clickhouse: ClickHouseServer;
  ch: ClickHouse;
  nats: NatsServer;
  nc: NatsConnection;
  database: string;
  env: Record<string, string>;
  logDir: string;
  worker: ManagedProcess;
  profiler: ManagedProcess;
  startWorker(): Promise<void>;
}

async function rowCount(ch: ClickHouse, database: string): Promise<number> {
  const [row] = await ch.query<{ n: string }>(
    sql`SELECT count() AS n FROM ${ident(database, "request_events")}`,
  );
  return Number(row.n);
}

/**
 * Waits until every published event is a row, then until the invariant holds (the profiler needs a tick or
 * two, and corrections one more, after the last rows).
 */
async function assertDerivedEqualRaw(p: Pipeline, published: number, what: string): Promise<void> {
  await waitUntil(
    `${published} rows (${what})`,
    async () => (await rowCount(p.ch, p.database)) >= published,
    90_000,
  )
    .catch(async (error) => {
      throw new Error(
        `${error}: ${await rowCount(p.ch, p.database)} rows; ingest log:\n${await p.worker.log()}`,
      );
    });
  assert((await rowCount(p.ch, p.database)) === published, `${what}: rows = events published`);
  const deadline = Date.now() + 90_000;
  for (;;) {
    const check = await checkDerived(p.ch, p.database, WINDOWS).catch((error) => ({
      differences: [`check failed: ${error}`],
      compared: { stats: 0, profile: 0, percentiles: 0 },
    }));
    if (check.differences.length === 0) {
      assert(check.compared.percentiles > 0, `${what}: no percentile rows were compared`);
      console.log(`derived: ${what}: equal (${JSON.stringify(check.compared)})`);
      return;
    }
    if (Date.now() > deadline) {
      const profilerLog = (await p.profiler.log()).split("\n").slice(-30).join("\n");
      throw new Error(
        `${what}: derived numbers differ from the raw rows:\n${check.differences.join("\n")}\n` +
          `profiler log (tail):\n${profilerLog}`,
      );
    }
    await sleep(2000);
  }
}

Deno.test("derived numbers equal the raw rows after merges, lag, slow requests, outages, kills and rebuild", async (t) => {
  const binaries = await profilerBinaries();
  const logDir = await Deno.makeTempDir({ prefix: "tailwatch-derived-" });
  await using _logs = { [Symbol.asyncDispose]: () => Deno.remove(logDir, { recursive: true }) };
  await using nats = await startNatsServer();
  await using clickhouse = await startClickHouseServer();
  const database = uniqueDatabase("derived");
  const ch = createClickHouse({ url: clickhouse.url, ...CLICKHOUSE_ADMIN });
  await applyMigrations({ clickhouse: ch, database });
  const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  await using _nc = { [Symbol.asyncDispose]: () => nc.close() };
  await applyRequestEventsStream(nc);
  const env = testEnv(nats.url, clickhouse.url, CLICKHOUSE_ADMIN.password, database, {
    INGEST_LOG_LEVEL: "warn",
    INGEST_MIGRATE_ON_START: "false",
  });
  const spawnWorker = () =>
    spawnLogged(Deno.execPath(), ["run", "-A", `${ROOT}ingest/main.ts`], `${logDir}/ingest.log`, {
      env: { ...Deno.env.toObject(), ...env },
    });
  const profiler = await spawnLogged(
    binaries.profiler,
    [
      ...connectionFlags(clickhouse.url, CLICKHOUSE_ADMIN.username, CLICKHOUSE_ADMIN.password, database),
      "--windows",
      WINDOWS.join(","),
      "--settle",
      "1s",
    ],
    `${logDir}/profiler.log`,
  );
  const p: Pipeline = {
    clickhouse,
    ch,
    nats,
    nc,
    database,
    env,
    logDir,
    worker: await spawnWorker(),
    profiler,
    async startWorker() {
      this.worker = await spawnWorker();
    },
  };
  await using _processes = {
    [Symbol.asyncDispose]: async () => {
      await p.worker.stop("SIGKILL").catch(() => {});
      await p.profiler.stop("SIGTERM").catch(() => {});
    },
  };
  let published = 0;
  const runLoad = async (ms: number, during?: () => Promise<void>) => {
    const load = startLoad(nc);
    try {
      await sleep(ms / 2);
      await during?.();
      await sleep(ms / 2);
    } finally {
      await load.stop();
      published += load.published();
    }
  };

  await t.step("after forced merges", async () => {
    await runLoad(8_000);
    await assertDerivedEqualRaw(p, published, "load");
    for (
      const table of [
        "request_events",
        "request_stats_1s",
        "latency_profile_1s",
        "latency_percentiles_storage",
      ]
    ) {
      await ch.exec(sql`OPTIMIZE TABLE ${ident(database, table)} FINAL`);
    }
    await ch.exec(sql`OPTIMIZE TABLE ${ident(database, "latency_percentiles")}`); // flushes the Buffer
    await assertDerivedEqualRaw(p, published, "forced merges");
  });

  await t.step("requests slower than the settle time, and events that reach the stream late", async () => {
    await runLoad(6_000, async () => {
      const now = Date.now();
      // Slow requests end now: they count in the windows at once, whatever their start.
      const slow = [8_000_000, 20_000_000, 95_000_000].flatMap((
        us,
      ) => [requestEvent(now, us), requestEvent(now, us)]);
      // Requests that completed 30 s and 3 minutes ago reach the stream only now (a publisher that kept them
      // through a NATS outage): the windows already written for those seconds must be corrected.
      const late = Array.from(
        { length: 40 },
        (_, i) => requestEvent(now - (i < 20 ? 30_000 : 180_000), duration()),
      );
      await publishEvents(nc, [...slow, ...late]);
      published += slow.length + late.length;
    });
    await assertDerivedEqualRaw(p, published, "slow and late requests");
  });

  await t.step("ClickHouse frozen, then killed and restarted, under load", async () => {
    await runLoad(20_000, async () => {
      const pid = clickhouse.pid;
      assert(pid !== undefined, "clickhouse-server runs");
      Deno.kill(pid, "SIGSTOP");
      await sleep(8_000);
      Deno.kill(pid, "SIGCONT");
      await sleep(3_000);
      await clickhouse.stop("SIGKILL");
      await sleep(2_000);
      await clickhouse.start();
    });
    await assertDerivedEqualRaw(p, published, "ClickHouse freeze and restart");
  });

  await t.step("ingest killed with SIGKILL under load", async () => {
    await runLoad(10_000, async () => {
      await p.worker.stop("SIGKILL");
      await sleep(2_000);
      await p.startWorker();
    });
    await assertDerivedEqualRaw(p, published, "ingest kill -9");
  });

  await t.step("a materialized view failing for a while", async () => {
    // The view fails for every INSERT that carries a FailingView event, after request_events committed it
    // (18.16 feeds views after the raw part): the worker's retry finds the rows and must complete both
    // rollups. The view is swapped while nothing is being inserted.
    const view = ident(database, "request_stats_1s_mv");
    const [{ create_table_query: original }] = await ch.query<{ create_table_query: string }>(
      sql`SELECT create_table_query FROM system.tables WHERE database = ${database} AND name = 'request_stats_1s_mv'`,
    );
    const failing = original.replace(
      /GROUP BY ts, service/,
      "WHERE throwIf(method = '/orders.v1.OrderService/FailingView') = 0 GROUP BY ts, service",
    );
    assert(failing !== original, `the view's definition changed shape: ${original}`);
    await ch.exec(sql`DROP TABLE ${view}`);
    await ch.exec(trustedSqlText(failing));
    try {
      await runLoad(6_000, async () => {
        const events = Array.from(
          { length: 12 },
          () => requestEvent(Date.now(), duration(), "/orders.v1.OrderService/FailingView"),
        );
        for (const event of events) event.service = "orders";
        await publishEvents(nc, events);
        published += events.length;
      });
      await waitUntil(
        "every event inserted",
        async () => (await rowCount(ch, database)) >= published,
        60_000,
      );
    } finally {
      await ch.exec(sql`DROP TABLE ${view}`);
      await ch.exec(trustedSqlText(original));
    }
    const metrics = await p.worker.log();
    assert(/rollups were short/.test(metrics), "the worker repaired rollups after the failing view");
    await assertDerivedEqualRaw(p, published, "failing view");
  });

  await t.step("after a rebuild", async () => {
    await runLoad(4_000);
    await waitUntil("every event inserted", async () => (await rowCount(ch, database)) >= published, 60_000);
    await p.worker.stop("SIGTERM");
    const result = await rebuild(
      loadConfig(env),
      createLogger("warn", { component: "rebuild-test" }),
    );
    assert(result.mode === "all", `rebuild mode ${result.mode}`);
    await p.startWorker();
    await assertDerivedEqualRaw(p, published, "rebuild");
  });

  await t.step("the stream deleted and created again: its sequences start over", async () => {
    await runLoad(4_000);
    await waitUntil("every event inserted", async () => (await rowCount(ch, database)) >= published, 60_000);
    await (await jetstreamManager(nc)).streams.delete(REQUEST_EVENTS_STREAM);
    await applyRequestEventsStream(nc);
    // The new stream's messages are numbered from 1 again, far below the floor the profiler has seen.
    await runLoad(8_000);
    await assertDerivedEqualRaw(p, published, "stream recreated");
  });
});
