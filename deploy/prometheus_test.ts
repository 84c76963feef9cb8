/**
 * Prometheus, Alertmanager and the dashboards' PromQL:
 * - `promtool check config` on every Prometheus configuration shipped (./dev up, compose, k8s), `promtool check
 *   rules` and `promtool test rules` (rules/tailwatch.test.yml), `amtool check-config` on alertmanager.yml;
 * - every metric the rules and the dashboards name is one the code exports;
 * - end to end: a Prometheus and an Alertmanager (Debian's, started here on free ports) with the shipped rules
 *   and Alertmanager file (its webhook URL pointed here, group_wait shortened), scraping an exporter this test
 *   serves with known rates: TailwatchEventsDropped fires and reaches deploy/alert_webhook.ts; every Prometheus
 *   panel's query (Grafana's built-ins expanded) returns the series its panel shows with the known values.
 */
import {
  assert,
  assertEquals,
  freePorts,
  type ManagedProcess,
  spawnLogged,
  waitUntil,
} from "@tailwatch/testing";
import { createAlertWebhook } from "./alert_webhook.ts";
import { dashboards, PROMETHEUS } from "./grafana/dashboards.ts";
import { interpolateVariables, panelQueries, prometheusBuiltins } from "./grafana/expand.ts";
import { mustRun, ROOT } from "./test_helpers.ts";

const DEPLOY = `${ROOT}deploy`;
const RULES = `${DEPLOY}/prometheus/rules/tailwatch.rules.yml`;

/** Prometheus configurations shipped. */
const PROMETHEUS_CONFIGS = [
  `${DEPLOY}/prometheus/prometheus.local.yml`,
  `${DEPLOY}/compose/prometheus/prometheus.yml`,
  `${DEPLOY}/k8s/base/prometheus/prometheus.yml`,
];

/**
 * Debian builds Prometheus without Kubernetes service discovery, so its promtool refuses `kubernetes_sd_configs`;
 * the k8s file is checked with that block replaced by a static target (the relabelling rules stay), and the
 * block itself is checked for the fields the official image reads.
 */
function withoutKubernetesSd(text: string): string {
  const block = /kubernetes_sd_configs:\n {6}- role: pod\n {8}namespaces:\n {10}own_namespace: true\n/;
  if (!/kubernetes_sd_configs/.test(text)) return text;
  assert(block.test(text), "the k8s config discovers the pods of its own namespace");
  return text.replace(block, 'static_configs:\n      - targets: ["pod:1"]\n');
}

Deno.test("promtool and amtool accept the configurations, rules and rule tests", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tailwatch-promtool-" });
  try {
    for (const config of PROMETHEUS_CONFIGS) {
      // The compose and k8s files name the rules where they are mounted; promtool checks the rules below.
      const copy = `${dir}/${config.split("/").slice(-3).join("_")}`;
      await Deno.writeTextFile(copy, withoutKubernetesSd(await Deno.readTextFile(config)));
      const out = await mustRun("promtool", ["check", "config", "--syntax-only", copy]);
      assert(/SUCCESS/.test(out), out);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert(/SUCCESS: 1 rule files found/.test(
    await mustRun("promtool", ["check", "config", `${DEPLOY}/prometheus/prometheus.local.yml`]),
  ));
  assert(/SUCCESS: \d+ rules found/.test(await mustRun("promtool", ["check", "rules", RULES])));
  assert(
    /SUCCESS/.test(
      await mustRun("promtool", ["test", "rules", `${DEPLOY}/prometheus/rules/tailwatch.test.yml`]),
    ),
  );
  assert(
    /SUCCESS/.test(await mustRun("amtool", ["check-config", `${DEPLOY}/alertmanager/alertmanager.yml`])),
  );
});

/** The metric names a PromQL expression reads (histogram series mapped to the histogram's name). */
function metricNames(expr: string): string[] {
  const functions = new Set(["histogram_quantile", "label_replace", "count_over_time", "max_over_time"]);
  const names = new Set<string>();
  for (const match of expr.matchAll(/\b([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\b(?!\s*\()/g)) {
    if (functions.has(match[1])) continue;
    names.add(match[1].replace(/_(bucket|count|sum)$/, ""));
  }
  return [...names];
}

Deno.test("every metric the rules and dashboards read is exported by the code", async () => {
  const sources: string[] = [];
  for (
    const dir of ["services/kit", "runtime", "events", "net/http2", "net/grpc", "net/nats", "ingest", "web"]
  ) {
    for await (const entry of Deno.readDir(`${ROOT}${dir}`)) {
      if (entry.isFile && entry.name.endsWith(".ts") && !entry.name.endsWith("_test.ts")) {
        sources.push(await Deno.readTextFile(`${ROOT}${dir}/${entry.name}`));
      }
    }
  }
  sources.push(await Deno.readTextFile(`${DEPLOY}/clickhouse/config.d/tailwatch.xml`));
  const exported = (name: string) =>
    sources.some((text) => text.includes(`"${name}"`) || text.includes(`'${name}'`));
  const exprs: string[] = [];
  for (const match of (await Deno.readTextFile(RULES)).matchAll(/expr: (\|\n(?:\s{10,}.*\n)+|.*)/g)) {
    exprs.push(match[1]);
  }
  for (const d of dashboards()) {
    for (const q of panelQueries(d.json).filter((q) => q.datasourceUid === PROMETHEUS.uid)) {
      exprs.push(String(q.target.expr));
    }
  }
  assert(exprs.length > 20, `found ${exprs.length} expressions`);
  for (const expr of exprs) {
    for (const name of metricNames(expr)) {
      assert(exported(name), `${name} (in ${expr.trim()}) is not a metric the code exports`);
    }
  }
});

// --- end to end --------------------------------------------------------------------------------------------

/** Per second, by job: the counters the exporter serves grow at these rates; gauges are these values. */
const EXPORTED = {
  catalog: [
    [
      "counter",
      'requests_total{method="/catalog.v1.CatalogService/GetProduct",protocol="grpc",code="OK"}',
      100,
    ],
    [
      "counter",
      'requests_total{method="/catalog.v1.CatalogService/GetProduct",protocol="grpc",code="UNAVAILABLE"}',
      5,
    ],
    [
      "counter",
      'requests_total{method="/catalog.v1.CatalogService/ListProducts",protocol="http",code="OK"}',
      20,
    ],
    ["counter", "events_published_total", 125],
    ["counter", "events_dropped_total", 0],
    ["gauge", "events_buffer_depth", 3],
    ["counter", "process_cpu_seconds_total", 0.25],
    ["gauge", "requests_in_flight", 4],
    [
      "counter",
      'admission_rejections_total{method="/catalog.v1.CatalogService/GetProduct",protocol="grpc"}',
      1,
    ],
    ["gauge", "events_nats_connected", 1],
  ],
  orders: [
    ["counter", 'requests_total{method="/orders.v1.OrderService/CreateOrder",protocol="grpc",code="OK"}', 50],
    ["counter", "events_published_total", 48],
    ["counter", "events_dropped_total", 2],
    ["gauge", "events_buffer_depth", 1500],
    ["counter", "process_cpu_seconds_total", 0.5],
    ["gauge", "requests_in_flight", 2],
    [
      "counter",
      'admission_rejections_total{method="/orders.v1.OrderService/CreateOrder",protocol="grpc"}',
      0,
    ],
    ["gauge", "events_nats_connected", 1],
  ],
  payments: [
    ["counter", 'requests_total{method="/payments.v1.PaymentService/Charge",protocol="grpc",code="OK"}', 40],
    [
      "counter",
      'requests_total{method="/payments.v1.PaymentService/Charge",protocol="grpc",code="INTERNAL"}',
      2,
    ],
    ["counter", "events_published_total", 42],
    ["counter", "events_dropped_total", 0],
    ["gauge", "events_buffer_depth", 0],
    ["counter", "process_cpu_seconds_total", 0.125],
    ["gauge", "requests_in_flight", 1],
    ["counter", 'admission_rejections_total{method="/payments.v1.PaymentService/Charge",protocol="grpc"}', 0],
    ["gauge", "events_nats_connected", 1],
  ],
  ingest: [
    ["counter", "ingest_rows_inserted_total", 215],
    ["gauge", "ingest_consumer_pending", 1234],
    ["gauge", "ingest_consumer_ack_pending", 56],
    ["counter", 'ingest_insert_duration_seconds_bucket{le="0.005"}', 4],
    ["counter", 'ingest_insert_duration_seconds_bucket{le="0.01"}', 9],
    ["counter", 'ingest_insert_duration_seconds_bucket{le="0.025"}', 10],
    ["counter", 'ingest_insert_duration_seconds_bucket{le="0.05"}', 10],
    ["counter", 'ingest_insert_duration_seconds_bucket{le="+Inf"}', 10],
    ["counter", "ingest_insert_duration_seconds_count", 10],
    ["counter", "process_cpu_seconds_total", 0.75],
    ["counter", 'ingest_dead_lettered_total{reason="undecodable"}', 0.5],
    // Set at scrape time: the last commit was 3 s ago.
    ["commit", "ingest_last_commit_timestamp_seconds", 3],
  ],
} as const;

/** Serves EXPORTED per job at /<job>/metrics; `firstScrapeAt` is when Prometheus first asked (epoch s). */
function exporter(startedAt: number) {
  const state = { firstScrapeAt: 0 };
  const handler = (request: Request): Response => {
    state.firstScrapeAt ||= Date.now() / 1000;
    const job = new URL(request.url).pathname.split("/")[1] as keyof typeof EXPORTED;
    const series = EXPORTED[job];
    if (!series) return new Response("no such job\n", { status: 404 });
    const now = Date.now() / 1000;
    const lines = series.map(([kind, name, value]) => {
      const v = kind === "counter" ? value * (now - startedAt) : kind === "commit" ? now - value : value;
      return `${name} ${v}`;
    });
    return new Response(`${lines.join("\n")}\n`, {
      headers: { "content-type": "text/plain; version=0.0.4" },
    });
  };
  return { handler, state };
}

/** What each Prometheus panel query must return: series (by their labels) and value, with a tolerance. */
type SeriesExpectation = Record<string, number>;
const rate = (job: keyof typeof EXPORTED, name: string) =>
  EXPORTED[job].filter(([kind, n]) => kind === "counter" && n.startsWith(name)).reduce(
    (a, [, , v]) => a + v,
    0,
  );
const JOBS = ["catalog", "orders", "payments"] as const;
const byJob = (f: (job: (typeof JOBS)[number]) => number): SeriesExpectation =>
  Object.fromEntries(JOBS.map((job) => [`job=${job}`, f(job)]));
const gauge = (job: keyof typeof EXPORTED, name: string) => EXPORTED[job].find(([, n]) => n === name)![2];
/** The range the stat panels ("...(range)") are asked for. */
const RANGE_S = 6;
const allRequests = JOBS.reduce((a, job) => a + rate(job, "requests_total"), 0);

const EXPECTED: Record<string, { series: SeriesExpectation; tolerance: number }> = {
  "tailwatch-overview / Requests served (Prometheus, range) / A": {
    series: { "": allRequests * RANGE_S },
    tolerance: 0.2,
  },
  "tailwatch-overview / Requests per second (Prometheus) / A": {
    series: byJob((job) => rate(job, "requests_total")),
    tolerance: 0.05,
  },
  "tailwatch-overview / CPU per process / A": {
    series: {
      ...byJob((job) => rate(job, "process_cpu_seconds_total")),
      "job=ingest": rate("ingest", "process_cpu_seconds_total"),
    },
    tolerance: 0.05,
  },
  "tailwatch-overview / Requests in flight / A": {
    series: byJob((job) => gauge(job, "requests_in_flight")),
    tolerance: 0,
  },
  "tailwatch-status-codes / Requests by code (Prometheus) / A": {
    series: { "code=OK": 210, "code=UNAVAILABLE": 5, "code=INTERNAL": 2 },
    tolerance: 0.05,
  },
  "tailwatch-status-codes / Admission rejections (Prometheus) / A": {
    series: byJob((job) => rate(job, "admission_rejections_total")),
    tolerance: 0.05,
  },
  "tailwatch-pipeline / Requests served (range) / A": {
    series: { "": allRequests * RANGE_S },
    tolerance: 0.2,
  },
  "tailwatch-pipeline / Events published + dropped (range) / A": {
    series: {
      "": JOBS.reduce(
        (a, job) => a + rate(job, "events_published_total") + rate(job, "events_dropped_total"),
        0,
      ) *
        RANGE_S,
    },
    tolerance: 0.2,
  },
  "tailwatch-pipeline / Events published per second / A": {
    series: byJob((job) => rate(job, "events_published_total")),
    tolerance: 0.05,
  },
  "tailwatch-pipeline / Events dropped per second / A": {
    series: byJob((job) => rate(job, "events_dropped_total")),
    tolerance: 0.05,
  },
  "tailwatch-pipeline / Event buffer depth / A": {
    series: byJob((job) => gauge(job, "events_buffer_depth")),
    tolerance: 0,
  },
  "tailwatch-pipeline / Rows inserted per second / A": { series: { "": 215 }, tolerance: 0.05 },
  "tailwatch-pipeline / Ingest lag / A": { series: { "": 1234 }, tolerance: 0 },
  "tailwatch-pipeline / Ingest lag / B": { series: { "": 56 }, tolerance: 0 },
  // rank 0.99 × 10 = 9.9 falls in (0.01, 0.025], holding the 10th of 10: 0.01 + 0.015 × 0.9.
  "tailwatch-pipeline / INSERT duration p99 / A": { series: { "": 0.0235 }, tolerance: 0.01 },
  // 3 s at the scrape, plus up to one scrape interval and the query's own delay.
  "tailwatch-pipeline / Seconds since the last commit / A": { series: { "": 4 }, tolerance: 0.5 },
  "tailwatch-pipeline / Dead letters per second / A": {
    series: { "reason=undecodable": 0.5 },
    tolerance: 0.05,
  },
};

const labelKey = (metric: Record<string, string>) =>
  Object.entries(metric).filter(([k]) => k !== "__name__").sort().map(([k, v]) => `${k}=${v}`).join(",");

Deno.test("end to end: Prometheus scrapes, evaluates the shipped rules, Alertmanager notifies the webhook; every Prometheus panel returns its series", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "tailwatch-prom-" });
  const startedAt = Date.now() / 1000;
  const exported = exporter(startedAt);
  const exporterServer = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, exported.handler);
  const webhook = createAlertWebhook(() => {});
  const webhookServer = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, webhook.handler);
  const exporterPort = exporterServer.addr.port;
  const [promPort, amPort] = freePorts(2);
  const processes: ManagedProcess[] = [];
  try {
    const alertmanagerYml = (await Deno.readTextFile(`${DEPLOY}/alertmanager/alertmanager.yml`))
      .replace("http://alert-webhook:9099/alerts", `http://127.0.0.1:${webhookServer.addr.port}/alerts`)
      .replaceAll(/group_wait: \d+s/g, "group_wait: 1s");
    assert(alertmanagerYml.includes(`127.0.0.1:${webhookServer.addr.port}`), "the webhook URL was replaced");
    await Deno.writeTextFile(`${dir}/alertmanager.yml`, alertmanagerYml);
    const jobs = Object.keys(EXPORTED).map((job) => `
  - job_name: ${job}
    metrics_path: /${job}/metrics
    static_configs:
      - targets: ["127.0.0.1:${exporterPort}"]`).join("");
    await Deno.writeTextFile(
      `${dir}/prometheus.yml`,
      `global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - ${RULES}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:${amPort}"]
scrape_configs:${jobs}
`,
    );
    await mustRun("promtool", ["check", "config", `${dir}/prometheus.yml`]);
    processes.push(
      await spawnLogged("prometheus-alertmanager", [
        `--config.file=${dir}/alertmanager.yml`,
        `--storage.path=${dir}/alertmanager`,
        `--web.listen-address=127.0.0.1:${amPort}`,
        "--cluster.listen-address=",
      ], `${dir}/alertmanager.log`),
      await spawnLogged("prometheus", [
        `--config.file=${dir}/prometheus.yml`,
        `--storage.tsdb.path=${dir}/prometheus`,
        `--web.listen-address=127.0.0.1:${promPort}`,
      ], `${dir}/prometheus.log`),
    );
    const prom = `http://127.0.0.1:${promPort}`;
    await waitUntil("prometheus ready", async () => (await fetch(`${prom}/-/ready`)).ok, 30_000, 100);
    await waitUntil(
      "alertmanager ready",
      async () => (await fetch(`http://127.0.0.1:${amPort}/-/ready`)).ok,
      30_000,
      100,
    );

    const query = async (expr: string) => {
      const response = await fetch(`${prom}/api/v1/query`, {
        method: "POST",
        body: new URLSearchParams({ query: expr }),
      });
      const body = await response.json();
      if (body.status !== "success") throw new Error(`${expr}: ${JSON.stringify(body)}`);
      return body.data as {
        resultType: string;
        result: Array<{ metric: Record<string, string>; value: [number, string] }>;
      };
    };

    await t.step("every target is up", async () => {
      await waitUntil(
        "four targets up",
        async () => {
          const up = await query("up");
          return up.result.length === 4 && up.result.every((r) => r.value[1] === "1");
        },
        20_000,
        200,
      );
    });

    await t.step("TailwatchEventsDropped fires and reaches the webhook through Alertmanager", async () => {
      await waitUntil(
        "the alert at the webhook",
        () =>
          webhook.received.some((a) =>
            a.alertname === "TailwatchEventsDropped" && a.status === "firing" && a.labels.job === "orders"
          ),
        30_000,
        100,
      );
      const alert = webhook.received.find((a) => a.alertname === "TailwatchEventsDropped")!;
      assertEquals(alert.severity, "page");
      assertEquals(alert.receiver, "tailwatch-webhook");
      assert(/^orders dropped \d/.test(alert.annotations.summary), alert.annotations.summary);
      assert(
        !webhook.received.some((a) => a.labels.job === "catalog" || a.labels.job === "payments"),
        "only orders drops events",
      );
    });

    await t.step("every Prometheus panel query returns its series with the known values", async () => {
      // At least RANGE_S seconds of samples for the "(range)" stats.
      await waitUntil(
        "enough samples",
        () => Date.now() / 1000 - exported.state.firstScrapeAt > RANGE_S + 2,
        20_000,
        100,
      );
      const now = Date.now();
      const builtins = prometheusBuiltins({ fromMs: now - RANGE_S * 1000, toMs: now, intervalMs: 1000 }, 1);
      const seen = new Set<string>();
      for (const d of dashboards()) {
        for (const q of panelQueries(d.json).filter((q) => q.datasourceUid === PROMETHEUS.uid)) {
          const key = `${d.uid} / ${q.panel} / ${q.target.refId}`;
          const expected = EXPECTED[key];
          assert(
            expected,
            `${key}: no expectation in prometheus_test.ts (every Prometheus panel is checked)`,
          );
          seen.add(key);
          const expr = interpolateVariables(String(q.target.expr), builtins);
          assert(!expr.includes("$"), `${key}: unexpanded variable in ${expr}`);
          const data = await query(expr);
          assertEquals(data.resultType, "vector", key);
          const got = Object.fromEntries(data.result.map((r) => [labelKey(r.metric), Number(r.value[1])]));
          assertEquals(
            Object.keys(got).sort(),
            Object.keys(expected.series).sort(),
            `${key}: series of ${expr}`,
          );
          for (const [labels, value] of Object.entries(expected.series)) {
            const ok = Math.abs(got[labels] - value) <= expected.tolerance * Math.max(Math.abs(value), 1);
            assert(
              ok,
              `${key} {${labels}}: got ${got[labels]}, expected ${value} ± ${expected.tolerance * 100} %`,
            );
          }
          if (q.target.range) {
            const range = await fetch(`${prom}/api/v1/query_range`, {
              method: "POST",
              body: new URLSearchParams({
                query: expr,
                start: String(now / 1000 - 4),
                end: String(now / 1000),
                step: "1",
              }),
            });
            const body = await range.json();
            assertEquals(body.status, "success", `${key}: range query`);
            assert(body.data.result.length > 0, `${key}: the range query returns series`);
          }
        }
      }
      assertEquals([...seen].sort(), Object.keys(EXPECTED).sort(), "every expectation has its panel");
    });
  } finally {
    for (const p of processes.reverse()) await p.stop();
    await exporterServer.shutdown();
    await webhookServer.shutdown();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
