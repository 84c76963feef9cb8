/**
 * Routes and queries against a real ClickHouse with rows this test writes: every number a page or the API
 * shows equals the same number computed independently (in the test, from the rows it wrote); every block's
 * SQL runs as the read-only user with the same result; bad input is a 400 saying what was wrong; alerts fire,
 * resolve and never flap on a missing read; access control and CSRF.
 */
import { assert, assertEquals, CLICKHOUSE_READONLY, startClickHouseServer } from "@tailwatch/testing";
import { createLogger, createRegistry, registerProcessMetrics } from "@tailwatch/runtime";
import { createAlertEngine, validateRule } from "../alerts.ts";
import { hashPassword } from "../auth.ts";
import { ConfigError, loadWebConfig } from "../config.ts";
import {
  type Block,
  formatUs,
  type OverviewData,
  type ServiceData,
  type TracesData,
} from "../islands/model.ts";
import { createWebServer } from "../server.ts";
import { buildTree } from "../routes/trace.tsx";
import { tables } from "../queries.ts";
import { createReader } from "../clickhouse.ts";
import {
  bucketOf,
  insertJson,
  migrate,
  ORDERS_CREATE,
  ORDERS_GET,
  PAYMENTS_CHARGE,
  quantileExact,
  readonlyCells,
  type TestEvent,
  webConfig,
} from "./helpers.ts";

const options = { sanitizeOps: false, sanitizeResources: false };

function makeEvents(base: number, n: number): TestEvent[] {
  const events: TestEvent[] = [];
  for (let i = 0; i < n; i++) {
    const ts_ms = base * 1000 + i * 40;
    const kind = i % 3;
    const root = i - kind;
    const service = kind === 1 ? "payments" : "orders";
    const protocol = i % 5 === 0 ? "http" : "grpc";
    const grpc_code = i % 13 === 0 ? 14 : 0;
    events.push({
      event_id: crypto.randomUUID(),
      ts: Math.floor(ts_ms / 1000),
      ts_ms,
      ts_us: ts_ms * 1000 + (i % 997),
      service,
      method: kind === 0 ? ORDERS_CREATE : kind === 1 ? PAYMENTS_CHARGE : ORDERS_GET,
      protocol,
      route: protocol === "http" ? "/v1/x" : "",
      grpc_code,
      http_status: protocol === "http" ? (grpc_code ? 503 : 200) : 0,
      duration_us: 90 + ((i * 7919) % 60_000) + (i % 41 === 0 ? 900_000 : 0),
      trace_id: (root + 1).toString(16).padStart(32, "0"),
      span_id: (i + 1).toString(16).padStart(16, "0"),
      parent_span_id: kind === 0 ? "" : i.toString(16).padStart(16, "0"),
      instance: `${service}-${i % 2}`,
      error_message: grpc_code ? 'unavailable: it\'s "down"' : "",
      fault_injected: i % 29 === 0 ? 1 : 0,
    });
  }
  return events;
}

interface PctRow {
  ts: number;
  window_s: number;
  service: string;
  method: string;
  count: number;
  errors: number;
  rps: number;
  error_rate: number;
  p50_us: number;
  p90_us: number;
  p95_us: number;
  p99_us: number;
  p999_us: number;
  max_us: number;
  version: number;
}

function makePercentiles(base: number): PctRow[] {
  const rows: PctRow[] = [];
  for (const window_s of [10, 60]) {
    for (const [service, method] of [["orders", ""], ["orders", ORDERS_CREATE], ["payments", ""]]) {
      for (let ts = base + 1; ts <= base + 125; ts++) {
        for (const version of ts % 2 === 0 ? [1, 3, 2] : [1]) {
          const v = ts * 7 + version * 1000 + window_s + service.length;
          rows.push({
            ts,
            window_s,
            service,
            method,
            count: v % 500,
            errors: v % 7,
            rps: (v % 500) / window_s,
            error_rate: (v % 7) / Math.max(1, v % 500),
            p50_us: v,
            p90_us: v + 1,
            p95_us: v + 2,
            p99_us: v + 3,
            p999_us: v + 4,
            max_us: v + 5,
            version,
          });
        }
      }
    }
  }
  return rows;
}

/**
 * The percentile rows as ClickHouse stored them. The pages show what ClickHouse holds; 18.16 parses some
 * Float64 texts (rps, error_rate) to a neighbouring double of what JavaScript wrote (4.766666666666667 came
 * back as 4.7666666666666675), so the expected figures start from the stored rows, read as the admin user.
 */
async function storedPercentiles(ch: Parameters<typeof insertJson>[0]): Promise<PctRow[]> {
  const text = await ch.query(
    `SELECT toUInt32(ts) AS ts, window_s, service, method, count, errors, rps, error_rate, p50_us, p90_us,
       p95_us, p99_us, p999_us, max_us, version
     FROM profiler.latency_percentiles
     FORMAT JSONEachRow`,
  );
  // UInt64 columns come quoted (output_format_json_quote_64bit_integers); the Float64 ones as numbers.
  const numbers = (row: Record<string, unknown>) =>
    Object.fromEntries(
      Object.entries(row).map(([k, v]) => [k, k === "service" || k === "method" ? v : Number(v)]),
    ) as unknown as PctRow;
  return text.trim() === "" ? [] : text.trim().split("\n").map((line) => numbers(JSON.parse(line)));
}

/** The latest version of each (ts, window, service, method). */
function latestVersions(rows: PctRow[]): Map<string, PctRow> {
  const out = new Map<string, PctRow>();
  for (const r of rows) {
    const key = `${r.ts}|${r.window_s}|${r.service}|${r.method}`;
    if (!out.has(key) || out.get(key)!.version < r.version) out.set(key, r);
  }
  return out;
}

async function getJson<T>(handler: (r: Request) => Promise<Response>, path: string): Promise<T> {
  const response = await handler(new Request(`http://127.0.0.1:8080${path}`));
  assertEquals(response.status, 200, `${path}: ${response.status}`);
  return await response.json() as T;
}

async function assertSqlReproduces(ch: Parameters<typeof readonlyCells>[0], block: Block): Promise<void> {
  assert(block.sql, `${block.id} has SQL`);
  assertEquals(block.error, undefined, `${block.id}: ${block.error}`);
  const cells = await readonlyCells(ch, block.sql!, block.columns);
  assertEquals(cells, block.rows, `${block.id}: its SQL as the read-only user gives what the page shows`);
}

Deno.test(
  "every number on the pages equals an independent computation over the rows written",
  options,
  async (t) => {
    await using ch = await startClickHouseServer();
    await migrate(ch);
    const stateDir = await Deno.makeTempDir({ prefix: "tailwatch-web-test-" });
    const base = Math.floor(Date.now() / 1000) - 900;
    const events = makeEvents(base, 3000); // 120 s of events
    await insertJson(ch, "request_events", events.slice(0, 1500));
    await insertJson(ch, "request_events", events.slice(1500));
    const pct = makePercentiles(base);
    // Part straight into the storage, part through the Buffer: readers must see both, latest version winning.
    await insertJson(ch, "latency_percentiles_storage", pct.filter((r) => r.version === 1));
    await insertJson(ch, "latency_percentiles", pct.filter((r) => r.version !== 1));
    const stored = await storedPercentiles(ch);
    assertEquals(stored.length, pct.length, "every percentile row written is stored");
    const latest = latestVersions(stored);
    await using server = await createWebServer(webConfig(ch, stateDir), { alertIntervalMs: 0 });
    const h = server.handler;
    const fromMs = base * 1000;
    const toMs = (base + 120) * 1000;
    const toS = base + 120;
    const range = `from=${fromMs}&to=${toMs}`;

    await t.step("overview: services now, requests per second, p99 over time, fault markers", async () => {
      const d = await getJson<OverviewData>(h, `/api/view?page=overview&${range}&window=60`);
      assertEquals([d.range.fromS, d.range.toS, d.range.stepS], [base, toS, 1]);
      // now: the newest window ending at or before the range's end, latest version.
      for (const service of ["orders", "payments"]) {
        const expected = latest.get(`${toS}|60|${service}|`)!;
        const row = d.now.rows.find((r) => r[0] === service)!;
        const c = (name: string) => row[d.now.columns.indexOf(name)];
        assertEquals(c("latest_ts"), toS);
        assertEquals(c("count"), expected.count);
        assertEquals(c("rps"), expected.rps);
        assertEquals(c("error_rate"), expected.error_rate);
        assertEquals([c("p50_us"), c("p95_us"), c("p99_us")], [
          expected.p50_us,
          expected.p95_us,
          expected.p99_us,
        ]);
      }
      // rps: requests and errors per start second and service, counted here from the events written.
      const counts = new Map<string, [number, number]>();
      for (const e of events) {
        if (e.ts < base || e.ts >= toS) continue;
        const key = `${e.ts}|${e.service}`;
        const [n, err] = counts.get(key) ?? [0, 0];
        counts.set(key, [n + 1, err + (e.grpc_code !== 0 ? 1 : 0)]);
      }
      const expectedRps = [...counts.entries()].map(([k, [n, err]]) => {
        const [ts, service] = k.split("|");
        return [Number(ts), service, n, err];
      }).sort((a, b) => Number(a[0]) - Number(b[0]) || String(a[1]).localeCompare(String(b[1])));
      assertEquals(d.rps.rows, expectedRps);
      // p99 over time: window 10, whole service, latest version per second.
      const expectedP99 = [...latest.values()].filter((r) =>
        r.window_s === 10 && r.method === "" && r.ts > base && r.ts <= toS
      ).map((r) => [r.ts, r.service, r.p99_us]).sort((a, b) =>
        Number(a[0]) - Number(b[0]) || String(a[1]).localeCompare(String(b[1]))
      );
      assertEquals(d.p99.rows, expectedP99);
      const faults = new Map<string, number>();
      for (const e of events) {
        if (e.fault_injected && e.ts >= base && e.ts < toS) {
          faults.set(`${e.ts}|${e.service}`, (faults.get(`${e.ts}|${e.service}`) ?? 0) + 1);
        }
      }
      assertEquals(d.faults.rows.length, faults.size);
      for (const row of d.faults.rows) assertEquals(row[2], faults.get(`${row[0]}|${row[1]}`));
      for (const block of [d.now, d.rps, d.p99, d.faults]) await assertSqlReproduces(ch, block);
      // The server-rendered page carries the same numbers (complete without JavaScript).
      const page = await (await h(new Request(`http://127.0.0.1:8080/?${range}&window=60`))).text();
      const orders = latest.get(`${toS}|60|orders|`)!;
      assert(page.includes(`<td data-col="p99_us">${formatUs(orders.p99_us)}</td>`), "p99 in the HTML");
      assert(page.includes('data-service="orders"') && page.includes('data-service="payments"'));
    });

    await t.step(
      "service page: methods now, percentiles, statuses, protocols, instances, histogram",
      async () => {
        const d = await getJson<ServiceData>(h, `/api/view?page=service&service=orders&${range}&window=60`);
        const methods = d.now.rows.map((r) => r[0]);
        assertEquals(methods, ["", ORDERS_CREATE]);
        const all = latest.get(`${toS}|60|orders|`)!;
        const row = d.now.rows[0];
        const c = (name: string) => row[d.now.columns.indexOf(name)];
        assertEquals([c("count"), c("errors"), c("p999_us"), c("max_us")], [
          all.count,
          all.errors,
          all.p999_us,
          all.max_us,
        ]);
        // Percentiles over time (whole service, window 60).
        const expected = [...latest.values()].filter((r) =>
          r.window_s === 60 && r.service === "orders" && r.method === "" && r.ts > base && r.ts <= toS
        ).sort((a, b) => a.ts - b.ts).map((
          r,
        ) => [r.ts, r.p50_us, r.p90_us, r.p95_us, r.p99_us, r.p999_us, r.count]);
        assertEquals(d.percentiles.rows, expected);
        // Raw-row breakdowns over the last 60 s of the range (start second in [toS - 60, toS)).
        const inWindow = events.filter((e) => e.service === "orders" && e.ts >= toS - 60 && e.ts < toS);
        for (const [block, key] of [[d.protocols, "protocol"], [d.instances, "instance"]] as const) {
          const groups = [...new Set(inWindow.map((e) => e[key]))].sort();
          assertEquals(block.rows.map((r) => r[0]), groups);
          for (const r of block.rows) {
            const ds = inWindow.filter((e) => e[key] === r[0]).map((e) => e.duration_us);
            const errors = inWindow.filter((e) => e[key] === r[0] && e.grpc_code !== 0).length;
            assertEquals(r.slice(1), [
              ds.length,
              errors,
              Math.round(ds.reduce((a, b) => a + b, 0) / ds.length),
              quantileExact(ds, 0.5),
              quantileExact(ds, 0.99),
              Math.max(...ds),
            ], `${key} ${r[0]}`);
          }
        }
        // Histogram: completion second in [toS - 60, toS), the profiler's buckets.
        const buckets = new Map<number, number>();
        for (const e of events) {
          if (e.service !== "orders") continue;
          const end = Math.floor(e.ts_ms / 1000) +
            Math.floor(((e.ts_ms % 1000) * 1000 + e.duration_us) / 1e6);
          if (end >= toS - 60 && end < toS) {
            buckets.set(
              bucketOf(e.duration_us),
              (buckets.get(bucketOf(e.duration_us)) ?? 0) + 1,
            );
          }
        }
        assertEquals(d.histogram.rows, [...buckets.entries()].sort((a, b) => a[0] - b[0]));
        // Statuses per second (request_stats_1s) against the raw events.
        const status = new Map<string, number>();
        for (const e of events) {
          if (e.service !== "orders" || e.ts < base || e.ts >= toS) continue;
          const key = JSON.stringify([e.ts, e.protocol, e.grpc_code, e.http_status]);
          status.set(key, (status.get(key) ?? 0) + 1);
        }
        assertEquals(d.status.rows.length, status.size);
        for (const r of d.status.rows) assertEquals(r[4], status.get(JSON.stringify(r.slice(0, 4))));
        for (
          const block of [d.now, d.percentiles, d.status, d.protocols, d.instances, d.histogram, d.faults]
        ) {
          await assertSqlReproduces(ch, block);
        }
        // One method: the percentiles of that key only.
        const one = await getJson<ServiceData>(
          h,
          `/api/view?page=service&service=orders&method=${
            encodeURIComponent(ORDERS_CREATE)
          }&${range}&window=10`,
        );
        const expectedOne =
          [...latest.values()].filter((r) =>
            r.window_s === 10 && r.service === "orders" && r.method === ORDERS_CREATE && r.ts > base &&
            r.ts <= toS
          ).length;
        assertEquals(one.percentiles.rows.length, expectedOne);
        const html = await (await h(new Request(`http://127.0.0.1:8080/service/orders?${range}&window=60`)))
          .text();
        assert(html.includes(`data-method="${ORDERS_CREATE}"`));
      },
    );

    await t.step("traces: the slowest requests with filters, and one trace's call tree", async () => {
      const d = await getJson<TracesData>(
        h,
        `/api/view?page=traces&${range}&service=orders&status=error&min_ms=1&limit=7`,
      );
      const expected = events.filter((e) =>
        e.service === "orders" && e.grpc_code !== 0 && e.duration_us >= 1000 && e.ts >= base && e.ts < toS
      ).sort((a, b) => b.duration_us - a.duration_us || b.ts_ms - a.ts_ms).slice(0, 7);
      assertEquals(d.slowest.rows.map((r) => r[0]), expected.map((e) => e.event_id));
      assertEquals(
        d.slowest.rows.map((r) => r[d.slowest.columns.indexOf("duration_us")]),
        expected.map((e) => e.duration_us),
      );
      await assertSqlReproduces(ch, d.slowest);
      const traceId = expected[0].trace_id;
      const spans = events.filter((e) => e.trace_id === traceId);
      const html =
        await (await h(new Request(`http://127.0.0.1:8080/traces/${traceId}?at=${expected[0].ts_ms}`)))
          .text();
      for (const s of spans) {
        assert(html.includes(`data-span="${s.span_id}"`), `span ${s.span_id} in the tree`);
      }
      const block = await getJson<Block>(h, `/api/trace/${traceId}?at=${expected[0].ts_ms}`);
      const tree = buildTree(block.columns, block.rows);
      assertEquals(
        tree.spans.map((s) => s.depth),
        [0, 1, 2],
      );
      assertEquals(tree.spans.map((s) => s.spanId), spans.map((s) => s.span_id));
      assert(tree.exact, "ts_us present: offsets in µs");
      // Rows without ts_us fall back to ts_ms.
      const legacy = block.rows.map((r) => r.map((v, i) => block.columns[i] === "ts_us" ? 0 : v));
      const fallback = buildTree(block.columns, legacy);
      assert(!fallback.exact);
      assertEquals(fallback.spans[0].startUs, spans[0].ts_ms * 1000);
    });

    await t.step("bad input is a 400 that says what was wrong, never a 500", async () => {
      const cases: [string, RegExp][] = [
        ["/service/nope", /unknown service "nope"/],
        ["/service/orders?method=nope", /unknown method "nope" of orders/],
        ["/?window=7", /window must be one of 10, 60, 300/],
        ["/?range=2h", /range must be one of/],
        ["/?from=1&to=2", /from must be epoch milliseconds/],
        [`/?from=${toMs}&to=${fromMs}`, /to must be after from/],
        ["/traces?limit=0", /limit must be an integer from 1 to 500/],
        ["/traces?limit=abc", /limit must be an integer/],
        ["/traces?min_ms=-1", /min_ms must be an integer/],
        ["/traces?status=teapot", /status must be any, ok, error/],
        ["/traces?method=x", /method needs a service/],
        ["/?colour=red", /unknown parameter "colour"/],
        ["/traces/not-a-trace", /a trace id is 32 lowercase hex digits/],
        [`/traces?service=${encodeURIComponent("orders' OR 1=1 --")}`, /unknown service/],
        ["/?window=60&window=10", /given twice/],
      ];
      for (const [path, message] of cases) {
        const page = await h(new Request(`http://127.0.0.1:8080${path}`));
        const text = await page.text();
        assertEquals(page.status, 400, path);
        assert(message.test(text.replaceAll("&quot;", '"')), `${path}: ${text.slice(0, 300)}`);
      }
      const api = await h(new Request("http://127.0.0.1:8080/api/view?page=service&service=orders&window=0"));
      assertEquals(api.status, 400);
      const body = await api.json();
      assert(body.problems.some((p: string) => /window must be/.test(p)));
      const page = await h(new Request("http://127.0.0.1:8080/api/view?page=nope"));
      assertEquals(page.status, 400);
      await page.body?.cancel();
      const notFound = await h(new Request("http://127.0.0.1:8080/nothing-here"));
      assertEquals(notFound.status, 404);
      await notFound.body?.cancel();
    });

    await t.step("only loopback names may address a server without sign-in", async () => {
      const response = await h(
        new Request("http://evil.example:8080/", { headers: { host: "evil.example:8080" } }),
      );
      assertEquals(response.status, 421);
      await response.body?.cancel();
    });

    await t.step("/metrics: the process metrics and the server's own", async () => {
      const text = await (await h(new Request("http://127.0.0.1:8080/metrics"))).text();
      for (const name of ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"]) {
        const value = Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
        assert(value > 0, `${name} = ${value}`);
      }
      assert(/^# TYPE process_cpu_seconds_total counter$/m.test(text));
      assert(/^web_clickhouse_queries_total \d+$/m.test(text));
    });
    await Deno.remove(stateDir, { recursive: true });
  },
);

Deno.test(
  "alerts: fire after the condition held, resolve after it cleared, no flapping, webhook",
  options,
  async () => {
    await using ch = await startClickHouseServer();
    await migrate(ch);
    const stateDir = await Deno.makeTempDir({ prefix: "tailwatch-web-alerts-" });
    const received: { state: string; rule: { id: string } }[] = [];
    const hook = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
      received.push(await request.json());
      return new Response("ok");
    });
    const origin = `http://127.0.0.1:${hook.addr.port}`;
    try {
      // Validation: every problem named.
      const bad = validateRule({
        id: "Bad Id",
        kind: "p98",
        service: "",
        threshold: -1,
        for_s: 0,
        webhook: "http://10.0.0.1/x",
      }, [
        origin,
      ]);
      assert(bad.rule === undefined);
      for (const word of ["id", "kind", "service", "threshold", "for_s", "allow-list"]) {
        assert(
          bad.problems.some((p) => p.includes(word)),
          `a problem about ${word}: ${bad.problems.join("; ")}`,
        );
      }
      const rulesFile = `${stateDir}/rules.json`;
      await Deno.writeTextFile(
        rulesFile,
        JSON.stringify({
          rules: [
            {
              id: "charge-p99",
              name: "Charge p99",
              kind: "p99_above",
              service: "payments",
              method: PAYMENTS_CHARGE,
              threshold: 50,
              for_s: 5,
              window_s: 300,
              webhook: `${origin}/hook`,
            },
            { id: "broken", kind: "p99_above" },
          ],
        }),
      );
      const reader = createReader({
        url: ch.url,
        username: CLICKHOUSE_READONLY.username,
        password: CLICKHOUSE_READONLY.password,
        database: "profiler",
      });
      await using engine = createAlertEngine({
        reader,
        tables: tables("profiler"),
        rulesFile,
        historyFile: `${stateDir}/alerts.sqlite`,
        webhookAllowlist: [origin],
        logger: createLogger("error"),
        intervalMs: 0,
      });
      assertEquals(engine.rules().map((r) => r.id), ["charge-p99"]);
      assert(
        engine.fileErrors().some((e) => e.startsWith("rule 2:")),
        "the broken rule is reported, not fatal",
      );
      const now = Math.floor(Date.now() / 1000);
      const row = (ts: number, p99Ms: number, version = 1) => ({
        ts,
        window_s: 300,
        service: "payments",
        method: PAYMENTS_CHARGE,
        count: 100,
        p99_us: p99Ms * 1000,
        version,
      });
      const insert = (rows: object[]) => insertJson(ch, "latency_percentiles", rows);
      // 11 s above 50 ms: fires (after 5).
      await insert(Array.from({ length: 11 }, (_, i) => row(now - 40 + i, 80)));
      await engine.evaluateNow();
      assertEquals(engine.views()[0].state, "firing");
      assertEquals(engine.firing().map((f) => f.id), ["charge-p99"]);
      // 3 good seconds, then a gap (a read that missed rows), a late rewrite of an old second: still firing.
      await insert([row(now - 29, 10), row(now - 28, 10), row(now - 27, 10), row(now - 35, 1, 2)]);
      await engine.evaluateNow();
      await engine.evaluateNow();
      assertEquals(engine.views()[0].state, "firing");
      // 5 good seconds in a row: resolved.
      await insert(Array.from({ length: 5 }, (_, i) => row(now - 26 + i, 10)));
      await engine.evaluateNow();
      assertEquals(engine.views()[0].state, "ok");
      const history = engine.history();
      assertEquals(history.map((e) => e.state), ["resolved", "firing"]);
      assertEquals(history[1].value, 80);
      for (let i = 0; i < 50 && received.length < 2; i++) await new Promise((r) => setTimeout(r, 50));
      assertEquals(received.map((r) => r.state), ["firing", "resolved"]);
      assertEquals(received[0].rule.id, "charge-p99");
      await reader.close();
    } finally {
      await hook.shutdown();
      await Deno.remove(stateDir, { recursive: true });
    }
  },
);

Deno.test("access: sign-in, roles, session cookie, CSRF on changes", options, async () => {
  await using ch = await startClickHouseServer();
  await migrate(ch);
  const stateDir = await Deno.makeTempDir({ prefix: "tailwatch-web-auth-" });
  try {
    const admin = await hashPassword("admin pass", 1000);
    const reader = await hashPassword("reader pass", 1000);
    const config = webConfig(ch, stateDir, {
      WEB_AUTH_REQUIRED: "true",
      WEB_USERS: `ada:admin:${admin},rex:readonly:${reader}`,
    });
    await using server = await createWebServer(config, { alertIntervalMs: 0 });
    const h = server.handler;
    const at = (path: string, init: RequestInit = {}) => h(new Request(`http://127.0.0.1:8080${path}`, init));
    const page = await at("/service/orders");
    assertEquals(page.status, 303);
    assertEquals(page.headers.get("location"), "/login?next=%2Fservice%2Forders");
    assertEquals((await at("/api/view?page=overview")).status, 401);
    const form = await at("/login");
    const csrfCookie = /tw_csrf=([^;]+)/.exec(form.headers.get("set-cookie") ?? "")![1];
    const token = /name="_csrf" value="([^"]+)"/.exec(await form.text())![1];
    assertEquals(token, csrfCookie);
    const signIn = (user: string, password: string, csrf = token) =>
      at("/login?next=/alerts", {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", cookie: `tw_csrf=${csrfCookie}` },
        body: new URLSearchParams({ _csrf: csrf, user, password }).toString(),
      });
    assertEquals((await signIn("ada", "wrong")).status, 401);
    assertEquals((await signIn("ada", "admin pass", "forged")).status, 403);
    const ok = await signIn("ada", "admin pass");
    assertEquals(ok.status, 303);
    assertEquals(ok.headers.get("location"), "/alerts");
    const cookie = ok.headers.get("set-cookie")!;
    assert(/HttpOnly/.test(cookie) && /SameSite=Strict/.test(cookie) && /Max-Age=28800/.test(cookie), cookie);
    const session = /tw_session=([^;]+)/.exec(cookie)![1];
    const alerts = await at("/alerts", { headers: { cookie: `tw_session=${session}` } });
    assertEquals(alerts.status, 200);
    const sessionCsrf = /name="_csrf" value="([^"]+)"/.exec(await alerts.text())![1];
    const rule = (csrf: string, who: string) =>
      at("/alerts", {
        method: "POST",
        headers: {
          "content-type": "application/x-www-form-urlencoded",
          cookie: `tw_session=${who}`,
          origin: "http://127.0.0.1:8080",
        },
        body: new URLSearchParams({
          _csrf: csrf,
          action: "save",
          id: "orders-errors",
          kind: "error_rate_above",
          service: "orders",
          threshold: "5",
          for_s: "10",
          window_s: "60",
        }).toString(),
      });
    assertEquals((await rule("forged", session)).status, 403);
    const crossSite = await at("/alerts", {
      method: "POST",
      headers: {
        cookie: `tw_session=${session}`,
        origin: "http://evil.example",
        "content-type": "application/x-www-form-urlencoded",
      },
      body: `_csrf=${sessionCsrf}&action=delete&id=x`,
    });
    assertEquals(crossSite.status, 403);
    const saved = await rule(sessionCsrf, session);
    assertEquals(saved.status, 303);
    assertEquals(server.app.alerts.rules().map((r) => r.id), ["orders-errors"]);
    // A bad rule: 400 with what was wrong.
    const badRule = await at("/alerts", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", cookie: `tw_session=${session}` },
      body: new URLSearchParams({
        _csrf: sessionCsrf,
        action: "save",
        id: "x",
        kind: "p99_above",
        service: "nope",
        threshold: "-3",
        for_s: "5",
      })
        .toString(),
    });
    assertEquals(badRule.status, 400);
    const badText = (await badRule.text()).replaceAll("&quot;", '"');
    assert(
      /threshold must be a number/.test(badText) && /service "nope" is not known/.test(badText),
      badText.slice(-800),
    );
    // The reader sees the rules and may not change them.
    const readerSignIn = await signIn("rex", "reader pass");
    const readerSession = /tw_session=([^;]+)/.exec(readerSignIn.headers.get("set-cookie")!)![1];
    const readerPage = await (await at("/alerts", { headers: { cookie: `tw_session=${readerSession}` } }))
      .text();
    assert(readerPage.includes("orders-errors") && !readerPage.includes('id="rule-form"'));
    assertEquals((await rule(sessionCsrf, readerSession)).status, 403);
    // Sign-out ends the session.
    const out = await at("/logout", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", cookie: `tw_session=${session}` },
      body: `_csrf=${sessionCsrf}`,
    });
    assertEquals(out.status, 303);
    assert(/Max-Age=0/.test(out.headers.get("set-cookie")!));
    assertEquals((await at("/", { headers: { cookie: `tw_session=${session}` } })).status, 303);
  } finally {
    await Deno.remove(stateDir, { recursive: true });
  }
});

Deno.test("configuration is validated once, every problem named", () => {
  try {
    loadWebConfig({
      WEB_HOST: "0.0.0.0",
      CLICKHOUSE_USER: "tailwatch_admin",
      WEB_PORT: "x",
      WEB_WEBHOOK_ALLOWLIST: "ftp://a",
    });
    throw new Error("accepted");
  } catch (error) {
    assert(error instanceof ConfigError);
    const text = error.message;
    for (
      const part of [
        "WEB_PORT",
        "CLICKHOUSE_USER",
        "WEB_WEBHOOK_ALLOWLIST",
        "WEB_USERS must list at least one user",
      ]
    ) {
      assert(text.includes(part), `${part} in ${text}`);
    }
  }
  assertEquals(loadWebConfig({}).host, "127.0.0.1");
  assertEquals(loadWebConfig({}).authRequired, false);
});

Deno.test("process metrics are read from /proc at scrape time", () => {
  const registry = createRegistry();
  registerProcessMetrics(registry);
  const text = registry.render();
  const cpu = Number(/^process_cpu_seconds_total (\S+)$/m.exec(text)![1]);
  const rss = Number(/^process_resident_memory_bytes (\S+)$/m.exec(text)![1]);
  const fds = Number(/^process_open_fds (\S+)$/m.exec(text)![1]);
  assert(cpu > 0 && rss > 10_000_000 && fds >= 3, text);
  const file = Deno.openSync("/proc/self/stat");
  try {
    assertEquals(Number(/^process_open_fds (\S+)$/m.exec(registry.render())![1]), fds + 1);
  } finally {
    file.close();
  }
});
