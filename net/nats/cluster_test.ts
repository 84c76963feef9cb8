/**
 * The wire client and the event sink against real nats-servers, for what a NATS client owes a deployment:
 * `.creds` authentication on a server in operator mode, a server's small max_payload, the servers a cluster
 * announces (connect_urls), a node killed under load, and lame duck mode. Each counts what was emitted against
 * what the stream holds (every event once). The whole pipeline through such a cluster, with ingest and
 * ClickHouse, is ingest/cluster_test.ts.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import {
  assert,
  assertEquals,
  natsOperatorSetup,
  readStreamMessages,
  startNatsCluster,
  startNatsServer,
  type StreamReaderAuth,
  waitUntil,
} from "@tailwatch/testing";
import { createEventSink, type RequestEventInit } from "./publisher.ts";
import { createLogger, createRegistry, type Registry } from "@tailwatch/runtime";
import { connectNats, type NatsConfig, natsConfig, natsJsOptions } from "./config.ts";
import { createNatsWire } from "./wire.ts";
import { parseNatsUrl } from "./protocol.ts";
import { applyRequestEventsStream } from "./stream_setup.ts";
import { eventsOfMessage, REQUEST_EVENTS_STREAM } from "@tailwatch/events";
import { sampleEvent } from "@tailwatch/events/testing";

const options = { sanitizeOps: false, sanitizeResources: false };
const logger = createLogger((Deno.env.get("TEST_LOG_LEVEL") ?? "error") as "error");
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function event(i: number, errorBytes = 0): RequestEventInit {
  return sampleEvent({ durationUs: BigInt(100 + i), errorMessage: "x".repeat(errorBytes) });
}

function counter(metrics: Registry, name: string, labels = ""): number {
  let sum = 0;
  for (const line of metrics.render().split("\n")) {
    if (line.startsWith(`${name}${labels} `) || (labels === "" && line.startsWith(`${name}{`))) {
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return sum;
}

function sink(nats: NatsConfig | string, extra: { eventsPerMessage?: number } = {}) {
  const metrics = createRegistry();
  const events = createEventSink({
    service: "catalog",
    nats,
    capacity: 200_000,
    concurrency: 4096,
    publishIntervalMs: 5,
    eventsPerMessage: extra.eventsPerMessage,
    logger,
    metrics,
  });
  return { events, metrics };
}

/** Event ids in the stream, one entry per stored copy, and the largest message payload. */
async function storedIds(url: string, auth: StreamReaderAuth = {}) {
  const messages = await readStreamMessages(url, REQUEST_EVENTS_STREAM, auth);
  const ids = messages.flatMap((message) => eventsOfMessage(message.data, message.eventCount)).map((e) =>
    e.eventId
  );
  return { ids, messages };
}

/** Emits `perTick` events every few ms until `stop()`; returns the ids emitted. */
function emitUnderLoad(events: ReturnType<typeof sink>["events"], perTick = 20) {
  const emitted: string[] = [];
  let refused = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      for (let i = 0; i < perTick; i++) {
        const e = event(emitted.length);
        if (events.emit(e)) emitted.push(e.eventId);
        else refused++;
      }
      await sleep(5);
    }
  })();
  return {
    emitted,
    refused: () => refused,
    async stop() {
      running = false;
      await loop;
    },
  };
}

Deno.test(
  ".creds: the sink and nats.js authenticate with a user JWT and its nkey seed (operator mode)",
  options,
  async () => {
    const catalogUser = {
      name: "catalog",
      pub: { allow: ["events.requests.catalog", "$JS.API.STREAM.INFO.REQUEST_EVENTS"] },
      sub: { allow: ["_INBOX_catalog.>"] },
    };
    const setup = natsOperatorSetup([{ name: "setup" }, catalogUser]);
    const dir = await Deno.makeTempDir({ prefix: "tailwatch-nats-operator-" });
    await Deno.writeTextFile(
      `${dir}/nats.conf`,
      `${setup.serverConfig}\njetstream { store_dir: "${dir}/jetstream" }\n`,
    );
    await using server = await startNatsServer({ dir, configFile: `${dir}/nats.conf` });
    try {
      const setupConfig = natsConfig({
        NATS_URL: server.url,
        NATS_CREDS: await setup.writeCreds(dir, "setup"),
      });
      // The setup step on nats.js with credsAuthenticator.
      await applyRequestEventsStream(setupConfig);
      const catalogConfig = natsConfig({
        NATS_URL: server.url,
        NATS_CREDS: await setup.writeCreds(dir, "catalog"),
      });
      assertEquals(catalogConfig.inboxPrefix, "_INBOX_catalog");
      const { events, metrics } = sink(catalogConfig, { eventsPerMessage: 50 });
      const emitted = Array.from({ length: 1000 }, (_, i) => event(i));
      for (const e of emitted) assert(events.emit(e));
      assert(await events.flush(20_000), "every event acknowledged");
      assertEquals(counter(metrics, "events_published_total"), 1000);
      assertEquals(counter(metrics, "events_nats_server_errors_total"), 0, "nothing refused");
      assertEquals(events.readiness(), { ready: true, reason: "events: publishing" });
      await events.close(1000);
      const { ids } = await storedIds(server.url, natsJsOptions(setupConfig) as StreamReaderAuth);
      assertEquals(ids.sort(), emitted.map((e) => e.eventId).sort(), "every event stored once");

      // A JWT that expires under the sink: the server closes the connection ("User Authentication Expired"),
      // counted as `expired`; the file, renewed meanwhile, is read again at the reconnect.
      const renewedPath = `${dir}/renewed.creds`;
      await Deno.writeTextFile(renewedPath, setup.issue({ ...catalogUser, expiresInS: 2 }));
      const renewing = sink(natsConfig({ NATS_URL: server.url, NATS_CREDS: renewedPath }));
      const before = Array.from({ length: 100 }, (_, i) => event(i));
      for (const e of before) assert(renewing.events.emit(e));
      assert(await renewing.events.flush(10_000));
      await Deno.writeTextFile(renewedPath, setup.issue(catalogUser));
      await waitUntil(
        "the expiry counted",
        () => counter(renewing.metrics, "events_nats_server_errors_total", '{kind="expired"}') > 0,
        10_000,
      );
      const after = Array.from({ length: 100 }, (_, i) => event(i));
      for (const e of after) assert(renewing.events.emit(e));
      assert(await renewing.events.flush(10_000), "published again with the renewed JWT");
      assertEquals(counter(renewing.metrics, "events_published_total"), 200);
      assert(counter(renewing.metrics, "events_nats_disconnects_total") >= 1);
      await renewing.events.close(1000);

      // A user of an account the server does not know: refused, counted, never connected.
      const stranger = natsOperatorSetup([{ name: "catalog" }]);
      await Deno.writeTextFile(`${dir}/stranger.creds`, stranger.creds("catalog"));
      const refused = sink(natsConfig({ NATS_URL: server.url, NATS_CREDS: `${dir}/stranger.creds` }));
      refused.events.emit(event(0));
      await waitUntil(
        "the refusal counted",
        () => counter(refused.metrics, "events_nats_server_errors_total", '{kind="authorization"}') > 0,
        10_000,
      );
      assert(!refused.events.readiness().ready);
      assert(
        /not connected|refused/.test(refused.events.readiness().reason),
        refused.events.readiness().reason,
      );
      await refused.events.close(0);
      // nats.js with the stranger's credentials is refused too.
      const rejected = await connectNats(
        natsConfig({ NATS_URL: server.url, NATS_CREDS: `${dir}/stranger.creds` }),
        {
          timeout: 3000,
          reconnect: false,
        },
      ).then((nc) => nc.close().then(() => false), () => true);
      assert(rejected, "nats.js refused with credentials of an unknown account");
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  "max_payload: messages are sealed to fit the server's, split when sealed before its INFO; nothing refused",
  options,
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "tailwatch-nats-small-" });
    await Deno.writeTextFile(
      `${dir}/nats.conf`,
      `max_payload: 8KB\njetstream { store_dir: "${dir}/jetstream" }\n`,
    );
    await using server = await startNatsServer({ dir, configFile: `${dir}/nats.conf` });
    try {
      await applyRequestEventsStream(server.url);
      const { events, metrics } = sink(server.url, { eventsPerMessage: 256 });
      // Emitted before the connection is up: sealed for the default 1 MiB (messages of 256 events, ~40 kB), then
      // split to fit 8 KiB before they are sent.
      const emitted = Array.from({ length: 1500 }, (_, i) => event(i, i % 50 === 0 ? 2000 : 0));
      for (const e of emitted) assert(events.emit(e));
      assert(await events.flush(20_000), "every event acknowledged");
      // And while connected: sealed small from the start.
      const more = Array.from({ length: 1500 }, (_, i) => event(i));
      for (let i = 0; i < more.length; i += 100) {
        for (const e of more.slice(i, i + 100)) assert(events.emit(e));
        await sleep(2);
      }
      assert(await events.flush(20_000), "every event acknowledged");
      assertEquals(counter(metrics, "events_published_total"), 3000);
      assertEquals(counter(metrics, "events_nats_server_errors_total"), 0, "no Maximum Payload Violation");
      assertEquals(counter(metrics, "events_publish_refused_total"), 0);
      assertEquals(
        counter(metrics, "events_nats_disconnects_total"),
        0,
        "the server never closed the connection",
      );
      const { ids, messages } = await storedIds(server.url);
      assertEquals(ids.sort(), [...emitted, ...more].map((e) => e.eventId).sort(), "every event stored once");
      assert(messages.length > 3000 / 256 * 4, `many small messages: ${messages.length}`);
      for (const message of messages) {
        assert(
          message.data.length <= 8192,
          `a payload of ${message.data.length}`,
        );
      }
      // One event larger than any message may be: dropped and counted, never sent.
      assert(events.emit(event(0, 9000)));
      await waitUntil(
        "the oversize event dropped",
        () => counter(metrics, "events_too_large_total") === 1,
        5_000,
      );
      assertEquals(counter(metrics, "events_dropped_total"), 1);
      assertEquals(counter(metrics, "events_nats_server_errors_total"), 0);
      assert(await events.flush(5_000));
      await events.close(1000);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  "connect_urls: a client given one node learns the others and survives that node's SIGKILL under load",
  options,
  async () => {
    await using cluster = await startNatsCluster();
    await applyRequestEventsStream(cluster.url.split(",")[0], { replicas: 3 });
    // The wire alone: the servers it tries after the first INFO.
    let connected = false;
    const wire = createNatsWire({
      servers: [parseNatsUrl(cluster.nodes[0].url)],
      name: "wire-discovery",
      logger,
      onConnected: () => connected = true,
      onMessage: () => {},
    });
    await waitUntil("connected", () => connected && wire.servers.length === 3, 10_000);
    assertEquals(
      wire.servers.sort(),
      cluster.nodes.map((node) => `127.0.0.1:${node.port}`).sort(),
      "the configured node and the two it announced",
    );
    assertEquals(wire.maxPayload, 1024 * 1024);
    await wire.close();

    // The sink given only the first node, which is killed under load: it goes on with the others.
    const { events, metrics } = sink(cluster.nodes[0].url);
    const load = emitUnderLoad(events);
    await sleep(1000);
    await cluster.nodes[0].stop("SIGKILL");
    await sleep(2500);
    await load.stop();
    assert(await events.flush(30_000), "every event acknowledged after the node died");
    assertEquals(load.refused(), 0, "nothing dropped");
    assert(counter(metrics, "events_nats_disconnects_total") >= 1, "it was disconnected");
    assertEquals(counter(metrics, "events_published_total"), load.emitted.length);
    await events.close(1000);
    // The survivors elect new leaders for the stream and the meta group; JetStream answers once they have.
    await cluster.healthy();
    const { ids } = await storedIds(cluster.nodes[1].url);
    assertEquals(ids.length, new Set(ids).size, "no event stored twice");
    assertEquals(ids.sort(), load.emitted.sort(), "every event stored once");

    // no_advertise: the nodes announce nothing, the configured list is all the client has.
    await using quiet = await startNatsCluster({ noAdvertise: true });
    let up = false;
    const lonely = createNatsWire({
      servers: [parseNatsUrl(quiet.nodes[0].url)],
      name: "wire-no-advertise",
      logger,
      onConnected: () => up = true,
      onMessage: () => {},
    });
    await waitUntil("connected", () => up, 10_000);
    await sleep(300);
    assertEquals(lonely.servers, [`127.0.0.1:${quiet.nodes[0].port}`]);
    await lonely.close();
  },
);

Deno.test(
  "lame duck: the sink moves to another node before its own goes, re-sends what awaited its ack, loses nothing",
  options,
  async () => {
    await using cluster = await startNatsCluster();
    await applyRequestEventsStream(cluster.url, { replicas: 3 });
    const { events, metrics } = sink(natsConfig(cluster.url));
    await waitUntil("connected", () => events.readiness().ready, 10_000);
    const load = emitUnderLoad(events);
    await sleep(800);
    const [index] = await cluster.nodesWithConnection("catalog-events");
    assert(index !== undefined, "the sink's node found");
    const lameDuck = cluster.nodes[index].lameDuck(60_000);
    // Within the grace period (3 s) it is on another node too (the old connection stays until closed).
    await waitUntil(
      "moved",
      async () => (await cluster.nodesWithConnection("catalog-events")).some((i) => i !== index),
      3_000,
    );
    assertEquals(counter(metrics, "events_nats_disconnects_total"), 0, "a move, not a disconnect");
    await lameDuck;
    await sleep(500);
    await load.stop();
    assert(await events.flush(30_000), "every event acknowledged");
    assertEquals(counter(metrics, "events_nats_disconnects_total"), 0, "never disconnected");
    assertEquals(load.refused(), 0);
    assertEquals(counter(metrics, "events_published_total"), load.emitted.length);
    await events.close(1000);
    const other = cluster.nodes.find((_, i) => i !== index)!;
    const { ids } = await storedIds(other.url);
    assertEquals(ids.length, new Set(ids).size, "no event stored twice");
    assertEquals(ids.sort(), load.emitted.sort(), "every event stored once");
    const nc = await connect({ servers: other.url });
    try {
      const info = await (await jetstreamManager(nc)).streams.info(REQUEST_EVENTS_STREAM);
      assertEquals(info.config.num_replicas, 3);
    } finally {
      await nc.close();
    }
  },
);
