/**
 * The dashboard in a real browser (Debian's chromium through playwright-core) on a real stack: nats-server,
 * clickhouse-server, the ingest worker, the three services and the profiler as processes, load running.
 * Every page opens; a live update arrives without reload; a slow request leads to its trace tree; an alert
 * rule added in the page fires when payments' latency is raised (admin SetFaults) and resolves when it is
 * lowered; a chart's copied SQL gives, as the read-only user, the rows the chart shows; ClickHouse stopped
 * for a few seconds shows as an outage and the page recovers; a web server restart is followed by the page.
 * Screenshots go to a temporary folder whose path is printed.
 */
import { chromium, type Page } from "playwright-core";
import {
  assert,
  assertEquals,
  CLICKHOUSE_ADMIN,
  freePort,
  spawnLogged,
  startClickHouseServer,
  startNatsServer,
  waitUntil,
} from "@tailwatch/testing";
import { startStackProcesses } from "@tailwatch/load";
import { applyRequestEventsStream } from "@tailwatch/nats";
import { createWebServer, type WebServer } from "../server.ts";
import { migrate, readonlyCells, webConfig } from "./helpers.ts";
import { startIngestProcess } from "@tailwatch/ingest/testing";

const CHROMIUM = "/usr/bin/chromium";
const ROOT = new URL("../../", import.meta.url).pathname;
const ADMIN_TOKEN = "browser-test-admin-token";
const options = { sanitizeOps: false, sanitizeResources: false };

function chromiumPresent(): boolean {
  try {
    Deno.statSync(CHROMIUM);
    return true;
  } catch {
    return false;
  }
}

async function profilerBinary(): Promise<string | undefined> {
  const path = `${ROOT}native/profiler/build/tailwatch-profiler`;
  try {
    Deno.statSync(path);
    return path;
  } catch {
    const build = await new Deno.Command(`${ROOT}native/profiler/scripts/build`, {
      stdout: "null",
      stderr: "null",
    })
      .output().catch(() => undefined);
    return build?.success ? path : undefined;
  }
}

async function profilerFlags(binary: string): Promise<string[]> {
  const help = new TextDecoder().decode(
    (await new Deno.Command(binary, { args: ["--help"] }).output()).stdout,
  );
  return help.includes("--settle") ? ["--settle", "1s"] : ["--late-margin", "3s"];
}

Deno.test({
  name: "the dashboard in chromium on a live stack",
  ignore: !chromiumPresent(),
  ...options,
  async fn(t) {
    const out = await Deno.makeTempDir({ prefix: "tailwatch-web-browser-" });
    console.log(`screenshots and logs: ${out}`);
    await using nats = await startNatsServer();
    await applyRequestEventsStream(nats.url); // the setup step's stream: ingest and the services only check it
    await using ch = await startClickHouseServer();
    await migrate(ch);
    const ingestPort = freePort();
    await using _ingest = await startIngestProcess({
      natsUrl: nats.url,
      clickhouseUrl: ch.url,
      metricsPort: ingestPort,
      logPath: `${out}/ingest.log`,
      env: { INGEST_BATCH_WAIT_MS: "100" },
    });
    await waitUntil("ingest ready", async () => {
      const r = await fetch(`http://127.0.0.1:${ingestPort}/readyz`);
      await r.body?.cancel();
      return r.ok;
    }, 60_000);
    await using stack = await startStackProcesses(
      { NATS_URL: nats.url, ADMIN_TOKEN, V8_WORKER_NICE: "0" },
      out,
    );
    const binary = await profilerBinary();
    assert(binary, "the profiler builds (native/profiler/scripts/build)");
    await using _profiler = await spawnLogged(binary, [
      "--clickhouse-url",
      ch.url,
      "--user",
      CLICKHOUSE_ADMIN.username,
      "--password",
      CLICKHOUSE_ADMIN.password,
      ...await profilerFlags(binary),
    ], `${out}/profiler.log`);

    // Load: orders over REST (fans out to catalog and payments over gRPC), about 100 requests per second.
    let loading = true;
    const orders = `http://127.0.0.1:${stack.orders.httpPort}`;
    const load = Promise.all(Array.from({ length: 4 }, async () => {
      while (loading) {
        const started = Date.now();
        try {
          const r = await fetch(`${orders}/v1/orders`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
              customer_id: "browser",
              lines: [{ product_id: "treats-tuna-60g", quantity: 1 }],
              card_number: "4242424242424242",
            }),
          });
          await r.body?.cancel();
        } catch {
          // the stack is being stopped
        }
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, 40 - (Date.now() - started))));
      }
    }));
    const setPaymentsFaults = async (faults: unknown) => {
      const r = await fetch(`http://127.0.0.1:${stack.payments.httpPort}/admin/v1/faults`, {
        method: "PUT",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify({ faults }),
      });
      assertEquals(r.status, 200, await r.text());
    };

    const webPort = freePort();
    const config = webConfig(ch, out, {
      WEB_PORT: String(webPort),
      WEB_METRICS_TARGETS:
        `catalog=http://127.0.0.1:${stack.catalog.httpPort}/metrics,orders=${orders}/metrics,` +
        `payments=http://127.0.0.1:${stack.payments.httpPort}/metrics,ingest=http://127.0.0.1:${ingestPort}/metrics`,
      WEB_SAMPLE_INTERVAL_MS: "1000",
    });
    let web: WebServer = await createWebServer(config);
    await web.listen();
    const base = `http://127.0.0.1:${webPort}`;

    // Wait until the pipeline has produced percentiles for the services.
    await waitUntil(
      "percentiles of every service",
      async () => {
        const d = await (await fetch(`${base}/api/view?page=overview&range=5m&window=10`)).json();
        return d.now.rows.length >= 3;
      },
      90_000,
      500,
    );

    const context = await chromium.launchPersistentContext(`${out}/chromium-profile`, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      viewport: { width: 1400, height: 1000 },
    });
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
    const errors: string[] = [];
    const page = await context.newPage();
    page.on("pageerror", (error) => errors.push(String(error)));
    const shot = (name: string, p: Page = page) =>
      p.screenshot({ path: `${out}/${name}.png`, fullPage: true });
    const liveState = () => page.locator("[data-live-state]").first().getAttribute("data-live-state");

    try {
      await t.step("overview: complete, then updated live without reload", async () => {
        await page.goto(`${base}/?range=5m&window=10`);
        await waitUntil("live", async () => await liveState() === "live", 20_000, 100);
        const first = await page.locator("[data-updated]").first().textContent();
        await waitUntil(
          "a live update",
          async () => (await page.locator("[data-updated]").first().textContent()) !== first,
          10_000,
          100,
        );
        const rps = await page.locator('tr[data-service="orders"] td[data-col="rps"]').textContent();
        assert(rps && rps !== "–", `orders rps shown: ${rps}`);
        await page.locator("#chart-rps canvas").first().waitFor({ timeout: 10_000 });
        // Every process's CPU and memory (services and ingest from their /metrics, web from /proc).
        await waitUntil(
          "process metrics of every process",
          async () => {
            const rows = await page.locator("#table-processes tbody tr").allTextContents();
            return rows.length === 5 && rows.every((r) => /\d+ %.*\d+ MiB/.test(r));
          },
          10_000,
          200,
        );
        await page.keyboard.press("Tab");
        assertEquals(await page.evaluate(() => document.activeElement?.textContent), "Skip to content");
        await shot("overview");
      });

      await t.step("every page opens", async () => {
        for (
          const [name, path] of [
            ["service-orders", "/service/orders?range=5m&window=10"],
            ["service-payments", "/service/payments?range=5m&window=60"],
            ["service-catalog", "/service/catalog?range=15m&window=300"],
            ["traces", "/traces?range=5m"],
            ["alerts", "/alerts"],
          ]
        ) {
          await page.goto(`${base}${path}`);
          await waitUntil(`${name} live`, async () => await liveState() === "live", 20_000, 100);
          await shot(name);
        }
        await page.goto(`${base}/runs`);
        assertEquals(await page.textContent("main h1"), "Load runs");
        await shot("runs");
        // Without JavaScript the first render is complete: numbers, not empty boxes.
        const html = await (await fetch(`${base}/?range=5m&window=10`)).text();
        assert(/<td data-col="p99_us">[0-9.]+ (µs|ms)<\/td>/.test(html), "server-rendered p99");
      });

      await t.step("a slow request leads to its trace tree", async () => {
        await page.goto(`${base}/traces?range=5m&service=orders`);
        const link = page.locator("a.trace-link").first();
        await link.waitFor({ timeout: 10_000 });
        await link.click();
        await page.locator("#trace-tree").waitFor({ timeout: 10_000 });
        const spans = await page.locator("#trace-tree tbody tr").count();
        assert(spans >= 3, `an order's trace spans orders, catalog and payments: ${spans} spans`);
        const services = await page.locator("#trace-tree tbody tr th strong").allTextContents();
        for (const s of ["orders", "catalog", "payments"]) {
          assert(services.includes(s), `${s} in ${services}`);
        }
        assert(
          (await page.locator("#trace-tree tbody tr[data-depth='1']").count()) >= 2,
          "children under the order",
        );
        await shot("trace");
      });

      await t.step("an alert rule added in the page fires and resolves", async () => {
        await page.goto(`${base}/alerts`);
        await page.fill('input[name="id"]', "payments-slow");
        await page.fill('input[name="name"]', "Payments slow");
        await page.selectOption('select[name="kind"]', "p99_above");
        await page.selectOption('select[name="service"]', "payments");
        await page.fill('input[name="threshold"]', "20");
        await page.fill('input[name="for_s"]', "3");
        await page.selectOption('select[name="window_s"]', "10");
        await page.click('#rule-form button[type="submit"]');
        await page.waitForURL(/\/alerts\?msg=saved/);
        await page.locator('tr[data-rule="payments-slow"]').waitFor();
        await setPaymentsFaults({ fixed: { delay_ms: 40 } });
        await page.goto(`${base}/?range=5m&window=10`);
        await page.locator(".banner-alert").waitFor({ timeout: 60_000 });
        assert((await page.locator(".banner-alert").textContent())?.includes("Payments slow"));
        await shot("alert-firing");
        await setPaymentsFaults({});
        await page.goto(`${base}/alerts`);
        await page.locator('tr[data-rule="payments-slow"][data-state="ok"]').waitFor({ timeout: 60_000 });
        assertEquals(await page.locator(".banner-alert").count(), 0);
        assert(
          await page.locator('tr[data-event-rule="payments-slow"][data-event-state="firing"]').count() >= 1,
        );
        assert(
          await page.locator('tr[data-event-rule="payments-slow"][data-event-state="resolved"]').count() >= 1,
        );
        await shot("alert-resolved");
      });

      await t.step("a chart's copied SQL gives the chart's rows as the read-only user", async () => {
        await page.goto(`${base}/service/orders?range=5m&window=10`);
        await waitUntil("live", async () => await liveState() === "live", 20_000, 100);
        await page.click(".live-control button"); // pause: the page stops changing
        await waitUntil("paused", async () => await liveState() === "paused", 5000, 50);
        await page.click('[data-sql-for="status"]');
        const copied = await page.evaluate(() => navigator.clipboard.readText());
        const shown = await page.evaluate(() =>
          (globalThis as unknown as {
            __tailwatch: {
              data: { status: { sql: string; columns: string[]; rows: unknown[][] }; range: { toS: number } };
            };
          })
            .__tailwatch.data
        );
        assertEquals(copied, shown.status.sql);
        assert(shown.status.rows.length > 0, "the chart has rows");
        const cells = await readonlyCells(ch, copied, shown.status.columns);
        // Seconds that were final when the chart was drawn (ingest lags well under 10 s) are equal exactly.
        const settled = (rows: unknown[][]) => rows.filter((r) => Number(r[0]) < shown.range.toS - 10);
        assertEquals(settled(cells), settled(shown.status.rows));
        assert(settled(cells).length > 0);
        await page.click(".live-control button"); // resume
        await waitUntil("live again", async () => await liveState() === "live", 10_000, 100);
      });

      await t.step(
        "ClickHouse stopped for a few seconds: the page shows the outage and recovers",
        async () => {
          await page.goto(`${base}/?range=5m&window=10`);
          await waitUntil("live", async () => await liveState() === "live", 20_000, 100);
          await ch.stop("SIGKILL");
          await page.locator(".banner-down").waitFor({ timeout: 15_000 });
          assert(
            /ClickHouse unreachable since \d\d:\d\d:\d\d/.test(
              (await page.locator(".banner-down").textContent()) ?? "",
            ),
          );
          await shot("clickhouse-down");
          await new Promise((resolve) => setTimeout(resolve, 3000));
          await ch.start();
          await page.locator(".banner-down").waitFor({ state: "detached", timeout: 30_000 });
          const before = await page.locator("[data-updated]").first().textContent();
          await waitUntil(
            "updates again",
            async () => (await page.locator("[data-updated]").first().textContent()) !== before,
            10_000,
            100,
          );
          await shot("clickhouse-recovered");
        },
      );

      await t.step("the page reconnects by itself after a web server restart", async () => {
        await web.close();
        await waitUntil("reconnecting", async () => (await liveState()) !== "live", 10_000, 100);
        web = await createWebServer(config);
        await web.listen();
        await waitUntil("live again", async () => await liveState() === "live", 20_000, 100);
      });

      assertEquals(errors, [], "no script error in any page");
    } finally {
      await context.close();
      loading = false;
      await load;
      await web.close();
    }
  },
});
