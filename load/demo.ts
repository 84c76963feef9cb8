/**
 * `./dev demo`: with the stack up, drives orders.CreateOrder (which fans out to catalog and payments) at
 * 1000 rps for 30 s with ghz, waits for the pipeline to catch up, and prints what was served, published,
 * dropped and stored, and the latest percentiles.
 */
import { CREATE_ORDER_BODY, runGhz } from "./ghz.ts";
import { clickhouseRows, rowCounts, SERVICE_HTTP_PORTS, serviceCounts } from "./stack_probe.ts";

const RPS = Number(Deno.env.get("DEMO_RPS") ?? 1000);
const SECONDS = Number(Deno.env.get("DEMO_SECONDS") ?? 30);
const services = Object.keys(SERVICE_HTTP_PORTS);

const before = Object.fromEntries(
  await Promise.all(services.map(async (s) => [s, await serviceCounts(s)] as const)),
);
const rowsBefore = await rowCounts();
console.log(`driving orders.v1.OrderService/CreateOrder at ${RPS} rps for ${SECONDS} s with ghz ...`);
const summary = await runGhz({
  call: "orders.v1.OrderService/CreateOrder",
  target: "127.0.0.1:50052",
  data: CREATE_ORDER_BODY,
  rps: RPS,
  total: RPS * SECONDS,
  concurrency: 50,
});
console.log(
  `ghz: ${summary.count} requests, ${summary.rps.toFixed(0)} rps, success ${
    (summary.successRate * 100).toFixed(2)
  }%, ` +
    `p50 ${summary.p50Ms.toFixed(2)} ms, p99 ${summary.p99Ms.toFixed(2)} ms, statuses ${
      JSON.stringify(summary.statuses)
    }`,
);

// Wait until every service's buffer is empty and ClickHouse has every published event (or 30 s).
const deadline = Date.now() + 30_000;
let after = before;
let rowsAfter = rowsBefore;
for (;;) {
  after = Object.fromEntries(
    await Promise.all(services.map(async (s) => [s, await serviceCounts(s)] as const)),
  );
  rowsAfter = await rowCounts();
  const settled = services.every((s) =>
    after[s].pending === 0 &&
    (Object.keys(rowsAfter).length === 0 ||
      (rowsAfter[s]?.rows ?? 0) - (rowsBefore[s]?.rows ?? 0) >= after[s].published - before[s].published)
  );
  if (settled || Date.now() > deadline) break;
  await new Promise((resolve) => setTimeout(resolve, 500));
}

console.log("\nservice    served  published  dropped  rows in ClickHouse  distinct ids");
for (const s of services) {
  const d = (k: keyof typeof after[string]) => after[s][k] - before[s][k];
  const rows = (rowsAfter[s]?.rows ?? 0) - (rowsBefore[s]?.rows ?? 0);
  const distinct = (rowsAfter[s]?.distinct ?? 0) - (rowsBefore[s]?.distinct ?? 0);
  const verdict =
    d("served") === d("published") + d("dropped") && rows === d("published") && distinct === rows
      ? "counts add up"
      : "COUNTS DIFFER";
  console.log(
    `${s.padEnd(9)} ${String(d("served")).padStart(7)} ${String(d("published")).padStart(10)} ${
      String(d("dropped")).padStart(8)
    } ${String(rows).padStart(19)} ${String(distinct).padStart(13)}   ${verdict}`,
  );
}

try {
  // The profiler rewrites a row with a higher version when late requests arrive: read the latest version.
  const percentiles = await clickhouseRows<Record<string, string>>(
    `SELECT service, method, window_s, argMax(count, version) AS count, argMax(rps, version) AS rps,
            argMax(error_rate, version) AS error_rate, argMax(p50_us, version) AS p50_us,
            argMax(p99_us, version) AS p99_us, argMax(p999_us, version) AS p999_us
     FROM profiler.latency_percentiles
     WHERE ts = (SELECT max(ts) FROM profiler.latency_percentiles) AND window_s = 60
     GROUP BY ts, window_s, service, method ORDER BY service, method`,
  );
  if (percentiles.length > 0) {
    console.log("\nlatest 60 s percentiles from the profiler (µs):");
    for (const p of percentiles) {
      console.log(
        `  ${p.service.padEnd(9)} ${
          (p.method || "(all)").padEnd(45)
        } n=${p.count} p50=${p.p50_us} p99=${p.p99_us} p99.9=${p.p999_us}`,
      );
    }
  }
} catch {
  // no profiler output yet
}
console.log("\nthe stack keeps running: REST on :8081-8083, ./dev down stops it.");
console.log("dashboard: http://127.0.0.1:8080/");
