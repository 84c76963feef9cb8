/**
 * Reads every process's /metrics (the services', ingest's) and this process's own /proc every
 * `sampleIntervalMs`, and keeps a bounded history of CPU and memory per process for the overview. The
 * pipeline's health (events published and dropped, ingest's consumer lag) comes from the latest scrape.
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
  /** Per process, aligned with t: CPU in % of one core, resident memory in MiB, open fds; null where unknown. */
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

export function createSampler(options: {
  targets: MetricsTarget[];
  intervalMs: number;
  historyS: number;
}): Sampler {
  const capacity = Math.max(2, Math.ceil(options.historyS * 1000 / options.intervalMs));
  const states: TargetState[] = options.targets.map((t) => ({
    name: t.name,
    url: t.url,
    up: false,
    values: new Map(),
    rates: new Map(),
  }));
  const names = ["web", ...options.targets.map((t) => t.name)];
  // Ring buffers: times and, per process, cpu seconds, rss and fds at each sample.
  const times: number[] = [];
  const cpu = names.map(() => [] as (number | null)[]);
  const rss = names.map(() => [] as (number | null)[]);
  const fds = names.map(() => [] as (number | null)[]);
  const previous = new Map<string, { t: number; values: Map<string, number> }>();

  const scrape = async (state: TargetState): Promise<void> => {
    const t = Date.now();
    try {
      const response = await fetch(state.url, {
        signal: AbortSignal.timeout(Math.min(1500, options.intervalMs)),
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

  let lastOwn: { t: number; cpu: number } | undefined;
  const sampleNow = async () => {
    await Promise.all(states.map(scrape));
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
