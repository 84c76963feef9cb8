/**
 * A rollup repair while other workers insert the same seconds (rollups.ts; ingest/README.md, "Several workers:
 * partitions"), on clickhouse-server 18.16. Rows reach request_events without their rollups (a view failed after
 * the raw part, as the repair exists for); meanwhile three writers insert into the same seconds, moving on
 * through time as live traffic does, through a view made slow (it sleeps 0.4 s after each raw part is committed), so that at any moment an INSERT is half
 * done: its raw rows counted, its rollup rows not yet. A repair that took such a half-done INSERT for a gap would
 * add its rows to the rollup a second time. The repair must wait for those and leave the cells they touch for a
 * next round: once the writers have moved past its seconds it is done, and both rollups equal the raw rows, and the repair did repeat rounds.
 */
import { assert, assertEquals, CLICKHOUSE_ADMIN, startClickHouseServer } from "@tailwatch/testing";
import { createClickHouse } from "./clickhouse.ts";
import { applyMigrations } from "./migrations.ts";
import { END_SECOND_OF_EVENT, reconcileRollups } from "./rollups.ts";
import { ident, sql, trustedSqlText } from "./sql.ts";
import { rollupDifferences, uniqueDatabase } from "./test_helpers.ts";

const T = 1765000000;

Deno.test("a rollup repair while other INSERTs are half done: no cell counted twice, none left short", async () => {
  await using server = await startClickHouseServer();
  const ch = createClickHouse({ url: server.url, ...CLICKHOUSE_ADMIN });
  const database = uniqueDatabase("repair");
  await applyMigrations({ clickhouse: ch, database });
  const raw = ident(database, "request_events");
  /** `count` rows over `seconds` seconds from T + `from`, stream sequences from `first`. */
  const rows = (count: number, first: number, from = 0, seconds = 20) =>
    sql`INSERT INTO ${raw} (event_id, ts, ts_ms, service, method, grpc_code, duration_us, stream_seq,
        ingest_batch_seq)
      SELECT generateUUIDv4(), toDateTime(${T + from} + number % ${seconds}),
        (${T + from} + number % ${seconds}) * 1000 + number % 1000, 'svc', if(number % 2 = 0, 'a', 'b'),
        if(number % 7 = 0, 14, 0), 100 + number * 37 % 3000000, ${first} + number, ${first + count - 1}
      FROM system.numbers LIMIT ${count}`;
  // Rows without their rollups: the views dropped while they are inserted.
  const views = new Map<string, string>();
  for (const view of ["request_stats_1s_mv", "latency_profile_1s_mv"]) {
    const [row] = await ch.query<{ create_table_query: string }>(
      sql`SELECT create_table_query FROM system.tables WHERE database = ${database} AND name = ${view}`,
    );
    views.set(view, row.create_table_query);
    await ch.exec(sql`DROP TABLE ${ident(database, view)}`);
  }
  await ch.exec(rows(1000, 1));
  // The views back, one of them slow: every INSERT's raw part stays committed without its stats rows 0.4 s.
  const slow = views.get("request_stats_1s_mv")!.replace(/GROUP BY/, "WHERE sleep(0.4) = 0 GROUP BY");
  assert(slow !== views.get("request_stats_1s_mv"), "the view's definition changed");
  await ch.exec(trustedSqlText(slow));
  await ch.exec(trustedSqlText(views.get("latency_profile_1s_mv")!));
  assert((await rollupDifferences(ch, database)).differences.length > 0, "the rollups miss the first rows");

  // Three writers, as other partitions' workers: INSERTs named as ingest names them, into the same seconds,
  // moving on through time as live traffic does (two seconds an INSERT, one second further each time), so that
  // the repair's cells are disturbed for a while and then left alone.
  let writing = true;
  let inserted = 0;
  let step = 0;
  const writer = async (w: number) => {
    for (let i = 0; writing; i++) {
      const first = 100_000 * (w + 1) + i * 50;
      const from = step++;
      const params = new URLSearchParams({
        query_id: `tailwatch-ingest-writer-${w}-${crypto.randomUUID()}`,
        user: CLICKHOUSE_ADMIN.username,
        password: CLICKHOUSE_ADMIN.password,
      });
      const response = await fetch(`${server.url}/?${params}`, {
        method: "POST",
        body: rows(50, first, from, 2).text,
      });
      assert(response.ok, await response.text());
      inserted += 50;
    }
  };
  const writers = [0, 1, 2].map((w) =>
    new Promise((resolve) => setTimeout(resolve, 130 * w)).then(() => writer(w))
  );
  await new Promise((resolve) => setTimeout(resolve, 500));
  const result = await reconcileRollups(ch, {
    database,
    fromTs: T,
    toTs: T + 19,
    concurrentInsertPrefix: "tailwatch-ingest-",
  });
  writing = false;
  await Promise.all(writers);
  assert(inserted > 0, "the writers inserted meanwhile");
  // Exactly the cells of the first rows were repaired (a half-done INSERT taken for a gap would add more).
  const [cells] = await ch.query<{ stats: string; profile: string }>(
    sql`SELECT uniqExact(ts, service, method, protocol, grpc_code, http_status) AS stats,
        uniqExact(${END_SECOND_OF_EVENT}, ts, service, method) AS profile
      FROM ${raw} WHERE stream_seq <= 1000`,
  );
  assertEquals(
    [result.statsCellsRepaired, result.profileCellsRepaired],
    [Number(cells.stats), Number(cells.profile)],
    JSON.stringify(result),
  );
  assertEquals(result.statsCellsSurplus + result.profileCellsSurplus, 0);
  assertEquals((await rollupDifferences(ch, database)).differences, [], "both rollups equal the raw rows");
  assert(
    result.roundsRepeated > 0,
    `cells touched by half-done INSERTs were looked at again: ${JSON.stringify(result)}`,
  );
  assertEquals((await rollupDifferences(ch, database)).differences, [], "both rollups equal the raw rows");
  const [{ n }] = await ch.query<{ n: string }>(sql`SELECT count() AS n FROM ${raw}`);
  assertEquals(Number(n), 1000 + inserted);
  console.log(
    `repair under concurrent INSERTs: ${JSON.stringify(result)}; ${inserted} rows inserted meanwhile`,
  );
});
