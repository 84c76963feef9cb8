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
