/** The worker's HTTP endpoints: /metrics (the kit's Prometheus registry), /healthz and /readyz. */
import type { Registry } from "@tailwatch/kit";

export interface MetricsServer extends AsyncDisposable {
  readonly port: number;
  close(): Promise<void>;
}

/** Serves /metrics (Prometheus text), /healthz (process alive) and /readyz (`ready()` true → 200). */
export function serveMetrics(
  registry: Registry,
  options: { hostname: string; port: number; ready: () => boolean; onListen?: (port: number) => void },
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
      return options.ready() ? new Response("ready\n") : new Response("not ready\n", { status: 503 });
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
