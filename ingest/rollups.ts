/**
 * Rollups that equal the raw rows. The materialized views fill `request_stats_1s` and `latency_profile_1s`
 * from each INSERT into `request_events`, but ClickHouse 18.16 commits the raw part first and feeds the views
 * after: a view that fails (too many parts, a memory limit) fails the INSERT with the raw rows committed, and
 * a retry that finds those rows inserts nothing. `reconcileRollups` repairs that: for every cell of the two
 * rollups whose start second lies in a range, it compares the rollup with the raw rows and inserts the
 * difference (SummingMergeTree adds it up). Cells where the rollup holds more than the raw rows cannot be
 * repaired by an insert; they are counted and reported, never hidden.
 *
 * An INSERT into request_events that is half done (its raw part committed, its views not fed yet) looks like
 * a gap, and adding that difference would count its rows twice once its views are fed. The worker holds its
 * own INSERTs meanwhile (rollup_repair.ts), but other workers (partitions, other durables) keep inserting the
 * same seconds. So the comparison is made against a known point: the highest raw block number of every
 * partition is read (every INSERT that committed a raw part by then has a block at or below it), then every
 * ingest INSERT running at that moment is waited for (so every such INSERT has fed its views, or failed for
 * good, which is the gap to repair), then the differences are read once, and then the raw rows of parts with
 * newer blocks: a cell they touch may hold a half-done INSERT, is neither repaired nor counted, and is looked
 * at again in a next round. The difference read is one query, whose two tables ClickHouse reads at its start,
 * microseconds apart: an INSERT cannot commit its raw part and feed its views in between.
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
  /**
   * Other processes may insert into request_events meanwhile: the start of their INSERTs' query_id (ingest's
   * `tailwatch-ingest-`). The INSERTs of it running when a round starts are waited for first. Without it (the
   * reconcile and rebuild commands, with the workers stopped) nothing is waited for; cells touched by newer
   * parts are left for a next round either way.
   */
  concurrentInsertPrefix?: string;
  /** Called before a round is repeated because cells were touched by an INSERT meanwhile. */
  onUnsettled?: (cells: number, round: number) => void;
}

export interface ReconcileResult {
  /** Cells of request_stats_1s that were short and got the difference inserted. */
  statsCellsRepaired: number;
  /** Cells of latency_profile_1s (per completion second, start second and key) repaired. */
  profileCellsRepaired: number;
  /** Cells whose rollup holds more than the raw rows (or a bucket does): not repairable by an insert. */
  statsCellsSurplus: number;
  profileCellsSurplus: number;
  /** Rounds repeated because an INSERT touched cells that differed (0 when nothing was inserted meanwhile). */
  roundsRepeated: number;
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

/** The highest block number of request_events' active parts, per partition (every committed INSERT is below). */
async function rawBlockMarks(clickhouse: ClickHouse, database: string): Promise<Map<string, bigint>> {
  const rows = await clickhouse.query<{ partition_id: string; block: string | number }>(
    sql`SELECT partition_id, max(max_block_number) AS block FROM system.parts
      WHERE database = ${database} AND table = 'request_events' AND active GROUP BY partition_id`,
  );
  return new Map(rows.map((row) => [row.partition_id, BigInt(String(row.block))]));
}

/** Waits until none of the queries whose query_id starts with `prefix` and that run now still runs. */
async function awaitRunningQueries(clickhouse: ClickHouse, prefix: string, timeoutMs: number): Promise<void> {
  const running = sql`SELECT query_id FROM system.processes
    WHERE substring(query_id, 1, ${prefix.length}) = ${prefix}`;
  const waited = new Set((await clickhouse.query<{ query_id: string }>(running)).map((row) => row.query_id));
  const deadline = Date.now() + timeoutMs;
  while (waited.size > 0) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    const still = new Set((await clickhouse.query<{ query_id: string }>(running)).map((row) => row.query_id));
    for (const id of waited) if (!still.has(id)) waited.delete(id);
    if (waited.size > 0 && Date.now() > deadline) {
      throw new Error(`INSERTs still running in ClickHouse after ${timeoutMs} ms: ${[...waited].join(", ")}`);
    }
  }
}

/** The raw rows' block number (from their part's name, `<partition>_<min>_<max>_<level>`) is above the marks. */
function newerThan(marks: Map<string, bigint>): Sql {
  const partition = sql`splitByChar('_', _part)[1]`;
  const block = sql`toUInt64(splitByChar('_', _part)[3])`;
  if (marks.size === 0) return sql`1`;
  const ids = [...marks.keys()];
  return sql`(${partition} NOT IN (${sqlJoin(ids)}) OR ${
    sqlJoin(ids.map((id) => sql`(${partition} = ${id} AND ${block} > ${marks.get(id)!})`), sql` OR `)
  })`;
}

interface StatsCell {
  ts: number;
  service: string;
  method: string;
  protocol: string;
  grpc_code: number;
  http_status: number;
  requests_delta: string | number;
  errors_delta: string | number;
  duration_sum_delta: string | number;
  duration_max: string | number;
}

interface ProfileCell {
  end_ts: number;
  ts: number;
  service: string;
  method: string;
  requests_delta: string | number;
  errors_delta: string | number;
  duration_max: string | number;
  buckets: number[];
  counts: (string | number)[];
}

const big = (value: string | number): bigint => BigInt(String(value));
const statsKey = (
  c: Pick<StatsCell, "ts" | "service" | "method" | "protocol" | "grpc_code" | "http_status">,
) =>
  JSON.stringify([Number(c.ts), c.service, c.method, c.protocol, Number(c.grpc_code), Number(c.http_status)]);
const profileKey = (c: Pick<ProfileCell, "end_ts" | "ts" | "service" | "method">) =>
  JSON.stringify([Number(c.end_ts), Number(c.ts), c.service, c.method]);

/** Inserts rows given as `(...)` tuples through `system.one ARRAY JOIN`, a few hundred KiB of text at most each. */
async function insertTuples(
  clickhouse: ClickHouse,
  tuples: Sql[],
  statement: (rows: Sql) => Sql,
): Promise<void> {
  let chunk: Sql[] = [];
  let size = 0;
  const flush = async () => {
    if (chunk.length === 0) return;
    await clickhouse.exec(statement(sql`[${sqlJoin(chunk)}]`));
    chunk = [];
    size = 0;
  };
  for (const tuple of tuples) {
    if (size + tuple.text.length > 100 * 1024) await flush();
    chunk.push(tuple);
    size += tuple.text.length + 2;
  }
  await flush();
}

/**
 * Inserts into each rollup what it lacks against the raw rows, cell by cell, for the start seconds and
 * services of `scope`. Idempotent: a second run finds nothing to add. Exact while other processes insert
 * (see the module comment): it repeats rounds until no cell that differs was touched by an INSERT meanwhile.
 */
export async function reconcileRollups(
  clickhouse: ClickHouse,
  scope: ReconcileScope,
): Promise<ReconcileResult> {
  const result: ReconcileResult = {
    statsCellsRepaired: 0,
    profileCellsRepaired: 0,
    statsCellsSurplus: 0,
    profileCellsSurplus: 0,
    roundsRepeated: 0,
  };
  const range = sql`ts >= ${new Date(scope.fromTs * 1000)} AND ts <= ${new Date(scope.toTs * 1000)}`;
  const services = serviceFilter(scope.services);
  let batchSeq = scope.batchSeq;
  for (let round = 0;; round++) {
    const marks = await rawBlockMarks(clickhouse, scope.database);
    if (scope.concurrentInsertPrefix !== undefined) {
      await awaitRunningQueries(clickhouse, scope.concurrentInsertPrefix, 60_000);
    }
    const stats = await clickhouse.query<StatsCell>(
      sql`SELECT toUInt32(ts) AS ts, service, method, protocol, grpc_code, http_status, requests_delta,
          errors_delta, duration_sum_delta, duration_max
        FROM (${statsDifference(scope)})
        WHERE requests_delta != 0 OR errors_delta != 0 OR duration_sum_delta != 0`,
    );
    const profile = await clickhouse.query<ProfileCell>(
      sql`SELECT toUInt32(end_ts) AS end_ts, toUInt32(ts) AS ts, service, method, requests_delta, errors_delta,
          duration_max, histogram_delta.1 AS buckets, histogram_delta.2 AS counts
        FROM (${profileDifference(scope)})
        WHERE requests_delta != 0 OR errors_delta != 0 OR arrayExists(c -> c != 0, histogram_delta.2)`,
    );
    // Cells of raw rows in parts newer than the marks: an INSERT there may have been half done.
    const touchedStats = new Set<string>();
    const touchedProfile = new Set<string>();
    if (stats.length + profile.length > 0) {
      const touched = await clickhouse.query<
        {
          ts: number;
          end_ts: number;
          service: string;
          method: string;
          protocol: string;
          grpc_code: number;
          http_status: number;
        }
      >(
        sql`SELECT DISTINCT toUInt32(ts) AS ts, toUInt32(${END_SECOND_OF_EVENT}) AS end_ts, service, method,
            protocol, grpc_code, http_status
          FROM ${ident(scope.database, "request_events")}
          WHERE ${range} AND ${services} AND ${newerThan(marks)}`,
      );
      for (const row of touched) {
        touchedStats.add(statsKey(row));
        touchedProfile.add(profileKey(row));
      }
    }
    let unsettled = 0;
    let statsSurplus = 0;
    let profileSurplus = 0;
    const statsRepairs: Sql[] = [];
    for (const cell of stats) {
      const requests = big(cell.requests_delta);
      const repairable = requests > 0n && big(cell.errors_delta) >= 0n;
      if (!repairable && !(requests < 0n)) continue;
      if (touchedStats.has(statsKey(cell))) {
        unsettled++;
        continue;
      }
      if (!repairable) {
        statsSurplus++;
        continue;
      }
      // Sums are Int64 and wrap like the table's UInt64 sums: cast back, they are what the table lacks.
      statsRepairs.push(
        sql`(toUInt32(${Number(cell.ts)}), ${cell.service}, ${cell.method}, ${cell.protocol},
          toUInt32(${Number(cell.grpc_code)}), toUInt32(${Number(cell.http_status)}), toInt64(${requests}),
          toInt64(${big(cell.errors_delta)}), toInt64(${big(cell.duration_sum_delta)}),
          toUInt64(${big(cell.duration_max)}))`,
      );
    }
    const profileRepairs: Sql[] = [];
    for (const cell of profile) {
      const requests = big(cell.requests_delta);
      const counts = cell.counts.map(big);
      const surplus = requests < 0n || counts.some((c) => c < 0n);
      const repairable = requests > 0n && !surplus;
      if (!repairable && !surplus) continue;
      if (touchedProfile.has(profileKey(cell))) {
        unsettled++;
        continue;
      }
      if (surplus) {
        profileSurplus++;
        continue;
      }
      const buckets = cell.buckets.filter((_, i) => counts[i] !== 0n);
      const kept = counts.filter((c) => c !== 0n);
      profileRepairs.push(
        sql`(toUInt32(${Number(cell.end_ts)}), toUInt32(${Number(cell.ts)}), ${cell.service}, ${cell.method},
          toInt64(${requests}), toInt64(${big(cell.errors_delta)}), toUInt64(${big(cell.duration_max)}),
          ${
          buckets.length === 0
            ? sql`emptyArrayUInt16()`
            : sql`arrayMap(b -> toUInt16(b), ${buckets.map((b) => Number(b))})`
        },
          ${kept.length === 0 ? sql`emptyArrayUInt64()` : sql`arrayMap(c -> toUInt64(c), ${kept})`})`,
      );
    }
    if (statsRepairs.length > 0) {
      await insertTuples(
        clickhouse,
        statsRepairs,
        (rows) =>
          sql`INSERT INTO ${ident(scope.database, "request_stats_1s")}
            (ts, service, method, protocol, grpc_code, http_status, requests, errors, duration_sum_us,
              duration_max_us)
            SELECT toDateTime(tupleElement(r, 1)), tupleElement(r, 2), tupleElement(r, 3), tupleElement(r, 4),
              tupleElement(r, 5), tupleElement(r, 6), toUInt64(tupleElement(r, 7)), toUInt64(tupleElement(r, 8)),
              toUInt64(tupleElement(r, 9)), arrayReduce('maxState', [tupleElement(r, 10)])
            FROM system.one ARRAY JOIN ${rows} AS r`,
      );
      result.statsCellsRepaired += statsRepairs.length;
    }
    if (profileRepairs.length > 0) {
      batchSeq ??= await aboveHighestFloor(clickhouse, scope.database);
      const floorSeq = scope.floorSeq ?? 0;
      await insertTuples(
        clickhouse,
        profileRepairs,
        (rows) =>
          sql`INSERT INTO ${ident(scope.database, "latency_profile_1s")}
            (ingest_batch_seq, end_ts, ts, service, method, requests, errors, duration_max_us, ingest_floor_seq,
              histogramMap.bucket, histogramMap.count)
            SELECT ${batchSeq!}, toDateTime(tupleElement(r, 1)), toDateTime(tupleElement(r, 2)), tupleElement(r, 3),
              tupleElement(r, 4), toUInt64(tupleElement(r, 5)), toUInt64(tupleElement(r, 6)),
              arrayReduce('maxState', [tupleElement(r, 7)]), arrayReduce('maxState', [toUInt64(${floorSeq})]),
              tupleElement(r, 8), tupleElement(r, 9)
            FROM system.one ARRAY JOIN ${rows} AS r`,
      );
      result.profileCellsRepaired += profileRepairs.length;
    }
    result.statsCellsSurplus = statsSurplus;
    result.profileCellsSurplus = profileSurplus;
    if (unsettled === 0) return result;
    result.roundsRepeated++;
    scope.onUnsettled?.(unsettled, round + 1);
    await new Promise((resolve) => setTimeout(resolve, Math.min(1_000, 50 * 2 ** Math.min(round, 5))));
  }
}
