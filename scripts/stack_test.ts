/**
 * `./dev up`'s readiness checks (stack.ts): a component counts as up only once its readiness probe answers 2xx
 * (or, without a probe, its process stays alive); one that does not is named, with the probe's answer.
 */
import { assert, assertEquals, freePort } from "@tailwatch/testing";
import { type Component, NotReady, probe, runStep, waitReady } from "./stack.ts";

const component = (name: string, ready: () => Promise<string | undefined>, settleMs?: number): Component => ({
  name,
  available: () => true,
  command: [],
  ready,
  ...(settleMs === undefined ? {} : { settleMs }),
});

async function expectNotReady(run: Promise<void>): Promise<NotReady> {
  try {
    await run;
  } catch (error) {
    assert(error instanceof NotReady, `a NotReady: ${error}`);
    return error;
  }
  throw new Error("expected NotReady");
}

Deno.test("probe: undefined for 2xx, else the status and the body the process gave, or why it did not answer", async () => {
  let answer = { status: 503, body: "not ready: no batch committed for 20 s while messages wait\n" };
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Response(answer.body, { status: answer.status }),
  );
  const url = `http://127.0.0.1:${server.addr.port}/readyz`;
  const reason = await probe(url);
  assert(reason?.includes("503") && reason.includes("no batch committed"), reason);
  answer = { status: 200, body: "ready: consuming\n" };
  assertEquals(await probe(url), undefined);
  const closed = await probe(`http://127.0.0.1:${freePort()}/readyz`);
  assert(closed !== undefined && closed.length > 0, "a port nobody listens on is not ready");
});

Deno.test("waitReady names a component whose probe keeps saying no, or whose process exits", async () => {
  const sleeper = new Deno.Command("sleep", { args: ["30"] }).spawn();
  try {
    const refused = await expectNotReady(
      waitReady(
        component("ingest", () => Promise.resolve("readyz answered 503: consumer: gone")),
        sleeper.pid,
        600,
      ),
    );
    assertEquals([refused.component, refused.reason], ["ingest", "readyz answered 503: consumer: gone"]);
    assert(refused.message.startsWith("ingest is not ready: readyz answered 503"), refused.message);
    // Ready at once when the probe says so; a component without a probe once it stayed alive long enough.
    await waitReady(component("catalog", () => Promise.resolve(undefined)), sleeper.pid, 600);
    const started = Date.now();
    await waitReady(component("profiler", () => Promise.resolve(undefined), 400), sleeper.pid, 2_000);
    assert(Date.now() - started >= 400, "alive for its settle time first");
  } finally {
    sleeper.kill("SIGKILL");
    await sleeper.status;
  }
  const quitter = new Deno.Command("true").spawn();
  await quitter.status;
  const exited = await expectNotReady(
    waitReady(component("profiler", () => Promise.resolve(undefined), 5_000), quitter.pid, 10_000),
  );
  assertEquals([exited.component, exited.reason], ["profiler", "its process exited"]);
});

Deno.test("a one-shot step (setup) is done when it exits 0; otherwise it is named with its exit code and log", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const step = (script: string): Component => ({
      name: "setup",
      available: () => true,
      oneShot: true,
      command: ["bash", "-c", script],
      ready: () => Promise.resolve(undefined),
    });
    await runStep(step("echo stream created; echo migrations up to date >&2"), dir);
    const log = await Deno.readTextFile(`${dir}/setup.log`);
    assert(log.includes("stream created") && log.includes("migrations up to date"), log);
    const failed = await expectNotReady(
      runStep(step("echo 'NATS refused: Authorization Violation' >&2; exit 1"), dir),
    );
    assertEquals([failed.component, failed.reason], ["setup", "exited with code 1"]);
    assert(failed.message.includes("Authorization Violation"), failed.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
