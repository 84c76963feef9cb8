/**
 * The kit's HTTP/2: HPACK against the RFC 7541 examples and as a round trip, the HTTP/2 conformance suite
 * (h2spec) against the gRPC server, and the kit's client and server together where a unary call is not
 * small: messages larger than the flow-control windows, more calls than the server's stream limit, a
 * connection that breaks mid-call.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  CatalogService,
  GetProductRequestSchema,
  GetProductResponseSchema,
  ProductSchema,
} from "@tailwatch/proto/catalog/v1";
import { assert, assertEquals, assertRejects, seededRandom } from "@tailwatch/testing";
import { createClient } from "./client.ts";
import { Code, ServiceError } from "./errors.ts";
import { createGrpcServer, type GrpcServer } from "./server.ts";
import {
  createHpackDecoder,
  createHpackEncoder,
  HpackError,
  huffmanDecode,
  huffmanEncode,
} from "@tailwatch/http2";
import { createLogger } from "@tailwatch/runtime";

const options = { sanitizeOps: false, sanitizeResources: false };
const hex = (text: string) =>
  Uint8Array.from(text.replace(/\s/g, "").match(/../g)!.map((h) => parseInt(h, 16)));
const pairs = (fields: string[]) =>
  fields.flatMap((_, i) => i % 2 === 0 ? [`${fields[i]}: ${fields[i + 1]}`] : []);

Deno.test("HPACK decodes the RFC 7541 examples: literals, Huffman, the dynamic table and its evictions", () => {
  const decodeAll = (blocks: string[], tableSize = 4096) => {
    const decoder = createHpackDecoder(tableSize);
    return blocks.map((block) => {
      const fields: string[] = [];
      decoder.decode(hex(block), fields);
      return pairs(fields);
    });
  };
  const requests = [
    [":method: GET", ":scheme: http", ":path: /", ":authority: www.example.com"],
    [":method: GET", ":scheme: http", ":path: /", ":authority: www.example.com", "cache-control: no-cache"],
    [
      ":method: GET",
      ":scheme: https",
      ":path: /index.html",
      ":authority: www.example.com",
      "custom-key: custom-value",
    ],
  ];
  // C.3: requests without Huffman coding.
  assertEquals(
    decodeAll([
      "828684410f7777772e6578616d706c652e636f6d",
      "828684be58086e6f2d6361636865",
      "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
    ]),
    requests,
  );
  // C.4: the same requests, Huffman-coded.
  assertEquals(
    decodeAll([
      "828684418cf1e3c2e5f23a6ba0ab90f4ff",
      "828684be5886a8eb10649cbf",
      "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ]),
    requests,
  );
  // C.6: responses with Huffman coding in a 256-octet table, so that entries are evicted.
  assertEquals(
    decodeAll([
      "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
      "4883640effc1c0bf",
      "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
    ], 256),
    [
      [
        ":status: 302",
        "cache-control: private",
        "date: Mon, 21 Oct 2013 20:13:21 GMT",
        "location: https://www.example.com",
      ],
      [
        ":status: 307",
        "cache-control: private",
        "date: Mon, 21 Oct 2013 20:13:21 GMT",
        "location: https://www.example.com",
      ],
      [
        ":status: 200",
        "cache-control: private",
        "date: Mon, 21 Oct 2013 20:13:22 GMT",
        "location: https://www.example.com",
        "content-encoding: gzip",
        "set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
      ],
    ],
  );
});

Deno.test("HPACK refuses malformed blocks instead of guessing", () => {
  const refuses = (block: Uint8Array, why: RegExp) => {
    let error: unknown;
    try {
      createHpackDecoder().decode(block, []);
    } catch (caught) {
      error = caught;
    }
    assert(error instanceof HpackError && why.test(error.message), `${block}: ${error}`);
  };
  refuses(hex("be"), /out of range/); // dynamic index with an empty table
  refuses(hex("80"), /out of range/); // index 0
  refuses(hex("3fe21f"), /table size/); // size update above 4096
  refuses(hex("8220"), /after a header field/);
  refuses(hex("0f"), /truncated/);
  refuses(hex("4185f1e3c2e5"), /longer than its block/);
  refuses(hex("4081ff0161"), /padding|EOS/); // a name of 8 one-bits: padding longer than 7 bits
  refuses(hex("4084ffffffff0161"), /EOS/); // EOS inside a string
});

Deno.test("Huffman coding round-trips any Latin-1 string", () => {
  const random = seededRandom(7);
  for (let i = 0; i < 3000; i++) {
    let text = "";
    const length = Math.floor(random() * 60);
    for (let j = 0; j < length; j++) text += String.fromCharCode(Math.floor(random() * 256));
    const coded = huffmanEncode(text);
    assertEquals(huffmanDecode(coded, 0, coded.length), text);
  }
  assertEquals(Array.from(huffmanEncode("www.example.com")), Array.from(hex("f1e3c2e5f23a6ba0ab90f4ff")));
});

Deno.test("the encoder's blocks decode to their fields across table growth, eviction and size changes", () => {
  const random = seededRandom(11);
  const encoder = createHpackEncoder();
  const decoder = createHpackDecoder(4096);
  const names = [":path", "content-type", "x-custom", "grpc-timeout", "traceparent", "authorization", "te"];
  for (let block = 0; block < 2000; block++) {
    if (random() < 0.01) encoder.setMaxTableSize([0, 100, 256, 4096, 65536][Math.floor(random() * 5)]);
    const fields: string[] = [];
    const count = 1 + Math.floor(random() * 8);
    for (let i = 0; i < count; i++) {
      const name = names[Math.floor(random() * names.length)];
      const value = "v".repeat(Math.floor(random() * 300)) + String(Math.floor(random() * 20));
      fields.push(name, value);
    }
    const decoded: string[] = [];
    decoder.decode(encoder.encode(fields).slice(), decoded);
    assertEquals(decoded, fields, `block ${block}`);
  }
  // A field sent twice costs a byte the second time.
  const fresh = createHpackEncoder();
  const first = fresh.encode([":path", "/catalog.v1.CatalogService/GetProduct"]).length;
  assertEquals(fresh.encode([":path", "/catalog.v1.CatalogService/GetProduct"]).length, 1, `first ${first}`);
});

/** The h2spec binary: on PATH or where `go install` put it (./dev test installs it). */
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
