/**
 * The ingest worker as bench.ts measures it, in a process of its own: `deno run -A load/bench/ingest_worker.ts
 * drain|follow`, configured by the environment variables in `BENCH_WORKER_ENV` (a JSON object of the
 * worker's variables, config.ts): exactly those the bench chose, none of its own environment.
 *
 * Why a process of its own: in production the worker runs alone (`ingest/main.ts`); inside the bench's
 * process it shared a heap with the benchmark's million prepared events and their bookkeeping, whose
 * collection paused everything in that process (one scavenge of 816 ms was logged right after the bench
 * dropped them), and a pause of 1.7-2.4 s landed in the freshness phase of two runs, read as events waiting
 * to be received and as a slow INSERT.
 *
 * It reports on stdout, one JSON object per line (the bench reads them from the process's log):
 *   {"ready": <epoch ms>}        the consumer is bound (the bench starts its meters now)
 *   {"done": <epoch ms>, "stats": IngestStats}
 *                                drain: nothing left to deliver; follow: stopped after SIGTERM
 *   {"result": BenchWorkerResult} follow: what the hooks recorded (after "done")
 * and exits 0 on SIGTERM once it has reported (drain: the bench reads the process's CPU time before it sends
 * it). A failure exits 1 with the error on stderr.
 */
import { createLogger } from "@tailwatch/runtime";
import { createIngestWorker, loadConfig } from "@tailwatch/ingest";
import type { Delivery } from "@tailwatch/nats";

/** What a following worker saw: for freshness legs, matched to rows by bench.ts. */
export interface BenchWorkerResult {
  /** [stream sequence, when JetStream stored it, when the worker received it] (epoch ms), first delivery. */
  received: Array<[number, number, number]>;
  /** [INSERT sent (= the rows' ingested_at_ms), when it returned] (epoch ms). */
  inserted: Array<[number, number]>;
}

const mode = Deno.args[0];
if (mode !== "drain" && mode !== "follow") {
  console.error("usage: deno run -A load/bench/ingest_worker.ts drain|follow");
  Deno.exit(2);
}

const say = (message: unknown) => console.log(JSON.stringify(message));
const terminated = Promise.withResolvers<void>();
const received = new Map<number, [number, number]>();
const inserted = new Map<number, number>();
const worker = createIngestWorker({
  config: loadConfig(JSON.parse(Deno.env.get("BENCH_WORKER_ENV") ?? "{}")),
  logger: createLogger("warn"),
  mode,
  deliverFromStart: mode === "drain",
  ...(mode === "follow"
    ? {
      onInserted: (sentAt: number, doneAt: number) =>
        inserted.set(sentAt, Math.max(doneAt, inserted.get(sentAt) ?? 0)),
      onReceived: (delivery: Delivery, at: number) => {
        if (!received.has(delivery.seq)) received.set(delivery.seq, [delivery.storedAtMs(), at]);
      },
    }
    : {}),
});
Deno.addSignalListener("SIGTERM", () => {
  worker.stop();
  terminated.resolve();
});
const readyPoll = setInterval(() => {
  if (!worker.ready()) return;
  clearInterval(readyPoll);
  say({ ready: Date.now() });
}, 5);
try {
  const stats = await worker.run();
  clearInterval(readyPoll);
  say({ done: Date.now(), stats });
  if (mode === "follow") {
    say({
      result: {
        received: [...received].map(([seq, [storedAt, at]]) => [seq, storedAt, at]),
        inserted: [...inserted],
      } satisfies BenchWorkerResult,
    });
  }
  await terminated.promise;
} catch (error) {
  console.error(error);
  Deno.exit(1);
}
Deno.exit(0);
