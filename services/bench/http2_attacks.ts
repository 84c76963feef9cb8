/**
 * The HTTP/2 attacks of h2_attacks.ts, each on a fresh catalog process while a well-behaved client calls it
 * on its own connection (GetProduct every 10 ms): how each attack ended, the client's latency before and
 * during it, and the process's memory. Numbers to report, not to assert (http2_attacks_test.ts asserts
 * what must hold).
 *
 *   deno run -A services/bench/http2_attacks.ts [--json] [--only NAME]
 */
import {
  addLargeProducts,
  type AttackOptions,
  type AttackOutcome,
  type ClientReport,
  emptyContinuationFlood,
  emptyDataFlood,
  emptyHeadersFlood,
  errorCodeName,
  pingFlood,
  rapidReset,
  sampleGauges,
  settingsFlood,
  slowReader,
  startTarget,
  tinyWindowUpdates,
  watchCloses,
  wellBehavedClient,
  zeroWindow,
} from "../tests/h2_attacks.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What the bench runs the processes with: the defaults, with the stall timeout short enough to wait for. */
export const BENCH_ENV = { H2_WRITE_STALL_TIMEOUT_MS: "2000" };

const ATTACKS: Record<string, (port: number, options: AttackOptions) => Promise<AttackOutcome>> = {
  rapid_reset: rapidReset,
  ping_flood: pingFlood,
  settings_flood: settingsFlood,
  empty_data: emptyDataFlood,
  empty_continuation: emptyContinuationFlood,
  empty_headers: emptyHeadersFlood,
  tiny_window_updates: tinyWindowUpdates,
  zero_window: zeroWindow,
  slow_reader: slowReader,
};

interface Row {
  attack: string;
  outcome: AttackOutcome;
  quiet: ClientReport;
  during: ClientReport;
  rssBeforeMiB: number;
  rssMaxMiB: number;
  rssAfterMiB: number;
  maxOutputBytes: number;
  maxPendingBytes: number;
  maxQueuedControlFrames: number;
  closedBy: Record<string, number>;
}

export async function runAttack(name: string, env: Record<string, string> = BENCH_ENV): Promise<Row> {
  await using target = await startTarget(env);
  if (name === "slow_reader") await addLargeProducts(target);
  const client = await wellBehavedClient(target.grpcPort);
  await sleep(1000);
  await client.mark();
  await sleep(1000);
  const quiet = await client.report();
  const rssBefore = target.rss();
  await client.mark();
  const watch = await watchCloses(target);
  const sampled = await sampleGauges(target, ATTACKS[name](target.grpcPort, { gaveUp: watch.gaveUp }));
  await watch.stop();
  const during = await client.stop();
  const metrics = await target.metrics();
  const closedBy: Record<string, number> = {};
  for (const [series, value] of metrics) {
    const reason = /^http2_connections_closed_total\{reason="(.*)"\}$/.exec(series)?.[1];
    if (reason) closedBy[reason] = value;
  }
  const mib = (bytes: number) => Math.round(bytes / 1024 / 1024 * 10) / 10;
  return {
    attack: name,
    outcome: sampled.result,
    quiet,
    during,
    rssBeforeMiB: mib(rssBefore),
    rssMaxMiB: mib(sampled.maxRss),
    rssAfterMiB: mib(target.rss()),
    maxOutputBytes: sampled.maxOutputBytes,
    maxPendingBytes: sampled.maxPendingBytes,
    maxQueuedControlFrames: sampled.maxQueuedControlFrames,
    closedBy,
  };
}

function markdown(rows: Row[]): string {
  const ms = (value: number) => Number.isFinite(value) ? value.toFixed(2) : "-";
  const lines = [
    "| attack | sent | GOAWAY | closed after | client calls (failed) | client p50 / p99 / max ms, quiet | during the attack | RSS MiB before / max / after | max output buffered, bytes | max pending DATA, bytes | max queued control frames |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const row of rows) {
    const { outcome, quiet, during } = row;
    lines.push(
      `| ${row.attack} | ${outcome.sent} | ${
        outcome.goaway ? errorCodeName(outcome.goaway.code) : "none"
      } | ${
        outcome.closed ? `${Math.round(outcome.ms)} ms` : "not closed"
      } | ${during.calls} (${during.failures.length}) | ${ms(quiet.p50Ms)} / ${ms(quiet.p99Ms)} / ${
        ms(quiet.maxMs)
      } | ${ms(during.p50Ms)} / ${ms(during.p99Ms)} / ${
        ms(during.maxMs)
      } | ${row.rssBeforeMiB} / ${row.rssMaxMiB} / ${row.rssAfterMiB} | ${row.maxOutputBytes} | ${row.maxPendingBytes} | ${row.maxQueuedControlFrames} |`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) {
  const only = Deno.args.includes("--only")
    ? Deno.args[Deno.args.indexOf("--only") + 1].split(",")
    : undefined;
  const rows: Row[] = [];
  for (const name of Object.keys(ATTACKS)) {
    if (only && !only.includes(name)) continue;
    const row = await runAttack(name);
    rows.push(row);
    console.error(`${name}: ${JSON.stringify(row)}`);
  }
  console.log(Deno.args.includes("--json") ? JSON.stringify(rows, null, 2) : markdown(rows));
}
