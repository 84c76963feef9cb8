/**
 * Every RPC over gRPC and over REST, with the error paths, against the three services running in this
 * process and a real nats-server.
 */
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import { assert, assertEquals, assertRejects, startNatsServer } from "@tailwatch/testing";
import { Code, ServiceError } from "@tailwatch/grpc";
import { OrderStatus } from "@tailwatch/proto/orders/v1";
import { PaymentStatus } from "@tailwatch/proto/payments/v1";
import { ADMIN_TOKEN, startStack } from "@tailwatch/testing/stack";

const GOOD_CARD = "4242 4242 4242 4242";
const DECLINED_CARD = "4000000000000002";
const options = { sanitizeOps: false, sanitizeResources: false };

const hasCode = (code: Code) => (error: unknown) => error instanceof ServiceError && error.code === code;

Deno.test(
  "catalog, payments and orders serve every RPC over gRPC, with their error codes",
  options,
  async () => {
    await using nats = await startNatsServer();
    await using stack = await startStack(nats.url);
    const { catalog, payments, orders } = stack.clients;

    // catalog
    const first = await catalog.listProducts({ pageSize: 2 });
    assertEquals(first.products.length, 2);
    assert(first.nextPageToken !== "", "a second page exists");
    const rest = await catalog.listProducts({ pageSize: 100, pageToken: first.nextPageToken });
    assertEquals(rest.products.length, 3, "five seeded products in all");
    assertEquals(rest.nextPageToken, "");
    await assertRejects(() => catalog.listProducts({ pageSize: 1000 }), hasCode(Code.INVALID_ARGUMENT));
    await assertRejects(
      () => catalog.listProducts({ pageToken: "garbage!" }),
      hasCode(Code.INVALID_ARGUMENT),
    );
    const created = await catalog.createProduct({
      name: "Duck mousse",
      priceCents: 250n,
      currency: "EUR",
      stock: 3,
    });
    assertEquals(created.product!.stock, 3);
    assertEquals(
      (await catalog.getProduct({ productId: created.product!.productId })).product!.name,
      "Duck mousse",
    );
    await assertRejects(() => catalog.getProduct({ productId: "no-such-product" }), hasCode(Code.NOT_FOUND));
    await assertRejects(() => catalog.getProduct({ productId: "" }), hasCode(Code.INVALID_ARGUMENT));
    await assertRejects(() => catalog.getProduct({ productId: "bad/id" }), hasCode(Code.INVALID_ARGUMENT));
    await assertRejects(
      () => catalog.createProduct({ name: "", priceCents: 1n, currency: "EUR" }),
      hasCode(Code.INVALID_ARGUMENT),
    );
    await assertRejects(
      () => catalog.createProduct({ name: "x", priceCents: 1n, currency: "euro" }),
      hasCode(Code.INVALID_ARGUMENT),
    );
    const productId = created.product!.productId;
    const reservation = await catalog.reserveStock({ orderId: "o-1", lines: [{ productId, quantity: 2 }] });
    assertEquals(reservation.lines[0].unitPriceCents, 250n);
    assertEquals((await catalog.getProduct({ productId })).product!.stock, 1);
    const again = await catalog.reserveStock({ orderId: "o-1", lines: [{ productId, quantity: 2 }] });
    assertEquals(
      again.reservationId,
      reservation.reservationId,
      "reserving twice for one order is idempotent",
    );
    await assertRejects(
      () => catalog.reserveStock({ orderId: "o-2", lines: [{ productId, quantity: 2 }] }),
      hasCode(Code.FAILED_PRECONDITION),
    );
    await assertRejects(
      () => catalog.reserveStock({ orderId: "o-3", lines: [] }),
      hasCode(Code.INVALID_ARGUMENT),
    );
    assertEquals((await catalog.releaseStock({ reservationId: reservation.reservationId })).released, true);
    assertEquals((await catalog.releaseStock({ reservationId: reservation.reservationId })).released, false);
    assertEquals((await catalog.getProduct({ productId })).product!.stock, 3);
    await assertRejects(
      () => catalog.releaseStock({ reservationId: "res-unknown" }),
      hasCode(Code.NOT_FOUND),
    );

    // payments
    const charged = await payments.charge({
      orderId: "o-9",
      amountCents: 500n,
      currency: "EUR",
      cardNumber: GOOD_CARD,
    });
    assertEquals(charged.payment!.cardLast4, "4242");
    assertEquals(charged.payment!.status, PaymentStatus.CAPTURED);
    await assertRejects(
      () =>
        payments.charge({
          orderId: "o-10",
          amountCents: 500n,
          currency: "EUR",
          cardNumber: "4242424242424241",
        }),
      hasCode(Code.INVALID_ARGUMENT),
    );
    await assertRejects(
      () =>
        payments.charge({ orderId: "o-11", amountCents: 500n, currency: "EUR", cardNumber: DECLINED_CARD }),
      hasCode(Code.FAILED_PRECONDITION),
    );
    await assertRejects(
      () => payments.charge({ orderId: "o-12", amountCents: 0n, currency: "EUR", cardNumber: GOOD_CARD }),
      hasCode(Code.INVALID_ARGUMENT),
    );
    const refunded = await payments.refund({ paymentId: charged.payment!.paymentId });
    assertEquals(refunded.payment!.status, PaymentStatus.REFUNDED);
    assertEquals(
      (await payments.getPayment({ paymentId: charged.payment!.paymentId })).payment!.orderId,
      "o-9",
    );
    await assertRejects(() => payments.getPayment({ paymentId: "pay-unknown" }), hasCode(Code.NOT_FOUND));

    // orders
    const order = (await orders.createOrder({
      customerId: "cust-1",
      lines: [{ productId: "treats-tuna-60g", quantity: 2 }, { productId: "kibble-salmon-2kg", quantity: 1 }],
      cardNumber: GOOD_CARD,
    })).order!;
    assertEquals(order.totalCents, 2n * 349n + 1899n);
    assertEquals(order.status, OrderStatus.CONFIRMED);
    assertEquals((await orders.getOrder({ orderId: order.orderId })).order!.paymentId, order.paymentId);
    await orders.createOrder({
      customerId: "cust-2",
      lines: [{ productId: "treats-tuna-60g", quantity: 1 }],
      cardNumber: GOOD_CARD,
    });
    const listed = await orders.listOrders({ customerId: "cust-1" });
    assertEquals(listed.orders.map((o) => o.orderId), [order.orderId]);
    const page1 = await orders.listOrders({ pageSize: 1 });
    const page2 = await orders.listOrders({ pageSize: 1, pageToken: page1.nextPageToken });
    assertEquals(page2.orders[0].orderId, order.orderId, "newest first, then the next page");
    const stockBefore = (await catalog.getProduct({ productId: "treats-tuna-60g" })).product!.stock;
    const cancelled = (await orders.cancelOrder({ orderId: order.orderId })).order!;
    assertEquals(cancelled.status, OrderStatus.CANCELLED);
    assertEquals(
      (await catalog.getProduct({ productId: "treats-tuna-60g" })).product!.stock,
      stockBefore + 2,
    );
    assertEquals(
      (await payments.getPayment({ paymentId: order.paymentId })).payment!.status,
      PaymentStatus.REFUNDED,
    );
    await assertRejects(() => orders.getOrder({ orderId: "ord-unknown" }), hasCode(Code.NOT_FOUND));
    await assertRejects(
      () =>
        orders.createOrder({
          customerId: "c",
          lines: [{ productId: "no-such", quantity: 1 }],
          cardNumber: GOOD_CARD,
        }),
      hasCode(Code.NOT_FOUND),
    );
    // A declined card compensates: the stock reserved for the order comes back.
    const tunaBefore = (await catalog.getProduct({ productId: "treats-tuna-60g" })).product!.stock;
    await assertRejects(
      () =>
        orders.createOrder({
          customerId: "c",
          lines: [{ productId: "treats-tuna-60g", quantity: 5 }],
          cardNumber: DECLINED_CARD,
        }),
      hasCode(Code.FAILED_PRECONDITION),
    );
    assertEquals((await catalog.getProduct({ productId: "treats-tuna-60g" })).product!.stock, tunaBefore);

    // admin, with the token in gRPC metadata
    const admin = stack.clients.admin(stack.catalog);
    await assertRejects(() => admin.getFaults({}), hasCode(Code.UNAUTHENTICATED));
    await assertRejects(
      () => admin.getFaults({}, { headers: { authorization: "Bearer wrong" } }),
      hasCode(Code.PERMISSION_DENIED),
    );
    const adminAuth = { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } };
    const set = await admin.setFaults(
      { faults: { latency: { case: "fixed", value: { delayMs: 1 } } } },
      adminAuth,
    );
    const fixedDelayMs = (faults: typeof set.faults) =>
      faults?.latency.case === "fixed" ? faults.latency.value.delayMs : undefined;
    assertEquals(fixedDelayMs(set.faults), 1);
    assertEquals(fixedDelayMs((await admin.getFaults({}, adminAuth)).faults), 1);
    await admin.setFaults({ faults: {} }, adminAuth);
    assertEquals((await admin.getFaults({}, adminAuth)).faults?.latency.case, undefined);
  },
);

Deno.test(
  "malformed protobuf over gRPC is INVALID_ARGUMENT and the server keeps serving",
  options,
  async () => {
    await using nats = await startNatsServer();
    await using stack = await startStack(nats.url);
    const client = new grpc.Client(`127.0.0.1:${stack.catalog.grpcPort}`, grpc.credentials.createInsecure());
    const status = await new Promise<grpc.ServiceError | null>((resolve) => {
      client.makeUnaryRequest(
        "/catalog.v1.CatalogService/GetProduct",
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from([0x0a, 0xff, 0xff, 0xff]),
        new grpc.Metadata(),
        {},
        (error) => resolve(error),
      );
    });
    client.close();
    assertEquals(status?.code, Code.INVALID_ARGUMENT as number);
    assert(/malformed catalog\.v1\.GetProductRequest/.test(status?.details ?? ""), status?.details);
    assertEquals((await stack.clients.catalog.listProducts({})).products.length, 5);
  },
);

async function json(response: Response): Promise<Record<string, unknown>> {
  return await response.json();
}

Deno.test(
  "every RPC is served over REST with the protobuf JSON mapping and the same errors",
  options,
  async () => {
    await using nats = await startNatsServer();
    await using stack = await startStack(nats.url, { MAX_BODY_BYTES: "2048" });
    const { catalog, payments, orders } = stack;
    const post = (body: unknown) => ({
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });

    let response = await stack.rest(catalog, "/v1/products?pageSize=2");
    assertEquals(response.status, 200);
    const page = await json(response);
    assertEquals((page.products as unknown[]).length, 2);
    response = await stack.rest(catalog, `/v1/products?pageToken=${page.nextPageToken}`);
    assertEquals(((await json(response)).products as unknown[]).length, 3);
    response = await stack.rest(catalog, "/v1/products/kibble-salmon-2kg");
    assertEquals(((await json(response)).product as Record<string, unknown>).priceCents, "1899");
    response = await stack.rest(
      catalog,
      "/v1/products",
      post({ name: "Cod bites", priceCents: "120", currency: "EUR", stock: 9 }),
    );
    const product = (await json(response)).product as Record<string, string>;
    assertEquals(response.status, 200);
    response = await stack.rest(
      catalog,
      "/v1/reservations",
      post({ orderId: "r-1", lines: [{ productId: product.productId, quantity: 4 }] }),
    );
    const reservation = await json(response);
    assertEquals(response.status, 200);
    response = await stack.rest(catalog, `/v1/reservations/${reservation.reservationId}:release`, post({}));
    assertEquals((await json(response)).released, true);

    response = await stack.rest(
      payments,
      "/v1/payments",
      post({ orderId: "r-2", amountCents: 100, currency: "EUR", cardNumber: GOOD_CARD }),
    );
    const payment = (await json(response)).payment as Record<string, string>;
    assertEquals(payment.status, "PAYMENT_STATUS_CAPTURED");
    response = await stack.rest(payments, `/v1/payments/${payment.paymentId}`);
    assertEquals(((await json(response)).payment as Record<string, string>).orderId, "r-2");
    response = await stack.rest(payments, `/v1/payments/${payment.paymentId}:refund`, post({}));
    assertEquals(
      ((await json(response)).payment as Record<string, string>).status,
      "PAYMENT_STATUS_REFUNDED",
    );

    response = await stack.rest(
      orders,
      "/v1/orders",
      post({
        customerId: "web-1",
        lines: [{ productId: "kitten-milk-200ml", quantity: 3 }],
        cardNumber: GOOD_CARD,
      }),
    );
    assertEquals(response.status, 200);
    const order = (await json(response)).order as Record<string, string>;
    assertEquals(order.totalCents, "897");
    response = await stack.rest(orders, `/v1/orders/${order.orderId}`);
    assertEquals(((await json(response)).order as Record<string, string>).status, "ORDER_STATUS_CONFIRMED");
    response = await stack.rest(orders, "/v1/orders?customerId=web-1&pageSize=5");
    assertEquals(((await json(response)).orders as unknown[]).length, 1);
    response = await stack.rest(orders, `/v1/orders/${order.orderId}:cancel`, post({}));
    assertEquals(((await json(response)).order as Record<string, string>).status, "ORDER_STATUS_CANCELLED");

    // Error paths: a clear status and message, never a 500 for the client's mistake.
    const expectError = async (res: Response, status: number, code: Code, pattern: RegExp) => {
      const body = await json(res);
      assertEquals(res.status, status, `status for ${JSON.stringify(body)}`);
      assertEquals(body.code, code);
      assert(pattern.test(String(body.message)), `message ${body.message} should match ${pattern}`);
    };
    await expectError(
      await stack.rest(catalog, "/v1/products/nope"),
      404,
      Code.NOT_FOUND,
      /product nope not found/,
    );
    await expectError(
      await stack.rest(catalog, "/v1/products/bad%2Fid"),
      400,
      Code.INVALID_ARGUMENT,
      /product_id must be/,
    );
    await expectError(
      await stack.rest(catalog, "/v1/products/%E0%A4%A"),
      400,
      Code.INVALID_ARGUMENT,
      /percent-encoding/,
    );
    await expectError(
      await stack.rest(catalog, "/v2/whatever"),
      404,
      Code.NOT_FOUND,
      /no route for GET \/v2\/whatever/,
    );
    await expectError(
      await stack.rest(catalog, "/v1/products", { method: "DELETE" }),
      405,
      Code.UNIMPLEMENTED,
      /allowed: GET, POST/,
    );
    await expectError(
      await stack.rest(catalog, "/v1/products", { method: "POST", body: "{not json" }),
      400,
      Code.INVALID_ARGUMENT,
      /malformed JSON/,
    );
    await expectError(
      await stack.rest(
        catalog,
        "/v1/products",
        post({ name: "x", priceCents: 1, currency: "EUR", colour: "red" }),
      ),
      400,
      Code.INVALID_ARGUMENT,
      /colour/,
    );
    await expectError(
      await stack.rest(catalog, "/v1/products", post({ name: "x", priceCents: "lots", currency: "EUR" })),
      400,
      Code.INVALID_ARGUMENT,
      /priceCents|price_cents/,
    );
    await expectError(
      await stack.rest(catalog, "/v1/products", post([1, 2])),
      400,
      Code.INVALID_ARGUMENT,
      /must be an object/,
    );
    await expectError(
      await stack.rest(catalog, "/v1/products?color=red"),
      400,
      Code.INVALID_ARGUMENT,
      /unknown query parameter "color"/,
    );
    await expectError(
      await stack.rest(
        catalog,
        "/v1/products",
        post({ name: "x".repeat(5000), priceCents: 1, currency: "EUR" }),
      ),
      413,
      Code.RESOURCE_EXHAUSTED,
      /larger than the limit of 2048 bytes/,
    );
    await expectError(
      await stack.rest(
        orders,
        "/v1/orders",
        post({
          customerId: "c",
          lines: [{ productId: "kitten-milk-200ml", quantity: 1 }],
          cardNumber: DECLINED_CARD,
        }),
      ),
      400,
      Code.FAILED_PRECONDITION,
      /card declined/,
    );

    // Admin: token required, then faults can be read and set.
    await expectError(await stack.rest(payments, "/admin/v1/faults"), 401, Code.UNAUTHENTICATED, /Bearer/);
    await expectError(
      await stack.rest(payments, "/admin/v1/faults", { headers: { authorization: "Bearer wrong" } }),
      403,
      Code.PERMISSION_DENIED,
      /wrong admin token/,
    );
    const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
    response = await stack.rest(payments, "/admin/v1/faults", {
      method: "PUT",
      headers: auth,
      body: JSON.stringify({ faults: { lognormal: { medianMs: 2, p99Ms: 1 } } }),
    });
    await expectError(response, 400, Code.INVALID_ARGUMENT, /lognormal needs 0 < median_ms < p99_ms/);
    response = await stack.rest(payments, "/admin/v1/faults", {
      method: "PUT",
      headers: auth,
      body: JSON.stringify({ faults: { fixed: { delayMs: 1 }, errorRate: 0 } }),
    });
    assertEquals(response.status, 200);
    assertEquals(((await json(response)).faults as Record<string, unknown>).fixed, { delayMs: 1 });

    // Operational endpoints.
    const openapi = await json(await stack.rest(orders, "/openapi.json"));
    const paths = openapi.paths as Record<string, Record<string, unknown>>;
    assert(paths["/v1/orders/{order_id}:cancel"]?.post !== undefined, "OpenAPI lists the cancel route");
    assert(paths["/admin/v1/faults"]?.put !== undefined, "OpenAPI lists the admin route");
    assertEquals((await stack.rest(orders, "/readyz")).status, 200);
    const metrics = await (await stack.rest(catalog, "/metrics")).text();
    assert(
      /requests_total\{method="\/catalog.v1.CatalogService\/GetProduct",protocol="http",code="NOT_FOUND"\} 1/
        .test(metrics),
      metrics,
    );
    assert(/events_dropped_total 0/.test(metrics), "no event dropped");
  },
);
