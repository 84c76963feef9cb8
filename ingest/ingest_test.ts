/**
 * Ingest against real servers: one clickhouse-server for the whole file (it takes ~10 s to start), a fresh
 * nats-server and a database of its own for every step, dropped at the end of the step.
 * INGEST_TEST_ONLY=<regex> runs only the matching steps (for development).
 */
import { AckPolicy, jetstream, jetstreamManager, type JsMsg } from "@nats-io/jetstream";
import { connect, type Msg, type NatsConnection } from "@nats-io/transport-node";
import {
  assert,
  assertEquals,
  assertRejects,
  CLICKHOUSE_ADMIN,
  CLICKHOUSE_READONLY,
  type ClickHouseServer,
  type NatsServer,
  seededRandom,
  spawnLogged,
  startClickHouseServer,
  startNatsServer,
} from "@tailwatch/testing";
import { applyRequestEventsStream } from "@tailwatch/nats";
import { createLogger } from "@tailwatch/runtime";
import {
  DEAD_LETTER_SUBJECT_PREFIX,
  decodeEvent,
  EventScanner,
  INSERT_COLUMNS,
  REQUEST_EVENTS_STREAM,
  REQUEST_EVENTS_SUBJECTS,
  requestEventSubject,
  ROW_FORMAT,
} from "@tailwatch/events";
import { ClickHouseLogLevel, createClient } from "@clickhouse/client";
import { type ClickHouse, ClickHouseError, createClickHouse } from "./clickhouse.ts";
import { serveMetrics } from "./metrics.ts";
import { appliedVersions, applyMigrations } from "./migrations.ts";
import { projectionCounts, rebuild, RebuildRefused } from "./rebuild.ts";
import { applyRetention } from "./retention.ts";
import { ident, sql, sqlJoin, trustedSqlText } from "./sql.ts";
import { reconcileRollups } from "./rollups.ts";
import {
  eventually,
  makeEvent,
  publishEventBatch,
  publishEventBatches,
  publishEvents,
  randomEvent,
  rollupDifferences,
  testConfig,
  testEnv,
  uniqueDatabase,
} from "./test_helpers.ts";
import { createIngestWorker } from "./worker.ts";
import { appendEvent, RowWriter } from "./row_writer.ts";
import { Protocol, RequestEventSchema } from "@tailwatch/proto/events/v1";
import { toBinary } from "@bufbuild/protobuf";

const only = Deno.env.get("INGEST_TEST_ONLY");
const quietLogger = createLogger("warn", { test: true });

interface Counts {
  rows: number;
  distinct: number;
}

async function counts(clickhouse: ClickHouse, database: string): Promise<Counts> {
  const [row] = await clickhouse.query<{ rows: string; distinct_ids: string }>(
    sql`SELECT count() AS rows, uniqExact(event_id) AS distinct_ids FROM ${
      ident(database, "request_events")
    }`,
  );
  return { rows: Number(row.rows), distinct: Number(row.distinct_ids) };
}

/** The sum of a metric's samples (every label set) in a Prometheus text page. */
/** The rebuilds recorded for the profiler, oldest first: "<mode> <stage>". */
async function recordedRebuilds(clickhouse: ClickHouse, database: string): Promise<string[]> {
  const rows = await clickhouse.query<{ mode: string; stage: string }>(
    sql`SELECT mode, stage FROM ${ident(database, "projection_rebuilds")} ORDER BY at, stage = 'done'`,
  );
  return rows.map((row) => `${row.mode} ${row.stage}`);
}

function metricSum(page: string, name: string): number {
  return page.split("\n")
    .filter((line) => line.startsWith(`${name} `) || line.startsWith(`${name}{`))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0);
}

/** Collects every dead letter the worker publishes, from now on (the subscription is live when it resolves). */
async function subscribeDeadLetters(nc: NatsConnection) {
  const deadLetters: Msg[] = [];
  const sub = nc.subscribe(`${DEAD_LETTER_SUBJECT_PREFIX}.>`, {
    callback: (_error, msg) => void deadLetters.push(msg),
  });
  await nc.flush();
  return { deadLetters, sub };
}

/** Runs `body` with a fresh nats-server (with the stream) and a database that is dropped afterwards. */
async function withFixture(
  server: ClickHouseServer,
  body: (
    f: { nats: NatsServer; nc: NatsConnection; clickhouse: ClickHouse; database: string },
  ) => Promise<void>,
): Promise<void> {
  await using nats = await startNatsServer();
  const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  const database = uniqueDatabase("ingest");
  const clickhouse = createClickHouse({ url: server.url, ...CLICKHOUSE_ADMIN });
  try {
    await applyRequestEventsStream(nc);
    await applyMigrations({ clickhouse, database });
    await body({ nats, nc, clickhouse, database });
  } finally {
    await nc.close().catch(() => {});
    await clickhouse.exec(sql`DROP DATABASE IF EXISTS ${ident(database)}`).catch(() => {});
  }
}

Deno.test("ingest against real nats-server and clickhouse-server", async (t) => {
  await using server = await startClickHouseServer();
  const step = (name: string, fn: () => Promise<void>) =>
    t.step({ name, ignore: only !== undefined && !new RegExp(only).test(name), fn });

  await step("migrations create the schema and applying them twice changes nothing", async () => {
    const clickhouse = createClickHouse({ url: server.url, ...CLICKHOUSE_ADMIN });
    const database = uniqueDatabase("migr");
    const all = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
    try {
      const first = await applyMigrations({ clickhouse, database });
      assertEquals(first, all, "first run applies every migration");
      const schema = () =>
        clickhouse.query(
          sql`SELECT name, engine, create_table_query FROM system.tables WHERE database = ${database} ORDER BY name`,
        );
      const before = await schema();
      assertEquals(await applyMigrations({ clickhouse, database }), [], "second run applies nothing");
      assertEquals(await schema(), before, "schema unchanged");
      assertEquals(await appliedVersions(clickhouse, database), all);
      const [recorded] = await clickhouse.query<{ n: string }>(
        sql`SELECT count() AS n FROM ${ident(database, "schema_migrations")}`,
      );
      assertEquals(Number(recorded.n), all.length, "each migration recorded once");
      // As if every run had been interrupted before its record: all applied again, 0004's ADD COLUMN and
      // 0007's RENAME included.
      await clickhouse.exec(sql`DROP TABLE ${ident(database, "schema_migrations")}`);
      assertEquals(await applyMigrations({ clickhouse, database }), all, "a re-run without records");
      assertEquals(await schema(), before, "schema unchanged by the re-run");
      const engines = Object.fromEntries(
        (before as { name: string; engine: string }[]).map((row) => [row.name, row.engine]),
      );
      for (
        const [table, engine] of [
          ["request_events", "MergeTree"],
          ["request_stats_1s", "SummingMergeTree"],
          ["latency_profile_1s", "SummingMergeTree"],
          ["latency_percentiles", "Buffer"],
          ["latency_percentiles_storage", "ReplacingMergeTree"],
        ]
      ) {
        assertEquals(engines[table], engine, `table ${table}`);
      }
      assert(!before.some((row) => row.name === "latency_histogram_1s"), "0006 dropped latency_histogram_1s");
    } finally {
      await clickhouse.exec(sql`DROP DATABASE IF EXISTS ${ident(database)}`);
    }
  });

  await step(
    "0007 puts a Buffer in front of existing percentile rows, and runs again after an interruption",
    async () => {
      const clickhouse = createClickHouse({ url: server.url, ...CLICKHOUSE_ADMIN });
      const database = uniqueDatabase("buf");
      const percentiles = ident(database, "latency_percentiles");
      const storage = ident(database, "latency_percentiles_storage");
      const migrations = ident(database, "schema_migrations");
      const insert = (table: typeof percentiles, method: string) =>
        clickhouse.exec(
          sql`INSERT INTO ${table} (ts, window_s, service, method, count, p99_us) VALUES (${new Date()}, 10, 's', ${method}, 5, 700)`,
        );
      const methods = async (table: typeof percentiles) =>
        (await clickhouse.query<{ method: string }>(sql`SELECT method FROM ${table} ORDER BY method`))
          .map((row) => row.method);
      const engine = async (table: string) =>
        (await clickhouse.query<{ engine: string }>(
          sql`SELECT engine FROM system.tables WHERE database = ${database} AND name = ${table}`,
        ))[0]?.engine;
      try {
        assertEquals(await applyMigrations({ clickhouse, database }, { through: 6 }), [1, 2, 3, 4, 5, 6]);
        assertEquals(await engine("latency_percentiles"), "MergeTree", "before 0007");
        await insert(percentiles, "a");
        await insert(percentiles, "b");
        assertEquals(
          await applyMigrations({ clickhouse, database }, { through: 7 }),
          [7],
          "0007 on top of existing data",
        );
        assertEquals(await engine("latency_percentiles"), "Buffer");
        assertEquals(await engine("latency_percentiles_storage"), "MergeTree");
        assertEquals(await methods(storage), ["a", "b"], "the rows are in the storage table");
        assertEquals(await methods(percentiles), ["a", "b"], "and read through the Buffer");
        await insert(percentiles, "c");
        assertEquals(await methods(percentiles), ["a", "b", "c"], "a buffered row is read at once");
        assertEquals(await methods(storage), ["a", "b"], "and not stored yet");
        const [row] = await clickhouse.query<Record<string, unknown>>(
          sql`SELECT count, p99_us, rps FROM ${percentiles} WHERE method = 'c'`,
        );
        assertEquals(
          row,
          { count: "5", p99_us: "700", rps: 0 },
          "columns as inserted, defaults for the rest",
        );
        await clickhouse.exec(sql`OPTIMIZE TABLE ${percentiles}`); // flushes the Buffer
        assertEquals(await methods(storage), ["a", "b", "c"], "flushed into the storage table");
        assertEquals(await methods(percentiles), ["a", "b", "c"], "read once, not twice, after the flush");
        // Interrupted after the RENAME, before the Buffer was created (and before the record): the run again
        // skips the RENAME and creates the Buffer.
        await clickhouse.exec(sql`DROP TABLE ${percentiles}`);
        await clickhouse.exec(sql`CREATE TABLE ${ident(database, "kept")} AS ${migrations}`);
        await clickhouse.exec(
          sql`INSERT INTO ${ident(database, "kept")} SELECT * FROM ${migrations} WHERE version < 7`,
        );
        await clickhouse.exec(sql`DROP TABLE ${migrations}`);
        await clickhouse.exec(sql`RENAME TABLE ${ident(database, "kept")} TO ${migrations}`);
        assertEquals(
          await applyMigrations({ clickhouse, database }, { through: 7 }),
          [7],
          "0007 again after the interruption",
        );
        assertEquals(await engine("latency_percentiles"), "Buffer");
        assertEquals(await methods(percentiles), ["a", "b", "c"], "nothing lost, nothing doubled");
        assertEquals(await applyMigrations({ clickhouse, database }, { through: 7 }), [], "then up to date");
      } finally {
        await clickhouse.exec(sql`DROP DATABASE IF EXISTS ${ident(database)}`);
      }
    },
  );

  await step(
    "0008 and 0009 rebuild the rollups of an existing database from its raw rows; merges keep the sums",
    async () => {
      const clickhouse = createClickHouse({ url: server.url, ...CLICKHOUSE_ADMIN });
      const database = uniqueDatabase("sums");
      const stats = ident(database, "request_stats_1s");
      const insertRaw = (firstSeq: number) =>
        clickhouse.exec(
          sql`INSERT INTO ${ident(database, "request_events")}
            (event_id, ts, ts_ms, service, method, grpc_code, duration_us, stream_seq)
            SELECT generateUUIDv4(), toDateTime(1765000000 + intDiv(number, 50)),
              (1765000000 + intDiv(number, 50)) * 1000 + number % 1000, 'svc', if(number % 2 = 0, 'a', 'b'),
              if(number % 7 = 0, 14, 0), 100 + number * 37 % 3000000, ${firstSeq} + number
            FROM system.numbers LIMIT 1000`,
        );
      const statsRequests = async () =>
        Number((await clickhouse.query<{ n: string }>(sql`SELECT sum(requests) AS n FROM ${stats}`))[0].n);
      try {
        await applyMigrations({ clickhouse, database }, { through: 7 });
        // The table as 0002 first created it (before it was corrected): plain sum columns in an
        // AggregatingMergeTree, which a merge reduces to one row's values.
        await clickhouse.exec(sql`DROP TABLE ${ident(database, "request_stats_1s_mv")}`);
        await clickhouse.exec(sql`DROP TABLE ${stats}`);
        await clickhouse.exec(
          sql`CREATE TABLE ${stats} (ts DateTime, service String, method String, protocol String,
            grpc_code UInt8, http_status UInt16, requests UInt64, errors UInt64, duration_sum_us UInt64,
            duration_max_us AggregateFunction(max, UInt64)) ENGINE = AggregatingMergeTree
            PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, service, method, protocol, grpc_code, http_status)`,
        );
        await clickhouse.exec(
          sql`CREATE MATERIALIZED VIEW ${ident(database, "request_stats_1s_mv")} TO ${stats} AS SELECT ts,
            service, method, protocol, grpc_code, http_status, count() AS requests,
            countIf(grpc_code != 0) AS errors, sum(duration_us) AS duration_sum_us,
            maxState(duration_us) AS duration_max_us FROM ${ident(database, "request_events")}
            GROUP BY ts, service, method, protocol, grpc_code, http_status`,
        );
        for (let part = 0; part < 4; part++) await insertRaw(part * 1000);
        await clickhouse.exec(sql`OPTIMIZE TABLE ${stats} FINAL`);
        assert((await statsRequests()) < 4000, "the old table loses counts in a merge (what 0008 repairs)");

        assertEquals(await applyMigrations({ clickhouse, database }), [8, 9, 10, 11, 12, 13, 14]);
        assertEquals(
          (await rollupDifferences(clickhouse, database)).differences,
          [],
          "rebuilt from raw rows",
        );
        for (let part = 4; part < 8; part++) await insertRaw(part * 1000);
        for (const table of ["request_stats_1s", "latency_profile_1s"]) {
          await clickhouse.exec(sql`OPTIMIZE TABLE ${ident(database, table)} FINAL`);
        }
        const check = await rollupDifferences(clickhouse, database);
        assertEquals(check.differences, [], "equal to the raw rows after more parts and forced merges");
        assertEquals(await statsRequests(), 8000);
        assert(check.compared.profile > 0 && check.compared.stats > 0, "keys compared");
      } finally {
        await clickhouse.exec(sql`DROP DATABASE IF EXISTS ${ident(database)}`);
      }
    },
  );

  await step(
    "a view that fails after the raw rows were committed: the retry completes both rollups",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        // request_stats_1s_mv fails every INSERT carrying a FailingView event, after request_events
        // committed it (18.16 feeds views after the raw part; neither rollup gets the rows).
        const view = ident(database, "request_stats_1s_mv");
        const [{ create_table_query: original }] = await clickhouse.query<{ create_table_query: string }>(
          sql`SELECT create_table_query FROM system.tables
            WHERE database = ${database} AND name = 'request_stats_1s_mv'`,
        );
        const failing = original.replace(
          /GROUP BY ts, service/,
          "WHERE throwIf(method = 'FailingView') = 0 GROUP BY ts, service",
        );
        assert(failing !== original, `unexpected view definition: ${original}`);
        await clickhouse.exec(sql`DROP TABLE ${view}`);
        await clickhouse.exec(trustedSqlText(failing));
        const events = Array.from({ length: 600 }, (_, i) => makeEvent(i));
        for (const event of events.filter((_, i) => i % 100 === 0)) event.method = "FailingView";
        await publishEvents(nc, events);
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
        const worker = createIngestWorker({ config, logger: quietLogger, mode: "drain" });
        const stats = await worker.run();
        assertEquals(await counts(clickhouse, database), { rows: 600, distinct: 600 });
        assert(stats.retries > 0, "the INSERTs with a FailingView event failed and were retried");
        const repaired = metricSum(worker.registry.render(), "ingest_rollup_cells_repaired_total");
        assert(repaired > 0, `rollup cells repaired: ${repaired}`);
        assertEquals((await rollupDifferences(clickhouse, database)).differences, []);
        const rebuilt = await reconcileRollups(clickhouse, { database, fromTs: 0, toTs: 2 ** 32 - 1 });
        assertEquals(rebuilt.statsCellsRepaired + rebuilt.profileCellsRepaired, 0, "nothing left to repair");
      });
    },
  );

  await step("published events become rows exactly once, with their fields, and metrics", async () => {
    await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
      const events = Array.from({ length: 5000 }, (_, i) => makeEvent(i));
      await publishEvents(nc, events);
      const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
      const worker = createIngestWorker({ config, logger: quietLogger });
      await using metricsServer = serveMetrics(worker.registry, {
        hostname: "127.0.0.1",
        port: 0,
        ready: worker.ready,
      });
      const running = worker.run();
      try {
        await eventually("5000 rows", async () => (await counts(clickhouse, database)).rows >= 5000);
        // Published again with the same Nats-Msg-Id: JetStream drops them as duplicates.
        await publishEvents(nc, events.slice(0, 100));
        const health = await fetch(`http://127.0.0.1:${metricsServer.port}/healthz`);
        assertEquals(health.status, 200);
        await health.body?.cancel();
        const ready = await fetch(`http://127.0.0.1:${metricsServer.port}/readyz`);
        assertEquals(ready.status, 200);
        await ready.body?.cancel();
        let text = "";
        await eventually("metrics show 5000 rows", async () => {
          text = await (await fetch(`http://127.0.0.1:${metricsServer.port}/metrics`)).text();
          return /^ingest_rows_inserted_total 5000$/m.test(text);
        }, 10_000);
        for (
          const name of [
            "ingest_consumer_pending",
            "ingest_batch_size_count",
            "ingest_insert_duration_seconds_sum",
          ]
        ) {
          assert(text.includes(name), `metrics include ${name}`);
        }
      } finally {
        worker.stop();
        await running;
      }
      assertEquals(await counts(clickhouse, database), { rows: 5000, distinct: 5000 });
      const sample = events[17];
      const [row] = await clickhouse.query<Record<string, unknown>>(
        sql`SELECT event_id, toUnixTimestamp(ts) AS ts_s, ts_ms, service, method, protocol, route, grpc_code,
          http_status, duration_us, request_bytes, response_bytes, trace_id, span_id, parent_span_id, instance,
          error_message, fault_injected, stream_seq
          FROM ${ident(database, "request_events")} WHERE event_id = ${sample.eventId}`,
      );
      assertEquals(row, {
        event_id: sample.eventId,
        ts_s: Math.floor(Number(sample.startTimeMs) / 1000),
        ts_ms: String(sample.startTimeMs),
        service: sample.service,
        method: sample.method,
        protocol: sample.protocol === Protocol.GRPC ? "grpc" : "http",
        route: sample.route,
        grpc_code: 14,
        http_status: 503,
        duration_us: String(sample.durationUs),
        request_bytes: String(sample.requestBytes),
        response_bytes: String(sample.responseBytes),
        trace_id: sample.traceId,
        span_id: sample.spanId,
        parent_span_id: sample.parentSpanId,
        instance: sample.instance,
        error_message: sample.errorMessage,
        fault_injected: 1,
        stream_seq: "18",
      }, "row fields");
      const [rollup] = await clickhouse.query<{ requests: string; histogram: string }>(
        sql`SELECT (SELECT sum(requests) FROM ${ident(database, "request_stats_1s")}) AS requests,
          (SELECT sum(arraySum(histogramMap.count)) FROM ${
          ident(database, "latency_profile_1s")
        }) AS histogram`,
      );
      assertEquals(rollup, { requests: "5000", histogram: "5000" }, "rollups count every event once");
    });
  });
  await step("RowBinary bodies hold what the reference decoder gives, as the server reads them", async () => {
    // The worker's bytes (fast path and decodeEvent path) against decodeEvent's rows sent as JSONEachRow:
    // the same rows in the table, column by column, for random events (escapes, non-ASCII, upper-case ids,
    // numbers up to 2^53 - 1, long strings).
    const clickhouse = createClickHouse({ url: server.url, ...CLICKHOUSE_ADMIN });
    const database = uniqueDatabase("rowbinary");
    try {
      await applyMigrations({ clickhouse, database });
      await clickhouse.exec(
        sql`CREATE TABLE ${ident(database, "reference_events")} AS ${ident(database, "request_events")}`,
      );
      const random = seededRandom(Number(Deno.env.get("INGEST_FUZZ_SEED") ?? 20261130));
      const writer = new RowWriter();
      const scanner = new EventScanner();
      const reference: object[] = [];
      for (let seq = 1; seq <= 3000; seq++) {
        const payload = toBinary(RequestEventSchema, randomEvent(random, seq));
        const decoded = decodeEvent(payload, seq);
        if (!decoded.ok) continue;
        appendEvent(scanner, payload, seq, () => writer);
        reference.push({
          ...decoded.row,
          ingested_at_ms: 1_764_460_800_123,
          ingest_batch_seq: 3000,
          ingest_floor_seq: 17,
        });
      }
      assert(reference.length > 500, `${reference.length} valid random events`);
      writer.stamp({ ingestedAtMs: 1_764_460_800_123, batchSeq: 3000, floorSeq: 17 });
      const columns = [...INSERT_COLUMNS];
      await clickhouse.insertBody({ database, table: "request_events" }, columns, ROW_FORMAT, writer.body());
      await clickhouse.insertJsonEachRow({ database, table: "reference_events" }, columns, reference);
      const read = (table: string) =>
        clickhouse.query(
          sql`SELECT ${sqlJoin(columns.map((column) => ident(column)))} FROM ${ident(database, table)}
            ORDER BY stream_seq`,
        );
      const [written, expected] = [await read("request_events"), await read("reference_events")];
      assertEquals(written.length, reference.length);
      for (let i = 0; i < expected.length; i++) assertEquals(written[i], expected[i], `row ${i}`);
    } finally {
      await clickhouse.exec(sql`DROP DATABASE IF EXISTS ${ident(database)}`);
    }
  });

  await step(
    "a poison message is dead-lettered with its reason and everything else is ingested",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const { deadLetters, sub } = await subscribeDeadLetters(nc);
        const js = jetstream(nc);
        const good = Array.from({ length: 1000 }, (_, i) => makeEvent(i));
        await publishEvents(nc, good.slice(0, 500));
        await js.publish("events.requests.catalog", new Uint8Array([0xff, 0xff, 0xff, 0x01]), {
          msgID: "poison-1",
        });
        const badId = makeEvent(1);
        badId.eventId = "not-a-uuid";
        await publishEvents(nc, [badId]);
        await publishEvents(nc, good.slice(500));
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
        const stats = await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
        await eventually("two dead letters", () => deadLetters.length >= 2, 10_000);
        sub.unsubscribe();
        const reasons = deadLetters.map((
          msg,
        ) => [msg.subject, msg.headers?.get("Tailwatch-Dead-Letter-Reason")]).sort();
        assertEquals(reasons, [
          ["events.deadletter.invalid_event_id", "invalid_event_id"],
          ["events.deadletter.undecodable", "undecodable"],
        ]);
        const poison = deadLetters.find((msg) => msg.subject.endsWith("undecodable"));
        assertEquals(
          [...(poison?.data ?? [])],
          [0xff, 0xff, 0xff, 0x01],
          "dead letter carries the original bytes",
        );
        assertEquals(poison?.headers?.get("Tailwatch-Msg-Id"), "poison-1");
        assertEquals(stats.deadLettered, 2);
        assertEquals(await counts(clickhouse, database), { rows: 1000, distinct: 1000 });
        const jsm = await jetstreamManager(nc);
        const info = await jsm.consumers.info(REQUEST_EVENTS_STREAM, config.durable);
        assertEquals([info.num_pending, info.num_ack_pending], [0, 0], "everything acked, poison included");
      });
    },
  );

  await step(
    "a batch message's events become rows under its sequence; a poison event in it is dead-lettered alone",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const { deadLetters, sub } = await subscribeDeadLetters(nc);
        const first = Array.from({ length: 300 }, (_, i) => makeEvent(i));
        const second = Array.from({ length: 200 }, (_, i) => makeEvent(i));
        second[17].eventId = "not-a-uuid";
        const miscounted = Array.from({ length: 5 }, (_, i) => makeEvent(i));
        await publishEvents(nc, [makeEvent(1)]);
        await publishEventBatch(nc, first);
        await publishEventBatch(nc, second);
        // The header says 6, the message holds 5: the whole message is undecodable.
        await publishEventBatch(nc, miscounted, "6");
        await publishEvents(nc, [makeEvent(2)]);
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
        const stats = await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
        await eventually("two dead letters", () => deadLetters.length >= 2, 10_000);
        sub.unsubscribe();
        assertEquals(await counts(clickhouse, database), { rows: 1 + 300 + 199 + 1, distinct: 501 });
        const perSeq = await clickhouse.query<{ stream_seq: string; n: string }>(
          sql`SELECT stream_seq, count() AS n FROM ${ident(database, "request_events")}
            GROUP BY stream_seq ORDER BY stream_seq`,
        );
        assertEquals(
          perSeq.map((row) => [Number(row.stream_seq), Number(row.n)]),
          [[1, 1], [2, 300], [3, 199], [5, 1]],
          "a message's events share its stream sequence",
        );
        const badEvent = deadLetters.find((msg) => msg.subject.endsWith("invalid_event_id"));
        assertEquals(badEvent?.headers?.get("Tailwatch-Event-Index"), "17");
        assertEquals(badEvent?.headers?.get("Tailwatch-Stream-Seq"), "3");
        assertEquals(
          [...(badEvent?.data ?? [])],
          [...toBinary(RequestEventSchema, second[17])],
          "the dead letter carries the event's own bytes",
        );
        const badBatch = deadLetters.find((msg) => msg.subject.endsWith("undecodable"));
        assertEquals(badBatch?.headers?.get("Tailwatch-Stream-Seq"), "4");
        assertEquals(badBatch?.headers?.get("Tailwatch-Event-Index"), "", "the whole message");
        assert(
          badBatch?.headers?.get("Tailwatch-Dead-Letter-Detail").includes(
            "5 events, but the Tailwatch-Events",
          ),
          badBatch?.headers?.get("Tailwatch-Dead-Letter-Detail"),
        );
        assertEquals(stats.deadLettered, 2);
        // Delivered again (a crash before the ack): nothing doubles.
        const jsm = await jetstreamManager(nc);
        await jsm.consumers.delete(REQUEST_EVENTS_STREAM, config.durable);
        await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
        assertEquals(
          await counts(clickhouse, database),
          { rows: 501, distinct: 501 },
          "replayed: no row twice",
        );
      });
    },
  );

  await step(
    "kill -9 of the worker, several times while publishing events and batches: every event exactly once",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const env = testEnv(nats.url, server.url, CLICKHOUSE_ADMIN.password, database, {
          INGEST_BATCH_MAX: "500",
          INGEST_BATCH_WAIT_MS: "50",
          INGEST_ACK_WAIT_MS: "3000",
          INGEST_INSERT_TIMEOUT_MS: "1500",
        });
        const logDir = await Deno.makeTempDir({ prefix: "tailwatch-ingest-kill-" });
        const cwd = new URL("..", import.meta.url).pathname;
        let generation = 0;
        const startWorker = () =>
          spawnLogged(
            Deno.execPath(),
            ["run", "-A", "ingest/main.ts"],
            `${logDir}/worker-${generation++}.log`,
            {
              env,
              cwd,
            },
          );
        const total = 24_000;
        const events = Array.from({ length: total }, (_, i) => makeEvent(i));
        let published = 0;
        const publishing = (async () => {
          // Every other chunk as the services publish by default: 40 events a message under one sequence.
          for (let i = 0; i < total; i += 400) {
            const chunk = events.slice(i, i + 400);
            await (i % 800 === 0 ? publishEvents(nc, chunk) : publishEventBatches(nc, chunk, 40));
            published = i + 400;
            await new Promise((resolve) => setTimeout(resolve, 60));
          }
        })();
        let worker = await startWorker();
        try {
          for (let kill = 0; kill < 4; kill++) {
            const before = (await counts(clickhouse, database)).rows;
            // Kill while it is busy: once it has inserted something since it (re)started.
            await eventually(
              "progress before the kill",
              async () => (await counts(clickhouse, database)).rows > before,
            );
            await new Promise((resolve) => setTimeout(resolve, Math.random() * 300));
            await worker.stop("SIGKILL");
            worker = await startWorker();
          }
          await publishing;
          assertEquals(published, total);
          await eventually(
            "all rows",
            async () => (await counts(clickhouse, database)).rows >= total,
            120_000,
          );
          // Redeliveries of the last kill come after the ack wait: give them time to (not) duplicate.
          await new Promise((resolve) => setTimeout(resolve, 3500));
          await eventually("nothing pending", async () => {
            const info = await (await jetstreamManager(nc)).consumers.info(
              REQUEST_EVENTS_STREAM,
              "tailwatch-ingest",
            );
            return info.num_pending === 0 && info.num_ack_pending === 0;
          });
          assertEquals(await worker.stop("SIGTERM"), 0, "graceful stop exits 0");
        } finally {
          await worker.stop("SIGKILL");
          await publishing.catch(() => {});
        }
        assertEquals(await counts(clickhouse, database), { rows: total, distinct: total });
        const logs = await Promise.all(
          Array.from(
            { length: generation },
            (_, g) => Deno.readTextFile(`${logDir}/worker-${g}.log`).catch(() => ""),
          ),
        );
        const skipped = logs.join("\n").split("\n").filter((line) =>
          line.includes("skipped rows already in the table")
        );
        console.log(
          `kill -9 test: ${generation} worker processes, ${skipped.length} batches with rows found already inserted`,
        );
        await Deno.remove(logDir, { recursive: true });
      });
    },
  );

  await step(
    "a delivery the worker never saw (another client pulled it) is not acked past: exactly once",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        // Small pull requests, so that another client's pull request on the same durable is served between
        // the worker's: the worker then sees a gap in the consumer sequence. Without the continuity check its
        // cumulative ack (AckPolicy.All) would ack the stolen messages, and they would never be inserted.
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database, {
          INGEST_BATCH_MAX: "20",
          INGEST_BATCH_WAIT_MS: "20",
        });
        const worker = createIngestWorker({ config, logger: quietLogger });
        const running = worker.run();
        let published = 0;
        let stolen = 0;
        try {
          await eventually("the worker consuming", () => worker.ready(), 30_000);
          const thief = await jetstream(nc).consumers.get(REQUEST_EVENTS_STREAM, config.durable);
          const publish = async (n: number) => {
            await publishEvents(nc, Array.from({ length: n }, (_, j) => makeEvent(published + j)));
            published += n;
          };
          await publish(300);
          for (let round = 0; stolen === 0 && round < 50; round++) {
            // The other client's pull request waits next to the worker's; the next events are shared out
            // between them. What it takes is never acked: ack-pending until the worker recreates the consumer.
            const taking = await thief.fetch({ max_messages: 3, expires: 1_000 });
            await publish(100);
            for await (const _ of taking) stolen++;
          }
          assert(stolen > 0, "the other client got some deliveries");
          for (let i = 0; i < 10; i++) {
            await publish(100);
            await new Promise((resolve) => setTimeout(resolve, 30));
          }
          await eventually(
            "every event in the table",
            async () => (await counts(clickhouse, database)).rows >= published,
            60_000,
          );
          await eventually("nothing pending", async () => {
            const info = await (await jetstreamManager(nc)).consumers.info(
              REQUEST_EVENTS_STREAM,
              config.durable,
            );
            return info.num_pending === 0 && info.num_ack_pending === 0;
          });
        } finally {
          worker.stop();
          await running;
        }
        assert(worker.stats().resyncs > 0, "the worker recreated the consumer after the gap");
        assertEquals(await counts(clickhouse, database), { rows: published, distinct: published });
      });
    },
  );

  await step(
    "a durable with explicit acks and unacked messages is recreated (ack all) at its ack floor + 1",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
        await publishEvents(nc, Array.from({ length: 1000 }, (_, i) => makeEvent(i)));
        // An earlier worker (explicit acks): was handed 300 messages, inserted 250, acked 200, then died.
        const jsm = await jetstreamManager(nc);
        await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
          durable_name: config.durable,
          ack_policy: AckPolicy.Explicit,
          ack_wait: 60_000_000_000, // long: only the recreation can bring the unacked 100 back in time
          filter_subject: config.filterSubject,
        });
        const old = await jetstream(nc).consumers.get(REQUEST_EVENTS_STREAM, config.durable);
        const handed: JsMsg[] = [];
        while (handed.length < 300) {
          for await (const msg of await old.fetch({ max_messages: 300 - handed.length, expires: 2_000 })) {
            handed.push(msg);
          }
        }
        const writer = new RowWriter();
        const scanner = new EventScanner();
        for (const msg of handed.slice(0, 250)) appendEvent(scanner, msg.data, msg.seq, () => writer);
        writer.stamp({ ingestedAtMs: Date.now(), batchSeq: handed[249].seq, floorSeq: 0 });
        await clickhouse.insertBody(
          { database, table: "request_events" },
          INSERT_COLUMNS,
          ROW_FORMAT,
          writer.body(),
        );
        for (const msg of handed.slice(0, 200)) msg.ack();
        await nc.flush();
        await eventually("200 acked", async () => {
          const info = await jsm.consumers.info(REQUEST_EVENTS_STREAM, config.durable);
          return info.ack_floor.stream_seq === handed[199].seq && info.num_ack_pending === 100;
        });
        const stats = await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
        assertEquals(stats.duplicatesSkipped, 50, "the 50 inserted and not acked were found and skipped");
        assertEquals(stats.rowsInserted, 750);
        assertEquals(await counts(clickhouse, database), { rows: 1000, distinct: 1000 });
        const info = await jsm.consumers.info(REQUEST_EVENTS_STREAM, config.durable);
        assertEquals(info.config.ack_policy, AckPolicy.All);
        assertEquals([info.num_pending, info.num_ack_pending], [0, 0], "everything acked");
        assertEquals(info.ack_floor.stream_seq, 1000);
      });
    },
  );

  await step(
    "a filter that is the stream's only subject leaves the consumer unfiltered; a narrower one is kept",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const jsm = await jetstreamManager(nc);
        const whole = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
        // What an earlier version left: the durable filtered on the stream's own subject, nothing pending.
        await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
          durable_name: whole.durable,
          ack_policy: AckPolicy.All,
          filter_subject: REQUEST_EVENTS_SUBJECTS,
        });
        await publishEvents(nc, Array.from({ length: 300 }, (_, i) => makeEvent(i)));
        const stats = await createIngestWorker({ config: whole, logger: quietLogger, mode: "drain" }).run();
        assertEquals(stats.rowsInserted, 300);
        assertEquals(await counts(clickhouse, database), { rows: 300, distinct: 300 });
        const unfiltered = await jsm.consumers.info(REQUEST_EVENTS_STREAM, whole.durable);
        assertEquals(unfiltered.config.filter_subject ?? "", "", "recreated without a filter");
        assertEquals(unfiltered.ack_floor.stream_seq, 300);

        const ordersDatabase = uniqueDatabase("ingest_orders");
        try {
          await applyMigrations({ clickhouse, database: ordersDatabase });
          const ordersOnly = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, ordersDatabase, {
            INGEST_DURABLE: "orders-only",
            INGEST_FILTER_SUBJECT: requestEventSubject("orders"),
          });
          const ordersStats = await createIngestWorker({
            config: ordersOnly,
            logger: quietLogger,
            mode: "drain",
          })
            .run();
          assertEquals(ordersStats.rowsInserted, 100, "every third event is an orders event");
          const [row] = await clickhouse.query<{ services: string[] }>(
            sql`SELECT groupUniqArray(service) AS services FROM ${ident(ordersDatabase, "request_events")}`,
          );
          assertEquals(row.services, ["orders"]);
          const filtered = await jsm.consumers.info(REQUEST_EVENTS_STREAM, "orders-only");
          assertEquals(filtered.config.filter_subject, requestEventSubject("orders"));
        } finally {
          await clickhouse.exec(sql`DROP DATABASE IF EXISTS ${ident(ordersDatabase)}`).catch(() => {});
        }
      });
    },
  );

  await step(
    "ClickHouse stopped for 12 s while publishing: the backlog drains after, exactly once",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
        const worker = createIngestWorker({ config, logger: createLogger("error") });
        const running = worker.run();
        let published = 0;
        let serverDown = false;
        try {
          await publishEvents(nc, Array.from({ length: 2000 }, (_, i) => makeEvent(i)));
          published = 2000;
          await eventually("first rows", async () => (await counts(clickhouse, database)).rows >= 2000);
          let stopPublishing = false;
          const publishing = (async () => {
            while (!stopPublishing) {
              await publishEvents(nc, Array.from({ length: 100 }, (_, i) => makeEvent(published + i)));
              published += 100;
              await new Promise((resolve) => setTimeout(resolve, 150));
            }
          })();
          serverDown = true;
          await server.stop();
          const outageStart = Date.now();
          await new Promise((resolve) => setTimeout(resolve, 12_000));
          await eventually("the worker sees the outage", () => worker.stats().retries > 0, 30_000);
          await server.start();
          serverDown = false;
          const outage = Date.now() - outageStart;
          stopPublishing = true;
          await publishing;
          await publishEvents(nc, Array.from({ length: 2000 }, (_, i) => makeEvent(published + i)));
          published += 2000;
          await eventually(
            "backlog drained",
            async () => (await counts(clickhouse, database)).rows >= published,
            120_000,
          );
          assert(outage >= 12_000, `outage lasted ${outage} ms`);
        } finally {
          if (serverDown) {
            await server.start();
          }
          worker.stop();
          await running;
        }
        assertEquals(await counts(clickhouse, database), { rows: published, distinct: published });
      });
    },
  );

  await step("rebuild truncates the projections, replays the stream and gives equal counts", async () => {
    await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
      const now = Date.now();
      const events = Array.from({ length: 3000 }, (_, i) => makeEvent(i, i % 2 ? now : now - 86_400_000));
      await publishEvents(nc, events);
      await jetstream(nc).publish("events.requests.orders", new Uint8Array([0xff]), { msgID: "poison-r" });
      const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
      await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
      const before = await projectionCounts(clickhouse, database);
      assertEquals(before, {
        rows: 3000,
        distinctEvents: 3000,
        statsRequests: 3000,
        profileRequests: 3000,
      });
      const result = await rebuild(config, quietLogger, { force: true });
      assertEquals(result.mode, "all", "the stream holds every message: everything replayed");
      assertEquals(result.before, before);
      assertEquals(result.after, before, "counts after the rebuild");
      assertEquals(await projectionCounts(clickhouse, database), before);
      assertEquals(result.replay.rowsInserted, 3000, "the replay inserted every event again");
      assertEquals(
        await recordedRebuilds(clickhouse, database),
        ["all emptied", "all done"],
        "the profiler is told (projection_rebuilds)",
      );
    });
  });

  await step(
    "rebuild refuses to lose what the stream cannot give back, and with keepOlder keeps it",
    async () => {
      await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
        const now = Date.now();
        const events = Array.from({ length: 2000 }, (_, i) => makeEvent(i, now - 600_000 + i * 100));
        await publishEvents(nc, events);
        const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
        await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
        const before = await projectionCounts(clickhouse, database);
        assertEquals(before.rows, 2000);
        // The stream's limits removed its oldest 500 messages.
        await (await jetstreamManager(nc)).streams.purge(REQUEST_EVENTS_STREAM, { seq: 501 });
        let refused: RebuildRefused | undefined;
        await assertRejects(
          () => rebuild(config, quietLogger),
          (error) => error instanceof RebuildRefused && (refused = error) !== undefined,
          "a rebuild that would lose rows",
        );
        assertEquals(refused?.lost.streamFirstSeq, 501);
        assertEquals(refused?.lost.rawRows, 500, "the raw rows of the purged messages");
        assert((refused?.lost.rollupRows ?? 0) > 0, "and the rollup seconds before the first replayable row");
        assertEquals(await projectionCounts(clickhouse, database), before, "nothing touched");
        assertEquals(await recordedRebuilds(clickhouse, database), [], "no rebuild recorded");

        const result = await rebuild(config, quietLogger, { keepOlder: true });
        assertEquals(result.mode, "newer");
        assertEquals(result.replay.rowsInserted, 1500, "the messages the stream still holds, replayed");
        assertEquals(result.after, before, "every row kept or replayed");
        assertEquals(await counts(clickhouse, database), { rows: 2000, distinct: 2000 });
        assertEquals((await rollupDifferences(clickhouse, database)).differences, []);
        assertEquals(await recordedRebuilds(clickhouse, database), ["newer emptied", "newer done"]);
      });
    },
  );

  await step("retention drops only the partitions older than the cutoffs", async () => {
    await withFixture(server, async ({ nats, nc, clickhouse, database }) => {
      const day = 86_400_000;
      const now = new Date();
      const ages = [40, 10, 0];
      const events = ages.flatMap((age, a) =>
        Array.from({ length: 500 }, (_, i) => makeEvent(a * 500 + i, now.getTime() - age * day))
      );
      await publishEvents(nc, events);
      const config = testConfig(nats.url, server.url, CLICKHOUSE_ADMIN.password, database);
      await createIngestWorker({ config, logger: quietLogger, mode: "drain" }).run();
      assertEquals((await projectionCounts(clickhouse, database)).rows, 1500);
      // Percentile rows of the same ages, written through the Buffer and flushed into its storage table.
      const percentiles = ident(database, "latency_percentiles");
      for (const age of ages) {
        await clickhouse.exec(
          sql`INSERT INTO ${percentiles} (ts, window_s, service, method, count) VALUES (${new Date(
            now.getTime() - age * day,
          )}, 10, 's', '', ${age})`,
        );
      }
      await clickhouse.exec(sql`OPTIMIZE TABLE ${percentiles}`);
      const percentileAges = async () =>
        (await clickhouse.query<{ count: string }>(sql`SELECT count FROM ${percentiles} ORDER BY count`))
          .map((row) => Number(row.count));
      const dropped = await applyRetention(clickhouse, database, { rawDays: 30, rollupDays: 60, now });
      assertEquals(dropped.map((d) => d.table), ["request_events"], "only the raw table loses a partition");
      const after = await projectionCounts(clickhouse, database);
      assertEquals([after.rows, after.statsRequests, after.profileRequests], [
        1000,
        1500,
        1500,
      ]);
      const [oldest] = await clickhouse.query<{ age: number }>(
        sql`SELECT max(dateDiff('day', ts, ${now})) AS age FROM ${ident(database, "request_events")}`,
      );
      assert(Number(oldest.age) <= 11, `no raw event older than 30 days remains (oldest ${oldest.age} days)`);
      assertEquals(await percentileAges(), [0, 10, 40], "percentiles kept for 60 days");
      const rollupsDropped = await applyRetention(clickhouse, database, { rawDays: 30, rollupDays: 20, now });
      assertEquals(rollupsDropped.map((d) => d.table).sort(), [
        "latency_percentiles_storage",
        "latency_profile_1s",
        "request_stats_1s",
      ]);
      assertEquals(await percentileAges(), [0, 10], "the 40-day-old percentile row is gone");
      const final = await projectionCounts(clickhouse, database);
      assertEquals([final.rows, final.statsRequests, final.profileRequests], [
        1000,
        1000,
        1000,
      ]);
      assertEquals(
        await applyRetention(clickhouse, database, { rawDays: 30, rollupDays: 20, now }),
        [],
        "idempotent",
      );
    });
  });

  await step("the readonly user can read but cannot write, alter, drop or lift its limits", async () => {
    const admin = createClickHouse({ url: server.url, ...CLICKHOUSE_ADMIN });
    const reader = createClickHouse({ url: server.url, ...CLICKHOUSE_READONLY });
    const database = uniqueDatabase("ro");
    try {
      await applyMigrations({ clickhouse: admin, database });
      const events = ident(database, "request_events");
      await admin.exec(
        sql`INSERT INTO ${events} (event_id, ts, service) VALUES (${crypto.randomUUID()}, ${new Date()}, 'x')`,
      );
      const [row] = await reader.query<{ n: string }>(sql`SELECT count() AS n FROM ${events}`);
      assertEquals(row.n, "1", "readonly can SELECT");
      const percentiles = ident(database, "latency_percentiles");
      await admin.exec(
        sql`INSERT INTO ${percentiles} (ts, window_s, service, method) VALUES (${new Date()}, 10, 'x', '')`,
      );
      const [buffered] = await reader.query<{ n: string }>(sql`SELECT count() AS n FROM ${percentiles}`);
      assertEquals(buffered.n, "1", "readonly reads latency_percentiles (a Buffer), buffered rows included");
      const refused = [
        sql`INSERT INTO ${percentiles} (ts, window_s, service, method) VALUES (${new Date()}, 10, 'y', '')`,
        sql`OPTIMIZE TABLE ${percentiles}`,
        sql`INSERT INTO ${events} (event_id, ts, service) VALUES (${crypto.randomUUID()}, ${new Date()}, 'y')`,
        sql`ALTER TABLE ${events} DROP PARTITION ${20200101}`,
        sql`ALTER TABLE ${events} ADD COLUMN evil String`,
        sql`DROP TABLE ${events}`,
        sql`TRUNCATE TABLE ${events}`,
        sql`CREATE TABLE ${ident(database, "evil")} (x UInt8) ENGINE = Memory`,
        sql`SET max_result_rows = 0`,
        sql`SET readonly = 0`,
      ];
      for (const statement of refused) {
        // 164: READONLY, the server's code, carried by the error (@clickhouse/client's command underneath).
        await assertRejects(
          () => reader.exec(statement),
          (error) =>
            error instanceof ClickHouseError && error.code === 164 && error.answered &&
            /readonly|Cannot|not allowed|denied/i.test(error.message),
          statement.text,
        );
      }
      const settings = {
        max_result_rows: "0",
        max_execution_time: "0",
        max_memory_usage: "0",
        readonly: "0",
      };
      for (const [name, value] of Object.entries(settings)) {
        const response = await fetch(`${server.url}/?${name}=${value}`, {
          method: "POST",
          body: "SELECT 1",
          headers: {
            "X-ClickHouse-User": CLICKHOUSE_READONLY.username,
            "X-ClickHouse-Key": CLICKHOUSE_READONLY.password,
          },
        });
        const body = await response.text();
        assert(!response.ok, `?${name}=${value} must be refused, got ${response.status} ${body}`);
        // The same through @clickhouse/client's clickhouse_settings (as a Grafana or analyst's client sends
        // them): refused too. ingest's client sends none, or every read above would have been refused.
        const client = createClient({
          url: server.url,
          ...CLICKHOUSE_READONLY,
          log: { level: ClickHouseLogLevel.OFF },
        });
        try {
          await assertRejects(
            () =>
              client.query({
                query: "SELECT 1",
                format: "JSONEachRow",
                clickhouse_settings: { [name]: value },
              }),
            (error) => /Code: 164/.test(String(error)),
            `clickhouse_settings ${name}=${value}`,
          );
        } finally {
          await client.close();
        }
      }
      const limits = await reader.query<{ name: string; value: string }>(
        sql`SELECT name, value FROM system.settings
          WHERE name IN ('readonly', 'max_execution_time', 'max_result_rows', 'max_memory_usage') ORDER BY name`,
      );
      assertEquals(limits, [
        { name: "max_execution_time", value: "30" },
        { name: "max_memory_usage", value: "2000000000" },
        { name: "max_result_rows", value: "1000000" },
        { name: "readonly", value: "1" },
      ]);
      await assertRejects(
        () => reader.query(sql`SELECT number FROM system.numbers LIMIT ${2_000_000}`),
        (error) =>
          error instanceof ClickHouseError && error.code === 396 &&
          /Limit for result|TOO_MANY_ROWS/i.test(error.message),
        "result size limit (396: TOO_MANY_ROWS_OR_BYTES)",
      );
    } finally {
      await admin.exec(sql`DROP DATABASE IF EXISTS ${ident(database)}`);
    }
  });

  await step(
    "the client: the server's codes, failures mid-answer, deadlines, JSONEachRow round trips",
    async () => {
      const clickhouse = createClickHouse({ url: server.url, ...CLICKHOUSE_ADMIN });
      const database = uniqueDatabase("client");
      const rejection = async (fn: () => Promise<unknown>, what: string): Promise<ClickHouseError> => {
        try {
          await fn();
        } catch (error) {
          assert(error instanceof ClickHouseError, `${what}: a ClickHouseError, got ${error}`);
          return error;
        }
        throw new Error(`${what}: it resolved`);
      };
      try {
        await clickhouse.exec(sql`CREATE DATABASE ${ident(database)}`);
        const table = ident(database, "t");
        await clickhouse.exec(sql`CREATE TABLE ${table} (id UInt32, s String, n UInt64) ENGINE = Memory`);
        const rows = [
          { id: 1, s: "it's \\ a\ttab\nnewline é 日本 😀 \u0000", n: "18446744073709551615" },
          { id: 2, s: "", n: "0" },
        ];
        await clickhouse.insertJsonEachRow({ database, table: "t" }, ["id", "s", "n"], rows);
        assertEquals(await clickhouse.query(sql`SELECT id, s, n FROM ${table} ORDER BY id`), rows);
        for (
          const [what, call, code] of [
            [
              "query of a missing table",
              () => clickhouse.query(sql`SELECT 1 FROM ${ident(database, "nope")}`),
              60,
            ],
            [
              "exec on a missing database",
              () => clickhouse.exec(sql`DROP TABLE ${ident("nope_db", "t")}`),
              81,
            ],
            [
              "CREATE of a table that exists",
              () => clickhouse.exec(sql`CREATE TABLE ${table} (id UInt32) ENGINE = Memory`),
              57,
            ],
            ["a syntax error", () => clickhouse.query(sql`SELEKT 1`), 62],
            [
              "an insert into a missing column",
              () => clickhouse.insertJsonEachRow({ database, table: "t" }, ["nope"], [{ nope: 1 }]),
              16,
            ],
          ] as const
        ) {
          const error = await rejection(call, what);
          assertEquals([error.code, error.answered], [code, true], `${what}: ${error.message}`);
        }
        // 18.16 answers 200 with the first rows and then the exception, as text, in the body.
        const midway = await rejection(
          () =>
            clickhouse.query(
              sql`SELECT throwIf(number = 300000) AS t FROM system.numbers LIMIT ${400_000}`,
            ),
          "throwIf after 300,000 rows",
        );
        assertEquals(midway.code, 395, midway.message);
        assert(midway.message.includes("mid-answer"), midway.message);
        const started = performance.now();
        const late = await rejection(
          () => clickhouse.query(sql`SELECT sleep(2)`, { timeoutMs: 500 }),
          "a query past its deadline",
        );
        assertEquals([late.code, late.answered], [undefined, false], late.message);
        assert(performance.now() - started < 1_500, "gave up at its deadline");
        assert(await clickhouse.ping(), "ping");
      } finally {
        await clickhouse.exec(sql`DROP DATABASE IF EXISTS ${ident(database)}`);
        await clickhouse.close();
      }
    },
  );

  await step(
    "binder fuzz: random strings round-trip unchanged and never change the query's shape",
    async () => {
      const clickhouse = createClickHouse({ url: server.url, ...CLICKHOUSE_ADMIN });
      const seed = Number(Deno.env.get("INGEST_FUZZ_SEED") ?? 20261123);
      const random = seededRandom(seed);
      const cases = Array.from({ length: 3000 }, () => randomString(random));
      let next = 0;
      const workerLoop = async () => {
        while (next < cases.length) {
          const index = next++;
          const s = cases[index];
          const context = `seed ${seed} case ${index} ${JSON.stringify(s.slice(0, 80))}`;
          const rows = await clickhouse.query<Record<string, unknown>>(
            sql`SELECT ${s} AS v, (SELECT count() FROM (SELECT 1) WHERE ${s} = ${s}) AS n, length(${s}) AS len`,
          );
          assertEquals(rows.length, 1, `one row: ${context}`);
          assertEquals(Object.keys(rows[0]), ["v", "n", "len"], `same columns: ${context}`);
          assert(
            rows[0].v === s,
            `round trip: ${context} got ${JSON.stringify(String(rows[0].v).slice(0, 80))}`,
          );
          assertEquals(Number(rows[0].n), 1, `WHERE s = s holds: ${context}`);
          assertEquals(Number(rows[0].len), new TextEncoder().encode(s).length, `byte length: ${context}`);
          if (s.length > 0 && !s.includes("\0") && index % 3 === 0) {
            const named = await clickhouse.query<Record<string, unknown>>(sql`SELECT 1 AS ${ident(s)}`);
            assertEquals(Object.keys(named[0]), [s], `identifier round trip: ${context}`);
          }
        }
      };
      await Promise.all([workerLoop(), workerLoop(), workerLoop(), workerLoop()]);
      for (let i = 0; i < 500; i++) {
        const n = random() < 0.5
          ? Math.round((random() - 0.5) * 2 ** (1 + Math.floor(random() * 52)))
          : (random() - 0.5) * 10 ** Math.floor(random() * 40 - 20);
        const [row] = await clickhouse.query<{ v: number | string; d: number | string }>(
          sql`SELECT ${n} AS v, 1-${n} AS d`,
        );
        assertEquals(Number(row.v), n, `number ${n} (seed ${seed})`);
        assertEquals(Number(row.d), 1 - n, `1-${n} is a subtraction (seed ${seed})`);
      }
    },
  );
});

/** Strings built from the pieces that break naive escaping, plus random code points and very long runs. */
function randomString(random: () => number): string {
  const pieces = [
    "'",
    "\\",
    "\\'",
    "''",
    '"',
    "`",
    "\n",
    "\r",
    "\t",
    "\0",
    "\x01",
    "\x1b",
    "\x1f",
    "\x7f",
    "\b",
    "\f",
    "--",
    "/*",
    "*/",
    ";",
    " ",
    "?",
    "{x:String}",
    "%s",
    "$1",
    "é",
    "日本語",
    "😀",
    "\u2028",
    "\ufeff",
    "SELECT 1; DROP TABLE x",
    "' OR 1=1 --",
    "\\x41",
    "\\0",
    "FORMAT TSV",
    "\uFFFD",
    "a",
  ];
  const roll = random();
  // Long, but 4 copies escaped stay under max_query_size (256 KiB).
  if (roll < 0.01) return "x'\\".repeat(2_000 + Math.floor(random() * 8_000));
  const length = roll < 0.1 ? 0 : Math.floor(random() * 40);
  let out = "";
  for (let i = 0; i < length; i++) {
    const kind = random();
    if (kind < 0.6) out += pieces[Math.floor(random() * pieces.length)];
    else if (kind < 0.8) out += String.fromCharCode(Math.floor(random() * 128));
    else if (kind < 0.95) {
      let code = Math.floor(random() * 0xffff);
      if (code >= 0xd800 && code <= 0xdfff) code = 0x4e00;
      out += String.fromCharCode(code);
    } else out += String.fromCodePoint(0x10000 + Math.floor(random() * 0xfffff));
  }
  return out;
}
