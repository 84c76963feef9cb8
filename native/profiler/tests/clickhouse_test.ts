/**
 * The profiler against a real, private clickhouse-server with the real migrations:
 * - the materialized view's SQL bucket expression (latency_profile_1s) equals the
 *   C++ bucket_index over a sweep of values;
 * - `tailwatch-profiler --once --json` agrees with quantileExact over the same raw rows within 1/256;
 * - rows are inserted into latency_percentiles (a Buffer since migration 0007: read at once, and the same rows
 *   in latency_percentiles_storage once flushed); the daemon survives a ClickHouse restart and exits 0 on
 *   SIGTERM.
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
import { applyMigrations } from "@tailwatch/ingest";
import { connectionFlags, profilerBinaries } from "./binaries.ts";

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

interface SnapshotRow {
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
}

interface Snapshot {
  now: number;
  inserted: boolean;
  timing: { read_ms: number; compute_ms: number; from: number; to: number };
  rows: SnapshotRow[];
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
    // One event per value, told apart by `method`; the materialized view computes the bucket.
    const rows = values.map((v) =>
      JSON.stringify({ ts: 1700000000, ts_ms: 1700000000000, service: "sweep", method: String(v) })
        .replace(/}$/, `,"duration_us":${v}}`)
    );
    await clickhouse.query(`INSERT INTO ${database}.request_events FORMAT JSONEachRow\n${rows.join("\n")}`);
    // The profiler's rollup (latency_profile_1s, 0005) computes the bucket in its view.
    const occurrences = new Map<string, number>();
    for (const v of values) occurrences.set(String(v), (occurrences.get(String(v)) ?? 0) + 1);
    // One (bucket, 1) entry per event until merged: every entry of a value must carry its bucket.
    const profileSql = new Map<string, string>();
    for (
      const line of (await clickhouse.query(
        `SELECT method, histogramMap.bucket, histogramMap.count FROM ${database}.latency_profile_1s FORMAT TSV`,
      )).split("\n").filter(Boolean)
    ) {
      const [value, bucketsText, countsText] = line.split("\t");
      const buckets = JSON.parse(bucketsText) as number[];
      const counts = JSON.parse(countsText) as number[];
      assertEquals(
        counts.reduce((a, b) => a + b, 0),
        occurrences.get(value),
        `count of ${value} us in latency_profile_1s`,
      );
      assertEquals(
        new Set(buckets).size,
        1,
        `one bucket for ${value} us in latency_profile_1s: ${bucketsText}`,
      );
      profileSql.set(value, String(buckets[0]));
    }
    const cpp = await run(buckets, [], values.map(String).join("\n") + "\n");
    assertEquals(cpp.code, 0, `tailwatch-buckets failed: ${cpp.stderr}`);
    // Every value, up to 2^64 - 1: where Float64 log2 rounds up just below 2^(k+1), the SQL's
    // 128 * (s + 1) + (v >> (s + 1)) equals 128 * s + (v >> s) (both are the last bucket below 2^(k+1)).
    let checked = 0;
    for (const line of cpp.stdout.split("\n").filter(Boolean)) {
      const [value, index] = line.split("\t");
      assertEquals(profileSql.get(value), index, `bucket of ${value} us (latency_profile_1s vs C++)`);
      checked++;
    }
    assertEquals(checked, values.length, "values compared");
    assert(checked > 15000, `only ${checked} values checked`);
  });

  const now = 1700003600;
  const database = await newDatabase(clickhouse, "tw_accuracy");

  await t.step("--once --json agrees with quantileExact over the raw rows", async () => {
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
    ];
    // 330 seconds of events, in several INSERTs so the SummingMergeTree holds unmerged parts.
    for (let part = 0; part < 3; part++) {
      const lines: string[] = [];
      for (let ts = now - 330; ts < now + 2; ts++) {
        for (const [service, method, draw] of methods) {
          const n = Math.floor(random() * 12);
          for (let i = 0; i < n; i++) {
            const duration = Math.max(0, Math.min(Math.floor(draw()), 1e12));
            const code = random() < 0.05 ? 14 : 0;
            lines.push(JSON.stringify({
              ts,
              ts_ms: ts * 1000,
              service,
              method,
              grpc_code: code,
              duration_us: duration,
            }));
          }
        }
      }
      await clickhouse.query(
        `INSERT INTO ${database}.request_events FORMAT JSONEachRow\n${lines.join("\n")}`,
      );
    }
    const result = await run(profiler, [
      ...connection(clickhouse, database),
      "--once",
      "--json",
      "--now",
      String(now),
      "--windows",
      "10,60,300",
    ]);
    assertEquals(result.code, 0, `profiler failed: ${result.stderr}`);
    const snapshot = JSON.parse(result.stdout) as Snapshot;
    assertEquals(snapshot.inserted, false, "--json alone does not insert");
    assertEquals([snapshot.timing.from, snapshot.timing.to], [now - 300, now], "seconds read");
    assert(snapshot.timing.read_ms >= 0 && snapshot.timing.compute_ms >= 0, "timings reported");
    // 3 services (method "") + 4 methods = 7 keys.
    assertEquals(snapshot.rows.length, 7 * 3, "one row per key and window");
    for (const row of snapshot.rows) {
      const where = `service = ${sqlString(row.service)}` +
        (row.method === "" ? "" : ` AND method = ${sqlString(row.method)}`);
      const exact = (await clickhouse.query(
        `SELECT count(), countIf(grpc_code != 0), max(duration_us),
                quantilesExact(0.5, 0.9, 0.95, 0.99, 0.999)(duration_us)
         FROM ${database}.request_events
         WHERE ts >= toDateTime(${now - row.window_s}) AND ts < toDateTime(${now}) AND ${where}
         FORMAT JSONEachRow`,
      )).trim();
      const expected = JSON.parse(exact);
      const values = Object.values(expected) as (string | string[])[];
      const label = `${row.service}/${row.method} ${row.window_s}s`;
      assertEquals(row.count, Number(values[0]), `${label} count`);
      assertEquals(row.errors, Number(values[1]), `${label} errors`);
      assertEquals(row.max_us, Number(values[2]), `${label} max`);
      assertEquals(row.rps, row.count / row.window_s, `${label} rps`);
      const quantiles = (values[3] as string[]).map(Number);
      const reported = [row.p50_us, row.p90_us, row.p95_us, row.p99_us, row.p999_us];
      for (let i = 0; i < quantiles.length; i++) {
        const bound = Math.floor(quantiles[i] / 256);
        assert(
          Math.abs(reported[i] - quantiles[i]) <= bound,
          `${label} quantile #${i}: profiler ${reported[i]}, quantileExact ${quantiles[i]} (bound ${bound})`,
        );
      }
    }
  });

  await t.step("--once inserts one row per key and window into latency_percentiles", async () => {
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
    const inserted = async (table: string) =>
      (await clickhouse.query(
        `SELECT toUInt32(ts) AS ts, window_s, service, method, count, rps, error_rate, p50_us, p90_us, p95_us,
                p99_us, p999_us, max_us
         FROM ${database}.${table}
         WHERE ts = toDateTime(${now + 1}) ORDER BY service, method, window_s
         FORMAT JSONEachRow`,
      )).split("\n").filter(Boolean).map((line) =>
        // UInt64 columns come quoted; every other column but the names is a number too.
        Object.fromEntries(
          Object.entries(JSON.parse(line)).map((
            [k, v],
          ) => [k, k === "service" || k === "method" ? v : Number(v)]),
        )
      );
    const rows = await inserted("latency_percentiles");
    assertEquals(rows.length, 21, "rows inserted");
    assertEquals(rows[0].service, "catalog", "first service");
    assertEquals(rows[0].method, "", "whole service first");
    // The RowBinary body lands column by column as the snapshot printed it (same order: keys, then windows).
    const sorted = (row: object) =>
      Object.fromEntries(Object.entries(row).sort(([a], [b]) => a < b ? -1 : 1));
    const expected = snapshot.rows.map(({ errors: _errors, ...row }) => sorted(row));
    assertEquals(rows.map(sorted), expected, "inserted rows = snapshot rows");
    // latency_percentiles is a Buffer (migration 0007): once flushed, the same rows are in its storage table,
    // and reading latency_percentiles still gives them once.
    await clickhouse.query(`OPTIMIZE TABLE ${database}.latency_percentiles`);
    assertEquals((await inserted("latency_percentiles_storage")).map(sorted), expected, "flushed rows");
    assertEquals((await inserted("latency_percentiles")).map(sorted), expected, "read once after the flush");
  });

  await t.step("a wrong password is a clear error and exit 1", async () => {
    const result = await run(profiler, [
      ...connectionFlags(clickhouse.url, CLICKHOUSE_ADMIN.username, "wrong", database),
      "--once",
    ]);
    assertEquals(result.code, 1, "exit code");
    assert(/HTTP 516|password/i.test(result.stderr), `message: ${result.stderr}`);
  });

  await t.step(
    "the daemon writes every tick, rides out a ClickHouse restart, and exits 0 on SIGTERM",
    async () => {
      const live = await newDatabase(clickhouse, "tw_live");
      const insertNow = async () => {
        const ts = Math.floor(Date.now() / 1000);
        const lines = [100, 200, 300].map((duration_us) =>
          JSON.stringify({ ts, ts_ms: ts * 1000, service: "s", method: "m", duration_us })
        );
        await clickhouse.query(`INSERT INTO ${live}.request_events FORMAT JSONEachRow\n${lines.join("\n")}`);
      };
      await insertNow();
      const child = new Deno.Command(profiler, {
        args: [...connection(clickhouse, live), "--windows", "10", "--late-margin", "2s", "--log-timing"],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const output = child.output();
      const ticks = async () =>
        Number((await clickhouse.query(`SELECT uniqExact(ts) FROM ${live}.latency_percentiles`)).trim());
      const tickSeconds = async () =>
        (await clickhouse.query(
          `SELECT toUInt32(ts) FROM ${live}.latency_percentiles GROUP BY ts ORDER BY ts FORMAT TSV`,
        )).split("\n").filter(Boolean).map(Number);
      let written: number[] = [];
      try {
        await waitUntil("two ticks written", async () => (await ticks()) >= 2, 20_000);
        // The Buffer's rows are flushed first, as before any planned stop: 18.16 flushes at the end of its
        // shutdown, after waiting for open connections (the daemon's keeps it busy), and stop() ends a
        // shutdown that takes over 30 s with SIGKILL, which loses what is still buffered.
        written = await tickSeconds();
        await clickhouse.query(`OPTIMIZE TABLE ${live}.latency_percentiles`);
        await clickhouse.stop();
        await new Promise((resolve) => setTimeout(resolve, 2500));
        await clickhouse.start();
        const stoppedAt = Math.floor(Date.now() / 1000);
        await insertNow();
        await waitUntil("ticks after the restart", async () => {
          const text = await clickhouse.query(
            `SELECT max(ts) >= toDateTime(${stoppedAt}) FROM ${live}.latency_percentiles`,
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
      // --log-timing: one JSON line per tick written, with every timing member.
      const timings = log.split("\n").filter((line) => line.startsWith('{"now"')).map((line) =>
        JSON.parse(line) as { now: number; timing: Record<string, number> }
      );
      assert(timings.length >= 3, `timing lines: ${log}`);
      for (const { now, timing } of timings) {
        assertEquals(
          Object.keys(timing).sort(),
          [
            "compute_ms",
            "from",
            "histogram_rows",
            "http_ms",
            "insert_ms",
            "parse_ms",
            "read_ms",
            "response_bytes",
            "rows",
            "to",
          ],
          "timing members",
        );
        assertEquals(timing.to, now, "a tick reads up to its time");
        assert(
          Object.values(timing).every((v) => Number.isFinite(v) && v >= 0),
          `timing values: ${JSON.stringify(timing)}`,
        );
      }
      // The engine kept its state through the outage and went on ticking.
      const seconds = await tickSeconds();
      assert(seconds.length >= 3, `ticks written: ${seconds}`);
      for (const second of written) assert(seconds.includes(second), `tick ${second} kept: ${seconds}`);
      assert(seconds.length > written.length, `ticks after the restart: ${seconds} (before: ${written})`);
    },
  );
});
