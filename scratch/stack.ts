import { startNatsServer } from "@tailwatch/testing";
import { startStackProcesses } from "../load/processes.ts";
await using nats = await startNatsServer();
await using stack = await startStackProcesses({ NATS_URL: nats.url }, "/tmp/stacklogs");
console.log(JSON.stringify({ orders: stack.orders.grpcPort, catalog: stack.catalog.grpcPort, pids: [stack.orders.process.pid, stack.catalog.process.pid, stack.payments.process.pid] }));
await new Promise<void>((resolve) => Deno.addSignalListener("SIGINT", () => resolve()));
