/**
 * Rollups that equal the raw rows. The materialized views fill `request_stats_1s` and `latency_profile_1s`
 * from each INSERT into `request_events`, but ClickHouse 18.16 commits the raw part first and feeds the views
 * after: a view that fails (too many parts, a memory limit) fails the INSERT with the raw rows committed, and
 * a retry that finds those rows inserts nothing. `reconcileRollups` repairs that: for every cell of the two
 * rollups whose start second lies in a range, it compares the rollup with the raw rows and inserts the
 * difference (SummingMergeTree adds it up). Cells where the rollup holds more than the raw rows cannot be
 * repaired by an insert; they are counted and reported, never hidden.
 *
 * The comparison is exact only while no INSERT into request_events is in flight for those seconds (its raw
 * part may be committed while its views are not fed yet): the worker runs it with its own inserts held
 * (worker.ts) and after every earlier INSERT of its durable left ClickHouse.
 */
import type { ClickHouse } from "./clickhouse.ts";
import { ident, type Sql, sql, sqlJoin } from "./sql.ts";

/** The bucket index of the profiler's scheme (native/profiler/include/tailwatch/buckets.h), as in 0009. */
const BUCKET_OF_DURATION = sql`toUInt16(if(duration_us < 128, duration_us,
  128 * toUInt64(floor(log2(duration_us)) - 7) + bitShiftRight(duration_us, toUInt64(floor(log2(duration_us)) - 7))))`;

/** The second a request completed in (0009): its start in µs plus its duration. */
export const END_SECOND_OF_EVENT: Sql =
  sql`toDateTime(intDiv(ts_ms, 1000) + intDiv(ts_ms % 1000 * 1000 + duration_us, 1000000))`;

export interface ReconcileScope {
  database: string;
  /** Start seconds compared, inclusive (unix seconds). */
  fromTs: number;
  toTs: number;
  /** Only cells of these services (all when omitted). */
  services?: readonly string[];
  /**
   * What the repair rows of latency_profile_1s carry as `ingest_batch_seq` and `ingest_floor_seq`: the batch
   * being committed and the current floor, so that the profiler reads them as an arrival that is not final
   * yet (native/profiler/README.md). Outside the worker (reconcile, rebuild) the batch defaults to one above
   * the highest floor in the table and the floor to 0: the profiler reads that batch like any new arrival,
   * and it becomes final once ingest's next floor passes it.
   */
  batchSeq?: number;
  floorSeq?: number;
}

export interface ReconcileResult {
  /** Cells of request_stats_1s that were short and got the difference inserted. */
  statsCellsRepaired: number;
  /** Cells of latency_profile_1s (per completion second, start second and key) repaired. */
  profileCellsRepaired: number;
  /** Cells whose rollup holds more than the raw rows (or a bucket does): not repairable by an insert. */
  statsCellsSurplus: number;
  profileCellsSurplus: number;
}

function serviceFilter(services: readonly string[] | undefined): Sql {
  return services === undefined ? sql`1` : sql`service IN (${sqlJoin([...services])})`;
}

/** The cells of request_stats_1s in scope: the raw rows counted positive, the rollup's rows negative. */
function statsDifference(scope: ReconcileScope): Sql {
  const range = sql`ts >= ${new Date(scope.fromTs * 1000)} AND ts <= ${new Date(scope.toTs * 1000)}`;
  const services = serviceFilter(scope.services);
  // Sums are Int64 here and wrap like the UInt64 sums of the table: the difference cast back to UInt64 is
  // what the table's sum lacks, even for a duration sum that overflowed.
  return sql`SELECT ts, service, method, protocol, grpc_code, http_status,
      sum(n) AS requests_delta, sum(e) AS errors_delta, sum(dsum) AS duration_sum_delta,
      max(dmax) AS duration_max
    FROM (
      SELECT ts, service, method, protocol, grpc_code, http_status, toInt64(count()) AS n,
        toInt64(countIf(grpc_code != 0)) AS e, toInt64(sum(duration_us)) AS dsum, max(duration_us) AS dmax
      FROM ${ident(scope.database, "request_events")} WHERE ${range} AND ${services}
      GROUP BY ts, service, method, protocol, grpc_code, http_status
      UNION ALL
      SELECT ts, service, method, protocol, grpc_code, http_status, -toInt64(sum(requests)) AS n,
        -toInt64(sum(errors)) AS e, -toInt64(sum(duration_sum_us)) AS dsum, toUInt64(0) AS dmax
      FROM ${ident(scope.database, "request_stats_1s")} WHERE ${range} AND ${services}
      GROUP BY ts, service, method, protocol, grpc_code, http_status
    )
    GROUP BY ts, service, method, protocol, grpc_code, http_status`;
}

/** The cells of latency_profile_1s in scope, per (end_ts, ts, service, method), histogram per bucket. */
function profileDifference(scope: ReconcileScope): Sql {
  const range = sql`ts >= ${new Date(scope.fromTs * 1000)} AND ts <= ${new Date(scope.toTs * 1000)}`;
  const services = serviceFilter(scope.services);
  return sql`SELECT end_ts, ts, service, method,
      sum(n) AS requests_delta, sum(e) AS errors_delta, max(dmax) AS duration_max,
      sumMap(b, c) AS histogram_delta
    FROM (
      SELECT ${END_SECOND_OF_EVENT} AS end_ts, ts, service, method, toInt64(count()) AS n,
        toInt64(countIf(grpc_code != 0)) AS e, max(duration_us) AS dmax,
        groupArray(${BUCKET_OF_DURATION}) AS b, groupArray(toInt64(1)) AS c
      FROM ${ident(scope.database, "request_events")} WHERE ${range} AND ${services}
      GROUP BY end_ts, ts, service, method
      UNION ALL
      SELECT end_ts, ts, service, method, -toInt64(sum(requests)) AS n, -toInt64(sum(errors)) AS e,
        toUInt64(0) AS dmax,
        (sumMap(histogramMap.bucket, arrayMap(x -> -toInt64(x), histogramMap.count)) AS negated).1 AS b,
        negated.2 AS c
      FROM ${ident(scope.database, "latency_profile_1s")}
      WHERE ${range} AND end_ts >= ${new Date(scope.fromTs * 1000)} AND requests > 0 AND ${services}
      GROUP BY end_ts, ts, service, method
    )
    GROUP BY end_ts, ts, service, method`;
}

/**
 * Writes a floor marker into latency_profile_1s: a row without requests (service and method empty, which no
 * event has: ingest refuses an empty service) whose ingest_floor_seq says that every stream message at or
 * below `floor` is committed. Ingest writes one when no INSERT carries its floor (at start, when idle), so
 * that the profiler stops re-reading the last batches (native/profiler/README.md). ingest_batch_seq is the
 * floor itself: the profiler reads every batch above the highest floor it has seen. Sums are unchanged.
 */
export async function writeFloorMarker(
  clickhouse: ClickHouse,
  database: string,
  floor: number,
): Promise<void> {
  await clickhouse.exec(
    sql`INSERT INTO ${ident(database, "latency_profile_1s")}
      (ingest_batch_seq, end_ts, ts, service, method, requests, errors, duration_max_us, ingest_floor_seq,
        histogramMap.bucket, histogramMap.count)
      SELECT ${floor}, now(), now(), '', '', 0, 0, arrayReduce('maxState', [toUInt64(0)]),
        arrayReduce('maxState', [toUInt64(${floor})]), [], []`,
  );
}

/** One above the highest floor latency_profile_1s holds: a batch sequence the profiler has not finalized. */
async function aboveHighestFloor(clickhouse: ClickHouse, database: string): Promise<number> {
  const [row] = await clickhouse.query<{ floor: string | number }>(
    sql`SELECT maxMerge(ingest_floor_seq) AS floor FROM ${ident(database, "latency_profile_1s")}`,
  );
  return Number(row?.floor ?? 0) + 1;
}

/**
 * Inserts into each rollup what it lacks against the raw rows, cell by cell, for the start seconds and
 * services of `scope`. Idempotent: a second run finds nothing to add. See the module comment for when the
 * comparison is exact.
 */
export async function reconcileRollups(
  clickhouse: ClickHouse,
  scope: ReconcileScope,
): Promise<ReconcileResult> {
  const statsCells = statsDifference(scope);
  const [statsCount] = await clickhouse.query<{ short: string; surplus: string }>(
    sql`SELECT countIf(requests_delta > 0) AS short, countIf(requests_delta < 0) AS surplus FROM (${statsCells})`,
  );
  const statsCellsRepaired = Number(statsCount.short);
  if (statsCellsRepaired > 0) {
    await clickhouse.exec(
      sql`INSERT INTO ${ident(scope.database, "request_stats_1s")}
        (ts, service, method, protocol, grpc_code, http_status, requests, errors, duration_sum_us, duration_max_us)
        SELECT ts, service, method, protocol, grpc_code, http_status, toUInt64(requests_delta),
          toUInt64(errors_delta), toUInt64(duration_sum_delta), arrayReduce('maxState', [duration_max])
        FROM (${statsCells}) WHERE requests_delta > 0 AND errors_delta >= 0`,
    );
  }
  const profileCells = profileDifference(scope);
  const [profileCount] = await clickhouse.query<{ short: string; surplus: string }>(
    sql`SELECT countIf(requests_delta > 0 AND arrayAll(c -> c >= 0, histogram_delta.2)) AS short,
        countIf(requests_delta < 0 OR arrayExists(c -> c < 0, histogram_delta.2)) AS surplus
      FROM (${profileCells})`,
  );
  const profileCellsRepaired = Number(profileCount.short);
  if (profileCellsRepaired > 0) {
    const batchSeq = scope.batchSeq ?? await aboveHighestFloor(clickhouse, scope.database);
    const floorSeq = scope.floorSeq ?? 0;
    await clickhouse.exec(
      sql`INSERT INTO ${ident(scope.database, "latency_profile_1s")}
        (ingest_batch_seq, end_ts, ts, service, method, requests, errors, duration_max_us, ingest_floor_seq,
          histogramMap.bucket, histogramMap.count)
        SELECT ${batchSeq}, end_ts, ts, service, method, toUInt64(requests_delta), toUInt64(errors_delta),
          arrayReduce('maxState', [duration_max]), arrayReduce('maxState', [toUInt64(${floorSeq})]),
          arrayFilter((b, c) -> c != 0, histogram_delta.1, histogram_delta.2),
          arrayMap(c -> toUInt64(c), arrayFilter(c -> c != 0, histogram_delta.2))
        FROM (${profileCells})
        WHERE requests_delta > 0 AND arrayAll(c -> c >= 0, histogram_delta.2)`,
    );
  }
  return {
    statsCellsRepaired,
    profileCellsRepaired,
    statsCellsSurplus: Number(statsCount.surplus),
    profileCellsSurplus: Number(profileCount.surplus),
  };
}
