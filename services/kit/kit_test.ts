/** Unit tests of the kit's pure parts: faults, service configuration, routes. */
import { create } from "@bufbuild/protobuf";
import { CatalogService } from "@tailwatch/proto/catalog/v1";
import { FaultsSchema } from "@tailwatch/proto/admin/v1";
import { assert, assertEquals, seededRandom } from "@tailwatch/testing";
import { ConfigError } from "@tailwatch/runtime";
import { Code, type ServiceError } from "@tailwatch/grpc";
import { DEFAULT_HTTP2_LIMITS } from "@tailwatch/http2";
import { loadServiceConfig } from "./config.ts";
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

Deno.test("a service's configuration carries the HTTP/2 limits, and a bad one stops the start", () => {
  assertEquals(loadServiceConfig("catalog", {}).http2, { ...DEFAULT_HTTP2_LIMITS });
  assertEquals(loadServiceConfig("catalog", { H2_MAX_RESETS: "200" }).http2.maxResetsPerWindow, 200);
  let error: unknown;
  try {
    loadServiceConfig("catalog", { H2_MAX_RESETS: "0" });
  } catch (caught) {
    error = caught;
  }
  assert(error instanceof ConfigError && /H2_MAX_RESETS/.test(error.message), String(error));
});

Deno.test("a service's configuration carries the NATS settings, and names every problem at once", () => {
  const service = loadServiceConfig("catalog", { NATS_USER: "catalog", NATS_PASSWORD: "pw" });
  assertEquals(service.nats.inboxPrefix, "_INBOX_catalog");
  let error: unknown;
  try {
    loadServiceConfig("catalog", { NATS_USER: "catalog", GRPC_PORT: "x" });
  } catch (caught) {
    error = caught;
  }
  assert(error instanceof ConfigError, String(error));
  assert(/NATS_USER is set without NATS_PASSWORD/.test(error.message) && /GRPC_PORT/.test(error.message));
});
