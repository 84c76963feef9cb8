import { assertEquals } from "@tailwatch/testing";
import { createDeadlineQueue } from "./deadlines.ts";

Deno.test("deadlines fire in time order, removed ones never", async () => {
  const queue = createDeadlineQueue();
  const fired: string[] = [];
  const now = Date.now();
  queue.add(now + 30, () => fired.push("c"));
  queue.add(now + 10, () => fired.push("a"));
  const removed = queue.add(now + 15, () => fired.push("removed"));
  queue.add(now + 20, () => fired.push("b"));
  queue.remove(removed);
  assertEquals(queue.size, 3);
  await new Promise((resolve) => setTimeout(resolve, 80));
  assertEquals(fired, ["a", "b", "c"]);
  assertEquals(queue.size, 0);
});

Deno.test("a pending deadline does not keep the process alive", async () => {
  // A process whose only pending work is a deadline a minute away must exit now, not in a minute.
  const script = `
    import { createDeadlineQueue } from ${JSON.stringify(new URL("./deadlines.ts", import.meta.url).href)};
    createDeadlineQueue().add(Date.now() + 60_000, () => console.log("fired"));
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", script],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const watchdog = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const result = await child.output();
  clearTimeout(watchdog);
  const output = new TextDecoder().decode(result.stdout) + new TextDecoder().decode(result.stderr);
  assertEquals([result.code, result.signal, output.trim()], [0, null, ""], "the process exited on its own");
});
