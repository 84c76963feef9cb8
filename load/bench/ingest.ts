/**
 * Ingest benchmark: `deno run -A load/bench/ingest.ts [--quick]` (or `runIngestBench({ quick })` from ./dev bench).
 *
 * On private nats-server and clickhouse-server instances, in one run:
 *   1. fills REQUEST_EVENTS with INGEST_BENCH_EVENTS events (default 1,000,000; 200,000 quick) by pipelined
 *      publishes (plain publish with a reply inbox and Nats-Msg-Id, acks counted on the inbox),
 *   2. jetstream_fetch_ack_per_s: raw consume-and-ack rate of a plain consumer (no decode, no insert),
 *   3. clickhouse_insert_rows_per_s: raw INSERT rate of prepared RowBinary bodies (the worker's bytes) in
 *      batches of the worker's size into the same schema (materialized views included), insert time only,
 *   4. ingest_events_per_s: the worker with its defaults (or INGEST_BATCH_MAX, INGEST_BATCH_WAIT_MS,
 *      INGEST_MAX_ACK_PENDING from the environment), in drain mode, from ready to fully drained, in a
 *      process of its own as in production (bench_worker.ts; so are 5's),
 *   5. freshness at 1000 rps through the services: catalog, payments and orders as processes, ghz drives
 *      orders.CreateOrder at 1000 rps for 30 s (10 s quick) with the worker following; then, over every row
 *      of that phase, the p50, p99 and max of ingested_at_ms - ts_ms (event start → INSERT sent; see
 *      migration 0004) and of visible_at - ts_ms, where visible_at is when the INSERT carrying the row
 *      returned (the worker's onInserted hook, matched by ingested_at_ms): from then on a SELECT sees it.
 * Returns the numbers (also printed as one JSON line on stdout) and prints a human summary on stderr.
 */
import { toBinary } from "@bufbuild/protobuf";
import { AckPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, createInbox, headers } from "@nats-io/transport-node";
import { RequestEventSchema } from "@tailwatch/proto/events/v1";
import {
  CLICKHOUSE_ADMIN,
  type ManagedProcess,
  readStreamMessages,
  spawnLogged,
  startClickHouseServer,
  startNatsServer,
  waitUntil,
} from "@tailwatch/testing";
import { applyRequestEventsStream } from "@tailwatch/nats";
import {
  EventScanner,
  eventsOfMessage,
  INSERT_COLUMNS,
  REQUEST_EVENTS_STREAM,
  requestEventSubject,
  ROW_FORMAT,
} from "@tailwatch/events";
import { CREATE_ORDER_BODY, runGhz } from "../ghz.ts";
import { cpuSeconds, machineCpu, startStackProcesses } from "../processes.ts";
import { appendEvent, createClickHouse, type IngestStats, loadConfig, RowWriter } from "@tailwatch/ingest";
import { applyMigrations } from "@tailwatch/ingest/migrations";
import { ident, sql } from "@tailwatch/ingest/sql";
import { makeEvent } from "@tailwatch/ingest/testing";
import type { BenchWorkerResult } from "./ingest_worker.ts";

const round = (n: number) => Math.round(n);

/** CPU time (user + system, all threads, in µs) a process has used so far. */
const cpuMicros = (pid: number) => cpuSeconds(pid) * 1e6;

/** The pid of the one process whose command line contains `needle` (the private servers of this run). */
function pidWithCommandLine(needle: string): number {
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`).replaceAll("\0", " ");
      if (cmdline.includes(needle)) return Number(entry.name);
    } catch {
      // gone meanwhile
    }
  }
  throw new Error(`ingest bench: no process with ${JSON.stringify(needle)} in its command line`);
}

/**
 * CPU µs per event of the Deno process doing the work (this one, or the worker's), nats-server and
 * clickhouse-server over one phase, and of every other process on the machine (`others`, from /proc/stat;
 * this one apart as `bench` when the worker is another), and the share of the machine's CPU time the
 * hypervisor gave to other tenants (`steal_share`, 0..1): the machine is shared, and a phase during which
 * others took CPU, or the host took it away, is not a quiet measurement.
 */
interface CpuPerEvent {
  /** The Deno process doing the phase's work: the bench's own, or the worker's (bench_worker.ts). */
  deno: number;
  nats: number;
  clickhouse: number;
  /** The bench's own process while the worker runs in another (it waits, and collects its garbage). */
  bench?: number;
  others: number;
  steal_share: number;
}

const micros = (seconds: number) => seconds * 1e6;
const share = (part: number, whole: number) => whole > 0 ? Math.round(part / whole * 1000) / 1000 : 0;

function cpuMeter(
  pids: { nats: number; clickhouse: number; deno?: number },
): (events: number) => CpuPerEvent {
  const denoPid = pids.deno ?? Deno.pid;
  const benchApart = denoPid !== Deno.pid;
  const read = () => ({
    deno: cpuMicros(denoPid),
    nats: cpuMicros(pids.nats),
    clickhouse: cpuMicros(pids.clickhouse),
    bench: benchApart ? cpuMicros(Deno.pid) : 0,
    ...machineCpu(),
  });
  const before = read();
  return (events) => {
    const after = read();
    const delta = (key: keyof typeof before) => after[key] - before[key];
    const per = (us: number) => Math.round(us / events * 10) / 10;
    return {
      deno: per(delta("deno")),
      nats: per(delta("nats")),
      clickhouse: per(delta("clickhouse")),
      ...(benchApart ? { bench: per(delta("bench")) } : {}),
      others: per(
        Math.max(
          0,
          micros(delta("busy")) - delta("deno") - delta("nats") - delta("clickhouse") - delta("bench"),
        ),
      ),
      steal_share: share(delta("steal"), delta("total")),
    };
  };
}
const BENCH_WORKER = new URL("./ingest_worker.ts", import.meta.url).pathname;

/** Starts bench_worker.ts with exactly the worker variables in `env` (not this process's environment). */
async function startBenchWorker(
  mode: "drain" | "follow",
  env: Record<string, string>,
  logDir: string,
): Promise<ManagedProcess> {
  return await spawnLogged(
    Deno.execPath(),
    ["run", "-A", BENCH_WORKER, mode],
    `${logDir}/worker-${mode}.log`,
    {
      env: { BENCH_WORKER_ENV: JSON.stringify(env) },
    },
  );
}

/** The first line `{"<kind>": ...}` the bench worker printed; fails when it exits without one, or on timeout. */
async function workerReport(
  worker: ManagedProcess,
  kind: "ready" | "done" | "result",
  timeoutMs = 600_000,
): Promise<Record<string, unknown>> {
  const find = async () => {
    const line = (await worker.log()).split("\n").find((l) => l.startsWith(`{"${kind}":`));
    return line === undefined ? undefined : JSON.parse(line) as Record<string, unknown>;
  };
  let report: Record<string, unknown> | undefined;
  const exitedFirst = worker.status.then(async (status) => {
    report ??= await find();
    if (report === undefined) {
      throw new Error(
        `bench worker exited (code ${status.code}) before reporting "${kind}": ${
          (await worker.log()).slice(-2000)
        }`,
      );
    }
  });
  await Promise.race([
    // Every 10 ms: the CPU meters start when "ready" is seen.
    waitUntil(`bench worker: "${kind}"`, async () => (report ??= await find()) !== undefined, timeoutMs, 10),
    exitedFirst,
  ]);
  return report!;
}

/** SIGTERM (the worker has reported: it exits) and a clean exit. */
async function stopBenchWorker(worker: ManagedProcess): Promise<void> {
  const code = await worker.stop("SIGTERM", 60_000);
  if (code !== 0) {
    throw new Error(`bench worker exited with code ${code}: ${(await worker.log()).slice(-2000)}`);
  }
}

/** Worker settings the bench takes from its own environment when set (default: the worker's defaults). */
const BATCHING_VARIABLES = ["INGEST_BATCH_MAX", "INGEST_BATCH_WAIT_MS", "INGEST_MAX_ACK_PENDING"] as const;

/**
 * Takes a phase's database out of the way of the next phase: DETACH (no more merges, nothing deleted), not
 * DROP. A DROP deletes thousands of part files at once, and on an ext4 without a journal (these machines)
 * every file created in the following minutes then skips those recently deleted inodes one by one (perf:
 * ext4_create -> find_inode_bit -> recently_deleted, the largest share of clickhouse-server's CPU while it
 * writes parts; INSERTs of 250 rows took up to 2-4 s after a DROP): the next phase would measure the DROP.
 * The files go with the server's directory at the end.
 */
async function setAside(ch: ReturnType<typeof createClickHouse>, database: string): Promise<void> {
  await ch.exec(sql`DETACH DATABASE ${ident(database)}`);
}

export interface IngestBenchResult {
  quick: boolean;
  events: number;
  publish_events_per_s: number;
  publish_seconds: number;
  jetstream_fetch_ack_per_s: number;
  clickhouse_insert_rows_per_s: number;
  ingest_events_per_s: number;
  ingest_seconds: number;
  ingest_batches: number;
  ingest_rows_inserted: number;
  /** ingest rate / min(raw JetStream, raw ClickHouse); target ≥ 0.5. */
  ingest_vs_slower_raw: number;
  /** CPU µs per event of each process during the raw JetStream phase, the raw INSERT phase and the worker. */
  cpu_us_per_event_fetch_ack: CpuPerEvent;
  cpu_us_per_event_insert: CpuPerEvent;
  cpu_us_per_event_ingest: CpuPerEvent;
  load_rps: number;
  load_seconds: number;
  load_requests: number;
  load_ok: number;
  load_events: number;
  load_rows: number;
  load_distinct_events: number;
  freshness_sent_p50_ms: number;
  freshness_sent_p99_ms: number;
  freshness_sent_max_ms: number;
  insert_max_ms: number;
  freshness_visible_p50_ms: number;
  freshness_visible_p99_ms: number;
  freshness_visible_max_ms: number;
  /**
   * p50 / p99 / max (ms) of each leg of start → visible: start → stored in JetStream (the services and their
   * publisher; from the message's stream timestamp), stored → received by the worker (the pull path), received
   * → INSERT sent (batching, decoding, waiting for the batch before), INSERT sent → returned.
   */
  freshness_legs_ms: Record<"stored" | "received" | "batched" | "insert", [number, number, number]>;
  total_seconds: number;
}

export async function runIngestBench(options: { quick?: boolean } = {}): Promise<IngestBenchResult> {
  const quick = options.quick ?? false;
  const benchStart = performance.now();
  const total = Number(Deno.env.get("INGEST_BENCH_EVENTS") ?? (quick ? 200_000 : 1_000_000));
  const loadSeconds = quick ? 10 : 30;
  const loadRps = 1000;
  await using nats = await startNatsServer();
  await using clickhouse = await startClickHouseServer();
  const nc = await connect({ servers: nats.url });
  const pids = {
    nats: pidWithCommandLine(` -m ${nats.monitorPort} `),
    clickhouse: pidWithCommandLine(`--config-file=${clickhouse.dir}/config.xml`),
  };
  const ch = createClickHouse({ url: clickhouse.url, ...CLICKHOUSE_ADMIN, timeoutMs: 120_000 });
  const logDir = await Deno.makeTempDir({ prefix: "tailwatch-ingest-bench-" });
  try {
    await applyRequestEventsStream(nc, { duplicateWindowS: 60 });
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);

    // 1. Fill the stream: pipelined publishes, at most `window` awaiting their ack.
    const payloads: Uint8Array[] = [];
    const publishStart = performance.now();
    {
      const window = 20_000;
      const inbox = createInbox();
      let acked = 0;
      let failed = "";
      let wake: (() => void) | undefined;
      const sub = nc.subscribe(`${inbox}.*`, {
        callback: (_error, msg) => {
          const body = msg.data.length > 0 ? new TextDecoder().decode(msg.data) : "";
          if (!body.includes('"seq"')) failed ||= body || "empty ack";
          acked++;
          wake?.();
        },
      });
      const waitFor = async (target: number) => {
        const deadline = Date.now() + 60_000;
        while (acked < target && !failed) {
          if (Date.now() > deadline) throw new Error(`publish acks: ${acked} of ${target} after 60 s`);
          await new Promise<void>((resolve) => {
            wake = resolve;
            setTimeout(resolve, 1_000);
          });
          wake = undefined;
        }
        if (failed) throw new Error(`a publish was refused: ${failed}`);
      };
      for (let i = 0; i < total; i++) {
        // Started just now, as a service's events are when published: with the bench stream's 60 s duplicate
        // window, an event stored more than 30 s after its start is a possible retry past the window and its
        // batch is checked by id (ingest/README.md, "Exactly once"); back-dating the fill (as before
        // 2026-12-07: 1 ms apart, 1000 s for the full run) sent every batch down that path.
        const event = makeEvent(i, Date.now() - 2);
        const payload = toBinary(RequestEventSchema, event);
        payloads.push(payload);
        const h = headers();
        h.set("Nats-Msg-Id", event.eventId);
        nc.publish(requestEventSubject(event.service), payload, { headers: h, reply: `${inbox}.${i}` });
        if (i + 1 - acked >= window) await waitFor(i + 1 - window / 2);
      }
      await waitFor(total);
      sub.unsubscribe();
    }
    const publishSeconds = (performance.now() - publishStart) / 1000;
    const streamed = (await jsm.streams.info(REQUEST_EVENTS_STREAM)).state.messages;
    if (streamed !== total) throw new Error(`ingest bench: the stream holds ${streamed} of ${total} events`);

    // 2. Raw JetStream consume-and-ack.
    await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
      durable_name: "bench-raw",
      ack_policy: AckPolicy.Explicit,
      max_ack_pending: 40_000,
    });
    const rawConsumer = await js.consumers.get(REQUEST_EVENTS_STREAM, "bench-raw");
    let acked = 0;
    const fetchCpu = cpuMeter(pids);
    const fetchStart = performance.now();
    let allAcked = () => {};
    const rawDone = new Promise<void>((resolve) => allAcked = resolve);
    const rawMessages = await rawConsumer.consume({
      max_messages: 20_000,
      callback: (msg) => {
        msg.ack();
        if (++acked === total) allAcked();
      },
    });
    await rawDone;
    await nc.flush();
    const fetchSeconds = (performance.now() - fetchStart) / 1000;
    const cpuFetchAck = fetchCpu(total);
    rawMessages.stop(); // no pull requests left running during the next phases
    await jsm.consumers.delete(REQUEST_EVENTS_STREAM, "bench-raw");

    // The worker's settings: its defaults, or what this process's environment sets for the batching knobs
    // (to measure another batch size with the same harness).
    const baseEnv = {
      NATS_URL: nats.url,
      CLICKHOUSE_URL: clickhouse.url,
      CLICKHOUSE_USER: CLICKHOUSE_ADMIN.username,
      CLICKHOUSE_PASSWORD: CLICKHOUSE_ADMIN.password,
      INGEST_RETENTION_INTERVAL_S: "0",
      ...Object.fromEntries(
        BATCHING_VARIABLES.flatMap((name) => {
          const value = Deno.env.get(name);
          return value === undefined ? [] : [[name, value]];
        }),
      ),
    };
    const batchMax = loadConfig(baseEnv).batchMax;

    // 3. Raw ClickHouse inserts of prepared bodies into the same schema, in the worker's batch size.
    await applyMigrations({ clickhouse: ch, database: "bench_raw" });
    let insertSeconds = 0;
    let insertDeno = 0;
    let insertClickHouse = 0;
    let insertMachine = 0;
    let insertSteal = 0;
    let insertTotal = 0;
    const scanner = new EventScanner();
    for (let i = 0; i < total; i += batchMax) {
      const writer = new RowWriter();
      for (let j = i; j < Math.min(total, i + batchMax); j++) {
        appendEvent(scanner, payloads[j], j + 1, () => writer);
      }
      writer.stamp({ ingestedAtMs: Date.now(), batchSeq: Math.min(total, i + batchMax), floorSeq: i });
      const [deno0, clickhouse0, machine0] = [cpuMicros(Deno.pid), cpuMicros(pids.clickhouse), machineCpu()];
      const t0 = performance.now();
      await ch.insertBody(
        { database: "bench_raw", table: "request_events" },
        INSERT_COLUMNS,
        ROW_FORMAT,
        writer.body(),
      );
      insertSeconds += (performance.now() - t0) / 1000;
      insertDeno += cpuMicros(Deno.pid) - deno0;
      insertClickHouse += cpuMicros(pids.clickhouse) - clickhouse0;
      const machine1 = machineCpu();
      insertMachine += micros(machine1.busy - machine0.busy);
      insertSteal += machine1.steal - machine0.steal;
      insertTotal += machine1.total - machine0.total;
    }
    payloads.length = 0;
    await setAside(ch, "bench_raw");
    const perEvent = (us: number) => Math.round(us / total * 10) / 10;
    const cpuInsert = {
      deno: perEvent(insertDeno),
      nats: 0, // idle: not read in this phase
      clickhouse: perEvent(insertClickHouse),
      others: perEvent(Math.max(0, insertMachine - insertDeno - insertClickHouse)),
      steal_share: share(insertSteal, insertTotal),
    };

    // 4. The worker (its defaults unless the environment sets a batching variable), drain mode.
    //    In a process of its own, as in production (bench_worker.ts says why).
    await applyMigrations({ clickhouse: ch, database: "bench_ingest" });
    const drainer = await startBenchWorker(
      "drain",
      { ...baseEnv, CLICKHOUSE_DATABASE: "bench_ingest" },
      logDir,
    );
    const readyAt = Number((await workerReport(drainer, "ready", 60_000)).ready);
    const ingestCpu = cpuMeter({ ...pids, deno: drainer.pid });
    const drained = await workerReport(drainer, "done");
    const cpuIngest = ingestCpu(total);
    await stopBenchWorker(drainer);
    const stats = drained.stats as IngestStats;
    const ingestSeconds = (Number(drained.done) - readyAt) / 1000;
    const [count] = await ch.query<{ n: string }>(
      sql`SELECT count() AS n FROM ${ident("bench_ingest", "request_events")}`,
    );
    if (Number(count.n) !== total) throw new Error(`ingest bench: ${count.n} rows for ${total} events`);
    await setAside(ch, "bench_ingest");

    // 5. Freshness at 1000 rps through the services, the worker following.
    await jsm.streams.purge(REQUEST_EVENTS_STREAM);
    const latencyDb = "bench_latency";
    await applyMigrations({ clickhouse: ch, database: latencyDb });
    const follower = await startBenchWorker("follow", {
      ...baseEnv,
      CLICKHOUSE_DATABASE: latencyDb,
      INGEST_DURABLE: "bench-latency",
    }, logDir);
    const load = await (async () => {
      const serviceEnv = { NATS_URL: nats.url };
      await using stack = await startStackProcesses(serviceEnv, logDir);
      const { orders } = stack;
      await workerReport(follower, "ready", 30_000);
      return await runGhz({
        call: "orders.v1.OrderService/CreateOrder",
        target: `127.0.0.1:${orders.grpcPort}`,
        data: CREATE_ORDER_BODY,
        rps: loadRps,
        total: loadRps * loadSeconds,
        concurrency: 50,
      });
    })(); // the services are stopped (SIGTERM: their buffers flushed) here
    // Counted in the stream's messages, each one event or a RequestEventBatch of several.
    const loadEvents = (await readStreamMessages(nats.url, REQUEST_EVENTS_STREAM))
      .reduce((sum, message) => sum + eventsOfMessage(message.data, message.eventCount).length, 0);
    const rowsOf = async () => {
      const [row] = await ch.query<{ n: string; d: string }>(
        sql`SELECT count() AS n, uniqExact(event_id) AS d FROM ${ident(latencyDb, "request_events")}`,
      );
      return { rows: Number(row.n), distinct: Number(row.d) };
    };
    await waitUntil(
      "every load event in ClickHouse",
      async () => (await rowsOf()).rows >= loadEvents,
      120_000,
    );
    await stopBenchWorker(follower);
    const followed = await workerReport(follower, "done");
    const seen = (await workerReport(follower, "result")).result as BenchWorkerResult;
    const insertMaxMs = Math.ceil((followed.stats as IngestStats).insertMsMax);
    /** INSERT send time (= the rows' ingested_at_ms) → the time it returned. */
    const insertDoneAt = new Map(seen.inserted);
    /** Stream sequence → [when JetStream stored it, when the worker received it] (epoch ms). */
    const receivedAt = new Map(seen.received.map(([seq, storedAt, at]) => [seq, [storedAt, at] as const]));
    const rows = await rowsOf();
    // Per row: start → INSERT sent (ingested_at_ms - ts_ms), start → visible (its INSERT returned - ts_ms).
    const loadRows = await ch.query<{ ts_ms: string; ingested_at_ms: string; stream_seq: string }>(
      sql`SELECT ts_ms, ingested_at_ms, stream_seq FROM ${ident(latencyDb, "request_events")}`,
      { timeoutMs: 120_000 },
    );
    const sent: number[] = [];
    const visible: number[] = [];
    /** The legs of start → visible: start → stored in JetStream → received by the worker → INSERT sent → returned. */
    const legs = {
      stored: [] as number[],
      received: [] as number[],
      batched: [] as number[],
      insert: [] as number[],
    };
    for (const row of loadRows) {
      const ingestedAt = Number(row.ingested_at_ms);
      const doneAt = insertDoneAt.get(ingestedAt);
      if (doneAt === undefined) throw new Error(`ingest bench: no INSERT was sent at ${ingestedAt}`);
      const ts = Number(row.ts_ms);
      sent.push(ingestedAt - ts);
      visible.push(doneAt - ts);
      const [storedAt, gotAt] = receivedAt.get(Number(row.stream_seq)) ?? [NaN, NaN];
      legs.stored.push(storedAt - ts);
      legs.received.push(gotAt - storedAt);
      legs.batched.push(ingestedAt - gotAt);
      legs.insert.push(doneAt - ingestedAt);
    }
    const quantile = (values: number[], q: number) => {
      const sorted = values.toSorted((a, b) => a - b);
      return sorted.length === 0
        ? NaN
        : sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
    };

    const slowerRaw = Math.min(total / fetchSeconds, total / insertSeconds);
    const result: IngestBenchResult = {
      quick,
      events: total,
      publish_events_per_s: round(total / publishSeconds),
      publish_seconds: Math.round(publishSeconds * 100) / 100,
      jetstream_fetch_ack_per_s: round(total / fetchSeconds),
      clickhouse_insert_rows_per_s: round(total / insertSeconds),
      ingest_events_per_s: round(total / ingestSeconds),
      ingest_seconds: Math.round(ingestSeconds * 100) / 100,
      ingest_batches: stats.batches,
      ingest_rows_inserted: stats.rowsInserted,
      ingest_vs_slower_raw: Math.round(total / ingestSeconds / slowerRaw * 100) / 100,
      cpu_us_per_event_fetch_ack: cpuFetchAck,
      cpu_us_per_event_insert: cpuInsert,
      cpu_us_per_event_ingest: cpuIngest,
      load_rps: loadRps,
      load_seconds: loadSeconds,
      load_requests: load.count,
      load_ok: load.statuses["OK"] ?? 0,
      load_events: loadEvents,
      load_rows: rows.rows,
      load_distinct_events: rows.distinct,
      freshness_sent_p50_ms: quantile(sent, 0.5),
      freshness_sent_p99_ms: quantile(sent, 0.99),
      freshness_sent_max_ms: quantile(sent, 1),
      insert_max_ms: insertMaxMs,
      freshness_visible_p50_ms: quantile(visible, 0.5),
      freshness_visible_p99_ms: quantile(visible, 0.99),
      freshness_visible_max_ms: quantile(visible, 1),
      freshness_legs_ms: {
        stored: [quantile(legs.stored, 0.5), quantile(legs.stored, 0.99), quantile(legs.stored, 1)],
        received: [quantile(legs.received, 0.5), quantile(legs.received, 0.99), quantile(legs.received, 1)],
        batched: [quantile(legs.batched, 0.5), quantile(legs.batched, 0.99), quantile(legs.batched, 1)],
        insert: [quantile(legs.insert, 0.5), quantile(legs.insert, 0.99), quantile(legs.insert, 1)],
      },
      total_seconds: Math.round((performance.now() - benchStart) / 100) / 10,
    };
    console.error(summary(result));
    console.log(JSON.stringify(result));
    return result;
  } finally {
    await nc.close();
    await Deno.remove(logDir, { recursive: true }).catch(() => {});
  }
}

function summary(r: IngestBenchResult): string {
  const k = (n: number) => `${(n / 1000).toFixed(1)}k/s`;
  const verdict = (ok: boolean) => ok ? "ok" : "MISSED";
  const cpu = (c: CpuPerEvent) =>
    `${c.deno} + ${c.nats} + ${c.clickhouse} = ${Math.round((c.deno + c.nats + c.clickhouse) * 10) / 10}` +
    ` (${c.bench === undefined ? "" : `bench ${c.bench}, `}others ${c.others}, steal ${
      (c.steal_share * 100).toFixed(1)
    } %)`;
  const ingestOk = r.ingest_events_per_s >= 100_000 && r.ingest_vs_slower_raw >= 0.5;
  return [
    `ingest bench${r.quick ? " (quick)" : ""}: ${r.events} events, ${r.total_seconds} s in all`,
    `  fill (pipelined publish)   ${k(r.publish_events_per_s)} (${r.publish_seconds} s)`,
    `  raw JetStream fetch+ack    ${k(r.jetstream_fetch_ack_per_s)}`,
    `  raw ClickHouse INSERT      ${k(r.clickhouse_insert_rows_per_s)}`,
    `  ingest worker              ${
      k(r.ingest_events_per_s)
    } = ${r.ingest_vs_slower_raw} x the slower raw rate, ` +
    `${r.ingest_batches} batches (target >= 100k/s and >= 0.5 x: ${verdict(ingestOk)})`,
    `  CPU us/event (deno + nats-server + clickhouse-server): fetch+ack ${
      cpu(r.cpu_us_per_event_fetch_ack)
    }, ` +
    `INSERT ${cpu(r.cpu_us_per_event_insert)}, ingest ${cpu(r.cpu_us_per_event_ingest)}`,
    `  ${r.load_rps} rps for ${r.load_seconds} s through the services: ${r.load_requests} requests ` +
    `(${r.load_ok} OK), ${r.load_events} events, ${r.load_rows} rows, ${r.load_distinct_events} distinct`,
    `  event start -> INSERT sent  p50 ${r.freshness_sent_p50_ms} ms, p99 ${r.freshness_sent_p99_ms} ms, ` +
    `max ${r.freshness_sent_max_ms} ms`,
    `  event start -> visible      p50 ${r.freshness_visible_p50_ms} ms, p99 ${r.freshness_visible_p99_ms} ms, ` +
    `max ${r.freshness_visible_max_ms} ms (slowest INSERT ${r.insert_max_ms} ms; target p99 < 1000: ` +
    `${verdict(r.freshness_visible_p99_ms < 1000)})`,
    `  legs p50/p99/max ms: start -> stored ${r.freshness_legs_ms.stored.join("/")}, stored -> received ` +
    `${r.freshness_legs_ms.received.join("/")}, received -> INSERT sent ${
      r.freshness_legs_ms.batched.join("/")
    }, ` +
    `INSERT ${r.freshness_legs_ms.insert.join("/")}`,
  ].join("\n");
}

if (import.meta.main) {
  await runIngestBench({ quick: Deno.args.includes("--quick") });
}
