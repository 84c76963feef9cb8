/**
 * The V8 worker threads' priority is set in a child process, so the test runner's own threads keep theirs
 * and every thread is read back from /proc as the kernel sees it.
 */
import { assert, assertEquals } from "@tailwatch/testing";
import { listProcessThreads, lowerV8WorkerPriority, type ProcessThread } from "./thread_priority.ts";

async function threadsAfterLowering(
  nice: number,
): Promise<{ before: ProcessThread[]; after: ProcessThread[] }> {
  const script = `
    import { listProcessThreads, lowerV8WorkerPriority } from ${
    JSON.stringify(import.meta.resolve("./thread_priority.ts"))
  };
    const before = listProcessThreads();
    lowerV8WorkerPriority(${nice});
    console.log(JSON.stringify({ before, after: listProcessThreads() }));
  `;
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-lock", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(output.success, new TextDecoder().decode(output.stderr));
  return JSON.parse(new TextDecoder().decode(output.stdout));
}

Deno.test({
  name: "V8's worker threads get the nice value asked for and every other thread keeps its own",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const { before, after } = await threadsAfterLowering(7);
    const workers = after.filter((thread) => thread.name.startsWith("V8 "));
    assert(workers.length > 0, `no V8 worker thread among ${JSON.stringify(after)}`);
    for (const worker of workers) assertEquals(worker.nice, 7, JSON.stringify(worker));
    const others = after.filter((thread) => !thread.name.startsWith("V8 "));
    assert(others.length > 0, "the main thread is listed");
    for (const thread of others) {
      const earlier = before.find((candidate) => candidate.tid === thread.tid);
      if (earlier) {
        assertEquals(thread.nice, earlier.nice, `${thread.name} (${thread.tid}) kept its nice value`);
      }
    }
    assert(
      before.some((thread) => thread.name.startsWith("V8 ") && thread.nice !== 7),
      "the test changed something",
    );
  },
});

Deno.test("a nice value outside 0-19 is refused before any thread is touched", () => {
  const niceOf = () => listProcessThreads().map((thread) => [thread.tid, thread.nice]);
  const before = niceOf();
  for (const nice of [-1, 20, 1.5, Number.NaN]) {
    let message = "";
    try {
      lowerV8WorkerPriority(nice);
    } catch (error) {
      message = (error as Error).message;
    }
    assert(message.includes("0 to 19"), `nice ${nice}: ${message}`);
  }
  assertEquals(niceOf(), before);
});
