/**
 * The web section of the benchmark: `deno run -A load/bench/web.ts [--quick]` (runWebBench for ./dev bench).
 *
 * On a private clickhouse-server filled with 10 million raw events over the last hour (2 million with
 * --quick; INSERT ... SELECT FROM system.numbers, the materialized views fill the rollups) and a profiler-like
 * latency_percentiles for that hour, with the web server as its own process (`web/main.ts`):
 * - time to first byte and to the whole body of the overview and of a method page (median and p95 of
 *   requests spaced past the one-second view cache, i.e. every request computes its view), alone and with
 *   100 live (SSE) clients open;
 * - bytes pushed per second to one open page (overview, method page);
 * - ClickHouse queries per second the server sends with 1 and with 100 pages open on the same view, and with
 *   100 pages spread over 10 views;
 * - request → dashboard freshness: nats-server, the ingest worker and payments as processes; one Charge at a
 *   time; from the response to the first live update of the overview whose newest request_events row is
 *   that request (p50, p99, max).
 * Prints a summary, then one JSON line.
 */
import {
  CLICKHOUSE_ADMIN,
  CLICKHOUSE_READONLY,
  freePort,
  spawnLogged,
  startClickHouseServer,
  startNatsServer,
  waitUntil,
} from "@tailwatch/testing";
import { applyMigrations } from "@tailwatch/ingest/migrations";
import { startServiceProcess } from "../processes.ts";
import { applyRequestEventsStream } from "@tailwatch/nats";
import { startIngestProcess } from "@tailwatch/ingest/testing";

const ROOT = new URL("../../", import.meta.url).pathname;

export interface WebBenchResult {
  rawEvents: number;
  fillSeconds: number;
  pages: Record<
    string,
    { ttfbMsP50: number; ttfbMsP95: number; fullMsP50: number; fullMsP95: number; bytes: number }
  >;
  pagesWith100Sse: Record<
    string,
    { ttfbMsP50: number; ttfbMsP95: number; fullMsP50: number; fullMsP95: number }
  >;
  ssePushBytesPerSecond: Record<string, number>;
  clickhouseQueriesPerSecond: { pages1: number; pages100SameView: number; pages100TenViews: number };
  freshness: { probes: number; p50Ms: number; p99Ms: number; maxMs: number };
}

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
}

const round = (x: number) => Math.round(x * 10) / 10;

/** Opens a live connection, counting bytes and calling `onUpdate` with each update's JSON text. */
async function openStream(url: string, onUpdate?: (json: string) => void) {
  const controller = new AbortController();
  const response = await fetch(url, { signal: controller.signal });
  if (!response.ok) throw new Error(`stream ${response.status}`);
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let bytes = 0;
  let buffer = "";
  let resolveFirst!: () => void;
  const first = new Promise<void>((resolve) => resolveFirst = resolve);
  (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        bytes += value.byteLength;
        if (!onUpdate) {
          resolveFirst();
          continue;
        }
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const message = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = /^data: (.*)$/m.exec(message)?.[1];
          if (data) {
            onUpdate(data);
            resolveFirst();
          }
        }
      }
    } catch {
      // aborted
    }
  })();
  await first;
  return {
    bytes: () => bytes,
    close: () => {
      reader.cancel().catch(() => {});
      controller.abort();
    },
  };
}

async function timePage(url: string): Promise<{ ttfb: number; full: number; bytes: number }> {
  const started = performance.now();
  const response = await fetch(url);
  const ttfb = performance.now() - started;
  const body = await response.arrayBuffer();
  if (response.status !== 200) throw new Error(`${url}: ${response.status}`);
  return { ttfb, full: performance.now() - started, bytes: body.byteLength };
}

async function measurePages(base: string, pages: Record<string, string>, rounds: number) {
  const out: Record<
    string,
    { ttfbMsP50: number; ttfbMsP95: number; fullMsP50: number; fullMsP95: number; bytes: number }
  > = {};
  for (const [name, path] of Object.entries(pages)) {
    const samples: { ttfb: number; full: number; bytes: number }[] = [];
    await timePage(`${base}${path}`); // warm-up (connections, JIT)
    for (let i = 0; i < rounds; i++) {
      // Past the one-second view cache: every request computes its view.
      await new Promise((resolve) => setTimeout(resolve, 1100));
      samples.push(await timePage(`${base}${path}`));
    }
    out[name] = {
      ttfbMsP50: round(quantile(samples.map((s) => s.ttfb), 0.5)),
      ttfbMsP95: round(quantile(samples.map((s) => s.ttfb), 0.95)),
      fullMsP50: round(quantile(samples.map((s) => s.full), 0.5)),
      fullMsP95: round(quantile(samples.map((s) => s.full), 0.95)),
      bytes: samples[0].bytes,
    };
  }
  return out;
}

async function queriesTotal(base: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  return Number(/^web_clickhouse_queries_total (\S+)$/m.exec(text)?.[1] ?? NaN);
}

async function queriesPerSecond(base: string, seconds: number): Promise<number> {
  const before = await queriesTotal(base);
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  return round((await queriesTotal(base) - before) / seconds);
}

export async function runWebBench(options: { quick?: boolean } = {}): Promise<WebBenchResult> {
  const quick = options.quick ?? false;
  const events = quick ? 2_000_000 : 10_000_000;
  const dir = await Deno.makeTempDir({ prefix: "tailwatch-web-bench-" });
  await using ch = await startClickHouseServer();
  await applyMigrations({ url: ch.url, ...CLICKHOUSE_ADMIN, database: "profiler" });
  const now = Math.floor(Date.now() / 1000);
  const from = now - 3600;
  console.error(`filling ${events.toLocaleString("en-US")} raw events over the last hour ...`);
  const fillStarted = performance.now();
  const methods = [
    ["orders", "/orders.v1.OrderService/CreateOrder"],
    ["orders", "/orders.v1.OrderService/GetOrder"],
    ["catalog", "/catalog.v1.CatalogService/ReserveStock"],
    ["catalog", "/catalog.v1.CatalogService/GetProduct"],
    ["payments", "/payments.v1.PaymentService/Charge"],
    ["payments", "/payments.v1.PaymentService/GetPayment"],
  ];
  const services = `[${methods.map(([s]) => `'${s}'`).join(",")}]`;
  const names = `[${methods.map(([, m]) => `'${m}'`).join(",")}]`;
  // ts_ms spreads the events evenly over the hour; durations log-uniform from 100 µs to ~100 ms.
  await ch.query(`INSERT INTO profiler.request_events
    (event_id, ts, ts_ms, ts_us, service, method, protocol, route, grpc_code, http_status, duration_us, request_bytes,
     response_bytes, trace_id, span_id, parent_span_id, instance, error_message, fault_injected, stream_seq)
    SELECT generateUUIDv4(), toDateTime(intDiv(ms, 1000)), ms, ms * 1000, ${services}[k], ${names}[k],
      if(number % 4 = 0, 'http', 'grpc'), '', if(number % 97 = 0, 14, 0), if(number % 4 = 0, 200, 0),
      toUInt64(100 * exp(cityHash64(number) % 1000 / 1000 * 6.9)), 100, 200, lower(hex(intDiv(number, 3) + 1)),
      lower(hex(number + 1)), '', concat(${services}[k], '-', toString(number % 3)), '',
      toUInt8(number % 1000 = 0), intDiv(number, 256)
    FROM (SELECT number, ${from * 1000} + intDiv(number * 3600000, ${events}) AS ms, number % 6 + 1 AS k
          FROM system.numbers LIMIT ${events})`);
  // latency_percentiles as the profiler would have written them: every second, 3 windows, each key; some
  // seconds twice (a correction with a higher version).
  await ch.query(`INSERT INTO profiler.latency_percentiles
    (ts, window_s, service, method, count, errors, rps, error_rate, p50_us, p90_us, p95_us, p99_us, p999_us, max_us, version)
    SELECT toDateTime(${from} + intDiv(number, 27)), [10, 60, 300][number % 27 % 3 + 1] AS w,
      ${services}[intDiv(number % 27, 3) % 6 + 1], if(intDiv(number % 27, 3) >= 6, '', ${names}[intDiv(number % 27, 3) + 1]),
      w * 463, w * 4, 463, 0.01, 2000, 9000, 15000, 40000, 90000, 120000, 1 + number % 2
    FROM system.numbers LIMIT ${3600 * 27}`);
  const fillSeconds = round((performance.now() - fillStarted) / 1000);
  console.error(`filled in ${fillSeconds} s`);

  const webPort = freePort();
  const base = `http://127.0.0.1:${webPort}`;
  const nats = await startNatsServer();
  await applyRequestEventsStream(nats.url); // the setup step's stream: ingest and the services only check it
  const ingestPort = freePort();
  const ingest = await startIngestProcess({
    natsUrl: nats.url,
    clickhouseUrl: ch.url,
    metricsPort: ingestPort,
    logPath: `${dir}/ingest.log`,
  });
  const payments = await startServiceProcess("payments", { NATS_URL: nats.url, V8_WORKER_NICE: "0" }, dir);
  const web = await spawnLogged(Deno.execPath(), ["run", "-A", `${ROOT}web/main.ts`], `${dir}/web.log`, {
    env: {
      ...Deno.env.toObject(),
      WEB_PORT: String(webPort),
      CLICKHOUSE_URL: ch.url,
      CLICKHOUSE_USER: CLICKHOUSE_READONLY.username,
      CLICKHOUSE_PASSWORD: CLICKHOUSE_READONLY.password,
      WEB_STATE_DIR: dir,
      WEB_METRICS_TARGETS:
        `payments=http://127.0.0.1:${payments.httpPort}/metrics,ingest=http://127.0.0.1:${ingestPort}/metrics`,
      WEB_LOG_LEVEL: "warn",
    },
  });
  try {
    await waitUntil("web up", async () => (await fetch(`${base}/healthz`)).ok, 60_000, 100);
    const method = encodeURIComponent("/orders.v1.OrderService/CreateOrder");
    const pages = {
      "overview 15m": "/?range=15m",
      "overview 1h": "/?range=1h",
      "method page 15m": `/service/orders?method=${method}&range=15m&window=60`,
      "method page 1h": `/service/orders?method=${method}&range=1h&window=60`,
    };
    const rounds = quick ? 7 : 15;
    console.error("timing pages ...");
    const alone = await measurePages(base, pages, rounds);

    console.error("bytes pushed per page, queries per second ...");
    const overviewStream = `${base}/api/stream?page=overview&range=15m&window=60`;
    const methodStream =
      `${base}/api/stream?page=service&service=orders&method=${method}&range=15m&window=60`;
    const seconds = quick ? 5 : 10;
    const push: Record<string, number> = {};
    for (const [name, url] of [["overview", overviewStream], ["method page", methodStream]]) {
      const s = await openStream(url);
      const b0 = s.bytes();
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
      push[name] = Math.round((s.bytes() - b0) / seconds);
      s.close();
    }
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const one = await openStream(overviewStream);
    const pages1 = await queriesPerSecond(base, seconds);
    const more = await Promise.all(Array.from({ length: 99 }, () => openStream(overviewStream)));
    const pages100SameView = await queriesPerSecond(base, seconds);
    for (const s of [one, ...more]) s.close();
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const spread = await Promise.all(Array.from({ length: 100 }, (_, i) => {
      const range = ["5m", "15m", "1h", "6h", "5m"][i % 5];
      const window = i % 10 < 5 ? 10 : 60;
      return openStream(`${base}/api/stream?page=overview&range=${range}&window=${window}`);
    }));
    const pages100TenViews = await queriesPerSecond(base, seconds);
    for (const s of spread) s.close();
    await new Promise((resolve) => setTimeout(resolve, 1500));

    console.error("timing pages with 100 live clients open ...");
    const clients = await Promise.all(
      Array.from({ length: 100 }, (_, i) => openStream(i % 2 ? overviewStream : methodStream)),
    );
    const with100 = await measurePages(base, pages, rounds);
    for (const s of clients) s.close();

    console.error("freshness: request → dashboard ...");
    const probes = quick ? 20 : 60;
    let newest = 0;
    const waiters: { startMs: number; resolve: (t: number) => void }[] = [];
    const live = await openStream(`${base}/api/stream?page=overview&range=5m&window=10`, (json) => {
      const match = /"newestEventMs":(\d+)/.exec(json);
      if (!match) return;
      newest = Math.max(newest, Number(match[1]));
      const seen = performance.now();
      for (const w of [...waiters]) {
        if (newest >= w.startMs) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(seen);
        }
      }
    });
    await waitUntil(
      "ingest ready",
      async () => (await fetch(`http://127.0.0.1:${ingestPort}/readyz`)).ok,
      60_000,
      200,
    );
    const freshness: number[] = [];
    for (let i = 0; i < probes + 3; i++) {
      const startMs = Date.now();
      const seen = new Promise<number>((resolve) => waiters.push({ startMs, resolve }));
      const response = await fetch(`http://127.0.0.1:${payments.httpPort}/v1/payments`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          order_id: `bench-${startMs}-${i}`,
          amount_cents: 100,
          currency: "EUR",
          card_number: "4242424242424242",
        }),
      });
      await response.body?.cancel();
      const ended = performance.now();
      const seenAt = await Promise.race([seen, new Promise<number>((r) => setTimeout(() => r(NaN), 20_000))]);
      if (i >= 3) freshness.push(seenAt - ended); // the first probes warm the pipeline up
      await new Promise((resolve) => setTimeout(resolve, 200 + Math.random() * 800));
    }
    live.close();
    const valid = freshness.filter(Number.isFinite);
    return {
      rawEvents: events,
      fillSeconds,
      pages: alone,
      pagesWith100Sse: Object.fromEntries(
        Object.entries(with100).map(([k, v]) => [k, {
          ttfbMsP50: v.ttfbMsP50,
          ttfbMsP95: v.ttfbMsP95,
          fullMsP50: v.fullMsP50,
          fullMsP95: v.fullMsP95,
        }]),
      ),
      ssePushBytesPerSecond: push,
      clickhouseQueriesPerSecond: { pages1, pages100SameView, pages100TenViews },
      freshness: {
        probes: valid.length,
        p50Ms: round(quantile(valid, 0.5)),
        p99Ms: round(quantile(valid, 0.99)),
        maxMs: round(Math.max(...valid)),
      },
    };
  } finally {
    await web.stop("SIGTERM", 10_000);
    await payments[Symbol.asyncDispose]();
    await ingest.stop("SIGTERM", 30_000);
    await nats[Symbol.asyncDispose]();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  const result = await runWebBench({ quick: Deno.args.includes("--quick") });
  console.log(
    `web bench (${result.rawEvents.toLocaleString("en-US")} raw events, filled in ${result.fillSeconds} s)`,
  );
  console.log(
    "page                     TTFB p50/p95 ms   full p50/p95 ms   bytes   | with 100 SSE: TTFB p50/p95, full p50/p95",
  );
  for (const [name, p] of Object.entries(result.pages)) {
    const w = result.pagesWith100Sse[name];
    console.log(
      `${name.padEnd(24)} ${`${p.ttfbMsP50} / ${p.ttfbMsP95}`.padEnd(17)} ${
        `${p.fullMsP50} / ${p.fullMsP95}`.padEnd(17)
      } ${String(p.bytes).padEnd(7)} | ${w.ttfbMsP50} / ${w.ttfbMsP95}, ${w.fullMsP50} / ${w.fullMsP95}`,
    );
  }
  console.log(`bytes pushed per second per page: ${JSON.stringify(result.ssePushBytesPerSecond)}`);
  console.log(`ClickHouse queries/s: ${JSON.stringify(result.clickhouseQueriesPerSecond)}`);
  console.log(`request → dashboard freshness: ${JSON.stringify(result.freshness)}`);
  console.log(JSON.stringify(result));
}
