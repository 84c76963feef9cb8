/**
 * Regression flags for `./dev bench`: each figure against the previous result of the same machine (and the same
 * --quick), flagged only when the change is beyond the run-to-run spread this run measured for that figure
 * from its own repeated rounds (the events section's pairs, the orders runs' 10 s segments and its two runs,
 * the capacity search's resolution, any {median, runs} a section reports). A figure without such a spread is
 * listed, never flagged: a fixed percentage would flag the host's noise one day and miss a real change the next.
 */

export interface BenchFigure {
  /** Where it is in the JSON, e.g. "orders.p99Ms". */
  path: string;
  value: number;
  /** How much the figure moved between this run's own repeated rounds (same units); NaN when none. */
  spread: number;
  spreadFrom: string;
  better: "higher" | "lower" | "either";
}

export interface RegressionFlag extends BenchFigure {
  previous: number;
  diff: number;
  verdict:
    | "regression"
    | "improvement"
    | "changed"
    | "within spread"
    | "no spread measured"
    | "no previous value";
}

export interface Regression {
  /** The result compared with; undefined when there is none. */
  previous?: { file: string; date: string };
  note: string;
  figures: RegressionFlag[];
  flagged: number;
}

const range = (values: number[]) => {
  const finite = values.filter(Number.isFinite);
  return finite.length >= 2 ? Math.max(...finite) - Math.min(...finite) : NaN;
};

// deno-lint-ignore no-explicit-any
type Json = any;

/** The figures of a bench result that have a measured spread, or that are worth listing. */
export function benchFigures(results: Json): BenchFigure[] {
  const figures: BenchFigure[] = [];
  const add = (
    path: string,
    value: unknown,
    spread: number,
    spreadFrom: string,
    better: BenchFigure["better"],
  ) => {
    if (typeof value === "number" && Number.isFinite(value)) {
      figures.push({ path, value, spread, spreadFrom, better });
    }
  };
  const events = results?.events;
  if (events) {
    const rounds = (events.rounds ?? []) as Array<
      { events: boolean; rps: number; serviceCpuPer1k: number; natsCpuPer1k: number }
    >;
    const of = (on: boolean, key: "rps" | "serviceCpuPer1k" | "natsCpuPer1k") =>
      rounds.filter((r) => r.events === on).map((r) => r[key]);
    add(
      "events.medianPairRatio",
      events.medianPairRatio,
      range(events.pairRatios ?? []),
      "range of the on/off pairs",
      "higher",
    );
    add(
      "events.rpsEventsOn",
      events.rpsEventsOn,
      range(of(true, "rps")),
      "range of the events-on rounds",
      "higher",
    );
    add(
      "events.rpsEventsOff",
      events.rpsEventsOff,
      range(of(false, "rps")),
      "range of the events-off rounds",
      "higher",
    );
    add(
      "events.serviceCpuSecondsPer1kEventsOn",
      events.serviceCpuSecondsPer1kEventsOn,
      range(of(true, "serviceCpuPer1k")),
      "range of the events-on rounds",
      "lower",
    );
    add(
      "events.natsCpuSecondsPer1kEventsOn",
      events.natsCpuSecondsPer1kEventsOn,
      range(of(true, "natsCpuPer1k")),
      "range of the events-on rounds",
      "lower",
    );
  }
  const orders = results?.orders;
  if (orders) {
    const seg = orders.segments?.spread ?? {};
    const segmentsFrom = `range across the run's ${orders.segments?.seconds ?? "?"} s segments`;
    const runsFrom = `the two ${orders.seconds ?? "?"} s runs' difference`;
    const cseg = orders.correctedSegments?.spread ?? {};
    add(
      "orders.p50Ms",
      orders.p50Ms,
      (seg.p50 ?? NaN) / 1000,
      segmentsFrom,
      "lower",
    );
    add(
      "orders.p99Ms",
      orders.p99Ms,
      (seg.p99 ?? NaN) / 1000,
      segmentsFrom,
      "lower",
    );
    add(
      "orders.p999Ms",
      orders.p999Ms,
      (seg.p999 ?? NaN) / 1000,
      segmentsFrom,
      "lower",
    );
    add(
      "orders.corrected.p99Ms",
      orders.corrected?.p99Ms,
      (cseg.p99 ?? NaN) / 1000,
      segmentsFrom,
      "lower",
    );
    for (const [name, value] of Object.entries(orders.cpuSecondsPer1kRequests ?? {})) {
      const first = orders.first?.cpuSecondsPer1kRequests?.[name];
      add(
        `orders.cpuSecondsPer1kRequests.${name}`,
        value,
        Math.abs(Number(value) - Number(first)),
        runsFrom,
        "lower",
      );
    }
  }
  const capacity = results?.capacity;
  if (capacity) {
    add("capacity.rate", capacity.rate, capacity.resolution ?? NaN, "the search's resolution", "higher");
    add("capacity.allOkRate", capacity.allOkRate, capacity.stepRate ?? NaN, "the search's step", "higher");
  }
  // Sections that report repeated runs as { median, runs: [...] } (ingest, profiler).
  const walk = (value: Json, path: string) => {
    if (!value || typeof value !== "object" || Array.isArray(value)) return;
    if (typeof value.median === "number" && Array.isArray(value.runs) && value.runs.length >= 2) {
      add(
        `${path}.median`,
        value.median,
        range(value.runs.map(Number)),
        "range of the section's runs",
        betterOf(path),
      );
      return;
    }
    for (const [key, child] of Object.entries(value)) walk(child, `${path}.${key}`);
  };
  for (const section of ["ingest", "profiler"]) walk(results?.[section], section);
  return figures;
}

/** Lower is better for times and CPU, higher for rates and ratios; else either. */
function betterOf(path: string): BenchFigure["better"] {
  if (
    /(ms|Ms|Us|cpu|Cpu|seconds|Seconds|latency|p99)/.test(path.split(".").pop() ?? path) ||
    /Ms\b|ms\b/.test(path)
  ) {
    return "lower";
  }
  if (/(PerSecond|perSecond|rps|Rps|throughput|ratio|Ratio)/.test(path)) return "higher";
  return "either";
}

function get(results: Json, path: string): number {
  let value = results;
  for (const part of path.split(".")) value = value?.[part];
  return typeof value === "number" ? value : NaN;
}

export function regressionFlags(current: Json, previous?: { file: string; results: Json }): Regression {
  const figures = benchFigures(current);
  if (!previous) {
    return {
      note:
        "no previous result of this machine (same host id and --quick) in bench/results: nothing to compare with",
      figures: figures.map((f) => ({
        ...f,
        previous: NaN,
        diff: NaN,
        verdict: "no previous value" as const,
      })),
      flagged: 0,
    };
  }
  const flags: RegressionFlag[] = figures.map((f) => {
    const before = previous.results?.[f.path.split(".")[0]] === undefined
      ? NaN
      : get(previous.results, f.path);
    const diff = f.value - before;
    let verdict: RegressionFlag["verdict"];
    if (!Number.isFinite(before)) verdict = "no previous value";
    else if (!Number.isFinite(f.spread)) verdict = "no spread measured";
    else if (Math.abs(diff) <= f.spread) verdict = "within spread";
    else if (f.better === "either") verdict = "changed";
    else verdict = (diff > 0) === (f.better === "higher") ? "improvement" : "regression";
    return { ...f, previous: before, diff, verdict };
  });
  return {
    previous: { file: previous.file, date: String(previous.results?.date ?? "") },
    note: `compared with ${previous.file} (same machine); a change counts only beyond this run's own spread`,
    figures: flags,
    flagged:
      flags.filter((f) =>
        f.verdict === "regression" || f.verdict === "improvement" || f.verdict === "changed"
      ).length,
  };
}

/** The regression flags as Markdown for the bench report. */
export function regressionMarkdown(r: Regression): string[] {
  const fmt = (v: number) => (Number.isFinite(v) ? Number(v.toPrecision(4)).toString() : "-");
  return [
    "## Compared with the previous run",
    "",
    `- ${r.note}`,
    ...(r.previous ? [`- ${r.flagged} figure(s) changed beyond their spread`] : []),
    "",
    "| figure | previous | this run | difference | spread (how measured) | verdict |",
    "| --- | ---: | ---: | ---: | --- | --- |",
    ...r.figures.map((f) =>
      `| ${f.path} | ${fmt(f.previous)} | ${fmt(f.value)} | ${fmt(f.diff)} | ${
        fmt(f.spread)
      } (${f.spreadFrom}) | ${
        f.verdict === "regression" || f.verdict === "improvement" || f.verdict === "changed"
          ? `**${f.verdict}**`
          : f.verdict
      } |`
    ),
    "",
  ];
}

/** The newest earlier bench result of the same machine and --quick, from `dir` (bench/results). */
export async function previousResult(
  dir: string,
  hostId: string,
  quick: boolean,
  beforeFile: string,
): Promise<{ file: string; results: Json } | undefined> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (
        entry.isFile && /^\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.json$/.test(entry.name) && entry.name < beforeFile
      ) {
        names.push(entry.name);
      }
    }
  } catch {
    return undefined;
  }
  for (const name of names.sort().reverse()) {
    try {
      const results = JSON.parse(await Deno.readTextFile(`${dir}/${name}`));
      if (results?.host?.id === hostId && Boolean(results.quick) === quick) return { file: name, results };
    } catch { /* not a bench result */ }
  }
  return undefined;
}

/** This machine's identity: host name, CPU model, cores and memory (a hash, and the words). */
export async function hostIdentity(): Promise<{ id: string; description: string }> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const model = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1]?.trim() ?? "unknown CPU";
  const memKb = Number(
    /MemTotal:\s*(\d+)/.exec(await Deno.readTextFile("/proc/meminfo").catch(() => ""))?.[1] ?? 0,
  );
  const description = `${Deno.hostname()}, ${navigator.hardwareConcurrency} × ${model}, ${
    (memKb / 1048576).toFixed(1)
  } GiB`;
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(description));
  const id = [...new Uint8Array(digest)].slice(0, 6).map((b) => b.toString(16).padStart(2, "0")).join("");
  return { id, description };
}
