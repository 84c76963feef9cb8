/**
 * The profiler against a real, private clickhouse-server with the real migrations (ingest/migrations):
 * - the materialized view's SQL bucket expression (latency_profile_1s, 0009) equals the C++ bucket_index over
 *   a sweep of values;
 * - `tailwatch-profiler --once --json` equals exact figures over the raw rows by completion second: count,
 *   errors and max exactly, each quantile the capped midpoint of the exact value's bucket (quantilesExact,
 *   rank floor(q * n)); the same when its reads are split for their size (--max-read-bytes);
 * - `--once --insert` writes exactly its snapshot, with one version, read back as the latest version;
 * - the daemon, fed in waves of raw rows stamped with ingest_batch_seq / ingest_floor_seq as ingest stamps
 *   them (late rows whose windows were already written, one older than its memory; slow requests; a batch
 *   that grows before a floor passes it; a key that only comes late), ends with every latest-version row of
 *   latency_percentiles equal to the exact figures over the raw rows, a row for every window with requests at
 *   every tick it published, and no row stored twice;
 * - the daemon rides out a ClickHouse restart (no row stored twice) and exits 0 on SIGTERM.
 * Binaries: $TAILWATCH_PROFILER_BIN / $TAILWATCH_BUCKETS_BIN (set by ctest), else native/profiler/build,
 * built with scripts/build when missing. A missing binary fails the test.
 */
import {
  assert,
  assertEquals,
  CLICKHOUSE_ADMIN,
  type ClickHouseServer,
  seededRandom,
  startClickHouseServer,
  waitUntil,
} from "@tailwatch/testing";
import { applyMigrations } from "@tailwatch/ingest/migrations";
import { connectionFlags, profilerBinaries } from "../binaries.ts";

async function run(
  cmd: string,
  args: string[],
  stdin?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const output = await child.output();
  const decoder = new TextDecoder();
  return { code: output.code, stdout: decoder.decode(output.stdout), stderr: decoder.decode(output.stderr) };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function normal(random: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}

/** The bucket scheme of buckets.h in BigInt, only to enumerate every bucket's edges. */
function bucketEdges(): bigint[] {
  const values: bigint[] = [];
  for (let i = 0n; i < 128n * 58n; i++) {
    const s = i < 256n ? 0n : i / 128n - 1n;
    const lower = i < 256n ? i : (i - 128n * s) << s;
    const width = 1n << s;
    values.push(lower, lower + width - 1n);
    if (lower > 0n) values.push(lower - 1n);
    if (width > 2n) values.push(lower + width / 2n);
  }
  for (let k = 0n; k < 64n; k++) {
    for (const d of [-2n, -1n, 0n, 1n, 2n]) {
      const v = (1n << k) + d;
      if (v >= 0n && v < 1n << 64n) values.push(v);
    }
  }
  for (let v = 0n; v < 2000n; v++) values.push(v);
  values.push((1n << 64n) - 1n);
  return [...new Set(values)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Bucket index of buckets.h (log-linear, 128 per power of two, exact below 128 us), for v < 2^53. */
function bucketIndex(v: number): number {
  if (v < 128) return v;
  let s = 0;
  while (v >= 2 ** (s + 8)) s++;
  return 128 * s + Math.floor(v / 2 ** s);
}

/** bucket_midpoint of buckets.h: what the profiler reports for a value in bucket i. */
function bucketMidpoint(i: number): number {
  if (i < 256) return i;
  const s = Math.floor(i / 128) - 1;
  return (i - 128 * s) * 2 ** s + Math.floor((2 ** s - 1) / 2);
}

/** The second a request completed in, as migration 0009 computes end_ts. */
const END_SECOND = "intDiv(ts_ms, 1000) + intDiv(ts_ms % 1000 * 1000 + duration_us, 1000000)";
const QUANTILES = [0.5, 0.9, 0.95, 0.99, 0.999];

interface Row {
  ts: number;
  window_s: number;
  service: string;
  method: string;
  count: number;
  errors: number;
  rps: number;
  error_rate: number;
  p50_us: number;
  p90_us: number;
  p95_us: number;
  p99_us: number;
  p999_us: number;
  max_us: number;
  version: number;
  ingest_floor_seq: number;
}

interface Snapshot {
  now: number;
  inserted: boolean;
  version: number;
  timing: { read_ms: number; compute_ms: number; from: number; to: number; reads: number; splits: number };
  rows: Row[];
}

function sqlString(text: string): string {
  return `'${text.replaceAll("\\", "\\\\").replaceAll("'", "\\'")}'`;
}

async function newDatabase(clickhouse: ClickHouseServer, name: string): Promise<string> {
  const database = `${name}_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  await applyMigrations({ url: clickhouse.url, ...CLICKHOUSE_ADMIN, database });
  return database;
}

function connection(clickhouse: ClickHouseServer, database: string): string[] {
  return connectionFlags(clickhouse.url, CLICKHOUSE_ADMIN.username, CLICKHOUSE_ADMIN.password, database);
}

/** The profiler daemon on `database` with `flags` (stderr piped: its log), and its output once it exits. */
function spawnDaemon(profiler: string, clickhouse: ClickHouseServer, database: string, flags: string[]) {
  const child = new Deno.Command(profiler, {
    args: [...connection(clickhouse, database), ...flags],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  return { child, output: child.output() };
}

/** The highest ingest floor the daemon has written into latency_percentiles: how far it has read. */
async function floorWritten(clickhouse: ClickHouseServer, database: string): Promise<number> {
  return Number(
    (await clickhouse.query(`SELECT max(ingest_floor_seq) FROM ${database}.latency_percentiles`)).trim(),
  );
}

/** JSONEachRow lines, numbers as numbers (UInt64 arrive quoted). */
async function jsonRows(clickhouse: ClickHouseServer, query: string): Promise<Record<string, unknown>[]> {
  return (await clickhouse.query(`${query} FORMAT JSONEachRow`)).split("\n").filter(Boolean).map((line) =>
    Object.fromEntries(
      Object.entries(JSON.parse(line)).map((
        [k, v],
      ) => [k, typeof v === "string" && k !== "service" && k !== "method" ? Number(v) : v]),
    )
  );
}

/** The latest version of every latency_percentiles row, as readers take it. */
function latestRows(clickhouse: ClickHouseServer, database: string, where = "1"): Promise<Row[]> {
  return jsonRows(
    clickhouse,
    `SELECT toUInt32(ts) AS ts, window_s, service, method, argMax(count, version) AS count,
            argMax(errors, version) AS errors, argMax(rps, version) AS rps,
            argMax(error_rate, version) AS error_rate, argMax(p50_us, version) AS p50_us,
            argMax(p90_us, version) AS p90_us, argMax(p95_us, version) AS p95_us,
            argMax(p99_us, version) AS p99_us, argMax(p999_us, version) AS p999_us,
            argMax(max_us, version) AS max_us, max(version) AS latest_version,
            argMax(ingest_floor_seq, version) AS ingest_floor_seq
     FROM ${database}.latency_percentiles WHERE ${where}
     GROUP BY ts, window_s, service, method ORDER BY service, method, window_s, ts`,
  ).then((rows) =>
    rows.map(({ latest_version, ...row }) => ({ ...row, version: latest_version }) as unknown as Row)
  );
}

/** count, errors, max and the five quantiles as the profiler must report them; "" for no requests. */
function expectedFigures(count: number, errors: number, max: number, exact: number[]): string {
  const reported = exact.map((v) => Math.min(bucketMidpoint(bucketIndex(v)), max));
  return [count, errors, max, ...reported].join(" ");
}

function writtenFigures(row: Row): string {
  const problems: string[] = [];
  if (Math.abs(row.rps - row.count / row.window_s) > 1e-9 * Math.max(1, row.rps)) {
    problems.push(`rps ${row.rps}`);
  }
  const rate = row.count === 0 ? 0 : row.errors / row.count;
  if (Math.abs(row.error_rate - rate) > 1e-12) problems.push(`error_rate ${row.error_rate}`);
  return [row.count, row.errors, row.max_us, row.p50_us, row.p90_us, row.p95_us, row.p99_us, row.p999_us]
    .join(
      " ",
    ) + (problems.length ? ` (${problems.join(", ")})` : "");
}

/**
 * Every latest-version row of latency_percentiles against the exact figures over the raw rows (requests that
 * completed in [ts - window_s, ts)), and a row for every window with requests at every tick in the range the
 * rows cover. Returns the differences (empty when they agree) and how many rows were compared.
 */
async function differencesFromRaw(
  clickhouse: ClickHouseServer,
  database: string,
  windows: number[],
): Promise<{ differences: string[]; compared: number }> {
  const written = await latestRows(clickhouse, database);
  if (written.length === 0) return { differences: ["no rows written"], compared: 0 };
  const first = Math.min(...written.map((r) => r.ts));
  const last = Math.max(...written.map((r) => r.ts));
  const expected = new Map<string, string>();
  const id = (ts: number, w: number, service: string, method: string) => `${ts} ${w}s ${service}/${method}`;
  for (const w of windows) {
    for (const byService of [false, true]) {
      const rows = await jsonRows(
        clickhouse,
        `SELECT tick, service, ${byService ? "'' AS method" : "method"}, count() AS n,
                countIf(grpc_code != 0) AS errors, max(duration_us) AS max,
                quantilesExact(${QUANTILES.join(", ")})(duration_us) AS q
         FROM (SELECT ${END_SECOND} + 1 + arrayJoin(range(${w})) AS tick, service, method, grpc_code, duration_us
               FROM ${database}.request_events)
         WHERE tick >= ${first} AND tick <= ${last}
         GROUP BY tick, service${byService ? "" : ", method"}`,
      );
      for (const r of rows) {
        expected.set(
          id(Number(r.tick), w, String(r.service), String(r.method)),
          expectedFigures(
            Number(r.n),
            Number(r.errors),
            Number(r.max),
            (r.q as (string | number)[]).map(Number),
          ),
        );
      }
    }
  }
  const differences: string[] = [];
  const seen = new Set<string>();
  for (const row of written) {
    const key = id(row.ts, row.window_s, row.service, row.method);
    seen.add(key);
    const want = expected.get(key) ?? "0 0 0 0 0 0 0 0";
    const got = writtenFigures(row);
    if (got !== want) differences.push(`${key}: wrote ${got}, raw rows give ${want}`);
  }
  for (const key of expected.keys()) {
    if (!seen.has(key)) differences.push(`${key}: no row, raw rows give ${expected.get(key)}`);
  }
  return { differences, compared: written.length };
}

/** Rows stored more than once (same ts, window, key and version). */
async function duplicates(clickhouse: ClickHouseServer, database: string): Promise<number> {
  return Number(
    (await clickhouse.query(
      `SELECT count() FROM (SELECT count() AS c FROM ${database}.latency_percentiles
       GROUP BY ts, window_s, service, method, version HAVING c > 1)`,
    )).trim(),
  );
}

interface Event {
  service: string;
  method: string;
  endMs: number;
  durationUs: number;
  error?: boolean;
}

/** Inserts raw rows as one ingest batch would: every row stamped with the batch's sequence and floor. */
async function insertBatch(
  clickhouse: ClickHouseServer,
  database: string,
  batch: number,
  floor: number,
  events: Event[],
): Promise<void> {
  const lines = events.map((e) => {
    const startMs = Math.floor(e.endMs - e.durationUs / 1000);
    return JSON.stringify({
      ts: Math.floor(startMs / 1000),
      ts_ms: startMs,
      service: e.service,
      method: e.method,
      grpc_code: e.error ? 14 : 0,
      duration_us: e.durationUs,
      ingest_batch_seq: batch,
      ingest_floor_seq: floor,
    });
  });
  await clickhouse.query(`INSERT INTO ${database}.request_events FORMAT JSONEachRow\n${lines.join("\n")}`);
}

/** What ingest writes while idle: a floor marker in latency_profile_1s (ingest/rollups.ts). */
async function insertMarker(clickhouse: ClickHouseServer, database: string, floor: number): Promise<void> {
  await clickhouse.query(
    `INSERT INTO ${database}.latency_profile_1s
       (ingest_batch_seq, end_ts, ts, service, method, requests, errors, duration_max_us, ingest_floor_seq,
        histogramMap.bucket, histogramMap.count)
     SELECT ${floor}, now(), now(), '', '', 0, 0, arrayReduce('maxState', [toUInt64(0)]),
       arrayReduce('maxState', [toUInt64(${floor})]), [], []`,
  );
}

interface TimingLine {
  now: number;
  timing: Record<string, number>;
}

function timingLines(log: string): TimingLine[] {
  return log.split("\n").filter((line) => line.startsWith('{"now"')).map((line) =>
    JSON.parse(line) as TimingLine
  );
}

Deno.test("profiler against a real ClickHouse", async (t) => {
  const { profiler, buckets } = await profilerBinaries();
  await using clickhouse = await startClickHouseServer();

  await t.step("the materialized view's bucket SQL equals the C++ bucket_index", async () => {
    const database = await newDatabase(clickhouse, "tw_buckets");
    const values = bucketEdges();
    const random = seededRandom(7);
    for (let i = 0; i < 3000; i++) {
      values.push(BigInt(Math.floor(random() * 2 ** (1 + Math.floor(random() * 52)))));
    }
    // latency_profile_1s is partitioned by the completion second's day: durations above ~2^36 us (19 hours)
    // would each open a partition of their own. Those go through the view's own expression instead (taken
    // from its definition), the rest through the view itself: one event per value, told apart by `method`.
    const viaView = values.filter((v) => v < 1n << 36n);
    const rows = viaView.map((v) =>
      JSON.stringify({ ts: 1700000000, ts_ms: 1700000000000, service: "sweep", method: String(v) })
        .replace(/}$/, `,"duration_us":${v}}`)
    );
    await clickhouse.query(`INSERT INTO ${database}.request_events FORMAT JSONEachRow\n${rows.join("\n")}`);
    const occurrences = new Map<string, number>();
    for (const v of viaView) occurrences.set(String(v), (occurrences.get(String(v)) ?? 0) + 1);
    // One (bucket, 1) entry per event until merged: every entry of a value must carry its bucket.
    const sql = new Map<string, string>();
    for (
      const line of (await clickhouse.query(
        `SELECT method, histogramMap.bucket, histogramMap.count FROM ${database}.latency_profile_1s FORMAT TSV`,
      )).split("\n").filter(Boolean)
    ) {
      const [value, bucketsText, countsText] = line.split("\t");
      const found = JSON.parse(bucketsText) as number[];
      const counts = JSON.parse(countsText) as number[];
      assertEquals(counts.reduce((a, b) => a + b, 0), occurrences.get(value), `count of ${value} us`);
      assertEquals(new Set(found).size, 1, `one bucket for ${value} us: ${bucketsText}`);
      sql.set(value, String(found[0]));
    }
    assertEquals(sql.size, new Set(viaView.map(String)).size, "every value through the view");
    const create = (await clickhouse.query(
      `SELECT create_table_query FROM system.tables WHERE database = '${database}'
       AND name = 'latency_profile_1s_mv' FORMAT TSVRaw`,
    )).trim();
    const expression = /groupArray\((toUInt16\(.*\))\) AS `histogramMap\.bucket`/.exec(create)?.[1];
    assert(expression, `the view's bucket expression: ${create}`);
    const large = values.filter((v) => v >= 1n << 36n);
    for (let i = 0; i < large.length; i += 2000) {
      for (
        const line of (await clickhouse.query(
          `SELECT toString(duration_us), ${expression} FROM
             (SELECT arrayJoin([${large.slice(i, i + 2000).join(", ")}]) AS duration_us) FORMAT TSV`,
        )).split("\n").filter(Boolean)
      ) {
        const [value, index] = line.split("\t");
        sql.set(value, index);
      }
    }
    const cpp = await run(buckets, [], values.map(String).join("\n") + "\n");
    assertEquals(cpp.code, 0, `tailwatch-buckets failed: ${cpp.stderr}`);
    // Every value, up to 2^64 - 1: where Float64 log2 rounds up just below 2^(k+1), the SQL's
    // 128 * (s + 1) + (v >> (s + 1)) equals 128 * s + (v >> s) (both are the last bucket below 2^(k+1)).
    let checked = 0;
    for (const line of cpp.stdout.split("\n").filter(Boolean)) {
      const [value, index] = line.split("\t");
      assertEquals(sql.get(value), index, `bucket of ${value} us (latency_profile_1s vs C++)`);
      checked++;
    }
    assertEquals(checked, values.length, "values compared");
    assert(checked > 15000, `only ${checked} values checked`);
  });

  const now = 1700003600;
  const database = await newDatabase(clickhouse, "tw_accuracy");

  await t.step("--once --json equals exact figures over the raw rows by completion second", async () => {
    const random = seededRandom(42);
    const methods: [string, string, () => number][] = [
      ["catalog", "/catalog.v1.Catalog/GetItem", () => Math.exp(Math.log(2000) + normal(random))],
      [
        "catalog",
        "/catalog.v1.Catalog/ListItems",
        () => random() < 0.1 ? 20000 + 2000 * normal(random) : 500 + 50 * normal(random),
      ],
      ["orders", "/orders.v1.Orders/CreateOrder", () => 100 / Math.pow(1 - random(), 1 / 1.2)],
      ['it\'s "odd"', "tab\there", () => random() * 1e6],
      // Slow: seconds to minutes, so that they complete many seconds after they started.
      ["payments", "/payments.v1.Payments/Charge", () => random() < 0.2 ? 1e6 + random() * 9e7 : 3000],
    ];
    // 400 seconds of starts, in several INSERTs (batches of their own) so the rollup holds unmerged parts.
    for (let part = 0; part < 3; part++) {
      const lines: string[] = [];
      for (let ts = now - 400; ts < now + 2; ts++) {
        for (const [service, method, draw] of methods) {
          const n = Math.floor(random() * 10);
          for (let i = 0; i < n; i++) {
            const duration = Math.max(0, Math.min(Math.floor(draw()), 1e12));
            lines.push(JSON.stringify({
              ts,
              ts_ms: ts * 1000 + Math.floor(random() * 1000),
              service,
              method,
              grpc_code: random() < 0.05 ? 14 : 0,
              duration_us: duration,
              ingest_batch_seq: part === 2 ? 0 : 100 + part,
              ingest_floor_seq: part === 2 ? 0 : 99,
            }));
          }
        }
      }
      await clickhouse.query(
        `INSERT INTO ${database}.request_events FORMAT JSONEachRow\n${lines.join("\n")}`,
      );
    }
    const once = async (extra: string[] = []) => {
      const result = await run(profiler, [
        ...connection(clickhouse, database),
        "--once",
        "--json",
        "--now",
        String(now),
        "--windows",
        "10,60,300",
        ...extra,
      ]);
      assertEquals(result.code, 0, `profiler failed: ${result.stderr}`);
      return JSON.parse(result.stdout) as Snapshot;
    };
    const snapshot = await once();
    assertEquals(snapshot.inserted, false, "--json alone does not insert");
    assertEquals(snapshot.version, 0, "no version without an insert");
    assertEquals([snapshot.timing.from, snapshot.timing.to], [now - 300, now], "end seconds read");
    assertEquals([snapshot.timing.reads, snapshot.timing.splits], [1, 0], "one read");
    // 4 services (method "") + 5 methods = 9 keys.
    assertEquals(snapshot.rows.length, 9 * 3, "one row per key and window");
    for (const row of snapshot.rows) {
      const where = `service = ${sqlString(row.service)}` +
        (row.method === "" ? "" : ` AND method = ${sqlString(row.method)}`);
      const [exact] = await jsonRows(
        clickhouse,
        `SELECT count() AS n, countIf(grpc_code != 0) AS errors, max(duration_us) AS max,
                quantilesExact(${QUANTILES.join(", ")})(duration_us) AS q
         FROM ${database}.request_events
         WHERE ${END_SECOND} >= ${now - row.window_s} AND ${END_SECOND} < ${now} AND ${where}`,
      );
      const label = `${row.service}/${row.method} ${row.window_s}s`;
      assertEquals(
        writtenFigures(row),
        expectedFigures(
          Number(exact.n),
          Number(exact.errors),
          Number(exact.max),
          (exact.q as (string | number)[]).map(Number),
        ),
        `${label} (count errors max p50 p90 p95 p99 p999)`,
      );
      // The capped midpoint is within 1/256 of the exact value (buckets.h).
      const quantiles = (exact.q as (string | number)[]).map(Number);
      const reported = [row.p50_us, row.p90_us, row.p95_us, row.p99_us, row.p999_us];
      for (let i = 0; i < quantiles.length; i++) {
        assert(Math.abs(reported[i] - quantiles[i]) <= Math.floor(quantiles[i] / 256), `${label} #${i}`);
      }
    }
    const slow = snapshot.rows.find((r) => r.method === "/payments.v1.Payments/Charge" && r.window_s === 300);
    assert(slow && slow.max_us > 1e6, `slow requests counted: ${JSON.stringify(slow)}`);
    // Reads too large for --max-read-bytes are split (by seconds) and give the same rows.
    const split = await once(["--max-read-bytes", "100000"]);
    assert(split.timing.splits > 0 && split.timing.reads > 1, `split reads: ${JSON.stringify(split.timing)}`);
    assertEquals(split.rows, snapshot.rows, "the same rows from split reads");
  });

  await t.step("--once --insert writes its snapshot as one version, the latest", async () => {
    const result = await run(profiler, [
      ...connection(clickhouse, database),
      "--once",
      "--json",
      "--insert",
      "--now",
      String(now + 1),
    ]);
    assertEquals(result.code, 0, `profiler failed: ${result.stderr}`);
    const snapshot = JSON.parse(result.stdout) as Snapshot;
    assertEquals(snapshot.inserted, true, "--insert inserts");
    assert(snapshot.version >= Date.now() - 60_000, `version is the time in ms: ${snapshot.version}`);
    const read = async (table: string) =>
      (await jsonRows(
        clickhouse,
        `SELECT toUInt32(ts) AS ts, window_s, service, method, count, errors, rps, error_rate, p50_us, p90_us,
                p95_us, p99_us, p999_us, max_us, version, ingest_floor_seq
         FROM ${database}.${table} WHERE ts = toDateTime(${now + 1}) ORDER BY service, method, window_s`,
      )).map(sorted);
    const sorted = (row: object) =>
      Object.fromEntries(Object.entries(row).sort(([a], [b]) => a < b ? -1 : 1));
    const expected = snapshot.rows.map(sorted);
    assertEquals(await read("latency_percentiles"), expected, "inserted rows = snapshot rows");
    assert(expected.every((r) => r.version === snapshot.version), "one version");
    // latency_percentiles is a Buffer: once flushed, the same rows are in its storage, read once.
    await clickhouse.query(`OPTIMIZE TABLE ${database}.latency_percentiles`);
    assertEquals(await read("latency_percentiles_storage"), expected, "flushed rows");
    assertEquals(await read("latency_percentiles"), expected, "read once after the flush");
    // A second --once --insert of the same tick is a newer version, and the latest is what readers get.
    const again = await run(profiler, [
      ...connection(clickhouse, database),
      "--once",
      "--json",
      "--insert",
      "--now",
      String(now + 1),
    ]);
    const second = JSON.parse(again.stdout) as Snapshot;
    assert(second.version > snapshot.version, `versions rise: ${second.version} after ${snapshot.version}`);
    const latest = await latestRows(clickhouse, database, `ts = toDateTime(${now + 1})`);
    assertEquals(latest.map((r) => r.version), latest.map(() => second.version), "readers take the latest");
  });

  await t.step("a wrong password is a clear error and exit 1", async () => {
    const result = await run(profiler, [
      ...connectionFlags(clickhouse.url, CLICKHOUSE_ADMIN.username, "wrong", database),
      "--once",
    ]);
    assertEquals(result.code, 1, "exit code");
    assert(/HTTP 516|password/i.test(result.stderr), `message: ${result.stderr}`);
  });

  await t.step("--late-margin is refused and names --settle", async () => {
    const result = await run(profiler, [...connection(clickhouse, database), "--late-margin", "5s"]);
    assertEquals(result.code, 2, "exit code");
    assert(/--late-margin was replaced by --settle/.test(result.stderr), result.stderr);
  });

  await t.step(
    "the daemon's rows end equal to the raw rows through late, slow and growing batches",
    async () => {
      const live = await newDatabase(clickhouse, "tw_daemon");
      const windows = [10, 60];
      const random = seededRandom(5);
      const keys: [string, string][] = [["api", "/api.v1.Api/Get"], ["api", "/api.v1.Api/Put"], [
        "db",
        "/db.v1.Db/Query",
      ]];
      const recent = (n: number, lagMs = 0): Event[] =>
        Array.from({ length: n }, () => {
          const [service, method] = keys[Math.floor(random() * keys.length)];
          return {
            service,
            method,
            endMs: Date.now() - lagMs - Math.floor(random() * 900),
            durationUs: Math.floor(Math.exp(Math.log(3000) + normal(random))),
            error: random() < 0.1,
          };
        });
      let seq = 0;
      // Before the daemon starts: 40 s of history (batches final by the floors of the ones after them).
      for (let back = 40; back > 0; back -= 10) {
        await insertBatch(clickhouse, live, ++seq, seq - 1, recent(30, back * 1000));
      }
      const { child, output } = spawnDaemon(profiler, clickhouse, live, [
        "--windows",
        windows.join(","),
        "--settle",
        "1s",
        "--correction-memory",
        "20s",
        "--log-timing",
      ]);
      let log = "";
      try {
        const firstTick = async () =>
          Number(
            (await clickhouse.query(`SELECT toUInt32(min(ts)) FROM ${live}.latency_percentiles`)).trim(),
          );
        await waitUntil("first ticks written", async () => (await firstTick()) > 0, 20_000);
        const started = await firstTick();
        // Every second: a batch of requests that just completed.
        const steady = async (seconds: number) => {
          for (let i = 0; i < seconds; i++) {
            await insertBatch(clickhouse, live, ++seq, seq - 1, recent(20));
            await sleep(1000);
          }
        };
        await steady(3);
        // Slow requests: started a minute or more ago, completed now: they count at once.
        await insertBatch(clickhouse, live, ++seq, seq - 1, [
          ...recent(5),
          ...[45e6, 75e6, 130e6].map((durationUs) => ({
            service: "api",
            method: "/api.v1.Api/Get",
            endMs: Date.now(),
            durationUs,
          })),
        ]);
        // A batch that grows: its first rows now, the rest two seconds later; in between a batch whose floor
        // does not pass it yet.
        const growing = ++seq;
        await insertBatch(clickhouse, live, growing, growing - 1, recent(10));
        await sleep(1000);
        await insertBatch(clickhouse, live, ++seq, growing - 1, recent(10));
        await sleep(1000);
        await insertBatch(clickhouse, live, growing, growing - 1, recent(10, 2000));
        await steady(5);
        // Late rows, whose windows were written already: 30 s ago (held in memory), and so old that the
        // per-second data they need is beyond the daemon's memory (60 s window + 20 s), while one of the
        // windows holding them was still written by it (reloaded from ClickHouse). And a key that only
        // comes late.
        await waitUntil("the daemon ran long enough", () => Date.now() / 1000 >= started + 40, 40_000);
        const nowMs = Date.now();
        const oldest = Math.max(started + 1 - 60, Math.floor(nowMs / 1000) - 95) + 1;
        assert(Math.floor(nowMs / 1000) - oldest > 81, `late enough to be reloaded: ${oldest}`);
        await insertBatch(clickhouse, live, ++seq, seq - 1, [
          ...recent(10, 30_000),
          ...recent(5, nowMs - oldest * 1000 - 500),
          { service: "late", method: "/late.v1.Late/Only", endMs: nowMs - 30_000, durationUs: 777 },
        ]);
        await steady(2);
        const last = ++seq;
        await insertBatch(clickhouse, live, last, seq - 1, recent(10));
        await insertMarker(clickhouse, live, last);
        // Once the daemon has written a tick after reading the marker, everything is final and corrected.
        await waitUntil(
          "the daemon read everything",
          async () => (await floorWritten(clickhouse, live)) >= last,
          20_000,
        );
        const { differences, compared } = await differencesFromRaw(clickhouse, live, windows);
        assert(
          differences.length === 0,
          `${differences.length} of ${compared} rows differ from the raw rows:\n${
            differences.slice(0, 20).join("\n")
          }`,
        );
        assert(compared > 500, `rows compared: ${compared}`);
        assertEquals(await duplicates(clickhouse, live), 0, "rows stored twice");
        const lateRows = await latestRows(clickhouse, live, "service = 'late'");
        assert(lateRows.length > 0, "a key that only came late has its rows");
      } finally {
        child.kill("SIGTERM");
        const { code, stderr } = await output;
        log = new TextDecoder().decode(stderr);
        assertEquals(code, 0, `exit status after SIGTERM (log: ${log})`);
      }
      const lines = timingLines(log);
      const sum = (k: string) => lines.reduce((a, l) => a + (l.timing[k] ?? 0), 0);
      assert(sum("corrections") > 0, `corrections written: ${log}`);
      assert(sum("reloaded_seconds") > 0, `old seconds reloaded: ${log}`);
      assert(lines.every((l) => l.timing.reads >= 1), "every tick reads the feed");
    },
  );

  await t.step(
    "a rebuild recorded in projection_rebuilds makes the daemon start over, also one no batch it read shows",
    async () => {
      const live = await newDatabase(clickhouse, "tw_rebuilt");
      const request = (lagMs: number, durationUs: number): Event => ({
        service: "s",
        method: "m",
        endMs: Date.now() - lagMs,
        durationUs,
      });
      // Ingest's cut: batches 1..5 of four requests each, every one final by the floor of the next but 5.
      const cut = Array.from(
        { length: 5 },
        (_, b) => Array.from({ length: 4 }, (_, i) => request(6000 - b * 1000, 1000 + b * 100 + i)),
      );
      for (const [i, events] of cut.entries()) await insertBatch(clickhouse, live, i + 1, i, events);
      const { child, output } = spawnDaemon(profiler, clickhouse, live, [
        "--windows",
        "10",
        "--settle",
        "1s",
      ]);
      let log = "";
      try {
        await waitUntil(
          "the daemon read batches 1..5",
          async () => (await floorWritten(clickhouse, live)) >= 4,
          20_000,
        );
        // The rebuild, all of it between two ticks: the projections emptied and the same requests replayed,
        // cut anew: 1-2 as batch 2, 3 as 3, 4-5 as 5. Batch 4, the last the daemon took as final, is gone, and
        // 5 grew by its requests, counted already. New requests follow in batches 6 and 7 (6 final by 7's
        // floor): the newest batch taken as final is then one the rebuild did not touch, so nothing the
        // daemon reads again differs from what it read before.
        Deno.kill(child.pid, "SIGSTOP");
        for (const table of ["request_events", "request_stats_1s", "latency_profile_1s"]) {
          await clickhouse.query(`TRUNCATE TABLE ${live}.${table}`);
        }
        await insertBatch(clickhouse, live, 2, 0, [...cut[0], ...cut[1]]);
        await insertBatch(clickhouse, live, 3, 2, cut[2]);
        await insertBatch(clickhouse, live, 5, 3, [...cut[3], ...cut[4]]);
        await clickhouse.query(
          `INSERT INTO ${live}.projection_rebuilds (mode, stage) VALUES ('all', 'emptied'), ('all', 'done')`,
        );
        await insertBatch(clickhouse, live, 6, 5, [request(500, 3000), request(500, 4000)]);
        await insertBatch(clickhouse, live, 7, 6, [request(0, 5000)]);
        Deno.kill(child.pid, "SIGCONT");
        await insertMarker(clickhouse, live, 7);
        await waitUntil(
          "the daemon read batch 7 as final",
          async () => (await floorWritten(clickhouse, live)) >= 7,
          20_000,
        );
        let differences: string[] = [];
        await waitUntil("the rows equal the raw rows", async () => {
          differences = (await differencesFromRaw(clickhouse, live, [10])).differences;
          return differences.length === 0;
        }, 15_000).catch((error) => {
          throw new Error(`${error}:\n${differences.slice(0, 10).join("\n")}`);
        });
      } finally {
        child.kill("SIGTERM");
        const { code, stderr } = await output;
        log = new TextDecoder().decode(stderr);
        assertEquals(code, 0, `exit status after SIGTERM (log: ${log})`);
      }
      assert(/ingest recorded a rebuild in projection_rebuilds\): starting over/.test(log), log);
      assertEquals(await duplicates(clickhouse, live), 0, "rows stored twice");
    },
  );

  await t.step(
    "the daemon writes every tick, rides out a ClickHouse restart, and exits 0 on SIGTERM",
    async () => {
      const live = await newDatabase(clickhouse, "tw_live");
      let seq = 0;
      const insertNow = async () => {
        const events = [100, 200, 300].map((durationUs) => ({
          service: "s",
          method: "m",
          endMs: Date.now(),
          durationUs,
        }));
        await insertBatch(clickhouse, live, ++seq, seq - 1, events);
      };
      await insertNow();
      const { child, output } = spawnDaemon(profiler, clickhouse, live, [
        "--windows",
        "10",
        "--settle",
        "1s",
        "--log-timing",
      ]);
      const ticks = async () =>
        Number((await clickhouse.query(`SELECT uniqExact(ts) FROM ${live}.latency_percentiles`)).trim());
      const tickSeconds = async () =>
        (await clickhouse.query(
          `SELECT toUInt32(ts) FROM ${live}.latency_percentiles GROUP BY ts ORDER BY ts FORMAT TSV`,
        )).split("\n").filter(Boolean).map(Number);
      let written: number[] = [];
      try {
        await waitUntil("ticks written", async () => (await ticks()) >= 2, 20_000);
        // The Buffer's rows are flushed first, as before any planned stop: 18.16 flushes at the end of its
        // shutdown, after waiting for open connections (the daemon's keeps it busy), and stop() ends a
        // shutdown that takes over 30 s with SIGKILL, which loses what is still buffered.
        written = await tickSeconds();
        await clickhouse.query(`OPTIMIZE TABLE ${live}.latency_percentiles`);
        await clickhouse.stop();
        await sleep(2500);
        await clickhouse.start();
        const stoppedAt = Math.floor(Date.now() / 1000);
        await insertNow();
        await waitUntil("ticks after the restart", async () => {
          const text = await clickhouse.query(
            `SELECT max(ts) >= toDateTime(${stoppedAt + 2}) FROM ${live}.latency_percentiles`,
          );
          return text.trim() === "1";
        }, 30_000);
      } finally {
        child.kill("SIGTERM");
      }
      const { code, stderr } = await output;
      const log = new TextDecoder().decode(stderr);
      assertEquals(code, 0, `exit status after SIGTERM (log: ${log})`);
      assert(/retrying/.test(log), `the outage is logged: ${log}`);
      // --log-timing: one JSON line per tick, with every timing member.
      const timings = timingLines(log);
      assert(timings.length >= 3, `timing lines: ${log}`);
      for (const { timing } of timings) {
        assertEquals(
          Object.keys(timing).sort(),
          [
            "batches",
            "compute_ms",
            "corrections",
            "floor",
            "histogram_rows",
            "http_ms",
            "insert_ms",
            "parse_ms",
            "pending",
            "published",
            "read_ms",
            "reads",
            "reloaded_seconds",
            "response_bytes",
            "rows",
            "splits",
            "ticks",
          ],
          "timing members",
        );
        assert(
          Object.values(timing).every((v) => Number.isFinite(v) && v >= 0),
          `timing values: ${JSON.stringify(timing)}`,
        );
      }
      // The engine kept its state through the outage and went on ticking: every tick from the first it
      // published to the last, each once (a key has rows at the ticks whose window holds requests).
      const seconds = await tickSeconds();
      for (const second of written) assert(seconds.includes(second), `tick ${second} kept: ${seconds}`);
      assert(
        Math.max(...seconds) > Math.max(...written),
        `ticks after the restart: ${seconds} (before: ${written})`,
      );
      const from = Number(/publishing from (\d+)/.exec(log)?.[1]);
      const ticksPublished = timings.reduce((a, l) => a + l.timing.ticks, 0);
      assertEquals(ticksPublished, timings[timings.length - 1].now - from + 1, `every tick once: ${log}`);
      assertEquals(await duplicates(clickhouse, live), 0, "rows stored twice");
      const { differences } = await differencesFromRaw(clickhouse, live, [10]);
      assert(differences.length === 0, differences.slice(0, 20).join("\n"));
    },
  );
});
