/**
 * Latency arithmetic of a load run: exact quantiles (the rank ClickHouse's quantileExact and the profiler use),
 * the HdrHistogram-style percentile spectrum, coordinated-omission correction from the schedule's intended send
 * times (as wrk2 does), and the within-run spread that decides whether two runs differ.
 */

/** The value at 0-based rank floor(q * n) of `sorted` (ascending), n - 1 at most: quantileExact's rank. */
export function quantileOfSorted(sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  return sorted[Math.min(n - 1, Math.max(0, Math.floor(q * n)))];
}

/** The quantiles every table shows, by name. */
export const QUANTILES = { p50: 0.5, p90: 0.9, p99: 0.99, p999: 0.999, p9999: 0.9999 } as const;
export type QuantileName = keyof typeof QUANTILES;
export type Quantiles = Record<QuantileName, number> & { count: number; max: number; mean: number };

/** p50 ... p99.99, max and mean of `values` (microseconds); NaN when empty. */
export function quantiles(values: ArrayLike<number>): Quantiles {
  const sorted = Float64Array.from(values).sort();
  const result = { count: sorted.length, max: sorted.length ? sorted[sorted.length - 1] : NaN } as Quantiles;
  let sum = 0;
  for (let i = 0; i < sorted.length; i++) sum += sorted[i];
  result.mean = sorted.length ? sum / sorted.length : NaN;
  for (const [name, q] of Object.entries(QUANTILES)) {
    result[name as QuantileName] = quantileOfSorted(sorted, q);
  }
  return result;
}

/** One line of a percentile spectrum: HdrHistogram's "Value, Percentile, TotalCount, 1/(1-Percentile)". */
export interface SpectrumPoint {
  /** 0..1 */
  percentile: number;
  valueUs: number;
  /** Requests at or below the value. */
  totalCount: number;
}

/**
 * The full percentile spectrum, as HdrHistogram's `outputPercentileDistribution` prints it: five ticks per
 * halving of the distance to 100 % (0, 12.9, 24.2, 34.0, 42.6, 50, 56.5, ... %), down to one request in n, then
 * the maximum (percentile 1).
 */
export function spectrum(values: ArrayLike<number>): SpectrumPoint[] {
  const sorted = Float64Array.from(values).sort();
  const n = sorted.length;
  if (n === 0) return [];
  const points: SpectrumPoint[] = [];
  const ticksPerHalf = 5;
  let lastRank = -1;
  for (let k = 0;; k++) {
    const remaining = Math.pow(2, -k / ticksPerHalf);
    if (remaining * n < 1) break;
    const percentile = 1 - remaining;
    const rank = Math.min(n - 1, Math.floor(percentile * n));
    if (rank === lastRank) continue;
    lastRank = rank;
    // TotalCount: how many values are at or below this one (ties included), as HdrHistogram counts.
    let total = rank + 1;
    while (total < n && sorted[total] === sorted[rank]) total++;
    points.push({ percentile, valueUs: sorted[rank], totalCount: total });
  }
  points.push({ percentile: 1, valueUs: sorted[n - 1], totalCount: n });
  return points;
}

/** HdrHistogram's text form of a spectrum (values in ms), for the JSON and anyone who plots it with its tools. */
export function spectrumText(points: SpectrumPoint[]): string {
  const lines = ["       Value     Percentile TotalCount 1/(1-Percentile)", ""];
  for (const p of points) {
    const inverse = p.percentile < 1 ? (1 / (1 - p.percentile)).toFixed(2) : "";
    lines.push(
      `${(p.valueUs / 1000).toFixed(3).padStart(12)} ${p.percentile.toFixed(12).padStart(14)} ${
        String(p.totalCount).padStart(10)
      } ${inverse.padStart(14)}`,
    );
  }
  return lines.join("\n");
}

/**
 * A request rate over time: pieces of constant rate. `at` of the first piece is 0; the last piece lasts until
 * the run's end. Step and ramp schedules are expanded into such pieces exactly as the load tool paces them
 * (ghz's line schedule changes its rate once a second).
 */
export interface RatePiece {
  /** Seconds from the start of the run. */
  at: number;
  /** Requests per second from `at` on. */
  rate: number;
}

/**
 * Intended send offsets (µs from the run's start) of hits 0..n-1 for a piecewise-constant rate: hit i is
 * intended at the time the cumulative rate reaches i (hit 0 at 0), as ghz's and vegeta's pacers send them.
 */
export function intendedOffsetsUs(pieces: RatePiece[], n: number): Float64Array {
  const offsets = new Float64Array(n);
  let piece = 0;
  let hitsAtPieceStart = 0;
  for (let i = 0; i < n; i++) {
    for (;;) {
      const current = pieces[piece];
      const next = pieces[piece + 1];
      if (next === undefined) break;
      const hitsInPiece = (next.at - current.at) * current.rate;
      if (i < hitsAtPieceStart + hitsInPiece) break;
      hitsAtPieceStart += hitsInPiece;
      piece++;
    }
    const current = pieces[piece];
    offsets[i] = current.rate > 0
      ? (current.at + (i - hitsAtPieceStart) / current.rate) * 1e6
      : current.at * 1e6;
  }
  return offsets;
}

/** Hits a piecewise rate sends in [0, durationS). */
export function hitsInDuration(pieces: RatePiece[], durationS: number): number {
  let hits = 0;
  for (let i = 0; i < pieces.length; i++) {
    const from = pieces[i].at;
    const to = Math.min(durationS, pieces[i + 1]?.at ?? durationS);
    if (to > from) hits += (to - from) * pieces[i].rate;
  }
  return hits;
}

/** One request as a load tool reported it: when it started and ended (epoch µs). */
export interface TimedRequest {
  startUs: number;
  endUs: number;
  /** The pacer's hit number when the tool reports it (vegeta's seq); else the rank by start time is used. */
  seq?: number;
}

export interface Correction {
  /** Epoch µs of the pacer's start (the latest consistent with no request sent early); hit 0 is due one interval later. */
  t0Us: number;
  /** Per request (same order as given): end - intended start, never below its own latency. */
  correctedUs: Float64Array;
  /** Requests sent later than intended by more than 1 ms, and the largest delay. */
  sentLate: number;
  maxSendDelayUs: number;
}

/**
 * Coordinated-omission correction (wrk2's): each request's latency measured from the time the schedule
 * intended to send it, not from when a busy worker got round to it. ghz's and vegeta's pacers (the same code)
 * release hit i when the cumulative rate reaches i + 1, so hit i's intended time is t0 + offset(i + 1), t0 being
 * the pacer's start; under a constant rate that is a constant shift, under step and ramp schedules it is not
 * (at 50 rps the first hits wait 20 ms, at 150 rps 6.7 ms). t0 is estimated as min(start_i - intended offset_i):
 * a tool never sends a hit before its time, and the hits it sent on time pin t0 down. Requests are matched to
 * hits by `seq` when given, else by their rank in start order (ghz's workers take the pacer's ticks in order).
 */
export function correctForCoordinatedOmission(requests: TimedRequest[], pieces: RatePiece[]): Correction {
  const n = requests.length;
  const correctedUs = new Float64Array(n);
  if (n === 0) return { t0Us: NaN, correctedUs, sentLate: 0, maxSendDelayUs: 0 };
  const hitOf = new Float64Array(n);
  if (requests.every((r) => r.seq !== undefined)) {
    for (let i = 0; i < n; i++) hitOf[i] = requests[i].seq!;
  } else {
    const order = Array.from({ length: n }, (_, i) => i).sort((a, b) =>
      requests[a].startUs - requests[b].startUs
    );
    order.forEach((requestIndex, rank) => hitOf[requestIndex] = rank);
  }
  let maxHit = 0;
  for (let i = 0; i < n; i++) maxHit = Math.max(maxHit, hitOf[i]);
  // offsets[k + 1]: hit k is released when the cumulative rate reaches k + 1.
  const offsets = intendedOffsetsUs(pieces, maxHit + 2);
  let t0Us = Infinity;
  for (let i = 0; i < n; i++) t0Us = Math.min(t0Us, requests[i].startUs - offsets[hitOf[i] + 1]);
  let sentLate = 0;
  let maxSendDelayUs = 0;
  for (let i = 0; i < n; i++) {
    const intended = t0Us + offsets[hitOf[i] + 1];
    const delay = requests[i].startUs - intended;
    if (delay > 1000) sentLate++;
    maxSendDelayUs = Math.max(maxSendDelayUs, delay);
    correctedUs[i] = Math.max(requests[i].endUs - intended, requests[i].endUs - requests[i].startUs);
  }
  return { t0Us, correctedUs, sentLate, maxSendDelayUs };
}

/** A figure's values in consecutive slices of the run, and their spread (max - min). */
export interface Segments {
  seconds: number;
  /** Per quantile name: the value in each segment that held enough requests. */
  values: Record<"p50" | "p90" | "p99" | "p999", number[]>;
  counts: number[];
  spread: Record<"p50" | "p90" | "p99" | "p999", number>;
}

/**
 * The run cut into segments of `seconds` by start time, each segment's quantiles, and the spread of each
 * quantile across them (max - min; NaN with fewer than three segments of at least `minCount` requests). The
 * spread is the run's own measure of how much a figure moves with nothing changed: a difference between two
 * runs smaller than it is not a difference (compare.ts, regress.ts).
 */
export function segmentSpread(
  requests: Array<{ startUs: number; latencyUs: number }>,
  runStartUs: number,
  seconds: number,
  minCount = 100,
): Segments {
  const buckets = new Map<number, number[]>();
  for (const r of requests) {
    const index = Math.max(0, Math.floor((r.startUs - runStartUs) / (seconds * 1e6)));
    let bucket = buckets.get(index);
    if (!bucket) buckets.set(index, bucket = []);
    bucket.push(r.latencyUs);
  }
  const names = ["p50", "p90", "p99", "p999"] as const;
  const values = { p50: [], p90: [], p99: [], p999: [] } as Segments["values"];
  const counts: number[] = [];
  for (const index of [...buckets.keys()].sort((a, b) => a - b)) {
    const bucket = buckets.get(index)!;
    if (bucket.length < minCount) continue;
    const q = quantiles(bucket);
    counts.push(bucket.length);
    for (const name of names) values[name].push(q[name]);
  }
  const spread = {} as Segments["spread"];
  for (const name of names) {
    spread[name] = values[name].length >= 3 ? Math.max(...values[name]) - Math.min(...values[name]) : NaN;
  }
  return { seconds, values, counts, spread };
}

/** The segment length a run of `durationS` is cut into: about six segments (10 s for a minute), 1 s at least. */
export function segmentSeconds(durationS: number): number {
  return Math.max(1, Math.floor(durationS / 6));
}
