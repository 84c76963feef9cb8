/**
 * Ingest beyond one worker per service (issue 27, point 8): four workers, each a process of its own
 * (`deno run -A ingest/main.ts`, INGEST_PARTITIONS=4, INGEST_PARTITION=0..3), on a real nats-server and
 * ClickHouse; three publishers (the services' event sink, EVENT_PARTITIONS=4) spread their messages over the
 * partitions; one worker, then another, is killed with SIGKILL under load and started again. Then:
 *
 * - the counts add up: events published (acked by JetStream, none dropped) = rows = distinct event ids, and
 *   every partition carried its share;
 * - the floor stays global: for every row, every message of the stream at or below the row's ingest_floor_seq
 *   has all its rows sent (ingested_at_ms) no later than that row was: a message committed before the floor
 *   was computed was sent before (the row is sent after). The same for every floor marker, to the second (its
 *   end_ts is the server's now()). That the check has teeth: stamping each row with its own partition's floor
 *   (the highest batch of its partition sent a second before it) fails it, because another partition's worker
 *   was dead meanwhile;
 * - once idle, the floor reaches the stream's last sequence (markers), and, when the profiler is built
 *   (native/profiler/build), its windows equal the raw rows (native/profiler/tests/derived.ts, checkDerived):
 *   a wrong floor would make it finalize a batch before its rows arrived, and miss them.
 *
 * And, in process (drain mode): a stream made before partitions (`events.requests.*`) makes this version's worker
 * wait until the setup step widens it; then one worker, then two partitions (partition 0 also reading what an
 * unpartitioned publisher sends); a rebuild with two partitions replays everything once and starts partition 1's
 * durable after the replay; back to one worker, which reads the messages partition 1 never took; and a worker
 * whose subjects a live worker of another partition count reads waits, not ready, until that one is gone.
 *
 * About 45 s: `deno test -A ingest/partition_test.ts`.
 */
import { create } from "@bufbuild/protobuf";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { Protocol, RequestEventSchema } from "@tailwatch/proto/events/v1";
import { applyRequestEventsStream, createEventSink, type EventSink } from "@tailwatch/nats";
import { createLogger, createRegistry, type Logger } from "@tailwatch/runtime";
import { REQUEST_EVENTS_STREAM } from "@tailwatch/events";
import {
  assert,
  assertEquals,
  CLICKHOUSE_ADMIN,
  type ManagedProcess,
  spawnLogged,
  startClickHouseServer,
  startNatsServer,
} from "@tailwatch/testing";
import { createClickHouse } from "./clickhouse.ts";
import { loadConfig } from "./config.ts";
import { applyMigrations } from "./migrations.ts";
import { projectionCounts, rebuild } from "./rebuild.ts";
import { ident, sql } from "./sql.ts";
import {
  eventually,
  makeEvent,
  publishEvents,
  rollupDifferences,
  testEnv,
  uniqueDatabase,
} from "./test_helpers.ts";
import { createIngestWorker } from "./worker.ts";
import { checkDerived } from "@tailwatch/profiler/derived";

const ROOT = new URL("../", import.meta.url).pathname;
const PARTITIONS = 4;
const SERVICES = ["catalog", "orders", "payments"] as const;
/** Events a second, all publishers together. */
const RATE = 1200;
const LOAD_MS = 14_000;
const WINDOWS = [10, 60];
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function profilerBinary(): Promise<string | undefined> {
  const path = Deno.env.get("TAILWATCH_PROFILER_BIN") ?? `${ROOT}native/profiler/build/tailwatch-profiler`;
  try {
    return (await Deno.stat(path)).isFile ? path : undefined;
  } catch {
    return undefined;
  }
}

Deno.test("four partition workers, SIGKILL under load: counts add up, the floor stays global", async () => {
  const logDir = await Deno.makeTempDir({ prefix: "tailwatch-partitions-" });
  await using nats = await startNatsServer();
  await using clickhouse = await startClickHouseServer();
  const database = uniqueDatabase("partitions");
  const ch = createClickHouse({ url: clickhouse.url, ...CLICKHOUSE_ADMIN });
  await applyMigrations({ clickhouse: ch, database });
  const nc = await connect({ servers: nats.url });
  // The setup step's stream: subjects events.requests.> (partitioned and not).
  assertEquals(await applyRequestEventsStream(nc), "created");
  const jsm = await jetstreamManager(nc);
  assertEquals((await jsm.streams.info(REQUEST_EVENTS_STREAM)).config.subjects, ["events.requests.>"]);

  const workers: (ManagedProcess | undefined)[] = [];
  const generations = new Array<number>(PARTITIONS).fill(0);
  const startWorker = async (partition: number) => {
    workers[partition] = await spawnLogged(
      Deno.execPath(),
      ["run", "-A", "ingest/main.ts"],
      `${logDir}/worker-${partition}-${generations[partition]++}.log`,
      {
        cwd: ROOT,
        env: {
          ...Deno.env.toObject(),
          ...testEnv(nats.url, clickhouse.url, CLICKHOUSE_ADMIN.password, database, {
            INGEST_PARTITIONS: String(PARTITIONS),
            // As the StatefulSet's pods name themselves (the ordinal is taken from the name).
            INGEST_PARTITION: `ingest-${partition}`,
            INGEST_MIGRATE_ON_START: "false",
            INGEST_BATCH_MAX: "1000",
            INGEST_LOG_LEVEL: "info",
          }),
        },
      },
    );
  };
  const binary = await profilerBinary();
  let profiler: ManagedProcess | undefined;
  const sinks: EventSink[] = [];
  try {
    for (let p = 0; p < PARTITIONS; p++) await startWorker(p);
    await eventually("every partition's durable", async () => {
      const names: string[] = [];
      for await (const info of jsm.consumers.list(REQUEST_EVENTS_STREAM)) names.push(info.name);
      return names.length === PARTITIONS;
    }, 30_000);
    const zero = await jsm.consumers.info(REQUEST_EVENTS_STREAM, "tailwatch-ingest");
    assertEquals(zero.config.filter_subjects, ["events.requests.*", "events.requests.*.0"]);
    const third = await jsm.consumers.info(REQUEST_EVENTS_STREAM, "tailwatch-ingest-3");
    assertEquals(third.config.filter_subject, "events.requests.*.3");
    if (binary) {
      profiler = await spawnLogged(binary, [
        "--clickhouse-url",
        clickhouse.url,
        "--user",
        CLICKHOUSE_ADMIN.username,
        "--password",
        CLICKHOUSE_ADMIN.password,
        "--database",
        database,
        "--windows",
        WINDOWS.join(","),
        "--settle",
        "1s",
      ], `${logDir}/profiler.log`);
    }

    // The load: the services' own publisher, four partitions, small messages (more of them to interleave).
    const registries = SERVICES.map(() => createRegistry());
    for (const [i, service] of SERVICES.entries()) {
      sinks.push(createEventSink({
        service,
        nats: nats.url,
        capacity: 1_000_000,
        concurrency: 4096,
        eventsPerMessage: 32,
        publishIntervalMs: 20,
        partitions: PARTITIONS,
        logger: createLogger("error"),
        metrics: registries[i],
      }));
    }
    let emitted = 0;
    let running = true;
    const load = (async () => {
      while (running) {
        const tick = Date.now();
        for (let n = 0; n < RATE / 50; n++) {
          const i = emitted++;
          const durationUs = Math.round(Math.max(30, 2000 * Math.exp(0.9 * (Math.random() * 2 - 1))));
          const failed = i % 23 === 0;
          const service = SERVICES[i % SERVICES.length];
          sinks[i % SERVICES.length].emit(create(RequestEventSchema, {
            eventId: crypto.randomUUID(),
            startTimeMs: BigInt(Date.now() - Math.round(durationUs / 1000)),
            durationUs: BigInt(durationUs),
            service,
            method: `/${service}.v1.Service/Method${i % 3}`,
            protocol: i % 5 === 0 ? Protocol.HTTP : Protocol.GRPC,
            route: i % 5 === 0 ? `GET /v1/${service}` : "",
            grpcCode: failed ? 14 : 0,
            httpStatus: failed ? 503 : 200,
            requestBytes: BigInt(i % 300),
            responseBytes: BigInt(i % 3000),
            traceId: crypto.randomUUID().replaceAll("-", ""),
            spanId: crypto.randomUUID().replaceAll("-", "").slice(0, 16),
            instance: `${service}-partition-test`,
          }));
        }
        await sleep(Math.max(0, 20 - (Date.now() - tick)));
      }
    })();
    // Kill one worker under load and start it again later; then another.
    await sleep(3_000);
    await workers[2]!.stop("SIGKILL");
    await sleep(3_000);
    await startWorker(2);
    await sleep(2_000);
    await workers[0]!.stop("SIGKILL");
    await sleep(1_500);
    await startWorker(0);
    await sleep(LOAD_MS - 9_500);
    running = false;
    await load;
    for (const sink of sinks) assert(await sink.flush(30_000), "every event acknowledged by JetStream");
    const counter = (name: string) =>
      registries.reduce((sum, registry) => {
        const line = registry.render().split("\n").find((l) => l.startsWith(`${name} `));
        return sum + (line === undefined ? 0 : Number(line.split(" ")[1]));
      }, 0);
    assertEquals(counter("events_dropped_total"), 0);
    assertEquals(counter("events_published_total"), emitted, "published = emitted");

    // Every partition carried its share of the messages.
    const stream = await jsm.streams.info(REQUEST_EVENTS_STREAM, { subjects_filter: "events.requests.>" });
    const perPartition = new Array<number>(PARTITIONS).fill(0);
    for (const [subject, n] of Object.entries(stream.state.subjects ?? {})) {
      const partition = Number(subject.split(".")[3]);
      assert(Number.isInteger(partition) && partition < PARTITIONS, `unexpected subject ${subject}`);
      perPartition[partition] += n;
    }
    const messages = stream.state.messages;
    for (const n of perPartition) assert(n > messages / PARTITIONS / 2, `uneven: ${perPartition}`);

    const raw = ident(database, "request_events");
    const counts = async () => {
      const [row] = await ch.query<{ rows: string; distinct: string }>(
        sql`SELECT count() AS rows, uniqExact(event_id) AS distinct FROM ${raw}`,
      );
      return { rows: Number(row.rows), distinct: Number(row.distinct) };
    };
    await eventually("every event a row", async () => (await counts()).rows >= emitted, 60_000)
      .catch(async (error) => {
        throw new Error(`${error}: ${JSON.stringify(await counts())} of ${emitted}`);
      });
    // Redeliveries after the kills come after the ack wait (4 s): give them time to (not) duplicate.
    await sleep(4_500);
    assertEquals(await counts(), { rows: emitted, distinct: emitted }, "rows = distinct ids = published");

    // The floor is global: every message at or below a row's floor had all its rows sent before that row.
    const lastSeq = stream.state.last_seq;
    const sentBySeq = new Float64Array(lastSeq + 1).fill(-1);
    for (
      const row of await ch.query<{ s: number; t: string }>(
        sql`SELECT stream_seq AS s, max(ingested_at_ms) AS t FROM ${raw} GROUP BY stream_seq`,
      )
    ) {
      sentBySeq[Number(row.s)] = Number(row.t);
    }
    // Every message of the stream has rows (this test publishes nothing else), and the latest send up to s.
    const sentUpTo = new Float64Array(lastSeq + 1);
    for (let s = 1; s <= lastSeq; s++) {
      assert(sentBySeq[s] >= 0, `message ${s} has no rows`);
      sentUpTo[s] = Math.max(sentUpTo[s - 1], sentBySeq[s]);
    }
    const floors = await ch.query<{ f: number; t: string; rows: string }>(
      sql`SELECT ingest_floor_seq AS f, min(ingested_at_ms) AS t, count() AS rows FROM ${raw}
        GROUP BY ingest_floor_seq`,
    );
    const violations: string[] = [];
    let rowsAboveZero = 0;
    for (const { f, t, rows } of floors) {
      if (Number(f) === 0) continue;
      rowsAboveZero += Number(rows);
      assert(Number(f) <= lastSeq, `floor ${f} beyond the stream's last sequence ${lastSeq}`);
      if (sentUpTo[Number(f)] > Number(t)) {
        violations.push(
          `floor ${f} on a row sent at ${t}, but a message at or below it was sent at ${sentUpTo[Number(f)]}`,
        );
      }
    }
    assertEquals(violations.slice(0, 10), [], "no row's floor passes an uncommitted message");
    assert(rowsAboveZero > emitted / 2, `floors advanced: ${rowsAboveZero} rows carry one`);
    // Markers (service ''): their end_ts is the server's now() when the marker was written.
    const markerFloor = async () => {
      const markers = await ch.query<{ f: string; s: number }>(
        sql`SELECT maxMerge(ingest_floor_seq) AS f, toUInt32(end_ts) AS s
          FROM ${ident(database, "latency_profile_1s")} WHERE service = '' GROUP BY ingest_batch_seq, end_ts`,
      );
      let highest = 0;
      for (const { f, s } of markers) {
        const floor = Number(f);
        highest = Math.max(highest, floor);
        if (floor > 0 && floor <= lastSeq && sentUpTo[floor] >= (Number(s) + 1) * 1000) {
          violations.push(
            `marker floor ${floor} at second ${s}, but a message below was sent at ${sentUpTo[floor]}`,
          );
        }
      }
      return highest;
    };
    // Idle: every partition caught up, so the floor reaches the stream's last sequence.
    await eventually("markers carry the stream's last sequence", async () => await markerFloor() >= lastSeq);
    assertEquals(violations.slice(0, 10), [], "no marker's floor passes an uncommitted message");

    // Teeth: a floor per partition (the highest batch of the row's own partition sent a second earlier)
    // fails the same check, because a killed worker's messages stayed uncommitted meanwhile.
    const partitionOf = new Int8Array(lastSeq + 1).fill(-1);
    const reader = await jetstream(nc).consumers.get(REQUEST_EVENTS_STREAM, {
      headers_only: true,
      deliver_policy: DeliverPolicy.All,
    });
    for (let seen = 0; seen < lastSeq;) {
      for await (const m of await reader.fetch({ max_messages: 1000, expires: 2_000 })) {
        partitionOf[m.seq] = Number(m.subject.split(".")[3]);
        seen++;
      }
    }
    const batches = await ch.query<{ b: number; t: string; s: number }>(
      sql`SELECT ingest_batch_seq AS b, min(ingested_at_ms) AS t, any(stream_seq) AS s FROM ${raw}
        GROUP BY ingest_batch_seq ORDER BY t`,
    );
    const own = new Array<number>(PARTITIONS).fill(0);
    let wouldFail = 0;
    let j = 0;
    for (const batch of batches) {
      const t = Number(batch.t);
      while (j < batches.length && Number(batches[j].t) < t - 1000) {
        const p = partitionOf[Number(batches[j].s)];
        own[p] = Math.max(own[p], Number(batches[j].b));
        j++;
      }
      const f = own[partitionOf[Number(batch.s)]];
      if (f > 0 && sentUpTo[f] > t) wouldFail++;
    }
    console.log(
      `partitions: ${emitted} events in ${messages} messages (${perPartition.join("/")} per partition), ` +
        `${batches.length} batches; a per-partition floor would have failed the check ${wouldFail} times`,
    );
    assert(wouldFail > 0, "the check would catch a floor of one partition");

    if (profiler) {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const check = await checkDerived(ch, database, WINDOWS);
        if (check.differences.length === 0) {
          assert(check.compared.percentiles > 0, "percentile rows compared");
          console.log(`partitions: derived numbers equal the raw rows ${JSON.stringify(check.compared)}`);
          break;
        }
        if (Date.now() > deadline) {
          throw new Error(`windows differ from the raw rows:\n${check.differences.join("\n")}`);
        }
        await sleep(2_000);
      }
    } else {
      console.log(
        "partitions: the profiler is not built (native/profiler/scripts/build): windows not checked",
      );
    }
    for (const worker of workers) assertEquals(await worker!.stop("SIGTERM"), 0, "a graceful stop exits 0");
    const lines = (await Promise.all(
      [...Deno.readDirSync(logDir)].filter((entry) => entry.name.startsWith("worker-")).map((entry) =>
        Deno.readTextFile(`${logDir}/${entry.name}`)
      ),
    )).join("\n").split("\n");
    const said = (text: string) => lines.filter((line) => line.includes(text)).length;
    console.log(
      `partitions: after the kills, ${
        said("recreated the durable consumer")
      } durables recreated at their ack ` +
        `floor + 1, ${said("skipped rows already in the table")} groups found already inserted, ` +
        `${said("looking again")} rollup repairs that waited for other workers' INSERTs`,
    );
    if (Deno.env.get("PARTITION_TEST_KEEP_LOGS")) {
      console.log(`logs kept in ${logDir}`);
      return;
    }
  } catch (error) {
    const logs: string[] = [];
    for (const entry of Deno.readDirSync(logDir)) {
      const text = await Deno.readTextFile(`${logDir}/${entry.name}`).catch(() => "");
      logs.push(`--- ${entry.name}\n${text.split("\n").slice(-15).join("\n")}`);
    }
    console.error(logs.join("\n"));
    throw error;
  } finally {
    for (const sink of sinks) await sink.close(1_000).catch(() => {});
    for (const worker of workers) await worker?.stop("SIGKILL").catch(() => {});
    await profiler?.stop("SIGTERM").catch(() => {});
    await nc.close();
    if (!Deno.env.get("PARTITION_TEST_KEEP_LOGS")) {
      await Deno.remove(logDir, { recursive: true }).catch(() => {});
    }
  }
});

Deno.test("partitions over an older stream, a rebuild, and back to one worker: every event once", async () => {
  await using nats = await startNatsServer();
  await using clickhouse = await startClickHouseServer();
  const database = uniqueDatabase("partitions_rebuild");
  const ch = createClickHouse({ url: clickhouse.url, ...CLICKHOUSE_ADMIN });
  await applyMigrations({ clickhouse: ch, database });
  const nc = await connect({ servers: nats.url });
  const jsm = await jetstreamManager(nc);
  const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };
  const config = (partitions: number, partition: number) =>
    loadConfig(testEnv(nats.url, clickhouse.url, CLICKHOUSE_ADMIN.password, database, {
      INGEST_PARTITIONS: String(partitions),
      INGEST_PARTITION: String(partition),
      INGEST_MIGRATE_ON_START: "false",
      INGEST_BATCH_MAX: "500",
    }));
  const drain = (partitions: number, partition: number) =>
    createIngestWorker({ config: config(partitions, partition), logger: quiet, mode: "drain" }).run();
  const rows = async () => {
    const [row] = await ch.query<{ rows: string; distinct: string }>(
      sql`SELECT count() AS rows, uniqExact(event_id) AS distinct FROM ${ident(database, "request_events")}`,
    );
    return { rows: Number(row.rows), distinct: Number(row.distinct) };
  };
  const publishPartitioned = async (count: number, partitions: number) => {
    const sink = createEventSink({
      service: "orders",
      nats: nats.url,
      capacity: 100_000,
      concurrency: 4096,
      eventsPerMessage: 20,
      publishIntervalMs: 2,
      partitions,
      logger: quiet,
      metrics: createRegistry(),
    });
    try {
      for (let i = 0; i < count; i++) {
        const event = makeEvent(i);
        sink.emit({ ...event, service: "orders" });
        if (i % 100 === 99) await sleep(3);
      }
      assert(await sink.flush(20_000), "published");
    } finally {
      await sink.close(2_000);
    }
  };
  try {
    // Before 2026-12: a stream of unpartitioned subjects, one worker, events on events.requests.<service>.
    await applyRequestEventsStream(nc, { subjects: ["events.requests.*"] });
    await publishEvents(nc, Array.from({ length: 600 }, (_, i) => makeEvent(i)));
    // This version's worker reads events.requests.>: it waits, not ready, until the setup step widens the
    // stream (a superset: nothing it holds changes), then reads it without a filter.
    const waiting = createIngestWorker({ config: config(1, 0), logger: quiet });
    const running = waiting.run();
    await eventually(
      "waiting for the setup step",
      () => /do not cover events\.requests\.>/.test(waiting.readiness().reason),
      20_000,
    );
    waiting.stop();
    await running;
    assertEquals(await applyRequestEventsStream(nc), "updated");
    assertEquals((await drain(1, 0)).rowsInserted, 600);
    await publishEvents(nc, Array.from({ length: 300 }, (_, i) => makeEvent(i))); // an old publisher
    await publishPartitioned(1_000, 2);
    const p0 = await drain(2, 0);
    const p1 = await drain(2, 1);
    assertEquals(p0.rowsInserted + p1.rowsInserted, 1_300, "partition 0 took the unpartitioned ones too");
    assert(p1.rowsInserted > 300 && p1.rowsInserted < 700, `partition 1: ${p1.rowsInserted}`);
    assertEquals(await rows(), { rows: 1_900, distinct: 1_900 });
    const zero = await jsm.consumers.info(REQUEST_EVENTS_STREAM, "tailwatch-ingest");
    assertEquals(zero.config.filter_subjects, ["events.requests.*", "events.requests.*.0"]);

    // A rebuild with two partitions: every durable deleted, one worker replays everything, partition 1's
    // durable made again after the replay; the partitions then have nothing left to read.
    const before = await projectionCounts(ch, database);
    const rebuilt = await rebuild(config(2, 0), quiet, { force: true });
    assertEquals(rebuilt.replay.rowsInserted, 1_900);
    assertEquals(rebuilt.after, before, "counts after the rebuild");
    const last = (await jsm.streams.info(REQUEST_EVENTS_STREAM)).state.last_seq;
    const one = await jsm.consumers.info(REQUEST_EVENTS_STREAM, "tailwatch-ingest-1");
    assertEquals([one.config.opt_start_seq, one.config.filter_subject], [last + 1, "events.requests.*.1"]);
    assertEquals((await drain(2, 0)).rowsInserted + (await drain(2, 1)).rowsInserted, 0, "nothing again");

    // Back to one worker while partition 1 has messages it never took: the base durable, now reading every
    // subject, starts at the lowest ack floor of the durables that read them (partition 1's).
    await publishPartitioned(400, 2);
    assertEquals((await drain(2, 0)).rowsInserted > 0, true);
    const single = await drain(1, 0);
    assertEquals(await rows(), { rows: 2_300, distinct: 2_300 }, "partition 1's messages too, once");
    assert(single.rowsInserted > 0 && single.rowsInserted < 400, `one worker took ${single.rowsInserted}`);
    assertEquals((await rollupDifferences(ch, database)).differences, []);

    // Two partition counts at once (INGEST_PARTITIONS changed without stopping the old workers): a worker
    // whose subjects a live worker of another durable reads waits, not ready, until that one is gone.
    const live = createIngestWorker({ config: config(2, 1), logger: quiet });
    const liveRun = live.run();
    await eventually("partition 1 consuming", () => live.ready(), 30_000);
    const whole = createIngestWorker({ config: config(1, 0), logger: quiet });
    const wholeRun = whole.run();
    try {
      await eventually(
        "one worker for everything waits for partition 1's",
        () => /tailwatch-ingest-1 reads some of the same subjects/.test(whole.readiness().reason),
        30_000,
      );
      live.stop();
      await liveRun;
      await eventually("then it consumes", () => whole.ready(), 60_000);
    } finally {
      live.stop();
      whole.stop();
      await Promise.all([liveRun, wholeRun]);
    }
  } finally {
    await nc.close();
  }
});
