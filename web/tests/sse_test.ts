/**
 * Live connections: pages on the same view share one computation (ClickHouse queries per second do not grow
 * with the pages open), and many clients connecting and going away leave neither subscribers nor views
 * behind, nor memory; past the cap a new connection gets 503.
 */
import { assert, assertEquals, startClickHouseServer } from "@tailwatch/testing";
import { createWebServer } from "../server.ts";
import { insertJson, migrate, webConfig } from "./helpers.ts";

const options = { sanitizeOps: false, sanitizeResources: false };

/** Opens a live connection and resolves once its first update arrived; abort() ends it. */
async function openStream(url: string): Promise<{ abort: () => void; bytes: () => number }> {
  const controller = new AbortController();
  const response = await fetch(url, { signal: controller.signal });
  if (response.status !== 200) {
    await response.body?.cancel();
    throw new Error(`status ${response.status}`);
  }
  const reader = response.body!.getReader();
  let bytes = 0;
  let text = "";
  const first = new Promise<void>((resolve, reject) => {
    (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return;
          bytes += value.byteLength;
          if (text.length < 100_000) text += new TextDecoder().decode(value);
          if (text.includes("event: update")) resolve();
        }
      } catch (error) {
        reject(error);
      }
    })();
  });
  await first;
  return {
    abort: () => {
      reader.cancel().catch(() => {});
      controller.abort();
    },
    bytes: () => bytes,
  };
}

Deno.test(
  "many live clients: one computation per view, bounded subscribers and memory",
  options,
  async () => {
    await using ch = await startClickHouseServer();
    await migrate(ch);
    const now = Math.floor(Date.now() / 1000);
    await insertJson(
      ch,
      "request_events",
      Array.from({ length: 500 }, (_, i) => ({
        event_id: crypto.randomUUID(),
        ts: now - 60 + Math.floor(i / 10),
        ts_ms: (now - 60) * 1000 + i * 100,
        service: "orders",
        method: "orders.v1.OrderService/CreateOrder",
        protocol: "grpc",
        duration_us: 1000 + i,
      })),
    );
    const stateDir = await Deno.makeTempDir({ prefix: "tailwatch-web-sse-" });
    await using server = await createWebServer(
      webConfig(ch, stateDir, { WEB_MAX_SSE_CLIENTS: "120" }),
      { alertIntervalMs: 0 },
    );
    const port = await server.listen();
    const url = `http://127.0.0.1:${port}/api/stream?page=overview&range=5m&window=10`;
    const hub = server.app.hub;
    const queriesPerSecond = async () => {
      const before = server.app.reader.queries();
      await new Promise((resolve) => setTimeout(resolve, 4000));
      return (server.app.reader.queries() - before) / 4;
    };

    const one = await openStream(url);
    const qps1 = await queriesPerSecond();
    const many = await Promise.all(Array.from({ length: 99 }, () => openStream(url)));
    assertEquals(hub.stats().subscribers, 100);
    assertEquals(hub.stats().views, 1);
    const qps100 = await queriesPerSecond();
    console.log(`ClickHouse queries/s: 1 client ${qps1.toFixed(1)}, 100 clients ${qps100.toFixed(1)}`);
    // Per client, 100 clients would mean about 100 times the queries; shared, the same few per second.
    assert(qps100 < qps1 + 2.5 && qps100 < 10, `queries grow with clients: ${qps1} -> ${qps100}`);
    assert(Math.abs(one.bytes() - many[0].bytes()) < one.bytes(), "every client gets the same updates");

    // Past the cap: 503.
    const extra = await Promise.all(Array.from({ length: 20 }, () => openStream(url)));
    const refused = await fetch(url);
    assertEquals(refused.status, 503);
    await refused.body?.cancel();
    for (const c of [one, ...many, ...extra]) c.abort();
    for (let i = 0; i < 100 && hub.stats().subscribers > 0; i++) await new Promise((r) => setTimeout(r, 50));
    assertEquals(hub.stats(), { ...hub.stats(), subscribers: 0, views: 0 });

    // Churn: clients on many distinct views come and go; nothing stays behind.
    const rssBefore = Deno.memoryUsage().rss;
    for (let round = 0; round < 8; round++) {
      const clients = await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          openStream(
            `http://127.0.0.1:${port}/api/stream?page=overview&range=${
              ["5m", "15m", "1h", "6h"][i % 4]
            }&window=${[10, 60, 300][i % 3]}`,
          )),
      );
      assert(hub.stats().views <= 12, `views: ${hub.stats().views}`);
      for (const c of clients) {
        c.abort();
      }
    }
    for (let i = 0; i < 100 && hub.stats().subscribers > 0; i++) await new Promise((r) => setTimeout(r, 50));
    const after = hub.stats();
    assertEquals([after.subscribers, after.views], [0, 0]);
    const growthMiB = (Deno.memoryUsage().rss - rssBefore) / 1048576;
    console.log(`320 connections opened and closed: RSS ${growthMiB.toFixed(1)} MiB more`);
    assert(growthMiB < 100, `memory grew by ${growthMiB} MiB`);
    await Deno.remove(stateDir, { recursive: true });
  },
);
