/**
 * The unary client against grpc-js's server in this process (a standard implementation, not the kit's): answers, error statuses with their metadata,
 * deadlines and cancellation (which must reach the server as a cancelled stream), oversize responses, an
 * unreachable address, and a server that restarts.
 */
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import { create, type DescMethod, fromBinary, toBinary } from "@bufbuild/protobuf";
import { CatalogService, GetProductResponseSchema, ProductSchema } from "@tailwatch/proto/catalog/v1";
import { assert, assertEquals, assertRejects, freePort, waitUntil } from "@tailwatch/testing";
import { createClient } from "./client.ts";
import { Code, ServiceError } from "./errors.ts";

const options = { sanitizeOps: false, sanitizeResources: false };

/** A grpc-js service definition with protobuf-es (de)serializers. */
function typedDefinition(methods: readonly DescMethod[]): grpc.ServiceDefinition {
  // deno-lint-ignore no-explicit-any -- messages of different types per method
  const definition: Record<string, grpc.MethodDefinition<any, any>> = {};
  for (const method of methods) {
    definition[method.localName] = {
      path: `/${method.parent.typeName}/${method.name}`,
      requestStream: false,
      responseStream: false,
      // deno-lint-ignore no-explicit-any -- grpc-js passes the message given to it by the handler
      requestSerialize: (message: any) => Buffer.from(toBinary(method.input, message)),
      requestDeserialize: (bytes: Buffer) => fromBinary(method.input, bytes),
      // deno-lint-ignore no-explicit-any -- as above
      responseSerialize: (message: any) => Buffer.from(toBinary(method.output, message)),
      responseDeserialize: (bytes: Buffer) => fromBinary(method.output, bytes),
    };
  }
  return definition;
}

function bindServer(server: grpc.Server, port: number): Promise<number> {
  return new Promise((resolve, reject) =>
    server.bindAsync(
      `127.0.0.1:${port}`,
      grpc.ServerCredentials.createInsecure(),
      (error, bound) => error ? reject(error) : resolve(bound),
    )
  );
}

interface FakeCatalog extends AsyncDisposable {
  address: string;
  port: number;
  /** Product ids whose call the server saw cancelled before it answered. */
  cancelled: string[];
  /** traceparent metadata of every call, in arrival order. */
  traceparents: string[];
}

/**
 * GetProduct answers by product id: "slow" after 3 s, "busy" RESOURCE_EXHAUSTED with retry-after 3,
 * "strange" NOT_FOUND with a message that needs percent-encoding, "huge" a 1 MiB description, any other id
 * a product of that id.
 */
async function startFakeCatalog(port = 0): Promise<FakeCatalog> {
  const server = new grpc.Server();
  const cancelled: string[] = [];
  const traceparents: string[] = [];
  server.addService(typedDefinition(CatalogService.methods), {
    getProduct(
      call: grpc.ServerUnaryCall<{ productId: string }, unknown>,
      callback: grpc.sendUnaryData<unknown>,
    ) {
      const id = call.request.productId;
      traceparents.push(String(call.metadata.get("traceparent")[0] ?? ""));
      const product = (description = "") =>
        create(GetProductResponseSchema, { product: create(ProductSchema, { productId: id, description }) });
      switch (id) {
        case "slow": {
          let answered = false;
          call.on("cancelled", () => {
            if (!answered) cancelled.push(id);
          });
          setTimeout(() => {
            answered = true;
            callback(null, product());
          }, 3000);
          return;
        }
        case "busy": {
          const metadata = new grpc.Metadata();
          metadata.set("retry-after", "3");
          callback({
            code: grpc.status.RESOURCE_EXHAUSTED,
            details: "at the limit; retry shortly",
            metadata,
          });
          return;
        }
        case "strange":
          callback({ code: grpc.status.NOT_FOUND, details: "product «100% tuna» not found\nat all" });
          return;
        case "huge":
          callback(null, product("x".repeat(1024 * 1024)));
          return;
        default:
          callback(null, product());
      }
    },
  });
  const bound = await bindServer(server, port);
  return {
    address: `127.0.0.1:${bound}`,
    port: bound,
    cancelled,
    traceparents,
    [Symbol.asyncDispose]: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}

const hasCode = (code: Code, message?: RegExp) => (error: unknown) =>
  error instanceof ServiceError && error.code === code &&
  (message === undefined || message.test(error.message));

Deno.test("a unary call returns the decoded response and sends the trace context", options, async () => {
  await using server = await startFakeCatalog();
  const client = createClient(CatalogService, server.address);
  try {
    const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const responses = await Promise.all(
      Array.from({ length: 50 }, (_, i) => client.getProduct({ productId: `p-${i}` }, { traceparent })),
    );
    assertEquals(responses.map((r) => r.product?.productId), Array.from({ length: 50 }, (_, i) => `p-${i}`));
    assertEquals(new Set(server.traceparents), new Set([traceparent]));
  } finally {
    client.close();
  }
});

Deno.test("error statuses keep their code, their decoded message and retry-after", options, async () => {
  await using server = await startFakeCatalog();
  const client = createClient(CatalogService, server.address);
  try {
    const busy = await client.getProduct({ productId: "busy" }).catch((error) => error);
    assert(hasCode(Code.RESOURCE_EXHAUSTED, /^at the limit; retry shortly$/)(busy), String(busy));
    assertEquals((busy as ServiceError).retryAfterSeconds, 3);
    await assertRejects(
      () => client.getProduct({ productId: "strange" }),
      hasCode(Code.NOT_FOUND, /^product «100% tuna» not found\nat all$/),
    );
  } finally {
    client.close();
  }
});

Deno.test("a deadline or an abort ends the call and cancels the stream on the server", options, async () => {
  await using server = await startFakeCatalog();
  const client = createClient(CatalogService, server.address);
  try {
    const started = performance.now();
    await assertRejects(
      () => client.getProduct({ productId: "slow" }, { timeoutMs: 100 }),
      hasCode(Code.DEADLINE_EXCEEDED),
    );
    assert(performance.now() - started < 1500, "the deadline ended the call, not the answer");
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 100);
    await assertRejects(
      // A long timeout, so that only the client's cancel (RST_STREAM) can end the call on the server.
      () => client.getProduct({ productId: "slow" }, { signal: abort.signal, timeoutMs: 10_000 }),
      hasCode(Code.CANCELLED),
    );
    await assertRejects(
      () => client.getProduct({ productId: "p" }, { deadlineMs: Date.now() - 1 }),
      hasCode(Code.DEADLINE_EXCEEDED),
    );
    await waitUntil("the server saw both calls cancelled", () => server.cancelled.length === 2, 2000);
    assertEquals((await client.getProduct({ productId: "after" })).product?.productId, "after");
  } finally {
    client.close();
  }
});

Deno.test("a response larger than the limit is refused", options, async () => {
  await using server = await startFakeCatalog();
  const client = createClient(CatalogService, server.address, { maxResponseBytes: 64 * 1024 });
  try {
    await assertRejects(() => client.getProduct({ productId: "huge" }), hasCode(Code.RESOURCE_EXHAUSTED));
    assertEquals((await client.getProduct({ productId: "small" })).product?.productId, "small");
  } finally {
    client.close();
  }
});

Deno.test("an unreachable server is UNAVAILABLE, and a restarted one is called again", options, async () => {
  const port = freePort();
  const client = createClient(CatalogService, `127.0.0.1:${port}`);
  try {
    await assertRejects(() => client.getProduct({ productId: "p" }), hasCode(Code.UNAVAILABLE));
    {
      await using _server = await startFakeCatalog(port);
      await waitUntil("the call succeeds once the server listens", async () => {
        const answer = await client.getProduct({ productId: "p" }).catch(() => undefined);
        return answer?.product?.productId === "p";
      }, 5000);
    }
    await assertRejects(() => client.getProduct({ productId: "p" }), hasCode(Code.UNAVAILABLE));
    await using _again = await startFakeCatalog(port);
    await waitUntil("the call succeeds after the restart", async () => {
      const answer = await client.getProduct({ productId: "p" }).catch(() => undefined);
      return answer?.product?.productId === "p";
    }, 5000);
  } finally {
    client.close();
  }
});
