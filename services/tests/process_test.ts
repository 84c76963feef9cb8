/** What a service process does to itself at start, seen from outside through /proc. */
import { assert, assertEquals } from "@tailwatch/testing";
import { listProcessThreads } from "@tailwatch/runtime";
import { startServiceProcess } from "@tailwatch/load";

const options = { sanitizeOps: false, sanitizeResources: false };
const isV8Worker = (name: string) => name.startsWith("V8 ");

Deno.test({
  name: "a service process runs V8's worker threads at V8_WORKER_NICE and its other threads as started",
  ignore: Deno.build.os !== "linux",
  ...options,
  async fn() {
    const dir = await Deno.makeTempDir();
    const ownNice = listProcessThreads().find((thread) => thread.tid === Deno.pid)!.nice;
    for (const v8WorkerNice of [11, 0]) {
      await using service = await startServiceProcess(
        "catalog",
        { EVENTS_ENABLED: "false", V8_WORKER_NICE: String(v8WorkerNice) },
        dir,
      );
      const pid = service.process.pid;
      const expected = v8WorkerNice === 0 ? ownNice : v8WorkerNice;
      // Readiness is answered on a later event-loop turn than the one in which main lowers the threads,
      // so once startServiceProcess returns they are set.
      const workers = listProcessThreads(pid).filter((thread) => isV8Worker(thread.name));
      assert(workers.length > 0, "V8 worker threads are listed");
      for (const thread of workers) {
        assertEquals(
          thread.nice,
          expected,
          `${thread.name} (${thread.tid}) with V8_WORKER_NICE=${v8WorkerNice}`,
        );
      }
      const others = listProcessThreads(pid).filter((thread) => !isV8Worker(thread.name));
      assert(others.some((thread) => thread.tid === pid), "the main thread is listed");
      for (const thread of others) {
        assertEquals(thread.nice, ownNice, `${thread.name} (${thread.tid}) runs at the nice it started with`);
      }
    }
    await Deno.remove(dir, { recursive: true });
  },
});
