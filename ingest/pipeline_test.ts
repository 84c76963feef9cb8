/**
 * The whole pipeline against real servers: the three services (in this process, testing/stack.ts)
 * publish one event per request, the worker ingests them. The checks are the design's counts: requests
 * served (the services' requests_total) = events in the stream = rows in ClickHouse = distinct event ids,
 * with no event dropped; once under plain load, once through a NATS crash (SIGKILL) and restart.
 * INGEST_TEST_ONLY=<regex> runs only the matching steps.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import {
  assert,
  assertEquals,
  CLICKHOUSE_ADMIN,
  startClickHouseServer,
  startNatsServer,
} from "@tailwatch/testing";
import { applyRequestEventsStream } from "@tailwatch/nats";
import { createLogger, type Registry } from "@tailwatch/runtime";
import { REQUEST_EVENTS_STREAM } from "@tailwatch/events";
import { readAllEvents, startStack } from "@tailwatch/testing/stack";
import { createClickHouse } from "./clickhouse.ts";
import { applyMigrations } from "./migrations.ts";
import { ident, sql } from "./sql.ts";
import { eventually, testConfig, uniqueDatabase } from "./test_helpers.ts";
import { createIngestWorker } from "./worker.ts";

const only = Deno.env.get("INGEST_TEST_ONLY");
const GOOD_CARD = "4242424242424242";

/** Sum of a counter's series in a registry's exposition text. */
function counterSum(registry: Registry, name: string): number {
  let sum = 0;
  for (const match of registry.render().matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "gm"))) {
    sum += Number(match[1]);
  }
  return sum;
}

Deno.test({
  name: "services → NATS → ingest → ClickHouse: every request served is one row",
  // The services' gRPC clients and servers (grpc-js) keep timers past their shutdown.
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using server = await startClickHouseServer();
    const clickhouse = createClickHouse({ url: server.url, ...CLICKHOUSE_ADMIN });
    const step = (name: string, fn: () => Promise<void>) =>
      t.step({ name, ignore: only !== undefined && !new RegExp(only).test(name), fn });

    /** Load through the services with the worker running; `during` runs while the load is under way. */
    const scenario = async (
      during: (nats: Awaited<ReturnType<typeof startNatsServer>>, answered: () => number) => Promise<void>,
    ) => {
      await using nats = await startNatsServer();
      const database = uniqueDatabase("pipe");
      await applyMigrations({ clickhouse, database });
      const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
      await applyRequestEventsStream(nc);
      await nc.close();
      const worker = createIngestWorker({
        config: testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database),
        logger: createLogger("error"),
      });
      const running = worker.run();
      let served = 0;
      let dropped = 0;
      let clientCalls = 0;
      let failed = 0;
      try {
        {
          await using stack = await startStack(nats.url);
          // Each call resolves when its outcome is the expected one (NOT_FOUND and 404 are), throws otherwise.
          const notFound = async (call: Promise<unknown>) => {
            const code = await call.then(() => "OK", (error: { code?: number }) => error?.code);
            if (code !== 5) throw new Error(`expected NOT_FOUND, got ${code}`);
          };
          const status = async (response: Promise<Response>, expected: number) => {
            const got = await response;
            await got.body?.cancel();
            if (got.status !== expected) throw new Error(`expected HTTP ${expected}, got ${got.status}`);
          };
          const calls: (() => Promise<unknown>)[] = [
            () =>
              stack.clients.orders.createOrder({
                customerId: "c1",
                lines: [{ productId: "treats-tuna-60g", quantity: 1 }],
                cardNumber: GOOD_CARD,
              }),
            () => stack.clients.catalog.getProduct({ productId: "kibble-salmon-2kg" }),
            () => notFound(stack.clients.catalog.getProduct({ productId: "no-such-product" })),
            () => status(stack.rest(stack.catalog, "/v1/products/treats-tuna-60g"), 200),
            () => status(stack.rest(stack.payments, "/nowhere"), 404),
          ];
          // Closed-loop load, 8 at a time: at least 1500 calls, and calls all through `during`.
          let duringDone = false;
          let issued = 0;
          let answered = 0;
          const caller = async () => {
            while (!duringDone || issued < 1500) {
              const call = calls[issued++ % calls.length];
              await call().catch((error) => {
                failed++;
                if (failed <= 3) console.error("call failed:", error);
              });
              answered++;
            }
          };
          const load = Promise.all(Array.from({ length: 8 }, caller));
          await during(nats, () => answered);
          duringDone = true;
          await load;
          clientCalls = answered;
          assertEquals(clientCalls, issued, "every client call answered");
          assertEquals(failed, 0, "every call had its expected outcome: the services kept serving");
          for (const service of [stack.orders, stack.catalog, stack.payments]) {
            // Every event published before the services stop (a drain's grace could cut a retry short).
            assert(await service.events.flush(60_000), `${service.config.service} flushed its events`);
          }
          for (const service of [stack.orders, stack.catalog, stack.payments]) {
            served += counterSum(service.metrics, "requests_total");
            dropped += counterSum(service.metrics, "events_dropped_total");
          }
        } // the services drain here: in-flight requests finish, their event buffers are flushed
        // orders calls catalog and payments: more requests are served than the client made.
        assert(served > clientCalls, `requests served ${served} > client calls ${clientCalls}`);
        assertEquals(dropped, 0, "no event dropped");
        const rows = async () => {
          const [row] = await clickhouse.query<{ n: string; d: string }>(
            sql`SELECT count() AS n, uniqExact(event_id) AS d FROM ${ident(database, "request_events")}`,
          );
          return { rows: Number(row.n), distinct: Number(row.d) };
        };
        await eventually(`${served} rows`, async () => (await rows()).rows >= served, 120_000);
        // Let redeliveries (ack wait 4 s in tests) come and (not) duplicate before counting.
        await new Promise((resolve) => setTimeout(resolve, 4_500));
        const check = await connect({ servers: nats.url });
        try {
          const jsm = await jetstreamManager(check);
          assertEquals(
            (await readAllEvents(nats.url)).length,
            served,
            "events in the stream = requests served",
          );
          const consumer = await jsm.consumers.info(REQUEST_EVENTS_STREAM, "tailwatch-ingest");
          assertEquals([consumer.num_pending, consumer.num_ack_pending], [0, 0], "everything acked");
        } finally {
          await check.close();
        }
        assertEquals(
          await rows(),
          { rows: served, distinct: served },
          "rows = distinct ids = requests served",
        );
        return worker.stats();
      } finally {
        worker.stop();
        await running;
        await clickhouse.exec(sql`DROP DATABASE IF EXISTS ${ident(database)}`).catch(() => {});
      }
    };

    await step("load through the services: rows = requests served = distinct event ids", async () => {
      const stats = await scenario(async () => {});
      assertEquals(stats.deadLettered, 0, "nothing dead-lettered");
    });

    await step("NATS killed (SIGKILL) and restarted during the load: every event exactly once", async () => {
      let restarted = false;
      await scenario(async (nats) => {
        await new Promise((resolve) => setTimeout(resolve, 1_500));
        await nats.stop("SIGKILL");
        await new Promise((resolve) => setTimeout(resolve, 3_000));
        await nats.start();
        restarted = true;
        await new Promise((resolve) => setTimeout(resolve, 1_000));
      });
      assert(restarted, "the server was restarted");
    });

    await step(
      "ClickHouse stopped for 20 s during the load: the services keep serving, the backlog drains after, " +
        "exactly once",
      async () => {
        let outage = 0;
        let servedDuring = 0;
        let down = false;
        try {
          await scenario(async (_nats, progress) => {
            await new Promise((resolve) => setTimeout(resolve, 1_500));
            down = true;
            await server.stop();
            const start = Date.now();
            const answeredBefore = progress();
            await new Promise((resolve) => setTimeout(resolve, 20_000));
            servedDuring = progress() - answeredBefore;
            await server.start();
            down = false;
            outage = Date.now() - start;
            await new Promise((resolve) => setTimeout(resolve, 1_000));
          });
        } finally {
          if (down) await server.start();
        }
        assert(outage >= 20_000, `outage lasted ${outage} ms`);
        assert(servedDuring > 100, `calls answered while ClickHouse was down: ${servedDuring}`);
      },
    );
  },
});
