/** Events: exactly one per request, gRPC or REST, success or failure, with the right fields and traces. */
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import { assert, assertEquals, startNatsServer } from "@tailwatch/testing";
import { Code, ServiceError } from "@tailwatch/grpc";
import { LOAD_RUN_HEADER, loadRunIdOf } from "@tailwatch/events";
import { Protocol, type RequestEvent } from "@tailwatch/proto/events/v1";
import { readAllEvents, startStack } from "@tailwatch/testing/stack";

const options = { sanitizeOps: false, sanitizeResources: false };
const GOOD_CARD = "4242424242424242";

Deno.test(
  "each request, over either protocol and whatever its outcome, becomes exactly one event",
  options,
  async () => {
    await using nats = await startNatsServer();
    const before = Date.now();
    {
      await using stack = await startStack(nats.url);
      await stack.clients.catalog.getProduct({ productId: "kibble-salmon-2kg" });
      await stack.clients.catalog.getProduct({ productId: "missing" }).catch(() => {});
      const ok = await stack.rest(stack.catalog, "/v1/products/treats-tuna-60g");
      await ok.body?.cancel();
      const notFound = await stack.rest(stack.catalog, "/nowhere");
      await notFound.body?.cancel();
      const client = new grpc.Client(
        `127.0.0.1:${stack.catalog.grpcPort}`,
        grpc.credentials.createInsecure(),
      );
      const unknown = await new Promise<grpc.ServiceError | null>((resolve) =>
        client.makeUnaryRequest(
          "/catalog.v1.CatalogService/Nowhere",
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.from([]),
          (error) => resolve(error),
        )
      );
      client.close();
      assertEquals(unknown?.code, Code.UNIMPLEMENTED as number, "an unknown gRPC method");
      const payment = await stack.rest(stack.payments, "/v1/payments", {
        method: "POST",
        body: JSON.stringify({ orderId: "e-1", amountCents: 42, currency: "EUR", cardNumber: GOOD_CARD }),
      });
      await payment.body?.cancel();
      for (const service of [stack.catalog, stack.payments]) {
        assert(
          await service.events.flush(10_000),
          "flushed",
        );
      }
    }
    const events = await readAllEvents(nats.url);
    assertEquals(events.length, 6, "six requests, six events");
    assertEquals(new Set(events.map((e) => e.eventId)).size, 6, "unique event ids");
    const byKey = (e: RequestEvent) =>
      `${e.service} ${e.protocol} ${e.method} ${e.grpcCode} ${e.httpStatus} ${e.route}`;
    const keys = events.map(byKey).sort();
    assertEquals(
      keys,
      [
        `catalog ${Protocol.GRPC} /catalog.v1.CatalogService/GetProduct ${Code.NOT_FOUND} 200 `,
        `catalog ${Protocol.GRPC} /catalog.v1.CatalogService/GetProduct ${Code.OK} 200 `,
        `catalog ${Protocol.GRPC}  ${Code.UNIMPLEMENTED} 200 `,
        `catalog ${Protocol.HTTP}  ${Code.NOT_FOUND} 404 `,
        `catalog ${Protocol.HTTP} /catalog.v1.CatalogService/GetProduct ${Code.OK} 200 GET /v1/products/{product_id}`,
        `payments ${Protocol.HTTP} /payments.v1.PaymentService/Charge ${Code.OK} 200 POST /v1/payments`,
      ].sort(),
    );
    for (const event of events) {
      assert(
        /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(event.eventId),
        event.eventId,
      );
      assert(
        Number(event.startTimeMs) >= before && Number(event.startTimeMs) <= Date.now(),
        "start time is now-ish",
      );
      assert(event.durationUs > 0n && event.durationUs < 10_000_000n, `duration ${event.durationUs} µs`);
      assert(/^[0-9a-f]{32}$/.test(event.traceId) && /^[0-9a-f]{16}$/.test(event.spanId), "W3C ids");
      assertEquals(event.parentSpanId, "", "requests from outside start root spans");
      assert(event.instance.startsWith(event.service), event.instance);
    }
    const charge = events.find((e) => e.service === "payments")!;
    assert(charge.requestBytes > 0n && charge.responseBytes > 0n, "sizes are recorded");
    const missing = events.find((e) => e.grpcCode === Code.NOT_FOUND && e.protocol === Protocol.GRPC)!;
    assertEquals(missing.errorMessage, "product missing not found");
    // UUIDv7: sorting by id sorts by start time (to the millisecond).
    const byId = [...events].sort((a, b) => a.eventId < b.eventId ? -1 : 1);
    for (let i = 1; i < byId.length; i++) {
      assert(byId[i - 1].startTimeMs <= byId[i].startTimeMs, "event ids are ordered by start time");
    }
  },
);

Deno.test("an order's trace links its spans in orders, catalog and payments", options, async () => {
  await using nats = await startNatsServer();
  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const callerSpan = "00f067aa0ba902b7";
  {
    await using stack = await startStack(nats.url);
    const response = await stack.rest(stack.orders, "/v1/orders", {
      method: "POST",
      headers: { traceparent: `00-${traceId}-${callerSpan}-01` },
      body: JSON.stringify({
        customerId: "t-1",
        lines: [{ productId: "treats-tuna-60g", quantity: 1 }],
        cardNumber: GOOD_CARD,
      }),
    });
    assertEquals(response.status, 200);
    await response.body?.cancel();
    // A failing order over gRPC: its compensation (ReleaseStock) is part of the same trace.
    try {
      await stack.clients.orders.createOrder(
        {
          customerId: "t-2",
          lines: [{ productId: "treats-tuna-60g", quantity: 1 }],
          cardNumber: "4000000000000002",
        },
        { traceparent: `00-${"a".repeat(32)}-${"b".repeat(16)}-01` },
      );
      throw new Error("a declined card must fail");
    } catch (error) {
      assertEquals((error as ServiceError).code, Code.FAILED_PRECONDITION);
    }
    for (const service of [stack.catalog, stack.payments, stack.orders]) {
      assert(await service.events.flush(10_000));
    }
  }
  const events = await readAllEvents(nats.url);
  const trace = events.filter((e) => e.traceId === traceId);
  assertEquals(trace.length, 3, "orders, catalog and payments each served one span of the order");
  const order = trace.find((e) => e.service === "orders")!;
  assertEquals(order.parentSpanId, callerSpan, "the order span is a child of the caller's");
  const reserve = trace.find((e) => e.service === "catalog")!;
  const charge = trace.find((e) => e.service === "payments")!;
  assertEquals(reserve.method, "/catalog.v1.CatalogService/ReserveStock");
  assertEquals(charge.method, "/payments.v1.PaymentService/Charge");
  assertEquals(reserve.parentSpanId, order.spanId);
  assertEquals(charge.parentSpanId, order.spanId);
  assert(reserve.startTimeMs <= charge.startTimeMs, "stock is reserved before the charge");
  assert(order.durationUs >= reserve.durationUs + charge.durationUs, "the parent span covers its children");

  const failed = events.filter((e) => e.traceId === "a".repeat(32));
  assertEquals(
    failed.map((e) => `${e.service}:${e.method.split("/").pop()}:${e.grpcCode}`).sort(),
    [
      `catalog:ReleaseStock:${Code.OK}`,
      `catalog:ReserveStock:${Code.OK}`,
      `orders:CreateOrder:${Code.FAILED_PRECONDITION}`,
      `payments:Charge:${Code.FAILED_PRECONDITION}`,
    ],
  );
});

Deno.test(
  "a load run id (tailwatch-load-run) is copied into the events of every service the request reaches",
  options,
  async () => {
    await using nats = await startNatsServer();
    const order = {
      customerId: "run-1",
      lines: [{ productId: "treats-tuna-60g", quantity: 1 }],
      cardNumber: GOOD_CARD,
    };
    {
      await using stack = await startStack(nats.url);
      // gRPC metadata, as ghz sends it.
      await stack.clients.orders.createOrder(order, { headers: { [LOAD_RUN_HEADER]: "grpc-run:1" } });
      // An HTTP header, as vegeta sends it.
      const rest = await stack.rest(stack.orders, "/v1/orders", {
        method: "POST",
        headers: { [LOAD_RUN_HEADER]: "rest-run.2" },
        body: JSON.stringify(order),
      });
      assertEquals(rest.status, 200);
      await rest.body?.cancel();
      // Not a plain id: no run, and nothing of it reaches the events or the downstream calls.
      await stack.clients.orders.createOrder(order, { headers: { [LOAD_RUN_HEADER]: "a b" } });
      await stack.clients.orders.createOrder(order, { headers: { [LOAD_RUN_HEADER]: "x".repeat(65) } });
      // No header at all.
      await stack.clients.orders.createOrder(order);
      // A request that matched no route still carries its run.
      const nowhere = await stack.rest(stack.catalog, "/nowhere", {
        headers: { [LOAD_RUN_HEADER]: "rest-run.2" },
      });
      await nowhere.body?.cancel();
      for (const service of [stack.catalog, stack.payments, stack.orders]) {
        assert(await service.events.flush(10_000));
      }
    }
    const events = await readAllEvents(nats.url);
    const ofRun = (run: string) =>
      events.filter((e) => e.loadRunId === run).map((e) => `${e.service}:${e.method.split("/").pop()}`)
        .sort();
    assertEquals(ofRun("grpc-run:1"), ["catalog:ReserveStock", "orders:CreateOrder", "payments:Charge"]);
    assertEquals(ofRun("rest-run.2"), [
      "catalog:",
      "catalog:ReserveStock",
      "orders:CreateOrder",
      "payments:Charge",
    ]);
    assertEquals(events.filter((e) => e.loadRunId === "").length, 9, "three orders without a valid run id");
    assertEquals(loadRunIdOf("a".repeat(64)), "a".repeat(64));
    for (const bad of ["", "a b", "a/b", "é", "x".repeat(65), "a\nb", undefined]) {
      assertEquals(loadRunIdOf(bad), "");
    }
  },
);
