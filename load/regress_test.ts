import { assert, assertEquals } from "@tailwatch/testing";
import { benchFigures, previousResult, regressionFlags, regressionMarkdown } from "./regress.ts";

const bench = (p99Ms: number, segmentsP99Us: number[], rounds: number[]) => ({
  date: "2026-12-06T10:00:00.000Z",
  quick: false,
  host: { id: "abc", description: "test" },
  events: {
    medianPairRatio: 0.99,
    pairRatios: [0.97, 0.99, 1.01],
    rpsEventsOn: Math.max(...rounds),
    rpsEventsOff: 10_000,
    rounds: [...rounds.map((rps) => ({ events: true, rps, serviceCpuPer1k: 0.013, natsCpuPer1k: 0.001 })), {
      events: false,
      rps: 10_000,
      serviceCpuPer1k: 0.012,
      natsCpuPer1k: 0,
    }],
  },
  orders: {
    p50Ms: 0.9,
    p99Ms,
    segments: {
      spread: { p50: 50, p99: Math.max(...segmentsP99Us) - Math.min(...segmentsP99Us), p999: NaN },
    },
    cpuSecondsPer1kRequests: { orders: 0.27 },
    first: { cpuSecondsPer1kRequests: { orders: 0.29 } },
  },
  capacity: { rate: 1750, resolution: 50, allOkRate: 2000, stepRate: 500 },
  ingest: { visibleMs: { median: 300, runs: [290, 300, 320] } },
});

Deno.test("regression flags: only changes beyond the spread the run measured are flagged", () => {
  const previous = bench(4.0, [3800, 4000, 4300], [10_000, 10_400]);
  // p99 5.0 ms against 4.0 with a spread of 0.5 ms: a regression. The events rps moved within its rounds' range.
  const current = bench(5.0, [4700, 5000, 5200], [10_100, 10_300]);
  current.capacity.rate = 1780; // within the 50 rps resolution
  current.ingest.visibleMs = { median: 400, runs: [390, 400, 410] }; // beyond its runs' range of 20
  const r = regressionFlags(current, { file: "2026-12-05T10-00-00.json", results: previous });
  const verdict = (path: string) => r.figures.find((f) => f.path === path)?.verdict;
  assertEquals(verdict("orders.p99Ms"), "regression");
  assertEquals(verdict("events.rpsEventsOn"), "within spread");
  assertEquals(verdict("capacity.rate"), "within spread");
  assertEquals(verdict("ingest.visibleMs.median"), "regression");
  assertEquals(verdict("orders.cpuSecondsPer1kRequests.orders"), "within spread");
  assertEquals(r.flagged, 2);
  assert(regressionMarkdown(r).some((l) => l.includes("**regression**")));
  // Better is better: a lower p99 beyond the spread is an improvement.
  const faster = regressionFlags(bench(3.0, [2900, 3000, 3200], [10_000, 10_400]), {
    file: "x",
    results: previous,
  });
  assertEquals(faster.figures.find((f) => f.path === "orders.p99Ms")!.verdict, "improvement");
});

Deno.test("regression flags: without a previous result, or a spread, nothing is flagged and it says so", () => {
  const alone = regressionFlags(bench(4, [1, 2, 3], [1, 2]));
  assertEquals(alone.flagged, 0);
  assert(alone.note.startsWith("no previous result"));
  const noSpread = bench(9, [1, 2, 3], [1, 2]);
  noSpread.orders.segments.spread.p99 = NaN;
  const r = regressionFlags(noSpread, { file: "x", results: bench(4, [1, 2, 3], [1, 2]) });
  assertEquals(r.figures.find((f) => f.path === "orders.p99Ms")!.verdict, "no spread measured");
  assert(benchFigures({}).length === 0);
});

Deno.test("the previous result is the newest earlier one of the same machine and --quick", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const write = (name: string, id: string, quick: boolean) =>
      Deno.writeTextFile(`${dir}/${name}`, JSON.stringify({ host: { id }, quick }));
    await write("2026-12-01T10-00-00.json", "abc", false);
    await write("2026-12-02T10-00-00.json", "other", false);
    await write("2026-12-03T10-00-00.json", "abc", true);
    await write("2026-12-04T10-00-00.json", "abc", false);
    await write("load-2026-12-04T11-00-00.json", "abc", false);
    assertEquals(
      (await previousResult(dir, "abc", false, "2026-12-05T00-00-00.json"))?.file,
      "2026-12-04T10-00-00.json",
    );
    assertEquals(
      (await previousResult(dir, "abc", false, "2026-12-04T10-00-00.json"))?.file,
      "2026-12-01T10-00-00.json",
    );
    assertEquals(
      (await previousResult(dir, "abc", true, "2026-12-05T00-00-00.json"))?.file,
      "2026-12-03T10-00-00.json",
    );
    assertEquals(await previousResult(dir, "nobody", false, "2026-12-05T00-00-00.json"), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
