/**
 * The schema and the rollup SQL on a current ClickHouse (chDB 26.x, in process), next to the 18.16 server the
 * other tests use: every migration applies (0002 as first written, an AggregatingMergeTree with plain
 * columns, is refused by current releases), applying them again changes nothing, both rollups equal the raw
 * rows after several parts and forced merges, reconcileRollups completes rollups that missed rows, and the
 * stream offsets (stream_epoch.ts, under the migration lock) are decided as on 18.16.
 */
import { ClickHouseError } from "./clickhouse.ts";
import { applyMigrations } from "./migrations.ts";
import { reconcileRollups } from "./rollups.ts";
import { ident, sql, trustedSqlText } from "./sql.ts";
import { streamSeqOffset } from "./stream_epoch.ts";
import { rollupDifferences, startChdb } from "./test_helpers.ts";
import { assert, assertEquals } from "@tailwatch/testing";

const DATABASE = "profiler";

/** 1000 raw rows, 50 per second, two methods, some errors and slow ones; stream sequences from `firstSeq`. */
function insertRaw(firstSeq: number) {
  return sql`INSERT INTO ${ident(DATABASE, "request_events")}
    (event_id, ts, ts_ms, service, method, grpc_code, duration_us, stream_seq, ingest_batch_seq)
    SELECT generateUUIDv4(), toDateTime(1765000000 + intDiv(number, 50)),
      (1765000000 + intDiv(number, 50)) * 1000 + number % 1000, 'svc', if(number % 2 = 0, 'a', 'b'),
      if(number % 7 = 0, 14, 0), 100 + number * 37 % 3000000, ${firstSeq} + number, ${firstSeq} + 999
    FROM system.numbers LIMIT 1000`;
}

Deno.test("schema and rollups on a current ClickHouse (chDB)", async (t) => {
  await using chdb = await startChdb();
  console.log(`chDB engine ${chdb.version}`);

  await t.step("every migration applies, and applying them again changes nothing", async () => {
    const applied = await applyMigrations({ clickhouse: chdb, database: DATABASE });
    assertEquals(applied, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    assertEquals(await applyMigrations({ clickhouse: chdb, database: DATABASE }), []);
    const engines = await chdb.query<{ name: string; engine: string }>(
      sql`SELECT name, engine FROM system.tables WHERE database = ${DATABASE} ORDER BY name`,
    );
    const byName = Object.fromEntries(engines.map((row) => [row.name, row.engine]));
    assertEquals(byName.request_stats_1s, "SummingMergeTree");
    assertEquals(byName.latency_profile_1s, "SummingMergeTree");
    assertEquals(byName.latency_percentiles_storage, "ReplacingMergeTree");
    assertEquals(byName.latency_percentiles, "Buffer");
  });

  await t.step("both rollups equal the raw rows after several parts and forced merges", async () => {
    for (let part = 0; part < 6; part++) await chdb.exec(insertRaw(part * 1000));
    for (const table of ["request_stats_1s", "latency_profile_1s"]) {
      await chdb.exec(sql`OPTIMIZE TABLE ${ident(DATABASE, table)} FINAL`);
    }
    const check = await rollupDifferences(chdb, DATABASE);
    assertEquals(check.differences, []);
    assert(check.compared.stats > 0 && check.compared.profile > 0, "keys compared");
  });

  await t.step("reconcileRollups completes rollups that missed rows, once", async () => {
    // Rows that reach request_events without passing the views, as when a view failed after the raw part.
    const views = ["request_stats_1s_mv", "latency_profile_1s_mv"];
    const definitions = new Map<string, string>();
    for (const view of views) {
      const [row] = await chdb.query<{ create_table_query: string }>(
        sql`SELECT create_table_query FROM system.tables WHERE database = ${DATABASE} AND name = ${view}`,
      );
      definitions.set(view, row.create_table_query);
      await chdb.exec(sql`DROP TABLE ${ident(DATABASE, view)}`);
    }
    await chdb.exec(insertRaw(6000));
    for (const view of views) await chdb.exec(trustedSqlText(definitions.get(view)!));
    assert((await rollupDifferences(chdb, DATABASE)).differences.length > 0, "the rollups missed the rows");
    const repaired = await reconcileRollups(chdb, {
      database: DATABASE,
      fromTs: 1765000000,
      toTs: 1765000100,
    });
    assert(repaired.statsCellsRepaired > 0 && repaired.profileCellsRepaired > 0, JSON.stringify(repaired));
    assertEquals(repaired.statsCellsSurplus + repaired.profileCellsSurplus, 0);
    assertEquals((await rollupDifferences(chdb, DATABASE)).differences, []);
    const again = await reconcileRollups(chdb, { database: DATABASE, fromTs: 1765000000, toTs: 1765000100 });
    assertEquals(again.statsCellsRepaired + again.profileCellsRepaired, 0, "nothing left to repair");
  });

  await t.step(
    "stream offsets: the first stream keeps its numbers, a new one starts above all of them",
    async () => {
      // The rows above carry batch numbers up to 6999: the stream they came from had at least that many.
      const first = await streamSeqOffset(chdb, DATABASE, { created: "2026-12-01T00:00:00Z", lastSeq: 7000 });
      assertEquals(first, { offset: 0, recordedNow: true });
      assertEquals(
        await streamSeqOffset(chdb, DATABASE, { created: "2026-12-01T00:00:00Z", lastSeq: 7100 }),
        { offset: 0, recordedNow: false },
      );
      // What the profiler reads is latency_profile_1s: batches up to 5999 came through the views; the rows of
      // batch 6999 were repaired into it under a batch number above its floor (0), as repairs are.
      const second = await streamSeqOffset(chdb, DATABASE, { created: "2026-12-07T00:00:00Z", lastSeq: 3 });
      assertEquals(
        second,
        { offset: 5999, recordedNow: true },
        "above every batch number the profiler reads",
      );
    },
  );
});

Deno.test("chDB's adapter: errors carry the engine's code, as the server client's do", async () => {
  await using chdb = await startChdb();
  for (
    const [statement, code, type] of [
      [sql`SELECT 1 FROM ${ident("nope_db", "t")}`, 81, "UNKNOWN_DATABASE"],
      [sql`SELEKT 1`, 62, "SYNTAX_ERROR"],
    ] as const
  ) {
    try {
      await chdb.query(statement);
      throw new Error(`${statement.text}: it resolved`);
    } catch (error) {
      assert(error instanceof ClickHouseError, `a ClickHouseError: ${error}`);
      assertEquals([error.code, error.type, error.answered], [code, type, true], error.message);
    }
  }
});
