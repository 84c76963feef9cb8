/**
 * The well-behaved client of the HTTP/2 attack tests, in a process of its own (so that the attacker's CPU in
 * the test process does not count in its latency): the kit's client calls catalog's GetProduct on its own
 * connection every INTERVAL_MS, and answers commands on stdin, one a line, with one JSON line on stdout:
 * `mark` (start a new window of calls), `report` (the window's calls: count, failures, p50/p99/max ms),
 * `stop` (the report, then exit).
 *
 *   deno run -A services/tests/h2_client.ts PORT [INTERVAL_MS]
 */
import { CatalogService } from "@tailwatch/proto/catalog/v1";
import { createClient } from "@tailwatch/grpc";

/** What the client saw in a window: every call's outcome, and the latencies (reported, never asserted). */
export interface ClientReport {
  calls: number;
  failures: string[];
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export function summarize(latencies: number[], failures: string[]): ClientReport {
  const sorted = [...latencies].sort((a, b) => a - b);
  const at = (q: number) =>
    sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN;
  return {
    calls: latencies.length + failures.length,
    failures: [...failures],
    p50Ms: at(0.5),
    p99Ms: at(0.99),
    maxMs: sorted.at(-1) ?? NaN,
  };
}

async function main(port: number, intervalMs: number): Promise<void> {
  const client = createClient(CatalogService, `127.0.0.1:${port}`, { defaultTimeoutMs: 10_000 });
  let latencies: number[] = [];
  let failures: string[] = [];
  let stopped = false;
  const calling = (async () => {
    while (!stopped) {
      const started = performance.now();
      try {
        await client.getProduct({ productId: "kibble-salmon-2kg" });
        latencies.push(performance.now() - started);
      } catch (error) {
        failures.push(String((error as Error).message ?? error));
      }
      const left = intervalMs - (performance.now() - started);
      if (left > 0) await new Promise((resolve) => setTimeout(resolve, left));
    }
  })();
  const encoder = new TextEncoder();
  const answer = (value: unknown) => Deno.stdout.writeSync(encoder.encode(JSON.stringify(value) + "\n"));
  let buffered = "";
  for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
    buffered += chunk;
    let newline;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const command = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (command === "mark") {
        latencies = [];
        failures = [];
        answer({ marked: true });
      } else if (command === "report") {
        answer(summarize(latencies, failures));
      } else if (command === "stop") {
        stopped = true;
        await calling;
        client.close();
        answer(summarize(latencies, failures));
        return;
      }
    }
  }
}

if (import.meta.main) {
  await main(Number(Deno.args[0]), Number(Deno.args[1] ?? 10));
  Deno.exit(0);
}
