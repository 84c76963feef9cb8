/** Unit tests of the kit's pure parts: faults, config, ids, routes, metrics, bounded state. */
import { create } from "@bufbuild/protobuf";
import { CatalogService } from "@tailwatch/proto/catalog/v1";
import { FaultsSchema } from "@tailwatch/proto/admin/v1";
import { assert, assertEquals, seededRandom } from "@tailwatch/testing";
import {
  BoundedMap,
  ConfigError,
  createRegistry,
  spanFromTraceparent,
  traceparentOf,
  uuidv7,
} from "@tailwatch/runtime";
import { loadServiceConfig } from "./config.ts";
import { Code, httpStatusFromCode, ServiceError } from "@tailwatch/grpc";
import { parseFaults, sampleDelayMs, sampleError, validateFaults } from "./faults.ts";
import { bindService } from "./pipeline.ts";
import { compileRoutes, matchRoute } from "./routes.ts";

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

Deno.test("lognormal latency has the configured median and p99", () => {
  const faults = parseFaults("lognormal:4,40", "0", "0");
  const random = seededRandom(7);
  const samples = Array.from({ length: 200_000 }, () => sampleDelayMs(faults, random)).sort((a, b) => a - b);
  const median = quantile(samples, 0.5);
  const p99 = quantile(samples, 0.99);
  assert(Math.abs(median - 4) / 4 < 0.02, `median ${median} ≈ 4 ms`);
  assert(Math.abs(p99 - 40) / 40 < 0.05, `p99 ${p99} ≈ 40 ms`);
});

Deno.test("fixed and uniform latency, and the error rate, are what was asked", () => {
  assertEquals(sampleDelayMs(parseFaults("fixed:12.5", "0", "0")), 12.5);
  const uniform = parseFaults("uniform:2,6", "0", "0");
  const random = seededRandom(3);
  const values = Array.from({ length: 10_000 }, () => sampleDelayMs(uniform, random));
  assert(values.every((v) => v >= 2 && v <= 6), "within [2, 6]");
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  assert(Math.abs(mean - 4) < 0.1, `mean ${mean} ≈ 4`);
  const failing = parseFaults("none", "0.25", "13");
  const errors = Array.from({ length: 20_000 }, () => sampleError(failing, random)).filter(Boolean);
  assert(Math.abs(errors.length / 20_000 - 0.25) < 0.02, `error rate ${errors.length / 20_000}`);
  assertEquals(errors[0]!.code, Code.INTERNAL);
  assertEquals(sampleError(parseFaults("none", "1", "0"), random)!.code, Code.UNAVAILABLE);
  assertEquals(sampleError(parseFaults("none", "0", "0"), random), undefined);
});

Deno.test("bad fault settings are refused with a message naming the problem", () => {
  const refused = (latency: string, rate: string, code: string, pattern: RegExp) => {
    try {
      parseFaults(latency, rate, code);
    } catch (error) {
      assert(pattern.test((error as Error).message), `${(error as Error).message} should match ${pattern}`);
      return;
    }
    throw new Error(`${latency} ${rate} ${code} was accepted`);
  };
  refused("gaussian:1", "0", "0", /kind must be none, fixed, uniform or lognormal/);
  refused("fixed:abc", "0", "0", /fixed:<ms>/);
  refused("uniform:5,1", "0", "0", /min_ms <= max_ms/);
  refused("lognormal:10,5", "0", "0", /median_ms < p99_ms/);
  refused("none", "1.5", "0", /error_rate must be in \[0, 1\]/);
  refused("none", "0", "99", /error_code/);
  const invalid = create(FaultsSchema, { latency: { case: "fixed", value: { delayMs: -1 } } });
  try {
    validateFaults(invalid);
    throw new Error("accepted");
  } catch (error) {
    assertEquals((error as ServiceError).code, Code.INVALID_ARGUMENT);
  }
});

Deno.test("configuration is validated once, reporting every bad variable by name", () => {
  const config = loadServiceConfig("catalog", { GRPC_PORT: "0", MAX_IN_FLIGHT: "8", EVENTS_ENABLED: "off" });
  assertEquals(config.grpcPort, 0);
  assertEquals(config.httpPort, 8081);
  assertEquals(config.maxInFlight, 8);
  assertEquals(config.eventsEnabled, false);
  try {
    loadServiceConfig("catalog", {
      GRPC_PORT: "70000",
      MAX_IN_FLIGHT: "lots",
      NATS_URL: "http://x",
      EVENTS_ENABLED: "maybe",
      FAULT_LATENCY: "fixed:-3",
      V8_WORKER_NICE: "20",
    });
    throw new Error("accepted");
  } catch (error) {
    assert(error instanceof ConfigError, String(error));
    const text = error.message;
    for (
      const name of ["GRPC_PORT", "MAX_IN_FLIGHT", "NATS_URL", "EVENTS_ENABLED", "FAULT_", "V8_WORKER_NICE"]
    ) {
      assert(text.includes(name), `${name} is named in: ${text}`);
    }
    assertEquals(error.problems.length, 6);
  }
});

Deno.test("UUIDv7 ids increase strictly within a process, even within one millisecond", () => {
  const ids = Array.from({ length: 10_000 }, () => uuidv7(1_700_000_000_000));
  for (let i = 1; i < ids.length; i++) assert(ids[i - 1] < ids[i], `${ids[i - 1]} < ${ids[i]}`);
  assert(ids[0].startsWith("018bcfe5-6800-7"), ids[0]);
});

Deno.test("traceparent: a valid header makes a child span, an invalid one starts a new trace", () => {
  const child = spanFromTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  assertEquals(child.traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
  assertEquals(child.parentSpanId, "00f067aa0ba902b7");
  assert(child.spanId !== child.parentSpanId && /^[0-9a-f]{16}$/.test(child.spanId));
  assertEquals(traceparentOf(child), `00-${child.traceId}-${child.spanId}-01`);
  for (
    const bad of [
      "",
      "garbage",
      "00-" + "0".repeat(32) + "-00f067aa0ba902b7-01",
      "ff-" + "a".repeat(32) + "-" + "b".repeat(16) + "-01",
    ]
  ) {
    const root = spanFromTraceparent(bad);
    assertEquals(root.parentSpanId, "", `"${bad}" is ignored`);
    assert(/^[0-9a-f]{32}$/.test(root.traceId));
  }
});

Deno.test("UUIDv7 ids carry their millisecond, version 7 and the RFC 9562 variant", () => {
  // Increasing, and later than any id made before in this process: each id holds exactly its millisecond.
  for (const ms of [1_800_000_000_000, 2 ** 40 * 3 + 12345, 2 ** 47 + 1, 2 ** 48 - 1]) {
    const id = uuidv7(ms);
    assert(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(id), id);
    assertEquals(parseInt(id.slice(0, 8) + id.slice(9, 13), 16), ms, id);
  }
});

Deno.test("traceparent parsing agrees with the W3C rules on mutated headers", () => {
  // The rules as a regular expression: the reference the hand-written parser must agree with.
  const rule = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
  const reference = (header: string) => {
    const match = rule.exec(header.trim().toLowerCase());
    return match !== null && match[1] !== "ff" && !/^0+$/.test(match[2]) && !/^0+$/.test(match[3]) &&
        (match[1] !== "00" || match[5] === undefined)
      ? match[2] + "/" + match[3]
      : "";
  };
  const random = seededRandom(5);
  const alphabet = "0123456789abcdefABCDEFxz- ";
  const valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  let accepted = 0;
  for (let i = 0; i < 20_000; i++) {
    let header = random() < 0.5 ? valid : "01" + valid.slice(2) + (random() < 0.5 ? "-extra" : "");
    const edits = Math.floor(random() * 3);
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(random() * (header.length + 1));
      const c = alphabet[Math.floor(random() * alphabet.length)];
      const kind = random();
      header = kind < 0.5
        ? header.slice(0, at) + c + header.slice(at + 1)
        : kind < 0.75
        ? header.slice(0, at) + c + header.slice(at)
        : header.slice(0, at) + header.slice(at + 1);
    }
    if (random() < 0.05) header = header.replace(/[1-9a-f]/g, "0");
    const span = spanFromTraceparent(header);
    const got = span.parentSpanId === "" ? "" : span.traceId + "/" + span.parentSpanId;
    assertEquals(got, reference(header), JSON.stringify(header));
    if (got !== "") accepted++;
  }
  assert(accepted > 1000 && accepted < 19_000, `both outcomes are exercised (${accepted} accepted)`);
});

Deno.test("REST routes come from the google.api.http options, literal paths before variables", () => {
  const noop = () => ({});
  const binding = bindService(CatalogService, {
    listProducts: noop,
    getProduct: noop,
    createProduct: noop,
    reserveStock: noop,
    releaseStock: noop,
  });
  const routes = compileRoutes([binding]);
  assertEquals(routes.length, 5);
  const get = matchRoute(routes, "GET", "/v1/products/abc-1");
  assert(get.kind === "match" && get.route.method.name === "GetProduct");
  assertEquals([...get.params.values()], ["abc-1"]);
  const release = matchRoute(routes, "POST", "/v1/reservations/res-9:release");
  assert(
    release.kind === "match" && release.route.label === "POST /v1/reservations/{reservation_id}:release",
  );
  assertEquals([...release.params.values()], ["res-9"]);
  const list = matchRoute(routes, "GET", "/v1/products");
  assert(list.kind === "match" && list.route.method.name === "ListProducts");
  const wrongMethod = matchRoute(routes, "DELETE", "/v1/products");
  assert(wrongMethod.kind === "method-not-allowed" && wrongMethod.allowed.join() === "GET,POST");
  assertEquals(matchRoute(routes, "GET", "/v1/products/a/b").kind, "none");
});

Deno.test("gRPC codes map to one HTTP status each, and anything thrown becomes a ServiceError", () => {
  assertEquals(httpStatusFromCode(Code.INVALID_ARGUMENT), 400);
  assertEquals(httpStatusFromCode(Code.NOT_FOUND), 404);
  assertEquals(httpStatusFromCode(Code.RESOURCE_EXHAUSTED), 429);
  assertEquals(httpStatusFromCode(Code.UNAVAILABLE), 503);
  assertEquals(ServiceError.from(new Error("boom")).code, Code.INTERNAL);
  assertEquals(ServiceError.from("text").message, "text");
  const grpcError = Object.assign(new Error("5 NOT_FOUND: x"), { code: 5, details: "x" });
  const normalized = ServiceError.from(grpcError);
  assertEquals([normalized.code, normalized.message], [Code.NOT_FOUND, "x"]);
});

Deno.test("metrics render in the Prometheus text format with escaped labels", () => {
  const registry = createRegistry();
  const counter = registry.counter("things_total", "Things.", ["kind"]);
  counter.inc({ kind: 'a"b\\c' }, 2);
  const histogram = registry.histogram("latency_seconds", "Latency.", [0.1, 1], ["m"]);
  histogram.observe(0.05, { m: "x" });
  histogram.observe(0.5, { m: "x" });
  histogram.observe(5, { m: "x" });
  const text = registry.render();
  assert(text.includes('things_total{kind="a\\"b\\\\c"} 2'), text);
  assert(text.includes('latency_seconds_bucket{m="x",le="0.1"} 1'), text);
  assert(text.includes('latency_seconds_bucket{m="x",le="1"} 2'), text);
  assert(text.includes('latency_seconds_bucket{m="x",le="+Inf"} 3'), text);
  assert(text.includes('latency_seconds_count{m="x"} 3'), text);
});

Deno.test("bounded state forgets the oldest entries past its capacity", () => {
  const map = new BoundedMap<string, number>(3);
  for (const [i, key] of ["a", "b", "c", "d"].entries()) map.set(key, i);
  assertEquals(map.size, 3);
  assertEquals(map.has("a"), false);
  assertEquals([...map.newestFirst()].map(([k]) => k), ["d", "c", "b"]);
});
