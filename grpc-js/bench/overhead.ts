/**
 * What the interceptor costs a grpc-js server: the same closed-loop load of unary calls (client and server in
 * this process, 32 in flight, a 100-byte request and a 200-byte answer) on a plain grpc-js server, and on one
 * with the Tailwatch interceptor publishing to a private nats-server (the stream made as the setup step makes
 * it). Prints, per variant and round, calls/s and the process's CPU µs per call (user + system, from
 * node:process cpuUsage: client, server, interceptor and sink together); the difference is the interceptor's
 * and the sink's. Rounds alternate the variants. `deno run -A grpc-js/bench/overhead.ts [calls] [rounds]`.
 */
import * as grpc from "@grpc/grpc-js";
import process from "node:process";
import { applyRequestEventsStream } from "@tailwatch/nats";
import { createLogger } from "@tailwatch/runtime";
import { startNatsServer, waitUntil } from "@tailwatch/testing";
import { createTailwatchInterceptor } from "../interceptor.ts";
import { callInventory, requestOf, RESERVE, startInventoryServer } from "../test_service.ts";

const CALLS = Number(Deno.args[0] ?? 20_000);
const ROUNDS = Number(Deno.args[1] ?? 3);
const IN_FLIGHT = 32;

await using nats = await startNatsServer();
await applyRequestEventsStream(nats.url);
const tailwatch = await createTailwatchInterceptor({
  service: "inventory",
  natsUrl: nats.url,
  logger: createLogger("warn"),
});
await waitUntil("the sink is ready", () => tailwatch.events.readiness().ready);
const request = requestOf({ id: "x".repeat(70), reply: 200 });

async function round(interceptors: grpc.ServerInterceptor[]): Promise<{ perSecond: number; cpuUs: number }> {
  await using server = await startInventoryServer({ interceptors });
  const client = new grpc.Client(server.address, grpc.credentials.createInsecure());
  // Warm-up: connection, JIT.
  for (let i = 0; i < 500; i++) await callInventory(client, RESERVE, request);
  const cpu = process.cpuUsage();
  const start = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next++ < CALLS) await callInventory(client, RESERVE, request);
  }));
  const seconds = (performance.now() - start) / 1000;
  const used = process.cpuUsage(cpu);
  client.close();
  await tailwatch.events.flush(10_000);
  return { perSecond: CALLS / seconds, cpuUs: (used.user + used.system) / CALLS };
}

for (let r = 0; r < ROUNDS; r++) {
  for (const [name, interceptors] of [["plain", []], ["tailwatch", [tailwatch.interceptor]]] as const) {
    const { perSecond, cpuUs } = await round([...interceptors]);
    console.log(
      `round ${r + 1} ${name.padEnd(9)} ${Math.round(perSecond)} calls/s, ${cpuUs.toFixed(1)} µs CPU/call`,
    );
  }
}
const published = tailwatch.metrics.render().match(/^events_published_total (\S+)$/m)?.[1];
console.log(`events published: ${published}`);
await tailwatch.close();
