/**
 * A load run through the whole pipeline (ghz on gRPC and vegeta on REST at once, fixtures, warm-up, settle),
 * cross-checked: per method and status, the generator's counts = the services' counters = rows for the run =
 * distinct ids; server percentiles below the client's; the JSON and the HTML written. Short and bounded: 3 s
 * of load at 150 rps after a 1 s warm-up.
 *
 * The rows of the run are selected by load_run_id only once ingest stores the field (its fast path; the
 * services send it already): until then the run falls back to its time span (exact here, nothing else runs)
 * and the last assertion, `selection === "run-id"`, fails on purpose.
 */
import { assert, assertEquals } from "@tailwatch/testing";
import type { Scenario } from "./scenario.ts";
import { runLoad } from "./run.ts";
import { startTestPipeline } from "./test_pipeline.ts";
import { grpcStoreMix, mixFixtureOrders, restStoreMix } from "./scenarios/store_calls.ts";

const options = { sanitizeOps: false, sanitizeResources: false };

/** gRPC CreateOrder and GetProduct, and REST GetProduct and CancelOrder, at once. */
const mixed: Scenario = {
  name: "test-mixed",
  description: "test: gRPC and REST at once, with failures on purpose and after-sales calls",
  model: "open",
  schedule: { kind: "constant", rate: 150 },
  durationS: 3,
  warmupS: 1,
  fixtureOrders: mixFixtureOrders,
  calls: (context) => {
    const grpc = grpcStoreMix(context);
    const rest = restStoreMix(context);
    const pick = (list: typeof grpc, method: string, weight: number) => ({
      ...list.find((c) => c.method.endsWith(method))!,
      weight,
    });
    return [
      pick(grpc, "/CreateOrder", 0.4),
      pick(grpc, "/GetProduct", 0.3),
      pick(rest, "/GetProduct", 0.2),
      pick(rest, "/CancelOrder", 0.1),
    ];
  },
};

Deno.test(
  "a load run's counts agree across the generator, the counters and ClickHouse",
  options,
  async () => {
    await using pipeline = await startTestPipeline();
    const resultsDir = await Deno.makeTempDir({ prefix: "tailwatch-load-results-" });
    try {
      const lines: string[] = [];
      const result = await runLoad({
        scenario: mixed,
        target: pipeline.target,
        resultsDir,
        log: (line) => lines.push(line),
      });
      const summary = `${result.crossCheck.failures.join("\n")}\n${lines.join("\n")}`;
      // The directly called methods, with their failures on purpose.
      const grpcGet = result.client.methods.find((m) =>
        m.method.endsWith("/GetProduct") && m.protocol === "grpc"
      )!;
      assert(
        grpcGet.byStatus["NOT_FOUND"] > 0 && grpcGet.byStatus["OK"] > 0,
        JSON.stringify(grpcGet.byStatus),
      );
      const restGet = result.client.methods.find((m) =>
        m.method.endsWith("/GetProduct") && m.protocol === "http"
      )!;
      assert(
        restGet.byStatus["HTTP 404"] > 0 && restGet.byStatus["HTTP 200"] > 0,
        JSON.stringify(restGet.byStatus),
      );
      // Every line of the cross-check, orders' downstream calls included.
      for (const service of ["catalog", "orders", "payments"]) {
        assert(
          result.crossCheck.lines.some((l) => l.service === service && l.rows > 0),
          `${service} rows\n${summary}`,
        );
      }
      assert(
        result.crossCheck.lines.some((l) => l.method.endsWith("/ReserveStock") && l.rows > 0),
        "orders' calls to catalog are rows of the run",
      );
      assert(
        result.crossCheck.ok,
        `cross-check failed:\n${summary}\n${JSON.stringify(result.crossCheck.lines, null, 1)}`,
      );
      assert(result.crossCheck.latency.every((l) => l.serverBelowClient), "server below client");
      assert(result.warmup.requests > 0, "a warm-up ran");
      assert(
        result.client.methods.every((m) => m.corrected && m.corrected.p99 >= m.plain.p99),
        "corrected >= plain",
      );
      assert(lines.some((l) => /served \d+\/s/.test(l)), `progress lines:\n${lines.join("\n")}`);
      // The files: the JSON the dashboard reads (scenario, startedAtMs, endedAtMs) and the offline report.
      const json = JSON.parse(await Deno.readTextFile(result.files!.json));
      assertEquals(json.scenario, "test-mixed");
      assert(json.startedAtMs < json.endedAtMs && json.crossCheck.ok === true);
      const html = await Deno.readTextFile(result.files!.html);
      assert(html.includes("<svg") && !/(src|href)="https?:/.test(html), "an offline report with charts");
      // Waits for ingest to store load_run_id (see above).
      assertEquals(
        result.crossCheck.selection,
        "run-id",
        "rows selected by load_run_id (needs ingest's fast path)",
      );
    } finally {
      await Deno.remove(resultsDir, { recursive: true });
    }
  },
);
