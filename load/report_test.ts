import { assert, assertEquals } from "@tailwatch/testing";
import { compareRuns, comparisonText } from "./compare.ts";
import { quantiles, segmentSpread, spectrum } from "./latency.ts";
import { markdownToHtml, renderCompareReport, renderLoadReport } from "./report_html.ts";
import type { LoadResult, MethodStats } from "./run.ts";
import { crossCheck } from "./crosscheck.ts";
import { summaryText } from "./summary.ts";

/** A load result of `n` CreateOrder calls whose latency is `base` µs, plus a slow tail per 10 s segment. */
function fakeResult(runId: string, base: number, tail: number[]): LoadResult {
  const requests = Array.from({ length: 60_000 }, (_, i) => {
    const segment = Math.floor(i / 10_000);
    return { startUs: i * 1000, latencyUs: i % 100 === 0 ? tail[segment] : base + (i % 7) * 10 };
  });
  const latencies = requests.map((r) => r.latencyUs);
  const plain = quantiles(latencies);
  const method: MethodStats = {
    service: "orders",
    method: "/orders.v1.OrderService/CreateOrder",
    protocol: "grpc",
    label: "buy",
    count: latencies.length,
    byStatus: { OK: latencies.length },
    cancelled: 0,
    cancelledAs: {},
    achievedRps: 1000,
    plain,
    corrected: { ...plain, sentLate: 0, maxSendDelayUs: 0 },
    spectrum: spectrum(latencies),
    correctedSpectrum: spectrum(latencies),
    spectrumText: "",
    segments: { plain: segmentSpread(requests, 0, 10), corrected: segmentSpread(requests, 0, 10) },
    timeline: {
      t: [0, 1],
      sent: [1000, 1000],
      ok: [1000, 1000],
      errors: [0, 0],
      p50Us: [base, base],
      p99Us: [tail[0], tail[1]],
      p99CorrectedUs: [tail[0], tail[1]],
    },
  };
  return {
    kind: "tailwatch-load-run",
    version: 1,
    scenario: "orders-create",
    description: "test <b>escaped</b>",
    runId,
    target: "test",
    model: "open",
    schedule: { kind: "constant", rate: 1000 },
    scheduleText: "constant 1000 rps",
    durationS: 60,
    startedAtMs: 1_800_000_000_000,
    endedAtMs: 1_800_000_060_000,
    warmup: { seconds: 10, runId: `${runId}-warmup`, requests: 10_000, excluded: true, note: "warm-up" },
    setup: { orders: 0, runId: `${runId}-setup` },
    calls: [{
      label: "buy",
      method: "orders.v1.OrderService/CreateOrder",
      protocol: "grpc",
      weight: 1,
      expect: "OK",
      tool: "ghz",
    }],
    host: { cores: 2, loadavgBefore: "", stealShare: 0, otherBusyCores: 0, note: "quiet" },
    client: {
      total: 60_000,
      ok: 60_000,
      errors: 0,
      cancelled: 0,
      achievedRps: 1000,
      methods: [method],
      timeline: { t: [0], sent: [1000], ok: [1000], errors: [0] },
    },
    server: { methods: [] },
    crossCheck: crossCheck({
      generator: [],
      metrics: [],
      rows: [],
      otherRows: [],
      latency: [],
      selection: "run-id",
      settledAfterMs: 100,
    }),
    cpu: {
      seconds: { orders: 10 },
      perThousandRequests: { orders: 0.2 },
      cores: { orders: 0.17 },
      mainThread: { orders: 0.15 },
      machineBusyCores: 1,
    },
  };
}

Deno.test("comparing runs flags a percentile only beyond the larger run's segment spread", () => {
  // The p99 of each 10 s segment moves between 4 and 6 ms in both runs: their p99s differ by less than that.
  const a = fakeResult("a", 800, [4000, 6000, 5000, 4500, 5500, 5000]);
  const b = fakeResult("b", 800, [5000, 5500, 6000, 4000, 5000, 4800]);
  const same = compareRuns(a, b);
  const p99 = same.methods[0].figures.find((f) => f.kind === "plain" && f.figure === "p99")!;
  assertEquals(p99.beyondSpread, false);
  assertEquals(same.flagged, []);
  // The median moving from 0.8 to 1.6 ms, every segment of it: beyond the spread (a few µs).
  const slower = compareRuns(a, fakeResult("c", 1600, [4000, 6000, 5000, 4500, 5500, 5000]));
  const p50 = slower.methods[0].figures.find((f) => f.kind === "plain" && f.figure === "p50")!;
  assertEquals([p50.beyondSpread, p50.verdict], [true, "slower"]);
  assert(slower.flagged.some((f) => f.includes("p50")));
  assert(comparisonText(slower).includes("SLOWER"));
});

Deno.test("reports are one offline HTML file each: charts inline, text escaped, nothing fetched", () => {
  const a = fakeResult("a", 800, [4000, 6000, 5000, 4500, 5500, 5000]);
  const b = fakeResult("b", 900, [4000, 6000, 5000, 4500, 5500, 5000]);
  b.baseline = compareRuns(a, b);
  for (const html of [renderLoadReport(b, a), renderCompareReport(b.baseline, a, b)]) {
    assert(html.startsWith("<!doctype html>") && html.includes("<svg"), "a page with charts");
    assert(
      !/(src|href)=["']?(https?:)?\/\//.test(html) && !html.includes("<script"),
      "nothing loaded from anywhere",
    );
  }
  const page = renderLoadReport(b, a);
  assert(page.includes("test &#60;b&#62;escaped&#60;/b&#62;"), "escaped");
  assert(page.includes("baseline a plain"), "the baseline's spectrum overlaid");
  assert(summaryText(b).includes("cross-check: OK"));
  assertEquals(
    markdownToHtml("## A\n\n| x | y |\n| --- | ---: |\n| 1 | **2** |\n\n- item `c`"),
    "<h2>A</h2>\n<table><thead><tr><th>x</th><th>y</th></tr></thead><tbody><tr><td>1</td><td><b>2</b></td></tr></tbody></table>\n<ul><li>item <code>c</code></li></ul>",
  );
});
