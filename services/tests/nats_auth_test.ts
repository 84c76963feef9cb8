/**
 * Service processes against a nats-server with the shipped users and permissions (deploy/nats/auth.conf):
 * - a service publishes as its own NATS user, with replies on its own inboxes;
 * - a service running as another service's user cannot publish its events (the server refuses the subject):
 *   the refusal shows in its metrics, its /readyz and its log, the events stay in its buffer, and once the
 *   permission is granted (the server's configuration reloaded) every one of them is stored, once;
 * - a wrong password: refused, counted, not ready with the reason, and the process keeps running.
 */
import {
  assert,
  assertEquals,
  freePort,
  type ManagedProcess,
  readStreamMessages,
  spawnLogged,
  startSecuredNatsServer,
  TEST_NATS_PASSWORDS,
  waitUntil,
} from "@tailwatch/testing";
import { applyRequestEventsStream, natsConfig } from "@tailwatch/nats";
import { eventsOfMessage, REQUEST_EVENTS_STREAM } from "@tailwatch/events";
import { SERVICE_DENO_FLAGS } from "@tailwatch/runtime";

const ROOT = new URL("../../", import.meta.url).pathname;
const options = { sanitizeOps: false, sanitizeResources: false };

interface ServiceUnderTest {
  process: ManagedProcess;
  httpPort: number;
  readyz(): Promise<{ status: number; body: { status: string; reason: string; events: string } }>;
  metric(name: string, labels?: string): Promise<number>;
  get(path: string): Promise<number>;
}

/** A service process (as ./dev up runs it), not waited for: its readiness is what the test looks at. */
async function startService(
  name: "catalog" | "payments",
  env: Record<string, string>,
  dir: string,
): Promise<ServiceUnderTest> {
  const httpPort = freePort();
  const process = await spawnLogged(
    Deno.execPath(),
    ["run", "-A", ...SERVICE_DENO_FLAGS, `${ROOT}services/${name}/main.ts`],
    `${dir}/${name}-${httpPort}.log`,
    {
      env: {
        ...Deno.env.toObject(),
        HOST: "127.0.0.1",
        GRPC_PORT: "0",
        HTTP_PORT: String(httpPort),
        LOG_LEVEL: "info",
        V8_WORKER_NICE: "0",
        ...env,
      },
    },
  );
  const base = `http://127.0.0.1:${httpPort}`;
  await waitUntil(`${name} answers`, async () => {
    const response = await fetch(`${base}/healthz`);
    await response.body?.cancel();
    return response.ok;
  }, 60_000);
  return {
    process,
    httpPort,
    async readyz() {
      const response = await fetch(`${base}/readyz`);
      return { status: response.status, body: await response.json() };
    },
    async metric(metric, labels = "") {
      const page = await (await fetch(`${base}/metrics`)).text();
      return page.split("\n")
        .filter((line) =>
          (line.startsWith(`${metric} `) || line.startsWith(`${metric}{`)) && line.includes(labels)
        )
        .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0);
    },
    async get(path) {
      const response = await fetch(`${base}${path}`);
      await response.body?.cancel();
      return response.status;
    },
  };
}

Deno.test(
  "NATS users: a service publishes as itself; as another service's user it is refused, loudly, and loses nothing",
  options,
  async () => {
    await using nats = await startSecuredNatsServer();
    const dir = await Deno.makeTempDir({ prefix: "tailwatch-nats-auth-services-" });
    const setup = natsConfig(nats.envOf("setup"));
    assertEquals(await applyRequestEventsStream(setup), "created");
    const asSetup = { user: "setup", pass: TEST_NATS_PASSWORDS.setup, inboxPrefix: setup.inboxPrefix };
    const storedEvents = async () =>
      (await readStreamMessages(nats.url, REQUEST_EVENTS_STREAM, asSetup))
        .flatMap((message) => eventsOfMessage(message.data, message.eventCount));
    const processes: ManagedProcess[] = [];
    try {
      // catalog as its own user: ready, and its events stored.
      const catalog = await startService("catalog", nats.envOf("catalog"), dir);
      processes.push(catalog.process);
      await waitUntil("catalog ready", async () => (await catalog.readyz()).status === 200, 30_000);
      for (let i = 0; i < 10; i++) assertEquals(await catalog.get("/v1/products/kibble-salmon-2kg"), 200);
      await waitUntil(
        "10 catalog events published",
        async () => await catalog.metric("events_published_total") === 10,
      );
      assertEquals(await catalog.metric("events_nats_server_errors_total"), 0, "no refusal");

      // payments as the orders user: a permission mistake. It serves requests; its events are refused.
      const payments = await startService("payments", nats.envOf("orders"), dir);
      processes.push(payments.process);
      for (let i = 0; i < 20; i++) assertEquals(await payments.get("/v1/payments/p-unknown"), 404);
      await waitUntil(
        "the refusal counted",
        async () => await payments.metric("events_nats_server_errors_total", `kind="permissions"`) > 0,
        30_000,
      );
      const notReady = await payments.readyz();
      assertEquals(notReady.status, 503, JSON.stringify(notReady.body));
      assertEquals(notReady.body.status, "NOT_SERVING");
      assert(
        notReady.body.reason.includes('Permissions Violation for Publish to "events.requests.payments"'),
        notReady.body.reason,
      );
      assertEquals(await payments.metric("events_ready"), 0);
      assertEquals(await payments.metric("events_published_total"), 0, "nothing counted as published");
      assertEquals(await payments.metric("events_buffer_depth"), 20, "every event kept");
      assertEquals(await payments.metric("events_dropped_total"), 0);
      // Requests are still served (a NATS problem never fails a request) and gRPC health stays SERVING.
      assertEquals(await payments.get("/v1/payments/p-unknown"), 404);
      const log = await payments.process.log();
      const refusal = log.split("\n").find((line) => line.includes('"msg":"events: NATS refused"'));
      assert(refusal, `the refusal is logged:\n${log.slice(-3000)}`);
      const record = JSON.parse(refusal);
      assertEquals(record.level, "error");
      assertEquals(record.kind, "permissions");
      assert(String(record.hint).includes("auth.conf"), refusal);
      assert(!log.includes(TEST_NATS_PASSWORDS.orders), "no password in the log");
      assert(
        (await storedEvents()).every((event) => event.service === "catalog"),
        "no payments event stored",
      );
      assert(
        /Violation[^\n]*events\.requests\.payments/.test(await nats.log()),
        "the server logged it too",
      );

      // The permission granted (the server's configuration reloaded): every kept event is stored, once.
      await nats.reloadAuth((conf) =>
        conf.replace(
          '"events.requests.orders", "events.requests.orders.>"',
          '"events.requests.orders", "events.requests.orders.>", "events.requests.payments"',
        )
      );
      await waitUntil("payments ready again", async () => (await payments.readyz()).status === 200, 30_000);
      await waitUntil(
        "21 events published",
        async () => await payments.metric("events_published_total") === 21,
      );
      const stored = await storedEvents();
      const paymentsEvents = stored.filter((event) => event.service === "payments");
      assertEquals(paymentsEvents.length, 21, "every event of payments stored");
      assertEquals(new Set(paymentsEvents.map((event) => event.eventId)).size, 21, "once");
      assertEquals(stored.filter((event) => event.service === "catalog").length, 10);
      assert(await payments.metric("events_publish_retries_total") > 0, "published again after the refusal");

      // A wrong password: refused at connect, counted, not ready with the reason; the process stays up.
      const wrong = await startService("catalog", {
        ...nats.envOf("catalog", "not-the-password"),
        SHUTDOWN_GRACE_MS: "1000",
      }, dir);
      processes.push(wrong.process);
      await waitUntil(
        "the refused connection counted",
        async () => await wrong.metric("events_nats_server_errors_total", `kind="authorization"`) > 0,
        30_000,
      );
      const refused = await wrong.readyz();
      assertEquals(refused.status, 503);
      assert(/not connected to NATS.*Authorization Violation/.test(refused.body.reason), refused.body.reason);
      assertEquals(await wrong.get("/v1/products/kibble-salmon-2kg"), 200, "still serving");
      await new Promise((resolve) => setTimeout(resolve, 2000));
      let exited = false;
      wrong.process.status.then(() => exited = true);
      await new Promise((resolve) => setTimeout(resolve, 0));
      assertEquals(exited, false, "the refusals did not end the process");
    } finally {
      for (const process of processes) {
        const code = await process.stop("SIGTERM", 20_000);
        assertEquals(code, 0, `a clean exit (log ${process.logPath})`);
      }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);
