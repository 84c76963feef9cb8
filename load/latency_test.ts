import { assert, assertEquals } from "@tailwatch/testing";
import {
  correctForCoordinatedOmission,
  hitsInDuration,
  intendedOffsetsUs,
  quantileOfSorted,
  quantiles,
  segmentSpread,
  spectrum,
  spectrumText,
} from "./latency.ts";

Deno.test("quantiles take the value at rank floor(q * n), as quantileExact and the profiler do", () => {
  const sorted = Array.from({ length: 100 }, (_, i) => i + 1); // 1..100
  assertEquals(quantileOfSorted(sorted, 0.5), 51);
  assertEquals(quantileOfSorted(sorted, 0.99), 100);
  assertEquals(quantileOfSorted(sorted, 0), 1);
  assertEquals(quantileOfSorted(sorted, 1), 100);
  const q = quantiles([5, 1, 4, 2, 3]);
  assertEquals([q.count, q.p50, q.max, q.mean], [5, 3, 5, 3]);
  assert(Number.isNaN(quantiles([]).p99));
});

Deno.test("the spectrum has HdrHistogram's ticks, counts and the maximum last", () => {
  const values = Array.from({ length: 10_000 }, (_, i) => i + 1);
  const points = spectrum(values);
  assertEquals(points[0], { percentile: 0, valueUs: 1, totalCount: 1 });
  const half = points.find((p) => Math.abs(p.percentile - 0.5) < 1e-12)!;
  assertEquals(half.valueUs, 5001);
  assertEquals(points.at(-1), { percentile: 1, valueUs: 10_000, totalCount: 10_000 });
  for (let i = 1; i < points.length; i++) {
    assert(points[i].percentile > points[i - 1].percentile && points[i].valueUs >= points[i - 1].valueUs);
  }
  // Down to one request in n: the last finite tick leaves at least one value above it.
  assert((1 - points.at(-2)!.percentile) * values.length >= 1);
  assert(spectrumText(points).includes("1/(1-Percentile)"));
  // Ties: TotalCount counts every value at or below.
  assertEquals(spectrum([7, 7, 7, 7])[0], { percentile: 0, valueUs: 7, totalCount: 4 });
});

Deno.test("intended send times follow constant, step and ramp rates", () => {
  assertEquals(Array.from(intendedOffsetsUs([{ at: 0, rate: 4 }], 5)), [
    0,
    250_000,
    500_000,
    750_000,
    1_000_000,
  ]);
  // 2/s for 2 s (hits 0..3), then 4/s.
  const step = Array.from(intendedOffsetsUs([{ at: 0, rate: 2 }, { at: 2, rate: 4 }], 7));
  assertEquals(step, [0, 500_000, 1_000_000, 1_500_000, 2_000_000, 2_250_000, 2_500_000]);
  assertEquals(hitsInDuration([{ at: 0, rate: 2 }, { at: 2, rate: 4 }], 3), 8);
  assertEquals(hitsInDuration([{ at: 0, rate: 500 }, { at: 20, rate: 1000 }], 30), 20_000);
});

Deno.test("coordinated omission: late sends count from their intended time; on-time sends are unchanged", () => {
  const rate = 100; // one every 10 ms from t0 = 1 s
  const t0 = 1_000_000;
  const requests = Array.from({ length: 100 }, (_, i) => {
    const intended = t0 + i * 10_000;
    // Requests 40..59 were held back until 595 ms (a stall of the sender's workers), then took 1 ms each.
    const start = i >= 40 && i < 60 ? t0 + 595_000 + (i - 40) * 10 : intended;
    return { startUs: start, endUs: start + 1000 };
  });
  const c = correctForCoordinatedOmission(requests, [{ at: 0, rate }]);
  assertEquals(c.t0Us, t0 - 10_000, "the pacer started one interval before hit 0");
  assertEquals(c.correctedUs[0], 1000);
  assertEquals(c.correctedUs[40], 595_000 - 400_000 + 1000);
  assertEquals(c.correctedUs[59], 595_000 + 190 - 590_000 + 1000);
  assertEquals(c.correctedUs[60], 1000);
  assertEquals(c.sentLate, 20);
  // The plain latencies are all 1 ms; the corrected p99 shows the wait.
  assert(
    quantiles(c.correctedUs).p99 > 100_000 &&
      quantiles(requests.map((r) => r.endUs - r.startUs)).p99 === 1000,
  );
  // vegeta's seq numbers give the hits directly, whatever the order they arrive in.
  const shuffled = requests.map((r, i) => ({ ...r, seq: i })).reverse();
  const bySeq = correctForCoordinatedOmission(shuffled, [{ at: 0, rate }]);
  assertEquals(bySeq.correctedUs[0], c.correctedUs[99]);
  // A step from 10/s to 100/s: the pacer sends hit i when the cumulative rate reaches i + 1, so the first hits
  // leave 100 ms apart starting at 100 ms, and none of them is late.
  const pieces = [{ at: 0, rate: 10 }, { at: 1, rate: 100 }];
  const stepped = Array.from({ length: 30 }, (_, i) => {
    const start = t0 + (i < 10 ? (i + 1) * 100_000 : 1_000_000 + (i - 9) * 10_000);
    return { startUs: start, endUs: start + 500 };
  });
  const s = correctForCoordinatedOmission(stepped, pieces);
  assertEquals([Math.round(s.t0Us), s.sentLate, Math.round(Math.max(...s.correctedUs))], [t0, 0, 500]);
});

Deno.test("the within-run spread is the range of each quantile across the run's segments", () => {
  const requests = [];
  for (let s = 0; s < 30; s++) {
    for (let i = 0; i < 200; i++) {
      requests.push({ startUs: s * 1e6 + i, latencyUs: s < 10 ? 1000 : s < 20 ? 2000 : 1500 });
    }
  }
  const segments = segmentSpread(requests, 0, 10);
  assertEquals(segments.counts, [2000, 2000, 2000]);
  assertEquals(segments.values.p50, [1000, 2000, 1500]);
  assertEquals(segments.spread.p50, 1000);
  assert(Number.isNaN(segmentSpread(requests.slice(0, 4000), 0, 10).spread.p99), "two segments: no spread");
});
