/**
 * Prometheus text exposition (version 0.0.4) without dependencies: counters, gauges and histograms with
 * optional labels, and the HTTP server for /metrics, /healthz and /readyz.
 */

type Labels = Record<string, string>;

interface Metric {
  render(): string;
}

function labelText(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return "";
  const escape = (v: string) => v.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"');
  return `{${entries.map(([k, v]) => `${k}="${escape(v)}"`).join(",")}}`;
}

export interface Counter {
  inc(value?: number, labels?: Labels): void;
  get(labels?: Labels): number;
}
export interface Gauge {
  set(value: number, labels?: Labels): void;
  get(labels?: Labels): number;
}
export interface Histogram {
  observe(value: number): void;
}

export interface Registry {
  counter(name: string, help: string): Counter;
  gauge(name: string, help: string): Gauge;
  histogram(name: string, help: string, buckets: number[]): Histogram;
  render(): string;
}

export function createRegistry(): Registry {
  const metrics: Metric[] = [];
  const keyed = (name: string, help: string, type: string) => {
    const values = new Map<string, { labels: Labels; value: number }>();
    const metric: Metric = {
      render() {
        let out = `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n`;
        if (values.size === 0 && type === "counter") out += `${name} 0\n`;
        for (const { labels, value } of values.values()) out += `${name}${labelText(labels)} ${value}\n`;
        return out;
      },
    };
    metrics.push(metric);
    return values;
  };
  return {
    counter(name, help) {
      const values = keyed(name, help, "counter");
      return {
        inc(value = 1, labels = {}) {
          const key = labelText(labels);
          const entry = values.get(key) ?? { labels, value: 0 };
          entry.value += value;
          values.set(key, entry);
        },
        get: (labels = {}) => values.get(labelText(labels))?.value ?? 0,
      };
    },
    gauge(name, help) {
      const values = keyed(name, help, "gauge");
      return {
        set(value, labels = {}) {
          values.set(labelText(labels), { labels, value });
        },
        get: (labels = {}) => values.get(labelText(labels))?.value ?? 0,
      };
    },
    histogram(name, help, buckets) {
      const bounds = [...buckets].sort((a, b) => a - b);
      const counts = new Array<number>(bounds.length).fill(0);
      let sum = 0;
      let count = 0;
      metrics.push({
        render() {
          let out = `# HELP ${name} ${help}\n# TYPE ${name} histogram\n`;
          for (let i = 0; i < bounds.length; i++) out += `${name}_bucket{le="${bounds[i]}"} ${counts[i]}\n`;
          out += `${name}_bucket{le="+Inf"} ${count}\n${name}_sum ${sum}\n${name}_count ${count}\n`;
          return out;
        },
      });
      return {
        observe(value) {
          for (let i = 0; i < bounds.length; i++) if (value <= bounds[i]) counts[i]++;
          sum += value;
          count++;
        },
      };
    },
    render: () => metrics.map((metric) => metric.render()).join(""),
  };
}

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
