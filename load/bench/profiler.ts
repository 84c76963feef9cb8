/**
 * The profiler's benchmarks, measured in one run (called by `./dev bench` through load/bench/main.ts, or alone:
 * `deno run -A load/bench/profiler.ts [--quick] [--migrations-through=N]`):
 *
 *  1. In memory (google-benchmark, `profiler_bench`): values recorded per second into one histogram, merges
 *     per second (dense 58 KiB histogram; one sparse second at 1000 rps added and removed), one steady-state
 *     tick at 1000 rps for a 10 s and a 300 s window.
 *  2. Against a real, private clickhouse-server filled with 310 s of events at 1000 rps over 6 methods of 3
 *     services, log-normal durations, rollups filled by the materialized views, inserted as the ingest worker
 *     does (one INSERT per batch, every row stamped with the batch's ingest_batch_seq and the floor of the
 *     batch before it), and, while the daemons run, fed live in the same way (a batch every 250 ms of the
 *     requests that completed in it), so that each steady tick reads the batches that arrived since the last
 *     one (and the one before them, not final yet):
 *     - steady-state ticks of the daemon with `--windows 10` and then with `--windows 300`, each daemon alone,
 *       at one tick per second, its statements logged (system.query_log): each tick's wall time (read +
 *       compute, and its INSERT) as the daemon logs it with `--log-timing`, and the process's CPU per tick
 *       (from /proc/<pid>/schedstat), after its first (cold) ticks. Ratio 300 s / 10 s, target <= 1.5. The
 *       300 s daemon's ticks are broken down: the SELECT's round trip, parsing, compute, rows and bytes read,
 *       ClickHouse's CPU for the SELECT and for the INSERT.
 *     - the 300 s daemon again as in production (no query log, no timing log): the whole clickhouse-server
 *       process's CPU per tick (all its threads: the SELECT, the INSERT, the Buffer's flushes into
 *       latency_percentiles_storage, merges), minus what the server takes in as long without a profiler but
 *       with the live feed running (the lower of two measurements, before and after), and the profiler's CPU
 *       per tick.
 *     - one Buffer flush of a flush period's rows (a tick's rows copied into latency_percentiles once per tick
 *       of the period, then OPTIMIZE, which flushes it in the query's own thread), ClickHouse's CPU:
 *       amortized over the ticks of one flush period next to the SELECT and the INSERT.
 *     - a profiler tick vs ClickHouse computing exact quantiles over the same 300 s of raw rows, two ways:
 *       "per method" (quantilesExact(0.5, 0.9, 0.95, 0.99, 0.999) and count() GROUP BY service, method: what
 *       this bench measured until 2026-12-02) and "like for like" (the tick's outputs: count, errors, max and
 *       the five quantiles per (service, method) AND per whole service, GROUP BY service, method WITH
 *       ROLLUP, which also computes the all-services row). Wall times (medians) next to the 300 s daemon's
 *       steady tick (with and without its INSERT) and the cold tick (`--once --windows 300`); CPU:
 *       ClickHouse's per exact query (query log; and the server process, measured as for the ticks) against
 *       the tick's. Target: tick >= 10x cheaper.
 *       Both by completion second (migration 0009's end second), as the profiler's windows count.
 */
import {
  CLICKHOUSE_ADMIN,
  type ClickHouseServer,
  seededRandom,
  spawnLogged,
  startClickHouseServer,
  waitUntil,
} from "@tailwatch/testing";
import { applyMigrations } from "@tailwatch/ingest/migrations";
import { cpuSeconds, stealMeter } from "../processes.ts";
import { connectionFlags, profilerBinaries } from "@tailwatch/profiler";

const RPS = 1000;
const FILL_BACK_S = 310;

/** [service, method, share of the traffic, median µs, log-space sigma] */
const METHODS: Array<[string, string, number, number, number]> = [
  ["catalog", "/catalog.v1.CatalogService/GetProduct", 0.4, 800, 0.6],
  ["catalog", "/catalog.v1.CatalogService/ListProducts", 0.15, 2000, 0.7],
  ["orders", "/orders.v1.OrderService/CreateOrder", 0.15, 12000, 0.8],
  ["orders", "/orders.v1.OrderService/GetOrder", 0.1, 1000, 0.6],
  ["payments", "/payments.v1.PaymentService/Charge", 0.15, 5000, 0.9],
  ["payments", "/payments.v1.PaymentService/Refund", 0.05, 3000, 0.7],
];

interface BenchEntry {
  name: string;
  real_time: number;
  time_unit: string;
  items_per_second?: number;
  iterations: number;
  run_type?: string;
}

interface Snapshot {
  timing: {
    read_ms: number;
    http_ms: number;
    parse_ms: number;
    compute_ms: number;
    insert_ms: number;
    response_bytes: number;
    rows: number;
    histogram_rows: number;
    from: number;
    to: number;
    batches: number;
  };
  rows: unknown[];
}

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
const round = (value: number, digits = 3) => Number(value.toPrecision(digits));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function googleBenchmark(bench: string, quick: boolean) {
  const output = await new Deno.Command(bench, {
    args: ["--benchmark_format=json", `--benchmark_min_time=${quick ? 0.1 : 0.5}`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!output.success) {
    throw new Error(`profiler_bench failed: ${new TextDecoder().decode(output.stderr)}`);
  }
  const report = JSON.parse(new TextDecoder().decode(output.stdout)) as { benchmarks: BenchEntry[] };
  const find = (name: string) => {
    const entry = report.benchmarks.find((b) => b.name === name);
    if (!entry) throw new Error(`profiler_bench reported no ${name}`);
    return entry;
  };
  const toUs = (entry: BenchEntry) =>
    entry.real_time * ({ ns: 1e-3, us: 1, ms: 1e3, s: 1e6 }[entry.time_unit] ?? NaN);
  const tick10Us = toUs(find("BM_Tick/10"));
  const tick300Us = toUs(find("BM_Tick/300"));
  return {
    recordValuesPerSecond: round(find("BM_Record").items_per_second ?? NaN),
    mergeDensePerSecond: round(find("BM_MergeDense").items_per_second ?? NaN),
    /** merge + subtract of one sparse second at 1000 rps into a 300 000-value window; each counts one. */
    mergeSparseSecondPerSecond: round(find("BM_MergeSubtractSparseSecond").items_per_second ?? NaN),
    quantiles5Ns: round(toUs(find("BM_Quantiles5")) * 1e3),
    tick10sUs: round(tick10Us),
    tick300sUs: round(tick300Us),
    tickDefaultWindowsUs: round(toUs(find("BM_TickDefaultWindows"))),
    tick300sOver10s: round(tick300Us / tick10Us),
  };
}

/** The second a request completed in, as migration 0009 computes latency_profile_1s.end_ts. */
const END_SECOND = "intDiv(ts_ms, 1000) + intDiv(ts_ms % 1000 * 1000 + duration_us, 1000000)";

/**
 * Requests as the ingest worker writes them: each call to `batch` is one INSERT of the requests that
 * completed in [fromMs, toMs) at RPS, every row stamped with the batch's sequence (increasing) and the floor
 * of the batch before it (the worker's committed floor when it sends an INSERT).
 */
class Ingest {
  private seq = 0;
  private random = seededRandom(1);
  private cumulative: number[] = [];
  private total = 0;
  constructor(private clickhouse: ClickHouseServer, private database: string) {
    for (const [, , share] of METHODS) this.cumulative.push(this.total += share);
  }
  private normal(): number {
    return Math.sqrt(-2 * Math.log(1 - this.random())) * Math.cos(2 * Math.PI * this.random());
  }
  async batch(fromMs: number, toMs: number): Promise<void> {
    const count = Math.round((toMs - fromMs) * RPS / 1000);
    if (count <= 0) return;
    const seq = ++this.seq;
    const lines: string[] = [];
    for (let i = 0; i < count; i++) {
      const pick = this.random() * this.total;
      const [service, method, , medianUs, sigma] = METHODS[this.cumulative.findIndex((c) => pick < c)];
      const durationUs = Math.max(1, Math.round(medianUs * Math.exp(sigma * this.normal())));
      const endMs = fromMs + this.random() * (toMs - fromMs);
      const startMs = Math.floor(endMs - durationUs / 1000);
      lines.push(JSON.stringify({
        ts: Math.floor(startMs / 1000),
        ts_ms: startMs,
        service,
        method,
        protocol: "grpc",
        grpc_code: this.random() < 0.01 ? 14 : 0,
        duration_us: durationUs,
        ingest_batch_seq: seq,
        ingest_floor_seq: seq - 1,
      }));
    }
    await this.clickhouse.query(
      `INSERT INTO ${this.database}.request_events FORMAT JSONEachRow\n${lines.join("\n")}`,
    );
  }
  /** The requests of [from, to) (unix seconds), one batch per second. */
  async fill(from: number, to: number): Promise<void> {
    for (let s = from; s < to; s++) await this.batch(s * 1000, (s + 1) * 1000);
  }
  /**
   * From `fromMs` on, a batch every 250 ms of what completed since the last one, until stopped. The batches
   * go in at 125, 375, 625 and 875 ms past each second, between the daemons' ticks (at whole seconds): an
   * INSERT and its views running under a tick's SELECT on 2 cores doubled that tick's wall time, at random.
   */
  live(fromMs: number): { stop(): Promise<number> } {
    let stopped = false;
    let batches = 0;
    /** Stops the loop (once; later calls wait for it too) and returns how many batches it inserted. */
    const loop = (async () => {
      let last = fromMs;
      while (!stopped) {
        await sleep(250 - ((Date.now() + 125) % 250));
        const now = Date.now();
        await this.batch(last, now);
        batches++;
        last = now;
      }
    })();
    return {
      async stop() {
        stopped = true;
        await loop;
        return batches;
      },
    };
  }
}

function schedstatNs(pid: number): number {
  return Number(Deno.readTextFileSync(`/proc/${pid}/schedstat`).split(" ")[0]);
}

/**
 * The requests that completed in [from, to): the primary key (start second) narrows the read to the starts
 * that can complete there (every request of the fill lasts less than a minute), the end second selects.
 */
function completedIn(from: number, to: number): string {
  return `ts >= toDateTime(${from - 60}) AND ts < toDateTime(${to}) AND ${END_SECOND} >= ${from}
    AND ${END_SECOND} < ${to}`;
}

/** The per-method exact query the bench ran until 2026-12-02: count and quantiles per (service, method). */
function exactPerMethodSql(database: string, from: number, to: number): string {
  return `SELECT service, method, count(), quantilesExact(0.5, 0.9, 0.95, 0.99, 0.999)(duration_us)
    FROM ${database}.request_events WHERE ${completedIn(from, to)}
    GROUP BY service, method FORMAT TSV`;
}

/**
 * The tick's outputs computed exactly: count, errors, max and the five quantiles per (service, method) and
 * per whole service. WITH ROLLUP is the cheapest way 18.16 has to get both from one scan (measured on this
 * machine: 51 ms of ClickHouse CPU, against 55 ms for per-method states merged per service through an ARRAY
 * JOIN, 84 ms for a UNION ALL of two GROUP BYs, 108 ms for rows doubled with ARRAY JOIN); it also computes
 * the all-services row (service ''), which the tick does not.
 */
function exactLikeForLikeSql(database: string, from: number, to: number): string {
  return `SELECT service, method, count(), countIf(grpc_code != 0), max(duration_us),
      quantilesExact(0.5, 0.9, 0.95, 0.99, 0.999)(duration_us)
    FROM ${database}.request_events WHERE ${completedIn(from, to)}
    GROUP BY service, method WITH ROLLUP FORMAT TSV`;
}

export async function runProfilerBench(options: { quick: boolean }): Promise<Record<string, unknown>> {
  const { quick } = options;
  const started = performance.now();
  const steal = stealMeter();
  const { profiler, bench } = await profilerBinaries();
  const memory = await googleBenchmark(bench, quick);

  const logDir = await Deno.makeTempDir({ prefix: "tailwatch-profiler-bench-" });
  await using _logs = { [Symbol.asyncDispose]: () => Deno.remove(logDir, { recursive: true }) };
  await using clickhouse = await startClickHouseServer();
  const database = `tw_bench_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  await applyMigrations({ url: clickhouse.url, ...CLICKHOUSE_ADMIN, database });
  const serverPid = clickhouse.pid;
  if (serverPid === undefined) throw new Error("clickhouse-server has no pid");
  /** clickhouse-server's CPU (user + system, ms), every thread, those that ended included. */
  const serverCpuMs = () => cpuSeconds(serverPid) * 1000;
  const connection = connectionFlags(
    clickhouse.url,
    CLICKHOUSE_ADMIN.username,
    CLICKHOUSE_ADMIN.password,
    database,
  );
  // latency_percentiles is a Buffer in front of latency_percentiles_storage since migration 0007.
  const createQuery = (await clickhouse.query(
    `SELECT create_table_query FROM system.tables
     WHERE database = '${database}' AND name = 'latency_percentiles' FORMAT TSVRaw`,
  )).trim();
  const bufferArgs = /ENGINE = Buffer\(([^)]*)\)/.exec(createQuery)?.[1].split(",").map((a) => a.trim());
  const buffered = bufferArgs !== undefined;
  const storageTable = buffered ? bufferArgs[1] : "latency_percentiles";
  /** Ticks per Buffer flush: the oldest row is flushed once more than max_time whole seconds old. */
  const ticksPerFlush = buffered ? Number(bufferArgs[4]) + 1 : 1;
  // The daemons' statements are logged (system.query_log, with ClickHouse's CPU time per query); one daemon
  // runs at a time, so a time range tells them apart: their feed reads by their text, their INSERTs by the
  // query id the profiler gives them (tailwatch-profiler-<database>-<version>).
  const daemonConnection = connectionFlags(
    `${clickhouse.url}/?log_queries=1`,
    CLICKHOUSE_ADMIN.username,
    CLICKHOUSE_ADMIN.password,
    database,
  );
  const feedReads = "query LIKE 'SELECT ingest_batch_seq%'";
  const daemonInserts = `query_id LIKE 'tailwatch-profiler-${database}-%'`;
  /** ClickHouse's CPU (user + system, ms) of each finished statement matching `where` in [since, until]. */
  const clickhouseCpuMs = async (where: string, since: number, until = Infinity): Promise<number[]> => {
    await clickhouse.query("SYSTEM FLUSH LOGS");
    const text = await clickhouse.query(
      `SELECT (ProfileEvents.Values[indexOf(ProfileEvents.Names, 'UserTimeMicroseconds')] +
               ProfileEvents.Values[indexOf(ProfileEvents.Names, 'SystemTimeMicroseconds')]) / 1000
       FROM system.query_log
       WHERE type = 2 AND ${where} AND event_time >= toDateTime(${Math.floor(since)})
         ${Number.isFinite(until) ? `AND event_time <= toDateTime(${Math.ceil(until)})` : ""} FORMAT TSV`,
    );
    return text.split("\n").filter(Boolean).map(Number);
  };
  const post = async (sql: string, params = "", data?: Uint8Array<ArrayBuffer>) => {
    const response = await fetch(`${clickhouse.url}/${params}`, {
      method: "POST",
      body: data === undefined ? sql : new Blob([sql, "\n", data]),
      headers: {
        "X-ClickHouse-User": CLICKHOUSE_ADMIN.username,
        "X-ClickHouse-Key": CLICKHOUSE_ADMIN.password,
      },
    });
    const bytes = new Uint8Array(await response.arrayBuffer());
    if (!response.ok) throw new Error(`ClickHouse ${response.status}: ${new TextDecoder().decode(bytes)}`);
    return bytes;
  };

  const steadyTicks = quick ? 8 : 30;
  /** The uninstrumented 300 s daemon runs longer: its count of Buffer flushes varies by one either way. */
  const productionTicks = quick ? 12 : 62;
  const idleSeconds = quick ? 4 : 10;
  const repeats = quick ? 3 : 7;
  const t0 = Math.floor(Date.now() / 1000);
  const fillStarted = performance.now();
  const ingest = new Ingest(clickhouse, database);
  await ingest.fill(t0 - FILL_BACK_S, t0);
  const fillSeconds = (performance.now() - fillStarted) / 1000;
  // The fill's hundreds of parts merged now, as they would have been by the time such data is minutes old,
  // so that merging them does not run under the measurements.
  for (const table of ["request_events", "request_stats_1s", "latency_profile_1s"]) {
    await clickhouse.query(`OPTIMIZE TABLE ${database}.${table} FINAL`);
  }
  const mergesDone = async () => {
    await waitUntil(
      "merges finished",
      async () =>
        (await clickhouse.query(`SELECT count() FROM system.merges WHERE database = '${database}'`))
          .trim() === "0",
      60_000,
      200,
    );
  };
  await mergesDone();
  const rawRows = Number(
    (await clickhouse.query(
      `SELECT count() FROM ${database}.request_events WHERE ${completedIn(t0 - 300, t0)}`,
    ))
      .trim(),
  );
  // From here on, requests keep arriving as ingest writes them, until the daemons are done (and the live
  // feed is stopped on any failure too).
  const feed = ingest.live(t0 * 1000);
  await using _feed = { [Symbol.asyncDispose]: async () => void await feed.stop() };

  // 1. Steady-state daemon ticks, 10 s and 300 s windows, one daemon after the other (each alone, as in
  //    production, where one daemon runs: two daemons side by side would tick at the same whole second and
  //    each tick's SELECT would wait for the other's on 2 cores). The data are uniform, so both see alike.
  const ticksWritten = async (window: number) =>
    Number(
      (await clickhouse.query(
        `SELECT uniqExact(ts) FROM ${database}.latency_percentiles WHERE window_s = ${window}`,
      )).trim(),
    );
  const daemonResults: Record<
    string,
    {
      ticks: number;
      cpuMsPerTick: number;
      tickMs: number[];
      fullTickMs: number[];
      timings: Snapshot["timing"][];
      steadySince: number;
      steadyUntil: number;
    }
  > = {};
  const between = async () => await sleep(1500 - (Date.now() % 1000));
  for (const window of [10, 300]) {
    const process = await spawnLogged(
      profiler,
      [
        ...daemonConnection,
        "--windows",
        String(window),
        "--tick",
        "1s",
        "--settle",
        "1s",
        "--log-timing",
      ],
      `${logDir}/daemon-${window}.log`,
    );
    try {
      // Past the cold first tick (and one more), then sample between ticks (ticks run at whole seconds).
      await waitUntil(
        `daemon ${window}s: first ticks`,
        async () => (await ticksWritten(window)) >= 2,
        30_000,
      );
      await between();
      const steadySince = Date.now() / 1000;
      const before = { cpu: schedstatNs(process.pid), ticks: await ticksWritten(window) };
      await sleep(steadyTicks * 1000);
      await between();
      const ticks = (await ticksWritten(window)) - before.ticks;
      const cpuNs = schedstatNs(process.pid) - before.cpu;
      daemonResults[`${window}s`] = {
        ticks,
        cpuMsPerTick: round(cpuNs / 1e6 / Math.max(ticks, 1)),
        tickMs: [],
        fullTickMs: [],
        timings: [],
        steadySince,
        steadyUntil: Date.now() / 1000,
      };
    } finally {
      await process.stop("SIGTERM");
    }
    // Each tick's wall time as the daemon logged it (--log-timing): read + compute, past the first two ticks.
    const ticks = (await process.log()).split("\n").filter((line) => line.startsWith('{"now"'))
      .map((line) => JSON.parse(line) as { timing: Snapshot["timing"] });
    daemonResults[`${window}s`].timings = ticks.slice(2).map((t) => t.timing);
    daemonResults[`${window}s`].tickMs = ticks.slice(2).map((t) => t.timing.read_ms + t.timing.compute_ms);
    daemonResults[`${window}s`].fullTickMs = ticks.slice(2).map((t) =>
      t.timing.read_ms + t.timing.compute_ms + t.timing.insert_ms
    );
    if (daemonResults[`${window}s`].tickMs.length === 0) throw new Error(`daemon ${window}s logged no ticks`);
  }
  // A tick's ClickHouse CPU from the query log: its SELECT and its INSERT of the percentile rows (medians;
  // the INSERT's mean too: an INSERT that finds the Buffer's oldest row due flushes it in its own thread).
  const d300 = daemonResults["300s"];
  const tickSelectCpu = await clickhouseCpuMs(feedReads, d300.steadySince, d300.steadyUntil);
  const tickInsertCpu = await clickhouseCpuMs(daemonInserts, d300.steadySince, d300.steadyUntil);
  const tick10SelectCpu = await clickhouseCpuMs(
    feedReads,
    daemonResults["10s"].steadySince,
    daemonResults["10s"].steadyUntil,
  );

  // The live feed stops here: its inserts cost the server 150-200 ms of CPU a second (measured), thirty
  // times a tick, and vary by more than a tick: what the server spends per tick cannot be told apart from
  // them. The production daemon below goes on reading the feed, which now brings nothing new (the last
  // batch, never passed by a floor, is read again each tick, as when ingest is idle).
  const liveBatches = await feed.stop();
  await mergesDone();

  // 2. The 300 s daemon as in production: no query log, no timing log. The whole server's CPU per tick
  //    (SELECT, INSERT, Buffer flushes, merges; everything) minus the idle server's over as long.
  const settle = async () => {
    await clickhouse.query("SYSTEM FLUSH LOGS");
    if (buffered) await clickhouse.query(`OPTIMIZE TABLE ${database}.latency_percentiles`);
    await sleep(1000);
  };
  const idleCpuMsPerSecond = async () => {
    const cpu = serverCpuMs();
    const since = performance.now();
    await sleep(idleSeconds * 1000);
    return (serverCpuMs() - cpu) / ((performance.now() - since) / 1000);
  };
  await settle();
  const idleBefore = await idleCpuMsPerSecond();
  const production = await spawnLogged(
    profiler,
    [...connection, "--windows", "300", "--tick", "1s", "--settle", "1s"],
    `${logDir}/daemon-production.log`,
  );
  let productionResult;
  try {
    const written = () => ticksWritten(300);
    const start = await written();
    await waitUntil("production daemon: first ticks", async () => (await written()) >= start + 2, 30_000);
    await between();
    const since = performance.now();
    const sinceUnix = Math.floor(Date.now() / 1000);
    const before = {
      server: serverCpuMs(),
      profiler: schedstatNs(production.pid),
      ticks: await written(),
    };
    await sleep(productionTicks * 1000);
    await between();
    const ticks = (await written()) - before.ticks;
    const serverMs = serverCpuMs() - before.server;
    const profilerMs = (schedstatNs(production.pid) - before.profiler) / 1e6;
    const seconds = (performance.now() - since) / 1000;
    const flushes = Number(
      (await clickhouse.query(
        `SELECT count() FROM system.parts WHERE database = '${database}' AND table = '${storageTable}'
           AND level = 0 AND modification_time >= toDateTime(${sinceUnix})`,
      )).trim(),
    );
    productionResult = { ticks, seconds, serverMs, profilerMs, partsWritten: flushes };
  } finally {
    await production.stop("SIGTERM");
  }
  await settle();
  const idleAfter = await idleCpuMsPerSecond();
  // The lower of the two: an idle measurement can only be raised by merges still running, and what it
  // leaves out is counted against the tick.
  const idleMsPerSecond = Math.min(idleBefore, idleAfter);
  const serverCpuMsPerTick = (productionResult.serverMs - idleMsPerSecond * productionResult.seconds) /
    Math.max(productionResult.ticks, 1);
  const productionProfilerMsPerTick = productionResult.profilerMs / Math.max(productionResult.ticks, 1);

  // 3. One Buffer flush of a flush period's rows: a steady tick's rows (from the storage, where the
  //    daemons' rows are now) inserted ticksPerFlush times, then OPTIMIZE, which flushes in its own thread.
  const flushCpu: number[] = [];
  let rowsPerTick = 0;
  if (buffered) {
    const tickTs = Number(
      (await clickhouse.query(
        `SELECT toUInt32(max(ts)) FROM ${database}.latency_percentiles WHERE window_s = 300`,
      )).trim(),
    );
    rowsPerTick = Number(
      (await clickhouse.query(
        `SELECT count() FROM ${database}.latency_percentiles WHERE ts = toDateTime(${tickTs})`,
      )).trim(),
    );
    // The tick's rows as the profiler sends them (RowBinary), inserted as data: an INSERT ... SELECT from the
    // storage into its own Buffer once ran for minutes at full CPU on 18.16 here.
    const tickRows = await post(
      `SELECT * FROM ${database}.latency_percentiles WHERE ts = toDateTime(${tickTs}) FORMAT RowBinary`,
    );
    const flushSince = Date.now() / 1000 - 1;
    const flushId = `${database}_flush`;
    for (let round = 0; round < (quick ? 3 : 5); round++) {
      for (let i = 0; i < ticksPerFlush; i++) {
        await post(`INSERT INTO ${database}.latency_percentiles FORMAT RowBinary`, "", tickRows);
      }
      await post(`OPTIMIZE TABLE ${database}.latency_percentiles`, `?log_queries=1&query_id=${flushId}`);
    }
    flushCpu.push(...await clickhouseCpuMs(`query_id = '${flushId}' AND query LIKE 'OPTIMIZE%'`, flushSince));
  }

  // 4. A profiler tick vs ClickHouse's exact quantiles over the same 300 s of raw rows.
  const once = async (windows: string): Promise<Snapshot> => {
    const output = await new Deno.Command(profiler, {
      args: [...connection, "--windows", windows, "--once", "--json", "--now", String(t0)],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!output.success) throw new Error(`profiler --once: ${new TextDecoder().decode(output.stderr)}`);
    return JSON.parse(new TextDecoder().decode(output.stdout)) as Snapshot;
  };
  const exact = {
    perMethod: { sql: exactPerMethodSql(database, t0 - 300, t0), rows: METHODS.length },
    likeForLike: { sql: exactLikeForLikeSql(database, t0 - 300, t0), rows: METHODS.length + 3 + 1 },
  };
  type ExactKind = keyof typeof exact;
  const kinds = Object.keys(exact) as ExactKind[];
  const exactMs: Record<ExactKind, number[]> = { perMethod: [], likeForLike: [] };
  const coldMs: number[] = [];
  let coldHistogramRows = 0;
  await once("300"); // warm-up: page cache, connections
  for (const kind of kinds) await clickhouse.query(exact[kind].sql);
  for (let i = 0; i < repeats; i++) {
    const cold = await once("300");
    coldMs.push(cold.timing.read_ms + cold.timing.compute_ms);
    coldHistogramRows = cold.timing.histogram_rows;
    for (const kind of kinds) {
      const start = performance.now();
      const text = await clickhouse.query(exact[kind].sql);
      exactMs[kind].push(performance.now() - start);
      const lines = text.trim().split("\n").length;
      if (lines !== exact[kind].rows) throw new Error(`exact ${kind}: ${lines} rows: ${text}`);
    }
  }
  // CPU: the same exact queries again (not timed), logged with ClickHouse's CPU time per run; and run back to
  // back unlogged, the server process's CPU per query minus the idle server's.
  const exactCpu = {} as Record<ExactKind, { queryLog: number; process: number }>;
  for (const kind of kinds) {
    const since = Date.now() / 1000 - 1;
    const queryId = `${database}_exact_${kind}`;
    for (let i = 0; i < repeats; i++) await post(exact[kind].sql, `?log_queries=1&query_id=${queryId}`);
    const queryLog = median(await clickhouseCpuMs(`query_id = '${queryId}'`, since));
    await sleep(500);
    const cpu = serverCpuMs();
    const start = performance.now();
    const runs = 2 * repeats;
    for (let i = 0; i < runs; i++) await post(exact[kind].sql);
    const seconds = (performance.now() - start) / 1000;
    exactCpu[kind] = {
      queryLog,
      process: (serverCpuMs() - cpu - idleMsPerSecond * seconds) / runs,
    };
  }

  const steady = daemonResults["300s"].timings;
  const breakdown = {
    httpMs: round(median(steady.map((t) => t.http_ms))),
    parseMs: round(median(steady.map((t) => t.parse_ms))),
    computeMs: round(median(steady.map((t) => t.compute_ms))),
    insertMs: round(median(steady.map((t) => t.insert_ms))),
    responseBytes: median(steady.map((t) => t.response_bytes)),
    rows: median(steady.map((t) => t.rows)),
    histogramEntries: median(steady.map((t) => t.histogram_rows)),
    batchesRead: median(steady.map((t) => t.batches)),
  };

  const steadyTickMs = median(daemonResults["300s"].tickMs);
  const steadyFullTickMs = median(daemonResults["300s"].fullTickMs);
  const steadyTick10Ms = median(daemonResults["10s"].tickMs);
  const coldMedianMs = median(coldMs);
  const cpu10 = daemonResults["10s"].cpuMsPerTick;
  const cpu300 = daemonResults["300s"].cpuMsPerTick;
  const selectCpuMs = median(tickSelectCpu);
  const insertCpuMs = median(tickInsertCpu);
  const insertCpuMeanMs = tickInsertCpu.reduce((a, b) => a + b, 0) / Math.max(tickInsertCpu.length, 1);
  const flushCpuMs = flushCpu.length > 0 ? median(flushCpu) : 0;
  const flushPerTickMs = flushCpuMs / ticksPerFlush;
  /** The tick's CPU as the query log splits it: SELECT + INSERT + its share of a flush + the profiler. */
  const tickCpuQueryLog = selectCpuMs + insertCpuMs + flushPerTickMs + cpu300;
  /** The tick's CPU as the processes count it (production flags): the whole server + the profiler. */
  const tickCpuProcess = serverCpuMsPerTick + productionProfilerMsPerTick;
  /** Without the INSERT (the accounting of this bench until 2026-11-30): SELECT + the profiler. */
  const tickCpuWithoutInsert = selectCpuMs + cpu300;
  const versus = (kind: ExactKind) => {
    const wall = median(exactMs[kind]);
    return {
      exactMs: { median: round(wall), runs: exactMs[kind].map((v) => round(v)) },
      exactCpuMs: { queryLog: round(exactCpu[kind].queryLog), process: round(exactCpu[kind].process) },
      /** Wall: the whole steady tick (read + compute + INSERT, as the daemon logged it). */
      overSteadyTick: round(wall / steadyFullTickMs),
      /** Wall without the INSERT (read + compute). */
      overSteadyTickReadCompute: round(wall / steadyTickMs),
      overColdTick: round(wall / coldMedianMs),
      /** CPU, query-log accounting: exact query / (SELECT + INSERT + flush share + profiler). */
      cpuOverTickQueryLog: round(exactCpu[kind].queryLog / tickCpuQueryLog),
      /** CPU, process accounting: server CPU per exact query / (server CPU per tick + profiler). */
      cpuOverTickProcess: round(exactCpu[kind].process / tickCpuProcess),
      /** CPU without the INSERT: exact query / (SELECT + profiler). */
      cpuOverTickWithoutInsert: round(exactCpu[kind].queryLog / tickCpuWithoutInsert),
    };
  };
  const vs = { perMethod: versus("perMethod"), likeForLike: versus("likeForLike") };

  const result = {
    quick,
    inMemory: memory,
    clickhouse: {
      rps: RPS,
      methods: METHODS.length,
      filledSeconds: FILL_BACK_S,
      fillSeconds: round(fillSeconds),
      /** Batches the live feed inserted while the logged daemons ran (one every 250 ms). */
      liveBatches,
      rawRowsIn300s: rawRows,
      latencyPercentiles: buffered ? `Buffer(${bufferArgs.join(", ")})` : "MergeTree",
    },
    steadyTick1000rps: {
      daemonCpuMsPerTick: { window10s: cpu10, window300s: cpu300 },
      daemonTicksMeasured: { window10s: daemonResults["10s"].ticks, window300s: daemonResults["300s"].ticks },
      /** Target <= 1.5: CPU of the profiler process per steady tick (its ClickHouse reads are identical). */
      window300sOver10sCpu: round(cpu300 / cpu10),
      /** Wall: median of the daemon's own per-tick read + compute time (--log-timing). */
      steadyTickMs: { window10s: round(steadyTick10Ms), window300s: round(steadyTickMs) },
      window300sOver10sWall: round(steadyTickMs / steadyTick10Ms),
      clickhouseSelectCpuMs: { window10s: round(median(tick10SelectCpu)), window300s: round(selectCpuMs) },
      target: 1.5,
    },
    tickVsQuantilesExact300s: {
      repeats,
      /** The 300 s daemon's steady ticks, as it logged them: read + compute (without its INSERT). */
      steadyTickMs: { median: round(steadyTickMs), ticks: daemonResults["300s"].tickMs.length },
      /** The same ticks with their INSERT of the percentile rows: the whole tick. */
      steadyTickWithInsertMs: { median: round(steadyFullTickMs) },
      coldTickMs: {
        median: round(coldMedianMs),
        runs: coldMs.map((v) => round(v)),
        histogramRows: coldHistogramRows,
      },
      /**
       * Medians over the 300 s daemon's steady ticks: the SELECT's round trip, parsing, advance + snapshot,
       * the INSERT's round trip.
       */
      steadyTickBreakdown: breakdown,
      /** A steady tick's CPU (ms), two accountings. */
      tickCpuMs: {
        /** system.query_log (log_queries on), medians; the INSERT's mean includes flushes in its thread. */
        clickhouseSelect: round(selectCpuMs),
        clickhouseInsert: round(insertCpuMs),
        clickhouseInsertMean: round(insertCpuMeanMs),
        /** One OPTIMIZE (Buffer flush) of ticksPerFlush ticks' rows, and its share per tick. */
        bufferFlush: round(flushCpuMs),
        bufferFlushPerTick: round(flushPerTickMs),
        ticksPerFlush: buffered ? ticksPerFlush : 0,
        rowsPerTick,
        profiler: cpu300,
        totalQueryLog: round(tickCpuQueryLog),
        /** The production-flag daemon: the whole server per tick minus idle, the profiler per tick. */
        process: {
          server: round(serverCpuMsPerTick),
          profiler: round(productionProfilerMsPerTick),
          total: round(tickCpuProcess),
          ticks: productionResult.ticks,
          storagePartsWritten: productionResult.partsWritten,
          serverIdleMsPerSecond: { before: round(idleBefore), after: round(idleAfter) },
        },
        withoutInsert: round(tickCpuWithoutInsert),
      },
      /** "likeForLike" computes what the tick writes (per method and per service); "perMethod" less. */
      exact: vs,
      target: 10,
    },
    seconds: round((performance.now() - started) / 1000),
    /** Share of the machine's CPU time the hypervisor gave to other tenants during the run (0..1). */
    stealShare: round(steal()),
  };
  const line = (name: string, v: ReturnType<typeof versus>) =>
    `  exact ${name}: ${v.exactMs.median} ms wall, CPU ${v.exactCpuMs.queryLog} ms (query log) / ` +
    `${v.exactCpuMs.process} ms (process); tick cheaper by: wall ${v.overSteadyTick}x with its INSERT, ` +
    `${v.overSteadyTickReadCompute}x without; CPU ${v.cpuOverTickQueryLog}x (query log), ` +
    `${v.cpuOverTickProcess}x (process), ${v.cpuOverTickWithoutInsert}x without the INSERT; cold tick ` +
    `${v.overColdTick}x`;
  console.log(
    [
      `profiler bench${quick ? " (quick)" : ""}: latency_percentiles ${result.clickhouse.latencyPercentiles}`,
      `  record ${
        (memory.recordValuesPerSecond / 1e6).toFixed(0)
      } M values/s into one histogram; merges/s: ` +
      `dense ${(memory.mergeDensePerSecond / 1e6).toFixed(2)} M, sparse second ` +
      `${(memory.mergeSparseSecondPerSecond / 1e6).toFixed(2)} M`,
      `  steady tick at ${RPS} rps, 300 s vs 10 s window: daemon CPU ${cpu300} vs ${cpu10} ms/tick = ` +
      `${result.steadyTick1000rps.window300sOver10sCpu}x; wall (logged by the daemons) ${
        round(steadyTickMs)
      } vs ` +
      `${round(steadyTick10Ms)} ms = ${result.steadyTick1000rps.window300sOver10sWall}x; in memory ` +
      `${memory.tick300sUs} vs ${memory.tick10sUs} us = ${memory.tick300sOver10s}x (target <= 1.5)`,
      `  steady tick (300 s window): wall ${round(steadyFullTickMs)} ms with its INSERT, ${
        round(steadyTickMs)
      } ms without; cold tick ${round(coldMedianMs)} ms`,
      `  breakdown (medians): SELECT round trip ${breakdown.httpMs} ms (${breakdown.rows} rows, ` +
      `${breakdown.histogramEntries} bucket entries, ${breakdown.responseBytes} B, ${breakdown.batchesRead} ` +
      `batches), parse ${breakdown.parseMs} ms, compute ${breakdown.computeMs} ms, INSERT round trip ` +
      `${breakdown.insertMs} ms`,
      `  tick CPU, query log: ClickHouse SELECT ${round(selectCpuMs)} + INSERT ${round(insertCpuMs)} (mean ` +
      `${round(insertCpuMeanMs)}) + flush ${round(flushCpuMs)}/${buffered ? ticksPerFlush : 0} = ` +
      `${round(flushPerTickMs)} + profiler ${cpu300} = ${round(tickCpuQueryLog)} ms; process (production ` +
      `flags, ${productionResult.ticks} ticks, ${productionResult.partsWritten} storage parts): server ${
        round(serverCpuMsPerTick)
      } + profiler ${round(productionProfilerMsPerTick)} = ${round(tickCpuProcess)} ms`,
      line("per method (as before)", vs.perMethod),
      line("like for like (per method and per service)", vs.likeForLike),
      `  ${result.seconds} s, hypervisor steal ${
        (result.stealShare * 100).toFixed(1)
      } % of the machine's CPU`,
    ].join("\n"),
  );
  return result;
}

if (import.meta.main) {
  const result = await runProfilerBench({ quick: Deno.args.includes("--quick") });
  console.log(JSON.stringify(result, null, 2));
}
