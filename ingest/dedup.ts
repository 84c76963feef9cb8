/**
 * The dedup check (ingest/README.md, "Exactly once"): which events of a row group are in request_events
 * already, asked only after every INSERT of this durable that may still run in ClickHouse has ended (committed
 * or gone for good), so that the answer cannot change after it was given.
 */
import { ident, sql, sqlJoin } from "./sql.ts";
import type { RowGroup } from "./batch.ts";
import { sleep } from "./retry.ts";
import type { RowWriter } from "./row_writer.ts";
import type { WorkerContext } from "./worker_state.ts";

/**
 * The start of every ingest INSERT's query_id (each is `tailwatch-ingest-<durable>-<uuid>`): a rollup repair
 * waits for all of them that run, every partition's and every other durable's (rollups.ts).
 */
export const INSERT_QUERY_FAMILY = "tailwatch-ingest-";

/** Literal bytes ClickHouse reads as a query at most (max_query_size, 256 KiB): the dedup query stays below. */
const QUERY_BUDGET = 200 * 1024;
/** Event ids per dedup query (each about 40 bytes as a literal). */
const IDS_PER_QUERY = 4_000;

/**
 * Waits until no INSERT of this durable (query_id `<insertQueryPrefix><uuid>`, worker_state.ts) runs in
 * ClickHouse; throws (to be retried) when one still runs after twice the insert timeout.
 */
export async function awaitNoInsertsInFlight(ctx: WorkerContext): Promise<void> {
  const { insertQueryPrefix } = ctx;
  const deadline = Date.now() + 2 * ctx.config.insertTimeoutMs;
  for (;;) {
    // Exactly this durable's: `<prefix><uuid>` (36 characters), not those of a durable whose name continues
    // this one's (partition 1's `tailwatch-ingest-1` after partition 0's `tailwatch-ingest`), which keep
    // inserting.
    const [running] = await ctx.clickhouse.query<{ n: string | number }>(
      sql`SELECT count() AS n FROM system.processes
          WHERE substring(query_id, 1, ${insertQueryPrefix.length}) = ${insertQueryPrefix}
            AND length(query_id) = ${insertQueryPrefix.length + 36}`,
    );
    if (Number(running.n) === 0) return;
    if (Date.now() > deadline) {
      throw new Error(`an earlier INSERT (query_id ${insertQueryPrefix}*) is still running in ClickHouse`);
    }
    await sleep(100);
  }
}

/**
 * The services filter of a group's queries, or undefined when listing them would not fit a query (many
 * services, or very long names): the queries then read every service of the group's seconds.
 */
export function servicesOf(group: RowGroup): string[] | undefined {
  let length = 0;
  for (const service of group.services) length += service.length + 4;
  return length <= 64 * 1024 ? [...group.services] : undefined;
}

/**
 * The event ids of `writer`'s rows that are in the table already. By id, not by stream sequence: a message's
 * rows may be split over INSERTs, a publisher's retry after the duplicate window is another message with the
 * same events, and a stream that was deleted or reverted hands out old sequences again for new events. The
 * same event always has the same start second and service, so the table's rows of the group's seconds and
 * services are read (one query that reads the primary key's range, measured at a quarter of the cost of
 * listing 4,000 ids) and matched here; when those seconds hold many more rows than the group (a group whose
 * events lie far apart in time), the group's ids are listed instead, a few thousand per query.
 */
export async function existingEventIds(
  ctx: WorkerContext,
  group: RowGroup,
  writer: RowWriter,
): Promise<Set<string>> {
  const { clickhouse } = ctx;
  await awaitNoInsertsInFlight(ctx);
  const ids = new Set<string>();
  for (let row = 0; row < writer.rows; row++) ids.add(writer.eventId(row));
  const services = servicesOf(group);
  const where = sql`${services === undefined ? sql`1` : sql`service IN (${sqlJoin(services)})`}
      AND ts >= ${new Date(group.minTs * 1000)} AND ts <= ${new Date(group.maxTs * 1000)}`;
  const source = ident(ctx.config.database, "request_events");
  const found = new Set<string>();
  const limit = Math.max(10_000, 4 * ids.size);
  const inRange = await clickhouse.query<{ id: string }>(
    sql`SELECT toString(event_id) AS id FROM ${source} WHERE ${where} LIMIT ${limit + 1}`,
  );
  if (inRange.length <= limit) {
    for (const row of inRange) if (ids.has(row.id)) found.add(row.id);
    return found;
  }
  const all = [...ids];
  const perQuery = services === undefined
    ? IDS_PER_QUERY
    : Math.max(100, Math.min(IDS_PER_QUERY, Math.floor((QUERY_BUDGET - 64 * 1024) / 40)));
  for (let i = 0; i < all.length; i += perQuery) {
    const rows = await clickhouse.query<{ id: string }>(
      sql`SELECT DISTINCT toString(event_id) AS id FROM ${source}
          WHERE ${where} AND event_id IN (${sqlJoin(all.slice(i, i + perQuery))})`,
    );
    for (const row of rows) found.add(row.id);
  }
  return found;
}
