/**
 * The invariant behind every number Tailwatch shows, stated once: each derived table equals an independent
 * query over the raw rows (`request_events`), key by key.
 *
 * - the rollups `request_stats_1s` and `latency_profile_1s` (ingest's rollupDifferences, which states them).
 * - `latency_percentiles`, the latest version of each (ts, window_s, service, method) that the profiler
 *   wrote: count, errors, max, rps and error rate exactly; each percentile is the value the profiler's rule
 *   gives for the exact quantile (quantilesExact, rank floor(q * n)): the midpoint of its bucket, capped at
 *   the window's max. A window at tick T counts requests that completed in [T - window_s, T), the completion
 *   second being the one 0009_latency_profile_by_completion.sql computes. Every (tick, window, key) with
 *   requests in a published tick's range must have a row, and no row may count requests that are not there.
 *
 * New derived tables join here when they are added.
 */
import { type ClickHouse, END_SECOND_OF_EVENT } from "@tailwatch/ingest";
import { ident, sql } from "@tailwatch/ingest/sql";
import { compareMaps, rollupDifferences } from "@tailwatch/ingest/testing";

type Row = Record<string, string | number | string[] | number[]>;

const QUANTILES = [0.5, 0.9, 0.95, 0.99, 0.999] as const;
const PERCENTILE_COLUMNS = ["p50_us", "p90_us", "p95_us", "p99_us", "p999_us"] as const;
/** count, errors, max and the five percentiles of a window without requests. */
const EMPTY_WINDOW = "0 0 0 0 0 0 0 0";

/** Bucket index of buckets.h (log-linear, 128 per power of two, exact below 128 µs); v < 2^53. */
export function bucketIndex(v: number): number {
  if (v < 128) return v;
  let s = 0;
  while (v >= 2 ** (s + 8)) s++;
  return 128 * s + Math.floor(v / 2 ** s);
}

/** The value the profiler reports for bucket `i`: lower + (width - 1) / 2, as bucket_midpoint in buckets.h. */
export function bucketMidpoint(i: number): number {
  if (i < 256) return i;
  const s = Math.floor(i / 128) - 1;
  const lower = (i - 128 * s) * 2 ** s;
  return lower + Math.floor((2 ** s - 1) / 2);
}

export interface DerivedCheck {
  /** One line per difference found (the first 20 of each table); empty when everything equals the raw rows. */
  differences: string[];
  /** How many keys were compared per table. */
  compared: { stats: number; profile: number; percentiles: number };
}

/** Checks the invariant over the whole database; see the module comment. */
export async function checkDerived(
  clickhouse: ClickHouse,
  database: string,
  windows: readonly number[],
): Promise<DerivedCheck> {
  const raw = ident(database, "request_events");
  const differences: string[] = [];

  const rollups = await rollupDifferences(clickhouse, database);
  differences.push(...rollups.differences);
  // latency_percentiles: the latest version of every row the profiler wrote.
  const written = await clickhouse.query<Row>(
    sql`SELECT toUInt32(ts) AS ts, window_s, service, method, argMax(count, version) AS count,
        argMax(errors, version) AS errors, argMax(max_us, version) AS max_us, argMax(rps, version) AS rps,
        argMax(error_rate, version) AS error_rate, argMax(p50_us, version) AS p50_us,
        argMax(p90_us, version) AS p90_us, argMax(p95_us, version) AS p95_us, argMax(p99_us, version) AS p99_us,
        argMax(p999_us, version) AS p999_us
      FROM ${ident(database, "latency_percentiles")} GROUP BY ts, window_s, service, method`,
  );
  const percentileKey = (ts: number, w: number, service: string, method: string) =>
    `${ts} | ${w}s | ${service} | ${method}`;
  const actualPercentiles = new Map<string, string>();
  let firstTick = Infinity;
  let lastTick = -Infinity;
  for (const r of written) {
    const ts = Number(r.ts);
    firstTick = Math.min(firstTick, ts);
    lastTick = Math.max(lastTick, ts);
    const values = [r.count, r.errors, r.max_us, ...PERCENTILE_COLUMNS.map((c) => r[c])].map(Number);
    // rps and error rate are the counts divided: compare them as the division gives them.
    const count = Number(r.count);
    const w = Number(r.window_s);
    const rpsOk = Math.abs(Number(r.rps) - count / w) <= 1e-9 * Math.max(1, count / w);
    const rateOk = Math.abs(Number(r.error_rate) - (count === 0 ? 0 : Number(r.errors) / count)) <= 1e-12;
    actualPercentiles.set(
      percentileKey(ts, w, String(r.service), String(r.method)),
      `${values.join(" ")}${rpsOk ? "" : ` rps ${r.rps}`}${rateOk ? "" : ` error_rate ${r.error_rate}`}`,
    );
  }
  const expectedPercentiles = new Map<string, string>();
  if (written.length > 0) {
    for (const w of windows) {
      for (const byService of [false, true]) {
        const method = byService ? sql`'' AS method` : sql`method`;
        const rows = await clickhouse.query<Row>(
          sql`SELECT tick, service, ${method}, count() AS count, countIf(grpc_code != 0) AS errors,
              max(duration_us) AS max_us, quantilesExact(${QUANTILES[0]}, ${QUANTILES[1]}, ${QUANTILES[2]},
                ${QUANTILES[3]}, ${QUANTILES[4]})(duration_us) AS q
            FROM (
              SELECT toUInt32(${END_SECOND_OF_EVENT}) + 1 + arrayJoin(range(${w})) AS tick, service, method,
                grpc_code, duration_us
              FROM ${raw}
            )
            WHERE tick >= ${firstTick} AND tick <= ${lastTick}
            GROUP BY tick, service${byService ? sql`` : sql`, method`}`,
        );
        for (const r of rows) {
          const max = Number(r.max_us);
          const reported = (r.q as (string | number)[]).map((v) =>
            Math.min(bucketMidpoint(bucketIndex(Number(v))), max)
          );
          expectedPercentiles.set(
            percentileKey(Number(r.tick), w, String(r.service), String(r.method)),
            [r.count, r.errors, max, ...reported].map(Number).join(" "),
          );
        }
      }
    }
    // A written row of a key and window without requests must say 0 (keys whose largest window is empty
    // are not written at all).
    for (const [key, value] of actualPercentiles) {
      if (!expectedPercentiles.has(key) && value === EMPTY_WINDOW) expectedPercentiles.set(key, value);
    }
  }
  compareMaps("latency_percentiles", expectedPercentiles, actualPercentiles, differences);
  return {
    differences,
    compared: {
      ...rollups.compared,
      percentiles: expectedPercentiles.size,
    },
  };
}
