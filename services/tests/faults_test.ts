/** Faults around the services: overload, a NATS restart under load, SIGTERM under load. */
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import {
  create,
  type DescMessage,
  type DescMethodUnary,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import { CatalogService } from "@tailwatch/proto/catalog/v1";
import { PaymentService } from "@tailwatch/proto/payments/v1";
import { Health, HealthCheckResponse_ServingStatus } from "@tailwatch/proto/grpc/health/v1";
import { assert, assertEquals, startNatsServer, waitUntil } from "@tailwatch/testing";
import { applyRequestEventsStream } from "@tailwatch/nats";
import { Code, createClient, ServiceError } from "@tailwatch/grpc";
import { runLoad } from "./load.ts";
import { startServiceProcess } from "@tailwatch/load";
import { readAllEvents, startStack } from "@tailwatch/testing/stack";

const options = { sanitizeOps: false, sanitizeResources: false };

/** charge and getPayment through grpc-js's own client, failures as ServiceError. */
function grpcJsPaymentsClient(address: string) {
  const channel = new grpc.Client(address, grpc.credentials.createInsecure());
  const call =
    <I extends DescMessage, O extends DescMessage>(method: DescMethodUnary<I, O>) =>
    (request: MessageInitShape<I>) =>
      new Promise<MessageShape<O>>((resolve, reject) => {
        channel.makeUnaryRequest(
          `/${PaymentService.typeName}/${method.name}`,
          (message: MessageShape<I>) => Buffer.from(toBinary(method.input, message)),
          (bytes: Buffer) => fromBinary(method.output, bytes),
          create(method.input, request),
          (error, response) => error ? reject(ServiceError.from(error)) : resolve(response!),
        );
      });
  return {
    charge: call(PaymentService.method.charge),
    getPayment: call(PaymentService.method.getPayment),
    close: () => channel.close(),
  };
}

Deno.test(
  "past the in-flight limit requests are refused at once and the service stays healthy",
  options,
  async () => {
    await using nats = await startNatsServer();
    await using stack = await startStack(nats.url, {
      MAX_IN_FLIGHT: "4",
      FAULT_LATENCY: "fixed:400",
    });
    const catalog = stack.clients.catalog;
    const health = createClient(Health, `127.0.0.1:${stack.catalog.grpcPort}`);
    const finished: Array<"ok" | "refused"> = [];
    const calls = Array.from(
      { length: 40 },
      () =>
        catalog.getProduct({ productId: "kibble-salmon-2kg" }, {
          timeoutMs: 10_000,
        }).then(
          () => finished.push("ok"),
          (error) => {
            assertEquals((error as ServiceError).code, Code.RESOURCE_EXHAUSTED);
            assert(
              /limit of 4 requests in flight/.test(
                (error as ServiceError).message,
              ),
            );
            finished.push("refused");
          },
        ),
    );
    // While saturated: health answers SERVING, and REST refuses with 429 and Retry-After.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const status = await health.check({ service: "" });
    assertEquals(status.status, HealthCheckResponse_ServingStatus.SERVING);
    const rest = await stack.rest(
      stack.catalog,
      "/v1/products/kibble-salmon-2kg",
    );
    assertEquals(rest.status, 429);
    assertEquals(rest.headers.get("retry-after"), "1");
    assertEquals((await rest.json()).status, "RESOURCE_EXHAUSTED");
    await Promise.all(calls);
    assertEquals(
      finished.filter((f) => f === "ok").length,
      4,
      "exactly the limit was admitted",
    );
    assertEquals(
      finished.indexOf("ok"),
      36,
      "every refusal came back before any admitted request finished",
    );
    // Afterwards it serves normally again.
    await catalog.getProduct({ productId: "kibble-salmon-2kg" });
    health.close();
    const metrics = await (await stack.rest(stack.catalog, "/metrics")).text();
    assert(
      /admission_rejections_total\{method="\/catalog.v1.CatalogService\/GetProduct",protocol="grpc"\} 36/
        .test(metrics),
    );
    assert(await stack.catalog.events.flush(10_000));
    const events = await readAllEvents(nats.url);
    assertEquals(
      events.filter((e) => e.grpcCode === Code.RESOURCE_EXHAUSTED).length,
      37,
      "refusals are events too",
    );
    assertEquals(events.length, 42);
  },
);

Deno.test(
  "a NATS restart of a few seconds under load loses no event",
  options,
  async () => {
    await using nats = await startNatsServer();
    let served = 0;
    {
      await using stack = await startStack(nats.url);
      const catalog = stack.clients.catalog;
      const outage = (async () => {
        await new Promise((resolve) => setTimeout(resolve, 700));
        await nats.stop("SIGKILL");
        await new Promise((resolve) => setTimeout(resolve, 3000));
        await nats.start();
      })();
      const result = await runLoad(6000, 8, async () => {
        await catalog.getProduct({ productId: "treats-tuna-60g" });
        // Pace the load so that it spans the outage.
        await new Promise((resolve) => setTimeout(resolve, 5));
      });
      await outage;
      assertEquals(
        result.errors.size,
        0,
        "the service serves while NATS is down",
      );
      served = result.ok;
      assert(
        await stack.catalog.events.flush(60_000),
        "the buffer drains after NATS is back",
      );
      const metrics = await (await stack.rest(stack.catalog, "/metrics"))
        .text();
      assert(/events_dropped_total 0/.test(metrics), "nothing dropped");
      assert(
        /events_nats_disconnects_total [1-9]/.test(metrics),
        "the outage cut the service's connection to NATS while it served",
      );
    }
    const events = await readAllEvents(nats.url);
    assertEquals(
      events.length,
      served,
      "events in the stream = requests served",
    );
    assertEquals(
      new Set(events.map((e) => e.eventId)).size,
      served,
      "no duplicates",
    );
  },
);

Deno.test(
  "SIGTERM under load: in-flight requests finish, events are flushed, exit code 0",
  options,
  async () => {
    await using nats = await startNatsServer();
    await applyRequestEventsStream(nats.url);
    const dir = await Deno.makeTempDir();
    const { grpcPort, process: service } = await startServiceProcess("catalog", {
      NATS_URL: nats.url,
      FAULT_LATENCY: "fixed:50",
      SHUTDOWN_GRACE_MS: "10000",
      LOG_LEVEL: "info",
    }, dir);
    const catalog = createClient(CatalogService, `127.0.0.1:${grpcPort}`);
    await waitUntil(
      "catalog answers",
      async () => (await catalog.listProducts({}), true),
      30_000,
    );
    let accepted = 1; // the listProducts that answered above
    const load = runLoad(100_000, 32, async () => {
      await catalog.getProduct({ productId: "kitten-milk-200ml" }, {
        timeoutMs: 20_000,
      });
      accepted++;
    }, { stopOn: (error) => error.code === Code.UNAVAILABLE });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const exit = service.stop("SIGTERM", 30_000);
    const result = await load;
    const code = await exit;
    catalog.close();
    const log = await service.log();
    assertEquals(code, 0, `exit code (log:\n${log})`);
    assert(/"msg":"drained"/.test(log), `the drain completed (log:\n${log})`);
    assert(result.ok > 100, `load ran (${result.ok} ok)`);
    for (const [code, count] of result.errors) {
      assertEquals(
        code,
        Code.UNAVAILABLE,
        `only refused connections after the drain, got ${count} × ${code}`,
      );
    }
    const events = await readAllEvents(nats.url);
    assertEquals(
      events.length,
      accepted,
      "one event per request the service accepted, none lost",
    );
    await Deno.remove(dir, { recursive: true });
  },
);

Deno.test(
  "clients that close their connections gracefully never bring the server down",
  options,
  async () => {
    // Deno 2.9.4 to 2.9.6 crash (free(): invalid pointer in node:http2) when a grpc-js client closes its
    // session after calls: this is why tools/package.json pins Deno 2.9.3. Several rounds, because the crash
    // did not happen on every close.
    const dir = await Deno.makeTempDir();
    const { grpcPort, process: payments } = await startServiceProcess(
      "payments",
      { EVENTS_ENABLED: "false" },
      dir,
    );
    let exited = false;
    payments.status.then(() => exited = true);
    for (let round = 0; round < 6; round++) {
      // grpc-js's client (what the crash was found with) and the kit's own client in turn.
      const client = round % 2 === 0
        ? grpcJsPaymentsClient(`127.0.0.1:${grpcPort}`)
        : createClient(PaymentService, `127.0.0.1:${grpcPort}`);
      await waitUntil("payments answers", async () => {
        await client.getPayment({ paymentId: "pay-none" }).catch((error) => {
          if ((error as ServiceError).code !== Code.NOT_FOUND) throw error;
        });
        return true;
      }, 30_000);
      // Enough calls for the session to have closed streams behind it when it goes away.
      for (let batch = 0; batch < 50; batch++) {
        await Promise.all(Array.from({ length: 10 }, (_, i) =>
          client.charge({
            orderId: `close-${round}-${batch}-${i}`,
            amountCents: 100n,
            currency: "EUR",
            cardNumber: "4242424242424242",
          })));
      }
      client.close();
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert(
        !exited,
        `payments died after client ${round + 1} closed:\n${await payments
          .log()}`,
      );
    }
    assertEquals(await payments.stop("SIGTERM"), 0);
    await Deno.remove(dir, { recursive: true });
  },
);
