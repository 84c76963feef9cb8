/**
 * HTTP/2 under gRPC: the conformance suite (h2spec) against the gRPC server, and the client and server
 * together where a unary call is not small: messages larger than the flow-control windows, more calls than the server's stream limit, a
 * connection that breaks mid-call.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  CatalogService,
  GetProductRequestSchema,
  GetProductResponseSchema,
  ProductSchema,
} from "@tailwatch/proto/catalog/v1";
import { assert, assertEquals, assertRejects } from "@tailwatch/testing";
import { createClient } from "./client.ts";
import { Code, ServiceError } from "./errors.ts";
import { createGrpcServer, type GrpcServer } from "./server.ts";
import { createLogger } from "@tailwatch/runtime";

const options = { sanitizeOps: false, sanitizeResources: false };
function h2specPath(): string {
  const candidates = [
    ...(Deno.env.get("PATH") ?? "").split(":").map((dir) => `${dir}/h2spec`),
    `${Deno.env.get("HOME")}/go/bin/h2spec`,
  ];
  for (const candidate of candidates) {
    try {
      if (Deno.statSync(candidate).isFile) return candidate;
    } catch {
      // not there
    }
  }
  throw new Error(
    "h2spec is not installed: ./dev test installs it (go install github.com/summerwind/h2spec)",
  );
}

async function startServer(configure: (server: GrpcServer) => void, maxConcurrentStreams?: number) {
  const server = createGrpcServer({
    maxReceiveBytes: 8 * 1024 * 1024,
    maxConcurrentStreams,
    logger: createLogger("error", {}),
  });
  configure(server);
  const port = await server.listen("127.0.0.1", 0);
  return {
    server,
    port,
    address: `127.0.0.1:${port}`,
    [Symbol.asyncDispose]: async () => {
      server.forceShutdown();
      await new Promise((resolve) => setTimeout(resolve, 10));
    },
  };
}

/** GetProduct answers a product whose description is the request's product id, `repeat` times. */
function echoProducts(repeat: () => number, delayMs = 0) {
  let inFlight = 0;
  let maxInFlight = 0;
  const configure = (server: GrpcServer) =>
    server.addUnary("/catalog.v1.CatalogService/GetProduct", (bytes, _call, respond) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      const id = fromBinary(GetProductRequestSchema, bytes).productId;
      const answer = toBinary(
        GetProductResponseSchema,
        create(GetProductResponseSchema, {
          product: create(ProductSchema, { productId: id.slice(0, 10), description: id.repeat(repeat()) }),
        }),
      );
      setTimeout(() => {
        inFlight--;
        respond.message(answer);
      }, delayMs);
    });
  return { configure, maxInFlight: () => maxInFlight };
}

Deno.test("h2spec: the gRPC server passes the HTTP/2 conformance suite", options, async () => {
  await using test = await startServer(echoProducts(() => 1).configure);
  const run = await new Deno.Command(h2specPath(), {
    args: ["-h", "127.0.0.1", "-p", String(test.port), "--timeout", "5"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const report = new TextDecoder().decode(run.stdout);
  const summary = report.trim().split("\n").at(-1) ?? "";
  assert(run.success && / 0 failed/.test(summary), `h2spec: ${summary}\n${report.slice(-4000)}`);
});

Deno.test(
  "messages larger than every flow-control window cross in both directions, many at once",
  options,
  async () => {
    await using test = await startServer(echoProducts(() => 3).configure);
    const client = createClient(CatalogService, test.address, {
      maxResponseBytes: 16 * 1024 * 1024,
      defaultTimeoutMs: 30_000,
    });
    try {
      // 1 MiB ids answered with 3 MiB descriptions: over the 1 MiB stream window each way, and 12 of them
      // at once are over the 16 MiB connection window.
      const ids = Array.from({ length: 12 }, (_, i) => String.fromCharCode(97 + i).repeat(1024 * 1024));
      const answers = await Promise.all(ids.map((productId) => client.getProduct({ productId })));
      answers.forEach((answer, i) => {
        assertEquals(answer.product?.description.length, 3 * 1024 * 1024);
        assertEquals(answer.product?.description.slice(0, 3), ids[i].slice(0, 3));
      });
    } finally {
      client.close();
    }
  },
);

Deno.test(
  "calls beyond the server's stream limit wait for a free stream, and all succeed",
  options,
  async () => {
    const products = echoProducts(() => 1, 20);
    await using test = await startServer(products.configure, 4);
    const client = createClient(CatalogService, test.address);
    try {
      const answers = await Promise.all(
        Array.from({ length: 40 }, (_, i) => client.getProduct({ productId: `p${i}` })),
      );
      assertEquals(answers.map((a) => a.product?.productId), Array.from({ length: 40 }, (_, i) => `p${i}`));
      assert(products.maxInFlight() <= 4, `the server saw ${products.maxInFlight()} calls at once`);
    } finally {
      client.close();
    }
  },
);

Deno.test(
  "a connection that breaks mid-call fails the call at once as UNAVAILABLE, not at its deadline",
  options,
  async () => {
    const slow = echoProducts(() => 1, 5000);
    const test = await startServer(slow.configure);
    const client = createClient(CatalogService, test.address);
    try {
      const pending = client.getProduct({ productId: "slow" });
      await new Promise((resolve) => setTimeout(resolve, 100));
      test.server.forceShutdown();
      await assertRejects(
        () => pending,
        (error) => error instanceof ServiceError && error.code === Code.UNAVAILABLE,
        "a call on a broken connection",
      );
    } finally {
      client.close();
    }
  },
);

Deno.test("an HTTP/1.1 request on the gRPC port is told what the port speaks", options, async () => {
  await using test = await startServer(echoProducts(() => 1).configure);
  const response = await fetch(`http://${test.address}/`);
  assertEquals(response.status, 505);
  assert(/HTTP\/2/.test(await response.text()));
});

Deno.test(
  "after a call times out on a connection whose peer no longer answers, the client drops it and reconnects",
  options,
  async () => {
    // A black hole: it accepts, sends its SETTINGS as a server must, and then never reads or answers again.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const accepted: Deno.Conn[] = [];
    const closedByClient: number[] = [];
    const settings = new Uint8Array([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    const serving = (async () => {
      for await (const conn of listener) {
        const index = accepted.push(conn) - 1;
        await conn.write(settings);
        // Reads nothing until the client gives up: then the read sees the close.
        void (async () => {
          await new Promise((resolve) => setTimeout(resolve, 100));
          const sink = new Uint8Array(1 << 16);
          try {
            while ((await conn.read(sink)) !== null) {
              // discarded: the peer is "gone"
            }
          } catch {
            // reset
          }
          closedByClient.push(index);
        })();
      }
    })();
    const client = createClient(CatalogService, `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`, {
      defaultTimeoutMs: 300,
    });
    try {
      await assertRejects(
        () => client.getProduct({ productId: "p" }),
        (error) => error instanceof ServiceError && error.code === Code.DEADLINE_EXCEEDED,
      );
      const until = Date.now() + 5000;
      while (closedByClient.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      assertEquals(closedByClient, [0], "the unanswered connection was dropped");
      await assertRejects(() => client.getProduct({ productId: "p" }), () => true);
      assertEquals(accepted.length, 2, "the next call connected again");
    } finally {
      client.close();
      listener.close();
      for (const conn of accepted) {
        try {
          conn.close();
        } catch {
          // closed already
        }
      }
      await serving.catch(() => {});
    }
  },
);
