/**
 * Load runs as `./dev load` and `./dev bench` leave them: `load-<time>.json` (and its HTML report beside it) in
 * the results folder (WEB_LOAD_RESULTS_DIR). Read for the Runs page and the load-run markers on the charts;
 * files are named by a fixed pattern, so a request can never name anything else in the folder or outside it.
 * A file that is not a load run (or is still being written) is skipped and counted, never an error page.
 */
import type { LoadRun } from "./islands/model.ts";

/** A results file the web server will read or serve: `load-` + a time stamp, then `.json` or `.html`. */
export const RUN_FILE = /^load-[0-9A-Za-z_.-]{1,80}\.(json|html)$/;

/** Client, server and profiler latency of one method of a run, in µs (crossCheck.latency). */
export interface RunLatency {
  method: string;
  clientP50Us?: number;
  clientP99Us?: number;
  clientP999Us?: number;
  correctedP99Us?: number;
  serverP99Us?: number;
  profilerP99Us?: number;
}

export interface RunSummary extends LoadRun {
  runId: string;
  schedule: string;
  durationS?: number;
  total?: number;
  ok?: number;
  errors?: number;
  cancelled?: number;
  achievedRps?: number;
  /** The cross-check's verdict; undefined for a run that recorded none. */
  crossCheckOk?: boolean;
  crossCheckFailures: string[];
  latency: RunLatency[];
  /** The HTML report's file name, when it is there. */
  report?: string;
  /** The host was shared during the run (the report's note), when it says so. */
  hostNote?: string;
}

const MAX_FILES = 500;
const MAX_BYTES = 10_000_000;

type Json = Record<string, unknown>;
const obj = (v: unknown): Json => (v !== null && typeof v === "object" && !Array.isArray(v) ? v as Json : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
const str = (v: unknown, max = 200): string => (typeof v === "string" ? v.slice(0, max) : "");

/** One load run's summary from its JSON text; undefined when it is not one. */
export function summarizeRun(file: string, text: string, files: ReadonlySet<string>): RunSummary | undefined {
  let json: Json;
  try {
    json = obj(JSON.parse(text));
  } catch {
    return undefined;
  }
  const startedAtMs = num(json.startedAtMs);
  const endedAtMs = num(json.endedAtMs);
  if (startedAtMs === undefined || endedAtMs === undefined || endedAtMs < startedAtMs) return undefined;
  const client = obj(json.client);
  const crossCheck = json.crossCheck === undefined ? undefined : obj(json.crossCheck);
  const correctedP99 = new Map<string, number>();
  for (const m of arr(client.methods)) {
    const p99 = num(obj(obj(m).corrected).p99);
    if (p99 !== undefined) correctedP99.set(str(obj(m).method), p99);
  }
  const latency: RunLatency[] = arr(crossCheck?.latency).slice(0, 50).map((l) => {
    const line = obj(l);
    const method = str(line.method);
    return {
      method,
      clientP50Us: num(obj(line.client).p50),
      clientP99Us: num(obj(line.client).p99),
      clientP999Us: num(obj(line.client).p999),
      correctedP99Us: correctedP99.get(method),
      serverP99Us: num(obj(line.server).p99),
      profilerP99Us: num(obj(line.profiler).p99),
    };
  });
  const report = file.replace(/\.json$/, ".html");
  return {
    file,
    scenario: str(json.scenario, 80) || "?",
    startedAtMs,
    endedAtMs,
    runId: str(json.runId, 120),
    schedule: str(json.scheduleText, 120),
    durationS: num(json.durationS),
    total: num(client.total),
    ok: num(client.ok),
    errors: num(client.errors),
    cancelled: num(client.cancelled),
    achievedRps: num(client.achievedRps),
    crossCheckOk: crossCheck === undefined ? undefined : crossCheck.ok === true,
    crossCheckFailures: arr(crossCheck?.failures).slice(0, 20).map((f) => str(f, 300)),
    latency,
    report: files.has(report) ? report : undefined,
    hostNote: str(obj(json.host).note, 300) || undefined,
  };
}

/** Every load run in `dir`, oldest first (at most 500 files read); a missing folder has none. */
export async function readLoadRuns(dir: string): Promise<{ runs: RunSummary[]; skipped: string[] }> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.isFile && RUN_FILE.test(entry.name)) names.push(entry.name);
    }
  } catch {
    return { runs: [], skipped: [] };
  }
  const files = new Set(names);
  const runs: RunSummary[] = [];
  const skipped: string[] = [];
  // The newest first when there are too many: names carry the run's start time.
  const jsonFiles = names.filter((n) => n.endsWith(".json")).sort().reverse().slice(0, MAX_FILES);
  for (const name of jsonFiles) {
    try {
      const path = `${dir}/${name}`;
      if ((await Deno.stat(path)).size > MAX_BYTES) {
        skipped.push(name);
        continue;
      }
      const run = summarizeRun(name, await Deno.readTextFile(path), files);
      if (run) runs.push(run);
      else skipped.push(name);
    } catch {
      skipped.push(name);
    }
  }
  return { runs: runs.sort((a, b) => a.startedAtMs - b.startedAtMs), skipped };
}

/** A results file's bytes and content type, or undefined when the name is not one or it is not there. */
export async function readRunFile(
  dir: string,
  name: string,
): Promise<{ body: Uint8Array; type: string } | undefined> {
  if (!RUN_FILE.test(name)) return undefined;
  try {
    const path = `${dir}/${name}`;
    const info = await Deno.lstat(path);
    if (!info.isFile || info.size > MAX_BYTES) return undefined;
    return {
      body: await Deno.readFile(path),
      type: name.endsWith(".html") ? "text/html; charset=utf-8" : "application/json; charset=utf-8",
    };
  } catch {
    return undefined;
  }
}
