/**
 * Reads the processes' metrics (the services', ingest's) and this process's own /proc every
 * `sampleIntervalMs`, and keeps a bounded history of CPU and memory per process for the overview. The
 * pipeline's health (events published and dropped, ingest's consumer lag) comes from the latest read. Two
 * sources: each process's /metrics (the local stack, one instance each) or Prometheus (a deployment, where a
 * name stands for several pods and the web server reads them together).
 */
import { sampleProcess } from "@tailwatch/runtime";
import type { MetricsTarget } from "./config.ts";

/** `name{labels} value` lines, each metric summed over its label sets. */
export function parsePrometheusText(text: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const value = Number(match[3]);
    if (!Number.isFinite(value)) continue;
    values.set(match[1], (values.get(match[1]) ?? 0) + value);
  }
  return values;
}

export interface TargetState {
  name: string;
  url: string;
  up: boolean;
  error?: string;
  lastOkMs?: number;
  values: Map<string, number>;
  /** Per-second rates between the last two good scrapes, by metric name (counters only). */
  rates: Map<string, number>;
}

export interface ProcessHistory {
  /** Sample times (epoch seconds, fractional). */
  t: number[];
  /**
   * Per process (or job), aligned with t: CPU in % of one core, resident memory in MiB, open fds, each summed
   * over a job's instances when read from Prometheus; null where unknown.
   */
  processes: { name: string; cpuPct: (number | null)[]; rssMiB: (number | null)[]; fds: (number | null)[] }[];
}

export interface Sampler extends AsyncDisposable {
  targets(): TargetState[];
  history(): ProcessHistory;
  /** Takes one sample now (tests). */
  sampleNow(): Promise<void>;
  close(): Promise<void>;
}

const RATE_METRICS = [
  "events_published_total",
  "events_dropped_total",
  "requests_total",
  "ingest_rows_inserted_total",
  "process_cpu_seconds_total",
];

/**
 * Gauges that are one value for the whole job, not a part each instance adds: over several instances the
 * smallest counts (the stream's floor is where the slowest partition is; the job is ready when all are).
 */
const MIN_OVER_INSTANCES = new Set(["ingest_committed_floor_seq", "ingest_ready"]);

/** The metrics the overview reads, besides the rates. */
export const OVERVIEW_METRICS = [
  "events_published_total",
  "events_dropped_total",
  "events_buffer_depth",
  "requests_total",
  "ingest_consumer_pending",
  "ingest_consumer_ack_pending",
  "ingest_rows_inserted_total",
  "ingest_committed_floor_seq",
  "ingest_ready",
  "process_cpu_seconds_total",
  "process_resident_memory_bytes",
  "process_open_fds",
];

/** Where the processes' numbers come from: one state per process (or job), refreshed by `read`. */
export interface MetricsSource {
  readonly states: TargetState[];
  read(): Promise<void>;
}

/** Each target's own /metrics, read directly: right for one instance per name (the local stack). */
export function directMetricsSource(targets: MetricsTarget[], intervalMs: number): MetricsSource {
  const states: TargetState[] = targets.map((t) => ({
    name: t.name,
    url: t.url,
    up: false,
    values: new Map(),
    rates: new Map(),
  }));
  const previous = new Map<string, { t: number; values: Map<string, number> }>();

  const scrape = async (state: TargetState): Promise<void> => {
    const t = Date.now();
    try {
      const response = await fetch(state.url, {
        signal: AbortSignal.timeout(Math.min(1500, intervalMs)),
      });
      if (!response.ok) {
        await response.body?.cancel();
        throw new Error(`HTTP ${response.status}`);
      }
      const text = await response.text();
      if (text.length > 4_000_000) throw new Error("metrics page larger than 4 MB");
      const values = parsePrometheusText(text);
      const before = previous.get(state.name);
      state.rates = new Map();
      if (before && t > before.t) {
        for (const name of RATE_METRICS) {
          const a = before.values.get(name);
          const b = values.get(name);
          // A counter that went down means the process restarted: no rate for that interval.
          if (a !== undefined && b !== undefined && b >= a) {
            state.rates.set(name, (b - a) * 1000 / (t - before.t));
          }
        }
      }
      previous.set(state.name, { t, values });
      state.values = values;
      state.up = true;
      state.error = undefined;
      state.lastOkMs = t;
    } catch (error) {
      state.up = false;
      state.error = String((error as Error)?.message ?? error).slice(0, 200);
      state.rates = new Map();
    }
  };
  return { states, read: async () => void await Promise.all(states.map(scrape)) };
}

interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

/**
 * The jobs' numbers from Prometheus's HTTP API (`/api/v1/query`), every instance of a job together: values
 * summed over instances (but MIN_OVER_INSTANCES), rates by `rate()` over `rateWindowS` summed the same way, so
 * a counter reset in one pod is handled as Prometheus handles it. A job is up while any instance is; the
 * instances that are down are named in its error.
 */
export function prometheusMetricsSource(options: {
  url: string;
  jobs: string[];
  rateWindowS: number;
  timeoutMs: number;
}): MetricsSource {
  const states: TargetState[] = options.jobs.map((job) => ({
    name: job,
    url: `${options.url} job="${job}"`,
    up: false,
    values: new Map(),
    rates: new Map(),
  }));
  // Jobs and metric names are validated names (config.ts), so they are safe inside a regex matcher.
  const jobMatcher = `job=~"${options.jobs.join("|")}"`;

  const query = async (expr: string): Promise<PromSample[]> => {
    const response = await fetch(`${options.url}/api/v1/query`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ query: expr }),
      signal: AbortSignal.timeout(options.timeoutMs),
    });
    const text = await response.text();
    if (text.length > 4_000_000) throw new Error("Prometheus answer larger than 4 MB");
    let body: { status?: string; error?: string; data?: { resultType?: string; result?: PromSample[] } };
    try {
      body = JSON.parse(text);
    } catch {
      throw new Error(`Prometheus answered HTTP ${response.status}, not JSON`);
    }
    if (!response.ok || body.status !== "success") {
      throw new Error(`Prometheus: ${body.error ?? `HTTP ${response.status}`}`);
    }
    if (body.data?.resultType !== "vector" || !Array.isArray(body.data.result)) {
      throw new Error("Prometheus: the answer is not an instant vector");
    }
    return body.data.result;
  };

  const read = async (): Promise<void> => {
    const t = Date.now();
    try {
      const [up, series, ...rates] = await Promise.all([
        query(`up{${jobMatcher}}`),
        query(`{${jobMatcher},__name__=~"${OVERVIEW_METRICS.join("|")}"}`),
        ...RATE_METRICS.map((name) =>
          query(`sum by (job) (rate(${name}{${jobMatcher}}[${options.rateWindowS}s]))`)
        ),
      ]);
      for (const state of states) {
        const instances = up.filter((s) => s.metric.job === state.name);
        const down = instances.filter((s) => Number(s.value[1]) !== 1).map((s) => s.metric.instance ?? "?");
        // Per instance first (an instance's label sets add up), then over the instances.
        const perInstance = new Map<string, Map<string, number>>();
        for (const sample of series) {
          if (sample.metric.job !== state.name) continue;
          const value = Number(sample.value[1]);
          if (!Number.isFinite(value)) continue;
          const name = sample.metric.__name__;
          const instance = sample.metric.instance ?? "";
          const byInstance = perInstance.get(name) ?? new Map<string, number>();
          byInstance.set(instance, (byInstance.get(instance) ?? 0) + value);
          perInstance.set(name, byInstance);
        }
        const values = new Map<string, number>();
        for (const [name, byInstance] of perInstance) {
          const parts = [...byInstance.values()];
          values.set(
            name,
            MIN_OVER_INSTANCES.has(name) ? Math.min(...parts) : parts.reduce((a, b) => a + b, 0),
          );
        }
        const jobRates = new Map<string, number>();
        RATE_METRICS.forEach((name, i) => {
          const sample = rates[i].find((s) => s.metric.job === state.name);
          const value = sample ? Number(sample.value[1]) : NaN;
          if (Number.isFinite(value)) jobRates.set(name, value);
        });
        state.values = values;
        state.rates = jobRates;
        state.up = instances.length > down.length;
        state.error = instances.length === 0
          ? "Prometheus has no target of this job"
          : down.length > 0
          ? `${down.length} of ${instances.length} instances down: ${down.slice(0, 5).join(", ")}`
          : undefined;
        if (state.up) state.lastOkMs = t;
      }
    } catch (error) {
      const message = String((error as Error)?.message ?? error).slice(0, 200);
      for (const state of states) {
        state.up = false;
        state.error = message;
        state.rates = new Map();
      }
    }
  };
  return { states, read };
}

export function createSampler(options: {
  source: MetricsSource;
  intervalMs: number;
  historyS: number;
}): Sampler {
  const capacity = Math.max(2, Math.ceil(options.historyS * 1000 / options.intervalMs));
  const states = options.source.states;
  const names = ["web", ...states.map((t) => t.name)];
  // Ring buffers: times and, per process, cpu seconds, rss and fds at each sample.
  const times: number[] = [];
  const cpu = names.map(() => [] as (number | null)[]);
  const rss = names.map(() => [] as (number | null)[]);
  const fds = names.map(() => [] as (number | null)[]);

  let lastOwn: { t: number; cpu: number } | undefined;
  const sampleNow = async () => {
    await options.source.read();
    const now = Date.now();
    const own = sampleProcess();
    const row = names.map((_name, i) => {
      if (i === 0) {
        const pct = lastOwn && now > lastOwn.t
          ? (own.cpuSeconds - lastOwn.cpu) * 100_000 / (now - lastOwn.t)
          : null;
        lastOwn = { t: now, cpu: own.cpuSeconds };
        return {
          cpu: pct !== null && Number.isFinite(pct) ? pct : null,
          rss: Number.isFinite(own.residentBytes) ? own.residentBytes / 1048576 : null,
          fds: Number.isFinite(own.openFds) ? own.openFds : null,
        };
      }
      const state = states[i - 1];
      if (!state.up) return { cpu: null, rss: null, fds: null };
      const rate = state.rates.get("process_cpu_seconds_total");
      const r = state.values.get("process_resident_memory_bytes");
      const f = state.values.get("process_open_fds");
      return {
        cpu: rate !== undefined ? rate * 100 : null,
        rss: r !== undefined ? r / 1048576 : null,
        fds: f !== undefined ? f : null,
      };
    });
    times.push(now / 1000);
    row.forEach((r, i) => {
      cpu[i].push(r.cpu === null ? null : Math.round(r.cpu * 10) / 10);
      rss[i].push(r.rss === null ? null : Math.round(r.rss * 10) / 10);
      fds[i].push(r.fds);
    });
    if (times.length > capacity) {
      times.splice(0, times.length - capacity);
      for (const series of [...cpu, ...rss, ...fds]) series.splice(0, series.length - capacity);
    }
  };

  let timer: ReturnType<typeof setInterval> | undefined;
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      await sampleNow();
    } finally {
      running = false;
    }
  };
  timer = setInterval(tick, options.intervalMs);
  void tick();
  const close = () => {
    if (timer !== undefined) clearInterval(timer);
    timer = undefined;
    return Promise.resolve();
  };
  return {
    targets: () => states,
    history: () => {
      // At most 300 points leave the server (every k-th sample, the newest always among them).
      const k = Math.ceil(times.length / 300);
      const pick = <T>(a: T[]) => a.filter((_, j) => (a.length - 1 - j) % k === 0);
      return {
        t: pick(times).map((t) => Math.round(t * 10) / 10),
        processes: names.map((name, i) => ({
          name,
          cpuPct: pick(cpu[i]),
          rssMiB: pick(rss[i]),
          fds: pick(fds[i]),
        })),
      };
    },
    sampleNow,
    close,
    [Symbol.asyncDispose]: close,
  };
}
