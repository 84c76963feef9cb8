/**
 * The services' Prometheus text (/metrics) as numbers: the names come from services/kit/pipeline.ts
 * (requests_total{method,protocol,code}, request_duration_seconds{method,protocol}, requests_in_flight) and
 * net/nats/publisher.ts (events_published_total, events_dropped_total, events_buffer_depth).
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Every sample of a Prometheus text exposition (comments skipped). */
export function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const brace = line.indexOf("{");
    const space = line.lastIndexOf(" ");
    if (space < 0) continue;
    const value = Number(line.slice(space + 1));
    if (brace < 0 || brace > space) {
      samples.push({ name: line.slice(0, space), labels: {}, value });
      continue;
    }
    const close = line.lastIndexOf("}");
    const labels: Record<string, string> = {};
    const body = line.slice(brace + 1, close);
    const pattern = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (let match; (match = pattern.exec(body));) {
      labels[match[1]] = match[2].replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    }
    samples.push({ name: line.slice(0, brace), labels, value });
  }
  return samples;
}

/** What a load run reads of one service's metrics. */
export interface ServiceMetrics {
  /** requests_total by "method|protocol|code". */
  requests: Record<string, number>;
  /** request_duration_seconds buckets by "method|protocol" → [le, cumulative count][]. */
  durationBuckets: Record<string, Array<[number, number]>>;
  inFlight: number;
  eventsPublished: number;
  eventsDropped: number;
  eventsBuffered: number;
  /** Events not published on purpose (EVENTS_ENABLED=false). */
  eventsDisabled: number;
}

export const requestKey = (method: string, protocol: string, code: string) => `${method}|${protocol}|${code}`;

export function serviceMetrics(text: string): ServiceMetrics {
  const metrics: ServiceMetrics = {
    requests: {},
    durationBuckets: {},
    inFlight: 0,
    eventsPublished: 0,
    eventsDropped: 0,
    eventsBuffered: 0,
    eventsDisabled: 0,
  };
  for (const s of parseMetrics(text)) {
    switch (s.name) {
      case "requests_total": {
        const key = requestKey(s.labels.method ?? "", s.labels.protocol ?? "", s.labels.code ?? "");
        metrics.requests[key] = (metrics.requests[key] ?? 0) + s.value;
        break;
      }
      case "request_duration_seconds_bucket": {
        const key = `${s.labels.method ?? ""}|${s.labels.protocol ?? ""}`;
        const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
        (metrics.durationBuckets[key] ??= []).push([le, s.value]);
        break;
      }
      case "requests_in_flight":
        metrics.inFlight += s.value;
        break;
      case "events_published_total":
        metrics.eventsPublished += s.value;
        break;
      case "events_dropped_total":
        metrics.eventsDropped += s.value;
        break;
      case "events_buffer_depth":
        metrics.eventsBuffered += s.value;
        break;
      case "events_disabled_total":
        metrics.eventsDisabled += s.value;
        break;
    }
  }
  for (const buckets of Object.values(metrics.durationBuckets)) buckets.sort((a, b) => a[0] - b[0]);
  return metrics;
}

/** after - before for every counter (keys missing before count from 0). */
export function requestDeltas(before: ServiceMetrics, after: ServiceMetrics): Record<string, number> {
  const deltas: Record<string, number> = {};
  for (const [key, value] of Object.entries(after.requests)) {
    const delta = value - (before.requests[key] ?? 0);
    if (delta !== 0) deltas[key] = delta;
  }
  return deltas;
}

/**
 * The upper bound (seconds) of the histogram bucket holding quantile q of the requests counted between two
 * scrapes, summed over `keys` ("method|protocol"); NaN when none. A progress figure: the buckets are coarse.
 */
export function bucketQuantileBound(
  before: ServiceMetrics,
  after: ServiceMetrics,
  keys: string[],
  q: number,
): number {
  const merged = new Map<number, number>();
  for (const key of keys) {
    const previous = new Map(before.durationBuckets[key] ?? []);
    for (const [le, count] of after.durationBuckets[key] ?? []) {
      merged.set(le, (merged.get(le) ?? 0) + count - (previous.get(le) ?? 0));
    }
  }
  const buckets = [...merged.entries()].sort((a, b) => a[0] - b[0]);
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (total <= 0) return NaN;
  for (const [le, count] of buckets) if (count >= q * total) return le;
  return Infinity;
}
