/**
 * The overview's numbers read from Prometheus (WEB_PROMETHEUS_URL), as in compose and Kubernetes where one
 * name stands for several pods: a real Prometheus (Debian's, on a free port, scraping every second) scrapes
 * exporters this test serves, two instances of catalog and two of ingest, and the source must give each job
 * the sum over its instances (the floor and readiness: the smallest), the rates summed, and name the instances
 * that are down. A job with no target and a Prometheus that does not answer are errors, not zeros.
 */
import { assert, assertEquals, freePorts, spawnLogged, waitUntil } from "@tailwatch/testing";
import { createSampler, prometheusMetricsSource } from "../sampler.ts";

interface Exporter extends AsyncDisposable {
  port: number;
  close(): Promise<void>;
}

/** Serves `/metrics`: fixed lines plus `events_published_total` growing by `perSecond` with the wall clock. */
function serveExporter(lines: string[], perSecond: number): Exporter {
  const startedMs = Date.now();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, () => {
    const published = Math.floor((Date.now() - startedMs) * perSecond / 1000);
    return new Response([...lines, `events_published_total ${published}`, ""].join("\n"));
  });
  const close = async () => {
    await server.shutdown().catch(() => {});
  };
  return { port: server.addr.port, close, [Symbol.asyncDispose]: close };
}

Deno.test("metrics from Prometheus: each job summed over its instances, rates summed, instances down named", {
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "tailwatch-web-prometheus-" });
  await using catalogA = serveExporter([
    'requests_total{method="GetProduct",code="OK"} 1000',
    'requests_total{method="ListProducts",code="OK"} 200',
    "process_resident_memory_bytes 10485760",
  ], 50);
  await using catalogB = serveExporter([
    'requests_total{method="GetProduct",code="OK"} 30',
    "process_resident_memory_bytes 20971520",
  ], 30);
  await using ingestA = serveExporter([
    "ingest_consumer_pending 7",
    "ingest_committed_floor_seq 5000",
    "ingest_ready 1",
  ], 0);
  await using ingestB = serveExporter([
    "ingest_consumer_pending 5",
    "ingest_committed_floor_seq 4200",
    "ingest_ready 0",
  ], 0);
  const [closedPort, promPort] = freePorts(2);
  const targets = (ports: number[]) => ports.map((p) => `"127.0.0.1:${p}"`).join(", ");
  await Deno.writeTextFile(
    `${dir}/prometheus.yml`,
    `global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: catalog
    static_configs:
      - targets: [${targets([catalogA.port, catalogB.port])}]
  - job_name: ingest
    static_configs:
      - targets: [${targets([ingestA.port, ingestB.port])}]
  - job_name: orders
    static_configs:
      - targets: [${targets([closedPort])}]
`,
  );
  await using _prometheus = await spawnLogged("prometheus", [
    `--config.file=${dir}/prometheus.yml`,
    `--storage.tsdb.path=${dir}/data`,
    `--web.listen-address=127.0.0.1:${promPort}`,
  ], `${dir}/prometheus.log`);
  const url = `http://127.0.0.1:${promPort}`;
  try {
    await waitUntil("prometheus ready", async () => (await fetch(url)).ok, 30_000, 100);
    const source = prometheusMetricsSource({
      url,
      jobs: ["catalog", "ingest", "orders", "payments"],
      rateWindowS: 5,
      timeoutMs: 2000,
    });
    const state = (job: string) => source.states.find((s) => s.name === job)!;
    // A rate is exact for a steady counter once the window holds samples of both instances end to end.
    await waitUntil(
      "six seconds of both catalog instances",
      async () => {
        const response = await fetch(`${url}/api/v1/query`, {
          method: "POST",
          body: new URLSearchParams({ query: 'count_over_time(up{job="catalog"}[6s]) >= 6' }),
        });
        const body = await response.json();
        return body.data?.result?.length === 2;
      },
      30_000,
      500,
    );
    await source.read();

    const catalog = state("catalog");
    assertEquals(catalog.values.get("requests_total"), 1230, "label sets and instances added up");
    assertEquals(catalog.values.get("process_resident_memory_bytes"), 31457280);
    const rate = catalog.rates.get("events_published_total")!;
    assert(Math.abs(rate - 80) <= 4, `50/s + 30/s read as ${rate}/s`);

    const ingest = state("ingest");
    assert(ingest.up && ingest.error === undefined, `ingest up: ${ingest.error}`);
    assertEquals(ingest.values.get("ingest_consumer_pending"), 12, "pending: the partitions' sum");
    assertEquals(ingest.values.get("ingest_committed_floor_seq"), 4200, "the floor: the slowest partition's");
    assertEquals(ingest.values.get("ingest_ready"), 0, "ready only when every instance is");

    const orders = state("orders");
    assertEquals(orders.up, false);
    assertEquals(orders.error, `1 of 1 instances down: 127.0.0.1:${closedPort}`);
    assertEquals(state("payments").up, false);
    assertEquals(state("payments").error, "Prometheus has no target of this job");

    // One catalog pod gone: the job is still up, its error names the instance, its sums lose that pod.
    await catalogB.close();
    await waitUntil(
      "catalog B seen down",
      async () => {
        await source.read();
        return state("catalog").error !== undefined;
      },
      15_000,
      250,
    );
    assert(state("catalog").up, "a job with one instance left is up");
    assertEquals(state("catalog").error, `1 of 2 instances down: 127.0.0.1:${catalogB.port}`);
    assertEquals(state("catalog").values.get("requests_total"), 1200);

    // The sampler's history keeps one series per job, the web server's own first.
    const sampler = createSampler({ source, intervalMs: 60_000, historyS: 600 });
    try {
      await sampler.sampleNow();
      const history = sampler.history();
      assertEquals(history.processes.map((p) => p.name), ["web", "catalog", "ingest", "orders", "payments"]);
      const catalogMemory = history.processes[1].rssMiB.at(-1);
      assertEquals(catalogMemory, 10, "catalog's memory: the one pod left");
    } finally {
      await sampler.close();
    }

    // Prometheus gone: every job is down with the reason, nothing reads as zero.
    await _prometheus.stop();
    await source.read();
    for (const s of source.states) {
      assertEquals(s.up, false);
      assert(s.error !== undefined && s.error.length > 0, `${s.name}: an error`);
      assertEquals(s.rates.size, 0);
    }
  } catch (error) {
    console.error(await Deno.readTextFile(`${dir}/prometheus.log`).catch(() => ""));
    throw error;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("metrics from Prometheus: WEB_PROMETHEUS_URL is validated and excludes WEB_METRICS_TARGETS", async () => {
  const { ConfigError, loadWebConfig } = await import("../config.ts");
  const config = loadWebConfig({ WEB_PROMETHEUS_URL: "http://prometheus:9090/" });
  assertEquals(config.prometheusUrl, "http://prometheus:9090");
  assertEquals(config.prometheusJobs, ["catalog", "orders", "payments", "ingest"]);
  assertEquals(config.prometheusRateWindowS, 60);
  assertEquals(loadWebConfig({}).prometheusUrl, undefined);
  const problems = (env: Record<string, string>) => {
    try {
      loadWebConfig(env);
      return [];
    } catch (error) {
      assert(error instanceof ConfigError, String(error));
      return error.problems;
    }
  };
  assertEquals(problems({ WEB_PROMETHEUS_URL: "ftp://x" }).length, 1);
  assertEquals(
    problems({ WEB_PROMETHEUS_URL: "http://p:9090", WEB_METRICS_TARGETS: "catalog=http://c:8081/metrics" }),
    ["WEB_PROMETHEUS_URL and WEB_METRICS_TARGETS exclude each other: set one"],
  );
  assertEquals(
    problems({ WEB_PROMETHEUS_JOBS: 'catalog,a"b' }).length,
    1,
    "a job name that would break PromQL",
  );
  assertEquals(problems({ WEB_PROMETHEUS_JOBS: "catalog,catalog" }), [
    "WEB_PROMETHEUS_JOBS: a job is named twice",
  ]);
  assertEquals(problems({ WEB_PROMETHEUS_RATE_WINDOW_S: "1" }).length, 1);
});
