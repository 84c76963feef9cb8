import { assertEquals } from "./assert.ts";
import { NATS_SERVER_VERSION, startNatsServer } from "./nats_server.ts";
import { startClickHouseServer } from "./clickhouse_server.ts";

Deno.test("a private nats-server answers, restarts on the same port, and is gone after dispose", async () => {
  let port: number;
  {
    await using nats = await startNatsServer();
    port = nats.port;
    const info = await (await fetch(`http://127.0.0.1:${nats.monitorPort}/jsz`)).json();
    assertEquals(typeof info.config.store_dir, "string");
    const varz = await (await fetch(`http://127.0.0.1:${nats.monitorPort}/varz`)).json();
    assertEquals(`v${varz.version}`, NATS_SERVER_VERSION, "the pinned release from the Go module proxy");
    await nats.stop();
    await nats.start();
    const again = await fetch(`http://127.0.0.1:${nats.monitorPort}/healthz`);
    assertEquals(again.status, 200);
    await again.body?.cancel();
  }
  let refused = false;
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
  } catch {
    refused = true;
  }
  assertEquals(refused, true, "port closed after dispose");
});

Deno.test("a private clickhouse-server answers queries as the admin user", async () => {
  await using clickhouse = await startClickHouseServer();
  assertEquals((await clickhouse.query("SELECT 1 + 1")).trim(), "2");
});
