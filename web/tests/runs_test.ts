/**
 * The Runs page: the load runs in the results folder, newest first, each with its counts, cross-check verdict,
 * p99s and links; their reports and JSON served as written, and nothing else of the folder or outside it; the
 * same runs as markers on the overview.
 */
import { assert, assertEquals, startClickHouseServer } from "@tailwatch/testing";
import type { OverviewData } from "../islands/model.ts";
import { createWebServer } from "../server.ts";
import { migrate, webConfig } from "./helpers.ts";

const options = { sanitizeOps: false, sanitizeResources: false };

/** A load run's JSON as load/run.ts writes it (the fields the page reads, and some it does not). */
function loadRunJson(o: {
  scenario: string;
  runId: string;
  startedAtMs: number;
  ok: boolean;
  failures?: string[];
}) {
  return {
    kind: "tailwatch-load-run",
    version: 1,
    scenario: o.scenario,
    runId: o.runId,
    scheduleText: "constant 1000 rps",
    durationS: 60,
    startedAtMs: o.startedAtMs,
    endedAtMs: o.startedAtMs + 60_000,
    host: { note: "the machine was shared: 0.34 cores busy with other processes" },
    client: {
      total: 60_004,
      ok: 59_999,
      errors: 0,
      cancelled: 5,
      achievedRps: 1000.07,
      methods: [{ method: "/orders.v1.OrderService/CreateOrder", corrected: { p99: 33_662.25 } }],
    },
    crossCheck: {
      ok: o.ok,
      failures: o.failures ?? [],
      latency: [{
        method: "/orders.v1.OrderService/CreateOrder",
        client: { p50: 1256.07, p99: 32_611.4, p999: 68_389.6 },
        server: { p99: 24_326 },
        profiler: { p99: 24_383 },
      }],
    },
  };
}

Deno.test(
  "runs: every load run listed with its verdict and p99s; its report and JSON served, nothing else",
  options,
  async () => {
    await using ch = await startClickHouseServer();
    await migrate(ch);
    const stateDir = await Deno.makeTempDir({ prefix: "tailwatch-web-runs-" });
    const results = `${stateDir}/results`;
    await Deno.mkdir(results);
    try {
      const now = Date.now();
      const older = { file: "load-2026-12-01T10-00-00.json", startedAtMs: now - 3_600_000 };
      const newer = { file: "load-2026-12-02T10-00-00.json", startedAtMs: now - 600_000 };
      await Deno.writeTextFile(
        `${results}/${older.file}`,
        JSON.stringify(
          loadRunJson({
            scenario: "orders-create",
            runId: "run-older",
            startedAtMs: older.startedAtMs,
            ok: true,
          }),
        ),
      );
      const report = "<!doctype html><title>report</title><script>document.title = 'x'</script>";
      await Deno.writeTextFile(`${results}/load-2026-12-01T10-00-00.html`, report);
      await Deno.writeTextFile(
        `${results}/${newer.file}`,
        JSON.stringify(
          loadRunJson({
            scenario: "store-mix",
            runId: "run-newer",
            startedAtMs: newer.startedAtMs,
            ok: false,
            failures: ["orders CreateOrder OK: 12 rows missing"],
          }),
        ),
      );
      await Deno.writeTextFile(`${results}/load-broken.json`, "{ not json");
      await Deno.writeTextFile(`${results}/notes.txt`, "not a run");
      await Deno.writeTextFile(`${stateDir}/secret.txt`, "outside the results folder");
      await Deno.symlink(`${stateDir}/secret.txt`, `${results}/load-link.html`);

      await using server = await createWebServer(webConfig(ch, stateDir), { alertIntervalMs: 0 });
      const at = (path: string) => server.handler(new Request(`http://127.0.0.1:8080${path}`));

      const page = await at("/runs");
      assertEquals(page.status, 200);
      const body = await page.text();
      assert(body.includes('href="/runs"'), "Runs in the navigation");
      const newerAt = body.indexOf('data-run="run-newer"');
      const olderAt = body.indexOf('data-run="run-older"');
      assert(newerAt > 0 && olderAt > newerAt, "both runs, the newest first");
      const olderRow = body.slice(olderAt, body.indexOf("</tr>", olderAt));
      const newerRow = body.slice(newerAt, body.indexOf("</tr>", newerAt));
      for (
        const text of [
          "orders-create",
          "60,004",
          "59,999 (99.99 %)",
          "green",
          "32.6 ms / 33.7 ms / 24.3 ms / 24.4 ms",
          'href="/runs/load-2026-12-01T10-00-00.html"',
          'href="/runs/load-2026-12-01T10-00-00.json"',
          `from=${older.startedAtMs - 60_000}`,
          "the machine was shared",
        ]
      ) assert(olderRow.includes(text), `the older run's row shows ${text}: ${olderRow}`);
      assert(newerRow.includes("failed: orders CreateOrder OK: 12 rows missing"), newerRow);
      assert(newerRow.includes("no report"), "a run without a report says so");
      assert(/Not load runs[^<]*load-broken\.json/.test(body), "the unreadable file is named");
      assert(!body.includes("notes.txt"), "other files are not runs");

      const served = await at("/runs/load-2026-12-01T10-00-00.html");
      assertEquals(served.status, 200);
      assertEquals(await served.text(), report);
      assertEquals(served.headers.get("content-type"), "text/html; charset=utf-8");
      assert(
        served.headers.get("content-security-policy")!.startsWith("default-src 'none'"),
        "the report reaches nothing",
      );
      const jsonFile = await at(`/runs/${older.file}`);
      assertEquals(jsonFile.status, 200);
      assertEquals((await jsonFile.json()).runId, "run-older");

      for (
        const path of [
          "/runs/..%2Fsecret.txt",
          "/runs/load-link.html",
          "/runs/notes.txt",
          "/runs/load-none.json",
        ]
      ) {
        const response = await at(path);
        assertEquals(response.status, 404, path);
        assert(!(await response.text()).includes("outside the results folder"), `${path} leaks nothing`);
      }
      assertEquals((await at("/runs/%E0%A4%A")).status, 400, "malformed percent-encoding is a 400");
      assertEquals((await at("/service/%E0%A4%A")).status, 400, "on every page with a path segment");
      assertEquals((await at("/runs?sort=old")).status, 400, "unknown parameters are refused");

      // The same runs as markers on the overview.
      const view = await at(`/api/view?page=overview&range=custom&from=${now - 7_200_000}&to=${now}`);
      assertEquals(view.status, 200);
      const overview = await view.json() as OverviewData;
      assertEquals(
        overview.loadRuns.map((r) => [r.scenario, r.startedAtMs]),
        [["orders-create", older.startedAtMs], ["store-mix", newer.startedAtMs]],
      );
    } finally {
      await Deno.remove(stateDir, { recursive: true });
    }
  },
);

Deno.test("runs: an empty or missing results folder says how to make a run", options, async () => {
  await using ch = await startClickHouseServer();
  await migrate(ch);
  const stateDir = await Deno.makeTempDir({ prefix: "tailwatch-web-runs-" });
  try {
    await using server = await createWebServer(webConfig(ch, stateDir), { alertIntervalMs: 0 });
    const page = await server.handler(new Request("http://127.0.0.1:8080/runs"));
    assertEquals(page.status, 200);
    assert((await page.text()).includes("No load runs yet: run <code>./dev load orders-create</code>"));
  } finally {
    await Deno.remove(stateDir, { recursive: true });
  }
});
