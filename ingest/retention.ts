/**
 * Retention by whole partitions: every table is partitioned by toYYYYMMDD(ts), so keeping N days means
 * `ALTER TABLE ... DROP PARTITION` for every day older than the cutoff. Raw events keep `rawDays`, the
 * rollups and percentiles (derived, small) keep `rollupDays`. Cheap and idempotent: safe to run any time.
 * The percentiles' partitions are those of `latency_percentiles_storage`, the MergeTree behind the Buffer
 * `latency_percentiles` (migration 0007; a Buffer has no partitions): rows still in the Buffer reach it
 * within about 30 s, and the next run drops them if they are old.
 */
import type { ClickHouse } from "./clickhouse.ts";
import { ident, sql } from "./sql.ts";

export const RAW_TABLES = ["request_events"] as const;
export const ROLLUP_TABLES = [
  "request_stats_1s",
  "latency_profile_1s",
  "latency_percentiles_storage",
] as const;

export interface RetentionOptions {
  rawDays: number;
  rollupDays: number;
  /** The present, for tests; the current time by default. */
  now?: Date;
}

export interface DroppedPartition {
  table: string;
  partition: number;
}

/**
 * Drops the partitions older than the cutoffs; returns what it dropped. A partition is dropped when its day
 * (in the server's time zone) is before the day of `now - days`; that day itself is kept.
 */
export async function applyRetention(
  clickhouse: ClickHouse,
  database: string,
  options: RetentionOptions,
): Promise<DroppedPartition[]> {
  const nowSeconds = Math.floor((options.now ?? new Date()).getTime() / 1000);
  const dropped: DroppedPartition[] = [];
  const plan: [readonly string[], number][] = [[RAW_TABLES, options.rawDays], [
    ROLLUP_TABLES,
    options.rollupDays,
  ]];
  for (const [tables, days] of plan) {
    if (!Number.isSafeInteger(days) || days < 1) {
      throw new RangeError(`retention days must be >= 1, got ${days}`);
    }
    const [{ cutoff }] = await clickhouse.query<{ cutoff: number }>(
      sql`SELECT toYYYYMMDD(${new Date((nowSeconds - days * 86_400) * 1000)}) AS cutoff`,
    );
    for (const table of tables) {
      const parts = await clickhouse.query<{ partition: string }>(
        sql`SELECT DISTINCT partition FROM system.parts
          WHERE database = ${database} AND table = ${table} AND active ORDER BY partition`,
      );
      for (const { partition } of parts) {
        if (!/^\d{8}$/.test(partition)) continue; // not a toYYYYMMDD partition: not ours to judge
        const day = Number(partition);
        if (day >= Number(cutoff)) continue;
        await clickhouse.exec(sql`ALTER TABLE ${ident(database, table)} DROP PARTITION ${day}`);
        dropped.push({ table, partition: day });
      }
    }
  }
  return dropped;
}
