/** A small Prometheus registry: counters, gauges and histograms with labels, in the text format 0.0.4. */

type Labels = Record<string, string>;

interface Metric {
  render(): string;
}

function escapeLabelValue(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"');
}

function labelText(names: readonly string[], values: readonly string[], extra = ""): string {
  const parts = names.map((name, i) => `${name}="${escapeLabelValue(values[i])}"`);
  if (extra) parts.push(extra);
  return parts.length ? `{${parts.join(",")}}` : "";
}

function keyOf(names: readonly string[], labels: Labels): string[] {
  return names.map((name) => labels[name] ?? "");
}

export interface Counter {
  inc(labels?: Labels, by?: number): void;
  get(labels?: Labels): number;
  /** The series of `labels`, looked up once: for hot paths that count the same series again and again. */
  with(labels: Labels): { inc(by?: number): void };
}

export interface Gauge {
  set(value: number, labels?: Labels): void;
  inc(labels?: Labels, by?: number): void;
  dec(labels?: Labels, by?: number): void;
  get(labels?: Labels): number;
}

export interface Histogram {
  observe(value: number, labels?: Labels): void;
  /** The series of `labels`, looked up once (see Counter.with). */
  with(labels: Labels): { observe(value: number): void };
}

export interface Registry {
  counter(name: string, help: string, labelNames?: readonly string[]): Counter;
  gauge(name: string, help: string, labelNames?: readonly string[]): Gauge;
  /** A gauge read at scrape time. */
  gaugeFn(name: string, help: string, read: () => number): void;
  /** A counter read at scrape time (a total kept elsewhere, e.g. by the kernel). */
  counterFn(name: string, help: string, read: () => number): void;
  histogram(
    name: string,
    help: string,
    buckets: readonly number[],
    labelNames?: readonly string[],
  ): Histogram;
  /** The exposition text for GET /metrics. */
  render(): string;
}

export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export function createRegistry(): Registry {
  const metrics: Metric[] = [];
  const names = new Set<string>();
  const claim = (name: string) => {
    if (names.has(name)) throw new Error(`metric ${name} registered twice`);
    names.add(name);
  };

  const valueMetric = (
    type: "counter" | "gauge",
    name: string,
    help: string,
    labelNames: readonly string[],
  ) => {
    claim(name);
    const values = new Map<string, { labels: string[]; value: number }>();
    const cell = (labels: Labels = {}) => {
      const key = keyOf(labelNames, labels);
      const id = key.join("\u0000");
      let entry = values.get(id);
      if (!entry) values.set(id, entry = { labels: key, value: 0 });
      return entry;
    };
    metrics.push({
      render() {
        const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`];
        if (values.size === 0 && labelNames.length === 0) lines.push(`${name} 0`);
        for (const { labels, value } of values.values()) {
          lines.push(`${name}${labelText(labelNames, labels)} ${value}`);
        }
        return lines.join("\n");
      },
    });
    return cell;
  };

  return {
    counter(name, help, labelNames = []) {
      const cell = valueMetric("counter", name, help, labelNames);
      return {
        inc(labels, by = 1) {
          if (by < 0) throw new Error(`counter ${name} cannot decrease`);
          cell(labels).value += by;
        },
        get: (labels) => cell(labels).value,
        with(labels) {
          const entry = cell(labels);
          return {
            inc(by = 1) {
              if (by < 0) throw new Error(`counter ${name} cannot decrease`);
              entry.value += by;
            },
          };
        },
      };
    },
    gauge(name, help, labelNames = []) {
      const cell = valueMetric("gauge", name, help, labelNames);
      return {
        set: (value, labels) => void (cell(labels).value = value),
        inc: (labels, by = 1) => void (cell(labels).value += by),
        dec: (labels, by = 1) => void (cell(labels).value -= by),
        get: (labels) => cell(labels).value,
      };
    },
    gaugeFn(name, help, read) {
      claim(name);
      metrics.push({ render: () => `# HELP ${name} ${help}\n# TYPE ${name} gauge\n${name} ${read()}` });
    },
    counterFn(name, help, read) {
      claim(name);
      metrics.push({ render: () => `# HELP ${name} ${help}\n# TYPE ${name} counter\n${name} ${read()}` });
    },
    histogram(name, help, buckets, labelNames = []) {
      claim(name);
      const bounds = [...buckets].sort((a, b) => a - b);
      const series = new Map<string, { labels: string[]; counts: number[]; sum: number; count: number }>();
      metrics.push({
        render() {
          const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
          for (const { labels, counts, sum, count } of series.values()) {
            let cumulative = 0;
            bounds.forEach((bound, i) => {
              cumulative += counts[i];
              lines.push(`${name}_bucket${labelText(labelNames, labels, `le="${bound}"`)} ${cumulative}`);
            });
            lines.push(`${name}_bucket${labelText(labelNames, labels, 'le="+Inf"')} ${count}`);
            lines.push(`${name}_sum${labelText(labelNames, labels)} ${sum}`);
            lines.push(`${name}_count${labelText(labelNames, labels)} ${count}`);
          }
          return lines.join("\n");
        },
      });
      const seriesOf = (labels: Labels) => {
        const key = keyOf(labelNames, labels);
        const id = key.join("\u0000");
        let entry = series.get(id);
        if (!entry) series.set(id, entry = { labels: key, counts: bounds.map(() => 0), sum: 0, count: 0 });
        return entry;
      };
      const record = (entry: { counts: number[]; sum: number; count: number }, value: number) => {
        for (let i = 0; i < bounds.length; i++) {
          if (value <= bounds[i]) {
            entry.counts[i]++;
            break;
          }
        }
        entry.sum += value;
        entry.count++;
      };
      return {
        observe: (value, labels = {}) => record(seriesOf(labels), value),
        with(labels) {
          const entry = seriesOf(labels);
          return { observe: (value) => record(entry, value) };
        },
      };
    },
    render: () => metrics.map((metric) => metric.render()).join("\n") + "\n",
  };
}

/** What /proc says about this process now; NaN for what cannot be read (not Linux, /proc not mounted). */
export interface ProcessSample {
  /** User + system CPU time used so far, in seconds. */
  cpuSeconds: number;
  /** Resident set size in bytes. */
  residentBytes: number;
  /** Open file descriptors. */
  openFds: number;
}

const CLOCK_TICKS_PER_SECOND = 100;

/** Reads /proc/self/stat (utime, stime), /proc/self/status (VmRSS) and /proc/self/fd. */
export function sampleProcess(): ProcessSample {
  let cpuSeconds = NaN;
  let residentBytes = NaN;
  let openFds = NaN;
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime are fields 14 and 15 of stat (fields[0] is field 3).
    cpuSeconds = (Number(fields[14 - 3]) + Number(fields[15 - 3])) / CLOCK_TICKS_PER_SECOND;
  } catch {
    // not Linux: NaN
  }
  try {
    const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(Deno.readTextFileSync("/proc/self/status"))?.[1];
    if (kb !== undefined) residentBytes = Number(kb) * 1024;
  } catch {
    // not Linux: NaN
  }
  try {
    let count = 0;
    for (const _ of Deno.readDirSync("/proc/self/fd")) count++;
    // The directory listing itself holds one descriptor while it is read.
    openFds = Math.max(0, count - 1);
  } catch {
    // not Linux: NaN
  }
  return { cpuSeconds, residentBytes, openFds };
}

/**
 * The standard process metrics every Tailwatch process exports (the names Prometheus' client libraries use):
 * `process_cpu_seconds_total`, `process_resident_memory_bytes` and `process_open_fds`, read from /proc at
 * scrape time, so they cost nothing between scrapes.
 */
export function registerProcessMetrics(registry: Registry): void {
  registry.counterFn(
    "process_cpu_seconds_total",
    "Total user and system CPU time spent in seconds.",
    () => sampleProcess().cpuSeconds,
  );
  registry.gaugeFn(
    "process_resident_memory_bytes",
    "Resident memory size in bytes.",
    () => sampleProcess().residentBytes,
  );
  registry.gaugeFn("process_open_fds", "Number of open file descriptors.", () => sampleProcess().openFds);
}
