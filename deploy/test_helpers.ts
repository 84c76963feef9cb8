/**
 * Helpers for deploy/'s tests: SQL as text on ClickHouse 18.16 (HTTP, as any user) and on chDB (the current
 * engine in process, testing/chdb_runner.py), answered as JSONCompact with column names and types; the tools
 * ./dev installs (promtool, amtool, the .venv's validators, kubectl); a process on a free port.
 */
import type { ClickHouse } from "@tailwatch/ingest";
import type { Sql } from "@tailwatch/ingest/sql";
import { chdbPython } from "@tailwatch/ingest/testing";

export const ROOT = new URL("../", import.meta.url).pathname;

/** A query's answer: column names and types (Nullable unwrapped) and the rows, values as ClickHouse wrote them. */
export interface QueryResult {
  names: string[];
  types: string[];
  rows: unknown[][];
}

export interface SqlEngine extends AsyncDisposable {
  readonly name: string;
  /** Runs a SELECT (no FORMAT clause) and returns its JSONCompact answer. */
  select(sql: string): Promise<QueryResult>;
  /** Runs a statement and returns the body as text. */
  run(sql: string): Promise<string>;
  /** The engine's time zone (DateTime text is in it). */
  timezone(): Promise<string>;
}

function parseJsonCompact(body: string): QueryResult {
  const parsed = JSON.parse(body) as { meta: Array<{ name: string; type: string }>; data: unknown[][] };
  return {
    names: parsed.meta.map((m) => m.name),
    types: parsed.meta.map((m) => m.type.replace(/^Nullable\((.*)\)$/, "$1")),
    rows: parsed.data,
  };
}

/** ClickHouse over HTTP as `user`. */
export function httpEngine(name: string, url: string, user: string, password: string): SqlEngine {
  const run = async (sql: string) => {
    const response = await fetch(url, {
      method: "POST",
      body: sql,
      headers: { "X-ClickHouse-User": user, "X-ClickHouse-Key": password },
      signal: AbortSignal.timeout(30_000),
    });
    const text = await response.text();
    if (!response.ok) {
      throw new Error(`${name}: ClickHouse ${response.status}: ${text.trim().slice(0, 2000)}`);
    }
    return text;
  };
  return {
    name,
    run,
    select: async (sql) => parseJsonCompact(await run(`${sql}\nFORMAT JSONCompact`)),
    timezone: async () => (await run("SELECT timezone()")).trim(),
    async [Symbol.asyncDispose]() {},
  };
}

/** chDB in a Python process of its own (testing/chdb_runner.py), statements run as text. */
export async function startChdbEngine(): Promise<SqlEngine> {
  const dir = await Deno.makeTempDir({ prefix: "tailwatch-deploy-chdb-" });
  const child = new Deno.Command(chdbPython(), {
    args: [`${ROOT}testing/chdb_runner.py`, dir],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const readLine = async (): Promise<string> => {
    for (;;) {
      const newline = buffered.indexOf("\n");
      if (newline >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        return line;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error("chDB runner exited (is chDB installed? ./dev makes .venv)");
      buffered += value;
    }
  };
  const hello = JSON.parse(await readLine()) as { version: string };
  let next = 0;
  let queue: Promise<unknown> = Promise.resolve();
  const run = (sql: string): Promise<string> => {
    const id = next++;
    const result = queue.then(async () => {
      await writer.write(new TextEncoder().encode(JSON.stringify({ id, sql }) + "\n"));
      const answer = JSON.parse(await readLine()) as {
        id: number;
        ok: boolean;
        body?: string;
        error?: string;
      };
      if (answer.id !== id) throw new Error(`chDB runner answered ${answer.id} for ${id}`);
      if (!answer.ok) throw new Error(`chDB ${hello.version}: ${answer.error}`);
      return answer.body ?? "";
    });
    queue = result.catch(() => {});
    return result;
  };
  return {
    name: `chDB ${hello.version}`,
    run,
    select: async (sql) => parseJsonCompact(await run(`${sql}\nFORMAT JSONCompact`)),
    timezone: async () => (await run("SELECT timezone()")).trim(),
    async [Symbol.asyncDispose]() {
      await writer.close().catch(() => {});
      await child.status;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** Unix seconds of a ClickHouse DateTime text ("YYYY-MM-DD hh:mm:ss") written in time zone `timeZone`. */
export function dateTimeToUnix(text: string, timeZone: string): number {
  const m = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/.exec(text);
  if (!m) throw new Error(`not a DateTime: ${text}`);
  const asUtc = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) / 1000;
  // The zone's offset at that moment: format the UTC guess in the zone and compare.
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat("en-US", {
      timeZone,
      hourCycle: "h23",
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    }).formatToParts(new Date(asUtc * 1000)).map((p) => [p.type, p.value]),
  );
  const shown =
    Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second) / 1000;
  return asUtc - (shown - asUtc);
}

/** Runs a command, returns its exit code and output (stdout + stderr). */
export async function runTool(
  cmd: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<{ code: number; output: string }> {
  const result = await new Deno.Command(cmd, {
    args,
    cwd: options.cwd,
    env: options.env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: result.code, output: decoder.decode(result.stdout) + decoder.decode(result.stderr) };
}

/** Runs a tool and throws with its output when it exits non-zero. */
export async function mustRun(
  cmd: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<string> {
  const { code, output } = await runTool(cmd, args, options);
  if (code !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${code}:\n${output}`);
  return output;
}

/** A tool of the .venv ./dev makes (kubernetes-validate, check-jsonschema). */
export function venvTool(name: string): string {
  return `${ROOT}.venv/bin/${name}`;
}

/** Ingest's ClickHouse interface over an engine (applyMigrations and the like run on chDB's session through it). */
export function asIngestClickHouse(engine: SqlEngine): ClickHouse {
  return {
    url: engine.name,
    exec: async (statement) => {
      await engine.run(statement.text);
    },
    query: async <T>(statement: Sql) =>
      (await engine.run(`${statement.text}\nFORMAT JSONEachRow`)).split("\n").filter((l) => l !== "").map((
        l,
      ) => JSON.parse(l) as T),
    insertJsonEachRow: async (table, columns, rows) => {
      if (rows.length === 0) return;
      await engine.run(
        `INSERT INTO ${table.database}.${table.table} (${columns.join(", ")}) FORMAT JSONEachRow\n` +
          rows.map((r) => JSON.stringify(r)).join("\n"),
      );
    },
    insertBody: () => Promise.reject(new Error("not supported here")),
    ping: () => Promise.resolve(true),
  };
}

/**
 * YAML documents as objects, read by ruamel.yaml from the .venv ./dev makes (check-jsonschema's own YAML
 * library), so that the tests need no YAML package of their own. Merge keys and anchors are resolved.
 */
export async function parseYamlDocuments(text: string): Promise<Record<string, unknown>[]> {
  const child = new Deno.Command(`${ROOT}.venv/bin/python`, {
    args: [
      "-c",
      "import sys, json\nfrom ruamel.yaml import YAML\n" +
      "print(json.dumps([d for d in YAML(typ='safe').load_all(sys.stdin.read()) if d is not None], default=str))",
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const out = await child.output();
  if (!out.success) throw new Error(`YAML: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}
