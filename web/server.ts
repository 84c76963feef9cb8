/**
 * The web server: Deno.serve, one handler, routes by path. Every route's bad input is a 400 that says what
 * was wrong (HTML for pages, JSON for /api); ClickHouse failures are states the pages show, not errors.
 */
import { createLogger, createRegistry, type Logger, registerProcessMetrics } from "@tailwatch/runtime";
import { type App, json, type RequestContext, SECURITY_HEADERS } from "./app.ts";
import { createAlertEngine } from "./alerts.ts";
import { createAuth } from "./auth.ts";
import { buildAssets } from "./build.ts";
import { createReader } from "./clickhouse.ts";
import { isLoopback, type WebConfig } from "./config.ts";
import { createHub } from "./hub.ts";
import { BadRequest } from "./params.ts";
import { tables } from "./queries.ts";
import { alertsPage, alertsPost } from "./routes/alerts.tsx";
import { apiStream, apiTrace, apiView } from "./routes/api.ts";
import { errorPage } from "./routes/errors.tsx";
import { loginPage, loginPost, logoutPost } from "./routes/login.tsx";
import { overviewPage } from "./routes/overview.tsx";
import { servicePage } from "./routes/service.tsx";
import { tracePage } from "./routes/trace.tsx";
import { tracesPage } from "./routes/traces.tsx";
import { runFile, runsPage } from "./routes/runs.tsx";
import { createSampler, directMetricsSource, prometheusMetricsSource } from "./sampler.ts";
import { createViews } from "./views.ts";

export interface WebServer extends AsyncDisposable {
  readonly app: App;
  handler(request: Request): Promise<Response>;
  /** Listens on config.host:config.port; resolves with the port. */
  listen(): Promise<number>;
  close(): Promise<void>;
}

export interface WebServerOptions {
  logger?: Logger;
  /** Alert evaluation period (default 1000 ms; 0: only on demand, for tests). */
  alertIntervalMs?: number;
}

export async function createWebServer(config: WebConfig, options: WebServerOptions = {}): Promise<WebServer> {
  const logger = options.logger ?? createLogger(config.logLevel, { component: "web" });
  const registry = createRegistry();
  registerProcessMetrics(registry);
  const assets = await buildAssets();
  const reader = createReader({
    url: config.clickhouseUrl,
    username: config.clickhouseUser,
    password: config.clickhousePassword,
    database: config.database,
  });
  registry.counterFn("web_clickhouse_queries_total", "Queries sent to ClickHouse.", () => reader.queries());
  registry.gaugeFn("web_clickhouse_up", "1 while ClickHouse answers.", () => reader.status().ok ? 1 : 0);
  const t = tables(config.database);
  const sampler = createSampler({
    source: config.prometheusUrl === undefined
      ? directMetricsSource(config.metricsTargets, config.sampleIntervalMs)
      : prometheusMetricsSource({
        url: config.prometheusUrl,
        jobs: config.prometheusJobs,
        rateWindowS: config.prometheusRateWindowS,
        timeoutMs: Math.min(1500, config.sampleIntervalMs),
      }),
    intervalMs: config.sampleIntervalMs,
    historyS: config.historyS,
  });
  const alerts = createAlertEngine({
    reader,
    tables: t,
    rulesFile: config.alertRulesFile,
    historyFile: `${config.stateDir}/alerts.sqlite`,
    webhookAllowlist: config.webhookAllowlist,
    logger,
    intervalMs: options.alertIntervalMs,
  });
  const views = createViews({
    reader,
    tables: t,
    sampler,
    alerts,
    services: config.services,
    loadResultsDir: config.loadResultsDir,
    staleAfterS: config.staleAfterS,
    logger,
  });
  const hub = createHub({
    views,
    maxSubscribers: config.maxSseClients,
    maxViews: config.maxViews,
    logger,
    registry,
  });
  const auth = createAuth({
    required: config.authRequired,
    users: config.users,
    sessionTtlS: config.sessionTtlS,
    cookieSecure: config.cookieSecure,
  });
  registry.gaugeFn("web_sessions", "Signed-in sessions held.", () => auth.sessions());
  const requests = registry.counter("web_requests_total", "HTTP requests by route and status.", [
    "route",
    "status",
  ]);
  const app: App = { config, reader, views, hub, auth, alerts, assets, registry, logger };

  const staticAsset = (body: Uint8Array, type: string, versioned: boolean) =>
    new Response(body as BodyInit, {
      headers: {
        "content-type": type,
        "cache-control": versioned ? "public, max-age=31536000, immutable" : "no-cache",
        "x-content-type-options": "nosniff",
      },
    });

  /** A path segment's text; malformed percent-encoding is the client's mistake (400), not a crash. */
  const decodePathPart = (part: string): string => {
    try {
      return decodeURIComponent(part);
    } catch {
      throw new BadRequest([
        `the path segment ${JSON.stringify(part.slice(0, 60))} is not valid percent-encoding`,
      ]);
    }
  };

  const route = async (rc: RequestContext): Promise<[string, Response]> => {
    const { request, url } = rc;
    const path = url.pathname;
    const method = request.method;
    const isGet = method === "GET" || method === "HEAD";
    if (path === "/login") {
      if (isGet) return ["login", await loginPage(rc)];
      if (method === "POST") return ["login", await loginPost(rc)];
    }
    if (!rc.principal) {
      if (isGet && !path.startsWith("/api/")) {
        const next = encodeURIComponent(path + url.search);
        return ["auth", new Response(null, { status: 303, headers: { location: `/login?next=${next}` } })];
      }
      return ["auth", json({ error: "sign in first (POST /login)" }, 401)];
    }
    if (path === "/logout" && method === "POST") return ["logout", await logoutPost(rc)];
    if (path === "/alerts" && method === "POST") return ["alerts", await alertsPost(rc)];
    if (!isGet) return ["other", json({ error: `${method} is not allowed here` }, 405, { allow: "GET" })];
    if (path === "/") return ["overview", await overviewPage(rc)];
    if (path === "/traces") return ["traces", await tracesPage(rc)];
    if (path === "/alerts") return ["alerts", await alertsPage(rc)];
    if (path === "/runs") return ["runs", await runsPage(rc)];
    if (path === "/api/view") return ["api_view", await apiView(rc)];
    if (path === "/api/stream") return ["api_stream", await apiStream(rc)];
    let match = /^\/service\/([^/]+)$/.exec(path);
    if (match) return ["service", await servicePage(rc, decodePathPart(match[1]))];
    match = /^\/traces\/([^/]+)$/.exec(path);
    if (match) return ["trace", await tracePage(rc, decodePathPart(match[1]))];
    match = /^\/runs\/([^/]+)$/.exec(path);
    if (match) return ["run_file", await runFile(rc, decodePathPart(match[1]))];
    match = /^\/api\/trace\/([^/]+)$/.exec(path);
    if (match) return ["api_trace", await apiTrace(rc, decodePathPart(match[1]))];
    if (path.startsWith("/api/")) return ["other", json({ error: `no API at ${path.slice(0, 100)}` }, 404)];
    return ["other", await errorPage(rc, 404, "Not found", [`there is no page at ${path.slice(0, 200)}`])];
  };

  const handler = async (request: Request): Promise<Response> => {
    let url: URL;
    try {
      url = new URL(request.url);
    } catch {
      return new Response("bad request\n", { status: 400 });
    }
    const path = url.pathname;
    // Open to anyone who can connect: liveness, metrics (no secrets), the bundle.
    if (path === "/healthz") return new Response("ok\n");
    if (path === "/metrics") {
      return new Response(registry.render(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    }
    if (path === "/static/app.js" || path === "/static/app.css") {
      const versioned = url.searchParams.get("v") === assets.version;
      return path.endsWith(".js")
        ? staticAsset(assets.js, "text/javascript; charset=utf-8", versioned)
        : staticAsset(assets.css, "text/css; charset=utf-8", versioned);
    }
    // Without sign-in only loopback names may address this server (no DNS rebinding onto it).
    if (!auth.required) {
      const host = (request.headers.get("host") ?? "").replace(/:\d+$/, "");
      if (host !== "" && !isLoopback(host)) {
        return new Response(
          `refused: this server listens without sign-in and answers only to loopback names, not ${
            host.slice(0, 100)
          }\n`,
          { status: 421 },
        );
      }
    }
    const principal = auth.principal(request);
    const csrf = auth.csrfFor(request);
    const rc: RequestContext = {
      app,
      request,
      url,
      principal,
      csrf: csrf.token,
      setCookies: csrf.setCookie ? [csrf.setCookie] : [],
    };
    let name = "other";
    let response: Response;
    try {
      [name, response] = await route(rc);
    } catch (error) {
      if (error instanceof BadRequest) {
        response = path.startsWith("/api/")
          ? json({ error: "bad request", problems: error.problems }, 400)
          : await errorPage(rc, 400, "Bad request", error.problems);
      } else {
        logger.error("request failed", { path, error: String((error as Error)?.stack ?? error) });
        response = json({ error: "internal error; see the web server's log" }, 500);
      }
    }
    requests.inc({ route: name, status: String(response.status) });
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) {
      if (!response.headers.has(k)) {
        try {
          response.headers.set(k, v);
        } catch {
          // immutable headers (a redirect built elsewhere): they are set where it matters
        }
      }
    }
    return response;
  };

  let server: Deno.HttpServer | undefined;
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await hub.close();
    await server?.shutdown().catch(() => {});
    await sampler.close();
    await alerts.close();
    await reader.close();
  };
  return {
    app,
    handler,
    listen: () =>
      new Promise<number>((resolve) => {
        server = Deno.serve({
          hostname: config.host,
          port: config.port,
          onListen: ({ port }) => resolve(port),
          onError(error) {
            logger.error("unhandled error", { error: String(error) });
            return new Response("internal error\n", { status: 500 });
          },
        }, handler);
      }),
    close,
    [Symbol.asyncDispose]: close,
  };
}
