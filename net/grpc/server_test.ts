/**
 * The kit's gRPC server, called by grpc-js's client (a standard implementation) and, for what no proper
 * client sends, by raw HTTP/2: answers and errors, unknown methods, limits, deadlines, cancellation,
 * streaming, malformed requests, and a graceful shutdown.
 */
import { Buffer } from "node:buffer";
import http2 from "node:http2";
import * as grpc from "@grpc/grpc-js";
import { assert, assertEquals, waitUntil } from "@tailwatch/testing";
import { Code, ServiceError } from "./errors.ts";
import { createGrpcServer, type GrpcServer } from "./server.ts";
import { frameMessage, MessageReader } from "./wire.ts";
import { createLogger } from "@tailwatch/runtime";

const options = { sanitizeOps: false, sanitizeResources: false };
const bytes = (text: string) => new TextEncoder().encode(text);
const text = (data: Uint8Array) => new TextDecoder().decode(data);
const pass = (data: Buffer) => data;

interface TestServer extends AsyncDisposable {
  server: GrpcServer;
  address: string;
  port: number;
  /** Paths of calls whose signal was aborted. */
  aborted: string[];
  unknown: string[];
}

/**
 * /t.T/Echo answers its request; /t.T/Fail answers RESOURCE_EXHAUSTED "«no» 100%" with retry-after 2;
 * /t.T/Slow answers after 3 s; /t.T/Chat (streaming) echoes each message upper-cased, ends on half-close.
 */
async function startTestServer(maxReceiveBytes = 1024): Promise<TestServer> {
  const server = createGrpcServer({ maxReceiveBytes, logger: createLogger("error", {}) });
  const aborted: string[] = [];
  const unknown: string[] = [];
  server.addUnary("/t.T/Echo", (request, _call, respond) => respond.message(request));
  server.addUnary(
    "/t.T/Fail",
    (_request, _call, respond) =>
      respond.error(new ServiceError(Code.RESOURCE_EXHAUSTED, "«no» 100%"), { "retry-after": "2" }),
  );
  server.addUnary("/t.T/Slow", (request, call, respond) => {
    call.signal.addEventListener("abort", () => aborted.push(call.path));
    setTimeout(() => respond.message(request), 3000);
  });
  server.addStreaming("/t.T/Chat", (stream) => {
    stream.onMessage((message) => stream.send(bytes(text(message).toUpperCase())));
    stream.onEnd(() => stream.end());
  });
  server.onUnknownMethod((path) => unknown.push(path));
  const port = await server.listen("127.0.0.1", 0);
  return {
    server,
    address: `127.0.0.1:${port}`,
    port,
    aborted,
    unknown,
    [Symbol.asyncDispose]: async () => {
      server.forceShutdown();
      await new Promise((resolve) => setTimeout(resolve, 10));
    },
  };
}

function unary(
  client: grpc.Client,
  path: string,
  request: string,
  callOptions: grpc.CallOptions = {},
): Promise<{ error: grpc.ServiceError | null; response?: string }> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      path,
      pass,
      pass,
      Buffer.from(request),
      new grpc.Metadata(),
      callOptions,
      (error, response) => resolve({ error, response: response ? text(response) : undefined }),
    );
  });
}

/** Sends one raw HTTP/2 request; resolves with the response headers, body and trailers. */
function rawRequest(port: number, headers: http2.OutgoingHttpHeaders, body: Uint8Array) {
  return new Promise<
    { headers: http2.IncomingHttpHeaders; body: string; trailers: http2.IncomingHttpHeaders }
  >(
    (resolve, reject) => {
      const session = http2.connect(`http://127.0.0.1:${port}`);
      session.on("error", reject);
      const stream = session.request(headers, { endStream: false });
      let responseHeaders: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      stream.on("response", (received) => responseHeaders = received);
      stream.on("trailers", (received) => trailers = received);
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("error", reject);
      stream.on("end", () => {
        session.close();
        resolve({ headers: responseHeaders, body: Buffer.concat(chunks).toString(), trailers });
      });
      stream.end(body);
    },
  );
}

const GRPC_HEADERS = {
  ":method": "POST",
  ":path": "/t.T/Echo",
  "content-type": "application/grpc",
  te: "trailers",
};

Deno.test("the message reader splits messages however the bytes arrive", () => {
  const framed = Buffer.concat([
    frameMessage(bytes("one")),
    frameMessage(bytes("")),
    frameMessage(bytes("three")),
  ]);
  const whole = new MessageReader(100).push(framed).map(text);
  assertEquals(whole, ["one", "", "three"]);
  const reader = new MessageReader(100);
  const byByte: string[] = [];
  for (const byte of framed) byByte.push(...reader.push(Buffer.from([byte])).map(text));
  assertEquals(byByte, ["one", "", "three"]);
  assertEquals(reader.partialBytes, 0);
  let refused: unknown;
  try {
    new MessageReader(2).push(frameMessage(bytes("abc")));
  } catch (error) {
    refused = error;
  }
  assert(refused instanceof ServiceError && refused.code === Code.RESOURCE_EXHAUSTED, String(refused));
});

Deno.test(
  "unary answers and errors reach a grpc-js client with their status, message and metadata",
  options,
  async () => {
    await using test = await startTestServer();
    const client = new grpc.Client(test.address, grpc.credentials.createInsecure());
    try {
      const answers = await Promise.all(
        Array.from({ length: 20 }, (_, i) => unary(client, "/t.T/Echo", `m${i}`)),
      );
      assertEquals(answers.map((a) => a.response), Array.from({ length: 20 }, (_, i) => `m${i}`));
      assertEquals((await unary(client, "/t.T/Echo", "")).response, "", "an empty message is a message");
      const failed = await unary(client, "/t.T/Fail", "x");
      assertEquals(failed.error?.code, grpc.status.RESOURCE_EXHAUSTED);
      assertEquals(failed.error?.details, "«no» 100%");
      assertEquals(failed.error?.metadata.get("retry-after"), ["2"]);
      const unknown = await unary(client, "/t.T/Nope", "x");
      assertEquals(unknown.error?.code, grpc.status.UNIMPLEMENTED);
      assertEquals(test.unknown, ["/t.T/Nope"]);
    } finally {
      client.close();
    }
  },
);

Deno.test("an oversize request is RESOURCE_EXHAUSTED and the connection keeps serving", options, async () => {
  await using test = await startTestServer(16);
  const client = new grpc.Client(test.address, grpc.credentials.createInsecure());
  try {
    const big = await unary(client, "/t.T/Echo", "x".repeat(17));
    assertEquals(big.error?.code, grpc.status.RESOURCE_EXHAUSTED);
    assert(/larger than the limit of 16/.test(big.error?.details ?? ""), big.error?.details);
    assertEquals((await unary(client, "/t.T/Echo", "x".repeat(16))).response, "x".repeat(16));
  } finally {
    client.close();
  }
});

Deno.test(
  "a deadline or a cancel aborts the handler; the client sees DEADLINE_EXCEEDED",
  options,
  async () => {
    await using test = await startTestServer();
    const client = new grpc.Client(test.address, grpc.credentials.createInsecure());
    try {
      const late = await unary(client, "/t.T/Slow", "x", { deadline: Date.now() + 150 });
      assertEquals(late.error?.code, grpc.status.DEADLINE_EXCEEDED);
      await waitUntil("the handler saw the deadline", () => test.aborted.length === 1, 2000);
      const call = client.makeUnaryRequest("/t.T/Slow", pass, pass, Buffer.from("x"), () => {});
      setTimeout(() => call.cancel(), 100);
      await waitUntil("the handler saw the cancel", () => test.aborted.length === 2, 2000);
    } finally {
      client.close();
    }
  },
);

Deno.test(
  "a streaming call answers each message in order and ends when the client does",
  options,
  async () => {
    await using test = await startTestServer();
    const client = new grpc.Client(test.address, grpc.credentials.createInsecure());
    try {
      const call = client.makeBidiStreamRequest("/t.T/Chat", pass, pass);
      const received: string[] = [];
      const ended = new Promise<grpc.StatusObject>((resolve) => call.on("status", resolve));
      call.on("data", (data: Buffer) => received.push(text(data)));
      for (const word of ["kibble", "tuna", "milk"]) call.write(Buffer.from(word));
      call.end();
      const status = await ended;
      assertEquals(status.code, grpc.status.OK);
      assertEquals(received, ["KIBBLE", "TUNA", "MILK"]);
    } finally {
      client.close();
    }
  },
);

Deno.test("requests no gRPC client should send get a clear answer, never a crash", options, async () => {
  await using test = await startTestServer();
  const get = await rawRequest(test.port, { ...GRPC_HEADERS, ":method": "GET" }, new Uint8Array());
  assertEquals(Number(get.headers[":status"]), 405);
  const json = await rawRequest(
    test.port,
    { ...GRPC_HEADERS, "content-type": "application/json" },
    bytes("{}"),
  );
  assertEquals(Number(json.headers[":status"]), 415);
  const compressed = frameMessage(bytes("x"));
  compressed[0] = 1;
  const gzip = await rawRequest(test.port, GRPC_HEADERS, compressed);
  assertEquals(gzip.headers["grpc-status"] ?? gzip.trailers["grpc-status"], String(Code.UNIMPLEMENTED));
  const two = await rawRequest(
    test.port,
    GRPC_HEADERS,
    Buffer.concat([frameMessage(bytes("a")), frameMessage(bytes("b"))]),
  );
  assertEquals(two.headers["grpc-status"] ?? two.trailers["grpc-status"], String(Code.INVALID_ARGUMENT));
  const none = await rawRequest(test.port, GRPC_HEADERS, new Uint8Array());
  assertEquals(none.headers["grpc-status"], String(Code.INTERNAL));
  const cut = await rawRequest(test.port, GRPC_HEADERS, frameMessage(bytes("abc")).subarray(0, 6));
  assertEquals(cut.headers["grpc-status"], String(Code.INTERNAL));
  const timeout = await rawRequest(
    test.port,
    { ...GRPC_HEADERS, "grpc-timeout": "soon" },
    frameMessage(bytes("a")),
  );
  assertEquals(timeout.headers["grpc-status"], String(Code.INTERNAL));
  assert(/grpc-timeout/.test(decodeURIComponent(String(timeout.headers["grpc-message"]))));
  const ok = await rawRequest(
    test.port,
    { ...GRPC_HEADERS, "grpc-timeout": "2S" },
    frameMessage(bytes("fine")),
  );
  assertEquals(ok.trailers["grpc-status"], "0");
  assertEquals(ok.body.slice(5), "fine");
});

Deno.test("shutdown lets calls in flight finish and refuses new connections", options, async () => {
  await using test = await startTestServer();
  const client = new grpc.Client(test.address, grpc.credentials.createInsecure());
  try {
    const inFlight = unary(client, "/t.T/Slow", "last");
    await new Promise((resolve) => setTimeout(resolve, 200));
    let shutDown = false;
    const shutdown = test.server.shutdown().then(() => shutDown = true);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert(!shutDown, "shutdown waits for the call in flight");
    assertEquals((await inFlight).response, "last");
    await shutdown;
    const refused = await fetch(`http://${test.address}/`).then(() => false, () => true);
    assert(refused, "the port no longer accepts connections");
  } finally {
    client.close();
  }
});
