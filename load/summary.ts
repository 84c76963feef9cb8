/** A load run's result as text for the terminal: percentiles, the cross-check table, CPU. */
import type { LoadResult } from "./run.ts";

const ms = (us: number | undefined) =>
  us === undefined || !Number.isFinite(us) ? "-" : (us / 1000).toFixed(2);
const short = (method: string) => method.split("/").pop() || "(none)";

export function summaryText(result: LoadResult): string {
  const out: string[] = [];
  const c = result.client;
  out.push(
    "",
    `${result.scenario} (${result.runId}): ${c.total} requests in ${result.durationS} s (${
      c.achievedRps.toFixed(0)
    }/s), ` +
      `OK ${c.ok} (${
        (c.ok / Math.max(1, c.total) * 100).toFixed(3)
      } %), errors ${c.errors}, cancelled by the generator ${c.cancelled}`,
    `warm-up: ${result.warmup.note}`,
    `host: ${result.host.note}; steal ${(result.host.stealShare * 100).toFixed(1)} %`,
    "",
    "latency, ms                          requests      p50      p90      p99    p99.9      max",
  );
  for (const m of c.methods) {
    const name = `${m.service} ${short(m.method)} ${m.protocol}`;
    const row = (
      label: string,
      q: { count: number; p50: number; p90: number; p99: number; p999: number; max: number },
    ) =>
      `${label.padEnd(36)} ${String(q.count).padStart(8)} ${ms(q.p50).padStart(8)} ${ms(q.p90).padStart(8)} ${
        ms(q.p99).padStart(8)
      } ${ms(q.p999).padStart(8)} ${ms(q.max).padStart(8)}`;
    out.push(row(`${name}, client`, m.plain));
    if (m.corrected) out.push(row("  corrected (intended send time)", m.corrected));
    const server = result.server.methods.find((s) =>
      s.service === m.service && s.method === m.method && s.protocol === m.protocol
    );
    if (server) out.push(row("  server (rows, exact)", server.quantiles));
    const profiler = result.crossCheck.latency.find((l) => l.service === m.service && l.method === m.method)
      ?.profiler;
    if (profiler) out.push(row("  profiler (--once, span, all traffic)", { ...profiler, p90: NaN }));
  }
  const x = result.crossCheck;
  out.push(
    "",
    `cross-check (${
      x.selection === "run-id"
        ? `rows with load_run_id = ${result.runId}`
        : "rows of the run's time span: ingest does not store load_run_id yet"
    }), settled after ${(x.settledAfterMs / 1000).toFixed(1)} s:`,
    "service  method                 proto  status                generator   /metrics       rows   distinct  ok" +
      "   (rows: all; of them sent by the generator when fewer)",
  );
  for (const l of x.lines) {
    out.push(
      `${l.service.padEnd(8)} ${short(l.method).padEnd(22)} ${l.protocol.padEnd(6)} ${l.status.padEnd(20)} ${
        (l.generator === undefined ? "-" : String(l.generator)).padStart(10)
      } ${(l.metrics === undefined ? "-" : String(l.metrics)).padStart(10)} ${String(l.rows).padStart(10)} ${
        String(l.distinct).padStart(10)
      }  ${l.ok ? "ok" : "FAIL " + l.problems.join("; ")}${
        l.direct !== l.rows && l.generator !== undefined ? `  (${l.direct} from the generator)` : ""
      }`,
    );
  }
  for (const k of x.cancelled) {
    const seen = Object.entries(k.seenByServer).map(([s, n]) => `${n} as ${s}`).join(", ") || "none";
    out.push(
      `cancelled by the generator: ${k.service} ${short(k.method)} ${k.protocol}: ${k.cancelled} (${
        Object.entries(k.cancelledAs).map(([s, n]) => `${n} × ${s}`).join(", ")
      }); served anyway: ${seen}; never reached the server: ${k.notSeenByServer}`,
    );
  }
  for (const e of x.events) {
    out.push(
      `events ${e.service}: served ${e.served}, published ${e.published}, dropped ${e.dropped} ${
        e.ok ? "ok" : "FAIL"
      }`,
    );
  }
  for (const l of x.latency) {
    out.push(
      `client − server ${l.service} ${short(l.method)} ${l.protocol}: p50 ${ms(l.gapUs.p50)}, p99 ${
        ms(l.gapUs.p99)
      }, p99.9 ${ms(l.gapUs.p999)} ms ${
        l.serverBelowClient ? "(server below client: ok)" : "FAIL: server above client"
      }`,
    );
  }
  out.push(
    `cross-check: ${x.ok ? "OK" : "FAILED"}${x.failures.length ? "\n  " + x.failures.join("\n  ") : ""}`,
    "",
    "CPU s per 1000 requests: " +
      Object.entries(result.cpu.perThousandRequests).map(([name, v]) => `${name} ${v.toFixed(3)}`).join(
        ", ",
      ) +
      ` (machine ${result.cpu.machineBusyCores.toFixed(2)} of ${result.host.cores} cores busy)`,
  );
  return out.join("\n");
}

export function printSummary(result: LoadResult): void {
  console.log(summaryText(result));
}
