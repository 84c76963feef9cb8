/** The worker's HTTP endpoints: /metrics (the kit's Prometheus registry), /healthz and /readyz. */
import type { Registry } from "@tailwatch/runtime";

export interface MetricsServer extends AsyncDisposable {
  readonly port: number;
  close(): Promise<void>;
}

/** Whether the worker is ready, and if not, why (the body of a 503 /readyz). */
export interface Readiness {
  ready: boolean;
  reason: string;
}

/**
 * Serves /metrics (Prometheus text), /healthz (process alive) and /readyz: 200 when `ready()` says so, else 503
 * with the reason in the body (`ready` may return a plain boolean; the reason is then "not ready").
 */
export function serveMetrics(
  registry: Registry,
  options: {
    hostname: string;
    port: number;
    ready: () => boolean | Readiness;
    onListen?: (port: number) => void;
  },
): MetricsServer {
  const server = Deno.serve({
    hostname: options.hostname,
    port: options.port,
    onListen: ({ port }) => options.onListen?.(port),
  }, (request) => {
    const path = new URL(request.url).pathname;
    if (path === "/metrics") {
      return new Response(registry.render(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    }
    if (path === "/healthz") return new Response("ok\n");
    if (path === "/readyz") {
      const answer = options.ready();
      const { ready, reason } = typeof answer === "boolean"
        ? { ready: answer, reason: answer ? "ready" : "not ready" }
        : answer;
      return ready
        ? new Response(`ready: ${reason}\n`)
        : new Response(`not ready: ${reason}\n`, { status: 503 });
    }
    return new Response("not found\n", { status: 404 });
  });
  const close = async () => {
    await server.shutdown().catch(() => {});
  };
  return {
    port: server.addr.port,
    close,
    [Symbol.asyncDispose]: close,
  };
}
