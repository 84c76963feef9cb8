import { assert, assertEquals } from "@tailwatch/testing";
import { parseVegetaLine, vegetaTargetLines } from "./vegeta.ts";
import { cancelledByGhz, ghzArgs, parseTimestampUs } from "./ghz.ts";

Deno.test("vegeta: targets carry the run id header and JSON bodies; results parse to the microsecond", () => {
  const lines = vegetaTargetLines({
    targets: [
      { method: "GET", url: "http://127.0.0.1:8081/v1/products/x" },
      { method: "POST", url: "http://127.0.0.1:8082/v1/orders", body: { customerId: "é" } },
    ],
    headers: { "tailwatch-load-run": "run-1" },
  }).trim().split("\n").map((l) => JSON.parse(l));
  assertEquals(lines[0], {
    method: "GET",
    url: "http://127.0.0.1:8081/v1/products/x",
    header: { "tailwatch-load-run": ["run-1"] },
  });
  assertEquals(lines[1].header["content-type"], ["application/json"]);
  assertEquals(
    new TextDecoder().decode(Uint8Array.from(atob(lines[1].body), (c) => c.charCodeAt(0))),
    '{"customerId":"é"}',
  );
  let refused = "";
  try {
    vegetaTargetLines({ targets: [{ method: "GET", url: "http://example.com/" }] });
  } catch (error) {
    refused = (error as Error).message;
  }
  assert(refused.includes("loopback"), refused);
  const r = parseVegetaLine(
    '{"attack":"","seq":7,"code":404,"timestamp":"2026-12-06T22:46:36.389347731Z","latency":1995620,"bytes_out":0,"bytes_in":0,"error":"404 Not Found","body":null,"method":"GET","url":"http://127.0.0.1:58081/v1/products/nope","headers":{}}',
  );
  assertEquals([r.seq, r.code, r.latencyUs, r.startUs % 1_000_000], [7, 404, 1995.62, 389347]);
});

Deno.test("ghz: loopback only, metadata and schedule flags, end-of-run cancellations recognised", () => {
  const args = ghzArgs({
    call: "a.v1.AService/Get",
    target: "127.0.0.1:50051",
    data: [{ id: 1 }],
    metadata: { "tailwatch-load-run": "r" },
    duration: "5s",
    extraArgs: ["--load-schedule", "step"],
  });
  assertEquals(args.slice(args.indexOf("--metadata"), args.indexOf("--metadata") + 2), [
    "--metadata",
    '{"tailwatch-load-run":"r"}',
  ]);
  assertEquals(args.at(-1), "127.0.0.1:50051");
  assert(args.includes("step"));
  let refused = false;
  try {
    ghzArgs({ call: "x", target: "10.0.0.1:50051", data: {} });
  } catch {
    refused = true;
  }
  assert(refused, "a non-loopback target is refused");
  assertEquals(parseTimestampUs("2026-12-06T22:45:31.762796491Z") % 1_000_000, 762796);
  assertEquals(parseTimestampUs("2026-12-06T22:45:31Z") % 1_000_000, 0);
  assert(
    cancelledByGhz({
      status: "Unavailable",
      error: "rpc error: code = Unavailable desc = transport is closing",
    }),
  );
  assert(
    cancelledByGhz({
      status: "Canceled",
      error: "rpc error: code = Canceled desc = grpc: the client connection is closing",
    }),
  );
  assert(
    !cancelledByGhz({
      status: "Unavailable",
      error: "rpc error: code = Unavailable desc = payments unreachable",
    }),
  );
});
