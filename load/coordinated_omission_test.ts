/**
 * Coordinated omission, shown on a real stall: catalog is frozen (SIGSTOP) for 1 s in the middle of a
 * constant-rate ghz run. The numbers are chosen so that the difference is certain, not a matter of noise:
 *
 * - 200 rps for 8 s = 1600 requests; 1 % of them = 16.
 * - 4 workers: at most 4 requests are in flight when the process stops and wait out the stall (0.25 % < 1 %):
 *   the plain latencies see the stall only in those 4, so the plain p99 does not show it.
 * - The schedule intended 200 requests during the stall (12.5 % > 1 %): ghz sends them late, in a burst after
 *   it, each answered in about a millisecond. Measured from their intended send times they waited up to 1 s,
 *   so the corrected p99 (the 16 slowest) sits near the stall's length.
 */
import { assert } from "@tailwatch/testing";
import { cancelledByGhz, runGhzReport } from "./ghz.ts";
import { correctForCoordinatedOmission, hitsInDuration, intendedOffsetsUs, quantiles } from "./latency.ts";
import { ghzScheduleArgs, ratePieces } from "./scenario.ts";
import { startServiceProcess } from "./processes.ts";

const RATE = 200;
const SECONDS = 8;
const CONCURRENCY = 4;
const STALL_AT_MS = 3000;
const STALL_MS = 1000;

Deno.test("coordinated omission: a 1 s stall shows in the corrected p99, not in the plain one", {
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const logDir = await Deno.makeTempDir({ prefix: "tailwatch-co-" });
  try {
    await using catalog = await startServiceProcess("catalog", { EVENTS_ENABLED: "false" }, logDir);
    const run = {
      call: "catalog.v1.CatalogService/GetProduct",
      target: `127.0.0.1:${catalog.grpcPort}`,
      data: { product_id: "kibble-salmon-2kg" },
      concurrency: CONCURRENCY,
      connections: 1,
    };
    await runGhzReport({ ...run, rps: RATE, total: 400 }); // warm-up: JIT and the connection
    const pid = catalog.process.pid;
    let stoppedAtUs = 0;
    let resumedAtUs = 0;
    const stall = setTimeout(() => {
      Deno.kill(pid, "SIGSTOP");
      stoppedAtUs = Date.now() * 1000;
      setTimeout(() => {
        Deno.kill(pid, "SIGCONT");
        resumedAtUs = Date.now() * 1000;
      }, STALL_MS);
    }, STALL_AT_MS);
    let report;
    try {
      report = await runGhzReport({ ...run, rps: RATE, duration: `${SECONDS}s` });
    } finally {
      clearTimeout(stall);
      await new Promise((resolve) => setTimeout(resolve, STALL_MS + 100));
      Deno.kill(pid, "SIGCONT");
    }
    assert(stoppedAtUs > 0 && resumedAtUs > stoppedAtUs, "the stall happened during the run");
    const answered = report.details.filter((d) => !cancelledByGhz(d));
    const n = answered.length;
    assert(n >= RATE * SECONDS * 0.95, `${n} requests answered of ${RATE * SECONDS}`);
    const requests = answered.map((d) => ({ startUs: d.endUs - d.latencyUs, endUs: d.endUs }));
    const correction = correctForCoordinatedOmission(requests, [{ at: 0, rate: RATE }]);
    const plain = quantiles(answered.map((d) => d.latencyUs));
    const corrected = quantiles(correction.correctedUs);

    // The premise: few requests held by the workers through the stall, many intended during it.
    const held = answered.filter((d) => d.latencyUs > STALL_MS * 1000 * 0.5).length;
    const offsets = intendedOffsetsUs([{ at: 0, rate: RATE }], n + 1).slice(1);
    const intendedDuringStall = Array.from(offsets).filter((o) =>
      correction.t0Us + o >= stoppedAtUs && correction.t0Us + o < resumedAtUs
    ).length;
    const summary =
      `n ${n}, held ${held}, intended during the stall ${intendedDuringStall}, sent late ${correction.sentLate}; ` +
      `plain p99 ${(plain.p99 / 1000).toFixed(1)} ms, max ${(plain.max / 1000).toFixed(0)} ms; ` +
      `corrected p99 ${(corrected.p99 / 1000).toFixed(1)} ms, p50 ${(corrected.p50 / 1000).toFixed(2)} ms`;
    console.log(summary);
    assert(held >= 1 && held <= CONCURRENCY && held < n * 0.01, `held by the workers: ${summary}`);
    assert(intendedDuringStall > n * 0.01, `intended during the stall: ${summary}`);
    assert(plain.max >= STALL_MS * 1000 * 0.8, `the workers' own requests saw the stall: ${summary}`);

    // The point: the corrected p99 shows the stall, the plain one does not.
    assert(corrected.p99 >= STALL_MS * 1000 * 0.5, `corrected p99 shows the stall: ${summary}`);
    assert(plain.p99 < STALL_MS * 1000 * 0.25, `plain p99 hides the stall: ${summary}`);
    assert(correction.sentLate >= intendedDuringStall * 0.8, `the late sends were seen: ${summary}`);
  } finally {
    await Deno.remove(logDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("ghz paces step and ramp schedules as ratePieces says, and on-time sends are not corrected", {
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const logDir = await Deno.makeTempDir({ prefix: "tailwatch-co-" });
  try {
    await using catalog = await startServiceProcess("catalog", { EVENTS_ENABLED: "false" }, logDir);
    const base = {
      call: "catalog.v1.CatalogService/GetProduct",
      target: `127.0.0.1:${catalog.grpcPort}`,
      data: { product_id: "kibble-salmon-2kg" },
      concurrency: 10,
      duration: "4s",
    };
    await runGhzReport({ ...base, duration: undefined, rps: 200, total: 200 });
    for (
      const schedule of [
        { kind: "step", start: 50, step: 50, everyS: 1, end: 150 },
        { kind: "ramp", from: 50, to: 150 },
      ] as const
    ) {
      const pieces = ratePieces(schedule, 4);
      const report = await runGhzReport({ ...base, extraArgs: ghzScheduleArgs(schedule, 4) });
      const requests = report.details.map((d) => ({ startUs: d.endUs - d.latencyUs, endUs: d.endUs }));
      const expected = hitsInDuration(pieces, 4);
      const correction = correctForCoordinatedOmission(requests, pieces);
      // Requests per second of the schedule, counted from the estimated start.
      const perSecond = [0, 1, 2, 3].map((s) =>
        requests.filter((r) =>
          r.startUs >= correction.t0Us + s * 1e6 && r.startUs < correction.t0Us + (s + 1) * 1e6
        ).length
      );
      const wanted = [0, 1, 2, 3].map((s) => hitsInDuration(pieces, s + 1) - hitsInDuration(pieces, s));
      const summary =
        `${schedule.kind}: ${requests.length} requests (expected ${expected}), per second ${perSecond} ` +
        `(expected ${wanted}), sent late ${correction.sentLate}`;
      console.log(summary);
      assert(Math.abs(requests.length - expected) <= expected * 0.03 + 2, summary);
      perSecond.forEach((count, s) => assert(Math.abs(count - wanted[s]) <= wanted[s] * 0.1 + 3, summary));
      const plain = quantiles(requests.map((r) => r.endUs - r.startUs));
      const corrected = quantiles(correction.correctedUs);
      assert(corrected.p50 - plain.p50 < 5000, `on-time sends keep their latency: ${summary}`);
    }
  } finally {
    await Deno.remove(logDir, { recursive: true }).catch(() => {});
  }
});
