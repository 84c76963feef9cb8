/**
 * The pipeline through a NATS deployment that is more than one server: the kit's event sinks of three services
 * and the ingest worker against a real 3-node nats-server cluster with REQUEST_EVENTS at 3 replicas (the setup
 * step's function), and ClickHouse. The checks are the design's counts: events emitted (one per request) =
 * published = rows = distinct event ids, nothing dropped, everything acked.
 * - a node killed (SIGKILL) under load: the clients on it reconnect to the others (which they know from the
 *   cluster's connect_urls too), the stream keeps its quorum;
 * - a node put in lame duck mode under load (SIGUSR2, as `nats-server --signal ldm=<pid>`): the sinks and the
 *   pull receiver move to another node before it goes, without a disconnect and without a gap in the consumer
 *   sequence (no resync: the carried-over pull requests lost nothing in flight);
 * - a server in operator mode with a small max_payload: every client authenticates with a `.creds` file (the
 *   sinks and the pull receiver on the wire client, the worker's nats.js connection with credsAuthenticator),
 *   messages are sealed to fit, and a dead letter is cut to fit.
 * INGEST_TEST_ONLY=<regex> runs only the matching steps.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, headers } from "@nats-io/transport-node";
import { Protocol } from "@tailwatch/proto/events/v1";
import {
  assert,
  assertEquals,
  CLICKHOUSE_ADMIN,
  natsOperatorSetup,
  startClickHouseServer,
  startNatsCluster,
  startNatsServer,
} from "@tailwatch/testing";
import {
  applyRequestEventsStream,
  createEventSink,
  type EventSink,
  type NatsConfig,
  natsConfig,
  natsJsOptions,
} from "@tailwatch/nats";
import { createLogger, createRegistry, type Registry, uuidv7 } from "@tailwatch/runtime";
import { REQUEST_EVENTS_STREAM, requestEventSubject } from "@tailwatch/events";
import { sampleEvent } from "@tailwatch/events/testing";
import { createClickHouse } from "./clickhouse.ts";
import { applyMigrations } from "./migrations.ts";
import { ident, sql } from "./sql.ts";
import { eventually, testConfig, uniqueDatabase } from "./test_helpers.ts";
import { createIngestWorker } from "./worker.ts";

const only = Deno.env.get("INGEST_TEST_ONLY");
const logLevel = (Deno.env.get("TEST_LOG_LEVEL") ?? "error") as "error";
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const SERVICES = ["catalog", "orders", "payments"] as const;
const DURABLE = "tailwatch-ingest";

function counterSum(registry: Registry, name: string): number {
  let sum = 0;
  for (const match of registry.render().matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "gm"))) {
    sum += Number(match[1]);
  }
  return sum;
}

/** Three services' sinks emitting events under load until stopped; every accepted event's id is kept. */
function serviceLoad(nats: (service: string) => NatsConfig | string, perTick = 8) {
  const sinks = SERVICES.map((service) => {
    const metrics = createRegistry();
    const sink: EventSink = createEventSink({
      service,
      nats: nats(service),
      capacity: 200_000,
      concurrency: 4096,
      publishIntervalMs: 20,
      logger: createLogger(logLevel),
      metrics,
    });
    return { service, sink, metrics };
  });
  const emitted: string[] = [];
  let dropped = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      for (const { service, sink } of sinks) {
        for (let i = 0; i < perTick; i++) {
          const eventId = uuidv7();
          const accepted = sink.emit(sampleEvent({
            eventId,
            durationUs: BigInt(50 + (emitted.length % 5000)),
            service,
            method: `/${service}.v1.Service/Method${i % 3}`,
            protocol: i % 4 === 0 ? Protocol.HTTP : Protocol.GRPC,
            route: i % 4 === 0 ? `GET /v1/${service}/{id}` : "",
            instance: `${service}-cluster-test`,
            startTimeUs: BigInt(Date.now()) * 1000n,
          }));
          if (accepted) emitted.push(eventId);
          else dropped++;
        }
      }
      await sleep(5);
    }
  })();
  return {
    emitted,
    sinks,
    dropped: () => dropped,
    counter: (name: string) => sinks.reduce((sum, { metrics }) => sum + counterSum(metrics, name), 0),
    async stop() {
      running = false;
      await loop;
      for (const { service, sink } of sinks) {
        assert(await sink.flush(60_000), `${service} flushed its events`);
      }
      for (const { sink } of sinks) await sink.close(1000);
    },
  };
}

Deno.test({
  name:
    "a 3-node NATS cluster: a node killed or in lame duck mode under load loses nothing; .creds and max_payload",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using clickhouseServer = await startClickHouseServer();
    const clickhouse = createClickHouse({ url: clickhouseServer.url, ...CLICKHOUSE_ADMIN });
    const step = (name: string, fn: () => Promise<void>) =>
      t.step({ name, ignore: only !== undefined && !new RegExp(only).test(name), fn });

    /**
     * The worker and three sinks on `nats` (each process's NatsConfig), `during` while the load runs; then the
     * counts: emitted = published = events in the stream = rows = distinct ids, the consumer fully acked.
     */
    const scenario = async (
      natsOf: (who: string) => NatsConfig | string,
      readerUrl: () => string,
      during: () => Promise<void>,
      overrides: Record<string, string> = {},
    ) => {
      const database = uniqueDatabase("cluster");
      await applyMigrations({ clickhouse, database });
      const registry = createRegistry();
      const ingestNats = natsOf("ingest");
      const base = testConfig(
        typeof ingestNats === "string" ? ingestNats : "nats://127.0.0.1:4222",
        clickhouseServer.url,
        CLICKHOUSE_ADMIN.password,
        database,
        overrides,
      );
      const worker = createIngestWorker({
        config: typeof ingestNats === "string" ? base : { ...base, nats: ingestNats },
        logger: createLogger(logLevel),
        registry,
      });
      const running = worker.run();
      try {
        const load = serviceLoad(natsOf);
        try {
          await during();
        } finally {
          await load.stop();
        }
        const emitted = load.emitted.length;
        assert(emitted > 3000, `events emitted: ${emitted}`);
        assertEquals(load.dropped(), 0, "no event dropped");
        assertEquals(load.counter("events_dropped_total"), 0);
        assertEquals(load.counter("events_published_total"), emitted, "every event published (acked)");
        const rows = async () => {
          const [row] = await clickhouse.query<{ n: string; d: string }>(
            sql`SELECT count() AS n, uniqExact(event_id) AS d FROM ${ident(database, "request_events")}`,
          );
          return { rows: Number(row.n), distinct: Number(row.d) };
        };
        await eventually(`${emitted} rows`, async () => (await rows()).rows >= emitted, 60_000);
        const nc = await connect({ ...natsJsOptions(natsConfig({ NATS_URL: readerUrl() })), ...readerAuth });
        try {
          const jsm = await jetstreamManager(nc);
          await eventually("the consumer fully acked", async () => {
            const consumer = await jsm.consumers.info(REQUEST_EVENTS_STREAM, DURABLE);
            return consumer.num_pending === 0 && consumer.num_ack_pending === 0;
          }, 30_000);
          const stream = await jsm.streams.info(REQUEST_EVENTS_STREAM);
          assert(stream.state.messages > 0);
        } finally {
          await nc.close();
        }
        assertEquals(
          await rows(),
          { rows: emitted, distinct: emitted },
          "rows = distinct ids = events emitted",
        );
        return { stats: worker.stats(), load, registry };
      } finally {
        worker.stop();
        await running;
        await clickhouse.exec(sql`DROP DATABASE IF EXISTS ${ident(database)}`).catch(() => {});
      }
    };
    /** Extra nats.js options of the reader of the last check (credentials in operator mode). */
    let readerAuth: Record<string, unknown> = {};

    await step(
      "a node killed (SIGKILL) under load: events emitted = published = rows = distinct ids",
      async () => {
        await using cluster = await startNatsCluster();
        await applyRequestEventsStream(cluster.url, { replicas: 3 });
        let killed = -1;
        const { stats } = await scenario(
          () => cluster.url,
          () => cluster.nodes.find((node) => node.pid !== undefined)!.url,
          async () => {
            await sleep(1_500);
            // The node the pull receiver is on: it and whatever sinks share the node must go elsewhere.
            const [pullNode] = await cluster.nodesWithConnection(`tailwatch-ingest-pull:${DURABLE}`);
            killed = pullNode ?? 0;
            await cluster.nodes[killed].stop("SIGKILL");
            await sleep(4_000);
            // The survivors elect new leaders; what follows reads JetStream, which answers once they have.
            await cluster.healthy();
          },
        );
        assert(killed >= 0, "a node was killed");
        assertEquals(stats.deadLettered, 0);
      },
    );

    await step(
      "a node in lame duck mode under load: every client moves first; nothing lost, no gap",
      async () => {
        await using cluster = await startNatsCluster();
        await applyRequestEventsStream(cluster.url, { replicas: 3 });
        let target = -1;
        const { stats, load, registry } = await scenario(
          () => cluster.url,
          () => cluster.nodes.find((node) => node.pid !== undefined)!.url,
          async () => {
            await sleep(1_500);
            const [pullNode] = await cluster.nodesWithConnection(`tailwatch-ingest-pull:${DURABLE}`);
            target = pullNode ?? 0;
            await cluster.nodes[target].lameDuck(60_000);
            await sleep(1_000);
          },
        );
        assert(target >= 0);
        assertEquals(load.counter("events_nats_disconnects_total"), 0, "the sinks moved, never disconnected");
        assertEquals(stats.resyncs, 0, "the pull receiver moved without a gap in the consumer sequence");
        assertEquals(counterSum(registry, "ingest_consumer_resyncs_total"), 0);
        assertEquals(stats.deadLettered, 0);
      },
    );

    await step(
      "operator mode with .creds and max_payload 8 KiB: every client authenticates, messages fit, dead letters are cut",
      async () => {
        const setup = natsOperatorSetup(["setup", "ingest", ...SERVICES].map((name) => ({ name })));
        const dir = await Deno.makeTempDir({ prefix: "tailwatch-nats-operator-" });
        try {
          await Deno.writeTextFile(
            `${dir}/nats.conf`,
            `${setup.serverConfig}\nmax_payload: 8KB\njetstream { store_dir: "${dir}/jetstream" }\n`,
          );
          await using server = await startNatsServer({ dir, configFile: `${dir}/nats.conf` });
          const configs = new Map<string, NatsConfig>();
          for (const name of ["setup", "ingest", ...SERVICES]) {
            configs.set(
              name,
              natsConfig({ NATS_URL: server.url, NATS_CREDS: await setup.writeCreds(dir, name) }),
            );
          }
          await applyRequestEventsStream(configs.get("setup")!);
          readerAuth = natsJsOptions(configs.get("setup")!) as Record<string, unknown>;
          const deadLetters: { data: number; headers: string }[] = [];
          const { stats } = await scenario(
            (who) => configs.get(who)!,
            () => server.url,
            async () => {
              // A message near max_payload that is no event: dead-lettered, cut to fit with its headers.
              const nc = await connect(natsJsOptions(configs.get("setup")!));
              try {
                const sub = nc.subscribe("events.deadletter.>");
                (async () => {
                  for await (const msg of sub) {
                    deadLetters.push({ data: msg.data.length, headers: msg.headers?.toString() ?? "" });
                  }
                })();
                const h = headers();
                h.set("Nats-Msg-Id", uuidv7());
                await nc.flush();
                nc.publish(requestEventSubject("catalog"), new Uint8Array(8192 - 200).fill(0xff), {
                  headers: h,
                });
                await sleep(3_000);
                await nc.flush();
                await eventually("the dead letter", () => deadLetters.length === 1, 20_000);
              } finally {
                await nc.close();
              }
            },
          );
          assertEquals(stats.deadLettered, 1);
          const [letter] = deadLetters;
          assert(/Tailwatch-Truncated: true/.test(letter.headers), letter.headers);
          assert(letter.data + letter.headers.length <= 8192, `dead letter of ${letter.data} + headers`);
        } finally {
          readerAuth = {};
          await Deno.remove(dir, { recursive: true }).catch(() => {});
        }
      },
    );
  },
});
