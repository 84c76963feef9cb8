/**
 * Runs vegeta (github.com/tsenart/vegeta, `vegeta attack | vegeta encode --to json`) against the services' REST
 * shims and streams its per-request results as they come, so a run shows progress while it runs.
 */

export interface VegetaTarget {
  method: string;
  /** Full URL on a loopback address. */
  url: string;
  body?: unknown;
  headers?: Record<string, string>;
}

export interface VegetaRun {
  /** Sent in turn (vegeta's round robin), so their proportions are the mix. */
  targets: VegetaTarget[];
  /** Requests per second; 0 = as fast as `maxWorkers` allow (closed model). */
  rate: number;
  durationS: number;
  /** Workers at the start; vegeta adds more (up to maxWorkers) when all are busy, so the rate holds. */
  workers?: number;
  maxWorkers?: number;
  timeoutS?: number;
  /** Header on every request (the load run id). */
  headers?: Record<string, string>;
}

/** One request as vegeta reports it. */
export interface VegetaResult {
  /** The pacer's hit number (0-based): which intended send time the request had. */
  seq: number;
  /** Epoch µs when the request was sent, and its latency. */
  startUs: number;
  latencyUs: number;
  /** HTTP status; 0 when there was no answer (timeout, connection refused). */
  code: number;
  error: string;
  method: string;
  url: string;
}

export interface VegetaReport {
  results: number;
  /** CPU seconds of `vegeta attack` and `vegeta encode`. */
  cpuSeconds: number;
}

const LOOPBACK_URL = /^http:\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\]):\d+\//;

/** vegeta's JSON target lines (`-format=json`), each header merged with the run's. */
export function vegetaTargetLines(run: Pick<VegetaRun, "targets" | "headers">): string {
  return run.targets.map((target) => {
    if (!LOOPBACK_URL.test(target.url)) {
      throw new Error(`vegeta target must be a loopback URL, got ${target.url}`);
    }
    const header: Record<string, string[]> = {};
    for (const [name, value] of Object.entries({ ...run.headers, ...target.headers })) header[name] = [value];
    if (target.body !== undefined) header["content-type"] = ["application/json"];
    const line: Record<string, unknown> = { method: target.method, url: target.url, header };
    if (target.body !== undefined) {
      line.body = btoa(String.fromCharCode(...new TextEncoder().encode(JSON.stringify(target.body))));
    }
    return JSON.stringify(line);
  }).join("\n") + "\n";
}

/** One line of `vegeta encode --to json` as a VegetaResult. */
export function parseVegetaLine(line: string): VegetaResult {
  const r = JSON.parse(line) as {
    seq: number;
    code: number;
    timestamp: string;
    latency: number;
    error: string;
    method: string;
    url: string;
  };
  const match = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/.exec(r.timestamp);
  const startUs = match
    ? Date.parse(`${match[1]}${match[3]}`) * 1000 + Number((match[2] ?? "").padEnd(6, "0").slice(0, 6))
    : NaN;
  return {
    seq: r.seq,
    startUs,
    latencyUs: r.latency / 1000,
    code: r.code,
    error: r.error ?? "",
    method: r.method,
    url: r.url,
  };
}

function cpuOf(pid: number): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[14 - 3]) + Number(fields[15 - 3])) / 100;
  } catch {
    return NaN;
  }
}

/** Runs one attack; `onResult` gets every request as vegeta finishes it. */
export async function runVegeta(
  run: VegetaRun,
  onResult: (result: VegetaResult) => void,
): Promise<VegetaReport> {
  const dir = await Deno.makeTempDir({ prefix: "tailwatch-vegeta-" });
  try {
    const targetsFile = `${dir}/targets.json`;
    await Deno.writeTextFile(targetsFile, vegetaTargetLines(run));
    const args = [
      "attack",
      "-format=json",
      `-targets=${targetsFile}`,
      `-rate=${run.rate === 0 ? "0" : `${run.rate}/1s`}`,
      `-duration=${run.durationS}s`,
      `-timeout=${run.timeoutS ?? 20}s`,
      `-workers=${run.workers ?? 10}`,
      "-max-body=0",
    ];
    if (run.maxWorkers !== undefined) args.push(`-max-workers=${run.maxWorkers}`);
    const attack = new Deno.Command("vegeta", { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .spawn();
    const encode = new Deno.Command("vegeta", {
      args: ["encode", "--to", "json"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const cpu = { attack: 0, encode: 0 };
    const sampler = setInterval(() => {
      cpu.attack = cpuOf(attack.pid) || cpu.attack;
      cpu.encode = cpuOf(encode.pid) || cpu.encode;
    }, 250);
    const piped = attack.stdout.pipeTo(encode.stdin);
    let results = 0;
    let pending = "";
    const decoder = new TextDecoder();
    for await (const chunk of encode.stdout) {
      pending += decoder.decode(chunk, { stream: true });
      let newline: number;
      while ((newline = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        if (line.trim() === "") continue;
        onResult(parseVegetaLine(line));
        results++;
      }
    }
    if (pending.trim() !== "") {
      onResult(parseVegetaLine(pending));
      results++;
    }
    await piped.catch(() => {});
    const [attackStatus, encodeStatus] = await Promise.all([attack.status, encode.status]);
    clearInterval(sampler);
    const stderr = async (stream: ReadableStream<Uint8Array>) => await new Response(stream).text();
    if (!attackStatus.success) throw new Error(`vegeta attack failed: ${await stderr(attack.stderr)}`);
    if (!encodeStatus.success) throw new Error(`vegeta encode failed: ${await stderr(encode.stderr)}`);
    await attack.stderr.cancel().catch(() => {});
    await encode.stderr.cancel().catch(() => {});
    return { results, cpuSeconds: cpu.attack + cpu.encode };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
