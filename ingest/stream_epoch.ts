/**
 * The offset ingest adds to a stream's sequences in what it writes for the profiler (ingest_batch_seq,
 * ingest_floor_seq): numbers that keep growing when the stream is deleted and created again and its sequences
 * start over at 1 (ingest/README.md, "A stream that starts over"). The profiler takes every batch at or below
 * the highest floor it has seen as final (native/profiler/README.md); without an offset, every batch of the new
 * stream would be at or below the old floor and never read.
 *
 * `<db>.stream_epochs` records one offset per stream, by its creation time. The first stream recorded gets 0
 * when the table's numbers fit in it (a fresh database, or one from before this table: its rows came from
 * this stream), else, like every later stream, the highest number written so far, so that its first sequence
 * is above all of them. It is decided under the migration lock (migrations.ts), so that the workers of every
 * partition, and every restart, use the same offset for the same stream.
 */
import { acquireMigrationLock, type MigrationLockOptions } from "./migrations.ts";
import { ident, sql } from "./sql.ts";
import type { ClickHouse } from "./clickhouse.ts";

/** What the offset depends on: the stream's creation time (its identity) and its last sequence now. */
export interface StreamIdentity {
  created: string;
  lastSeq: number;
}

async function recordedOffset(
  clickhouse: ClickHouse,
  database: string,
  created: string,
): Promise<number | undefined> {
  const [row] = await clickhouse.query<{ offset: string | number; n: string | number }>(
    sql`SELECT min(seq_offset) AS offset, count() AS n FROM ${ident(database, "stream_epochs")}
      WHERE stream_created = ${created}`,
  );
  return row !== undefined && Number(row.n) > 0 ? Number(row.offset) : undefined;
}

/**
 * The offset for `stream`: the recorded one, or one decided now and recorded. Throws when ClickHouse does not
 * answer (the caller retries) or the table is missing (run the migrations).
 */
export async function streamSeqOffset(
  clickhouse: ClickHouse,
  database: string,
  stream: StreamIdentity,
  lock: MigrationLockOptions = {},
): Promise<{ offset: number; recordedNow: boolean }> {
  const known = await recordedOffset(clickhouse, database, stream.created);
  if (known !== undefined) return { offset: known, recordedNow: false };
  const held = await acquireMigrationLock(clickhouse, database, lock);
  try {
    const again = await recordedOffset(clickhouse, database, stream.created);
    if (again !== undefined) return { offset: again, recordedNow: false };
    const [epochs] = await clickhouse.query<{ n: string | number }>(
      sql`SELECT count() AS n FROM ${ident(database, "stream_epochs")}`,
    );
    const [written] = await clickhouse.query<{ batch: string | number; floor: string | number }>(
      sql`SELECT max(ingest_batch_seq) AS batch, maxMerge(ingest_floor_seq) AS floor
        FROM ${ident(database, "latency_profile_1s")}`,
    );
    const highest = Math.max(Number(written?.batch ?? 0), Number(written?.floor ?? 0));
    const offset = Number(epochs?.n ?? 0) === 0 && highest <= stream.lastSeq ? 0 : highest;
    await held.check();
    await clickhouse.exec(
      sql`INSERT INTO ${ident(database, "stream_epochs")} (stream_created, seq_offset)
        VALUES (${stream.created}, ${offset})`,
    );
    return { offset, recordedNow: true };
  } finally {
    await held.release();
  }
}
