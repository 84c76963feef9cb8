/**
 * The views: what each page shows, computed from ClickHouse (read-only), the /metrics sampler, the alert
 * engine and the load-run files. A view is computed at most once per second however many pages ask (the
 * first render and /api/view go through the same one-second cache the live hub fills), and the parts that
 * are costly and slow to change (fault markers, histogram, known keys) are refreshed less often.
 */
import type { Logger } from "@tailwatch/runtime";
import type { AlertEngine } from "./alerts.ts";
import { num, type Reader } from "./clickhouse.ts";
import type {
  AlertsData,
  Block,
  GlobalData,
  OverviewData,
  ServiceData,
  TargetHealth,
  TracesData,
  ViewData,
} from "./islands/model.ts";
import {
  type KnownKeys,
  resolveRange,
  type TimeRange,
  type TraceSpec,
  viewKey,
  viewQuery,
  type ViewSpec,
} from "./params.ts";
import * as q from "./queries.ts";
import { OVERVIEW_METRICS, type Sampler } from "./sampler.ts";
import { readLoadRuns, type RunSummary } from "./runs.ts";

export interface ViewsOptions {
  reader: Reader;
  tables: q.Tables;
  sampler: Sampler;
  alerts: AlertEngine;
  services: string[];
  loadResultsDir: string;
  staleAfterS: number;
  logger: Logger;
}

export interface Views {
  /** The view's data, computed at most once per second (concurrent callers share one computation). */
  get(spec: ViewSpec): Promise<ViewData>;
  /** The state every page shows (banners), computed at most once per second. */
  global(): Promise<GlobalData>;
  known(): Promise<KnownKeys>;
  trace(spec: TraceSpec): Promise<Block>;
  /** The load runs in the results folder (read at most every 10 s), oldest first, and the files skipped. */
  runs(): Promise<{ runs: RunSummary[]; skipped: string[] }>;
  /** Forgets cached entries older than a minute (the hub calls it every tick). */
  prune(): void;
}

interface CacheEntry<T> {
  at: number;
  value: Promise<T>;
}

/** A small time-bounded cache with single flight: one computation per key and TTL. */
class TtlCache {
  #entries = new Map<string, CacheEntry<unknown>>();
  constructor(readonly maxEntries: number) {}
  get<T>(key: string, ttlMs: number, compute: () => Promise<T>): Promise<T> {
    const now = Date.now();
    const entry = this.#entries.get(key);
    if (entry && now - entry.at < ttlMs) return entry.value as Promise<T>;
    const value = compute();
    // A failed computation is not kept.
    value.catch(() => this.#entries.get(key)?.value === value && this.#entries.delete(key));
    this.#entries.delete(key);
    this.#entries.set(key, { at: now, value });
    while (this.#entries.size > this.maxEntries) this.#entries.delete(this.#entries.keys().next().value!);
    return value;
  }
  prune(maxAgeMs: number): void {
    const now = Date.now();
    for (const [key, entry] of this.#entries) if (now - entry.at > maxAgeMs) this.#entries.delete(key);
  }
  get size(): number {
    return this.#entries.size;
  }
}

const VIEW_TTL_MS = 950;
const SLOW_TTL_MS = 10_000;
const HISTOGRAM_TTL_MS = 5000;

export function createViews(options: ViewsOptions): Views {
  const { reader, tables: t, sampler, alerts } = options;
  const cache = new TtlCache(2000);
  let lastKnown: KnownKeys = { services: [...options.services], methods: new Map() };

  const known = () =>
    cache.get("known", 30_000, async () => {
      const block = await q.runBlock(reader, q.knownKeys(t, Math.floor(Date.now() / 1000)));
      if (block.error) return lastKnown; // keep what was known while ClickHouse is away
      const services = new Set(options.services);
      const methods = new Map<string, string[]>();
      for (const [service, method] of block.rows as string[][]) {
        if (service === "") continue;
        services.add(service);
        if (method !== "") methods.set(service, [...(methods.get(service) ?? []), method]);
      }
      lastKnown = { services: [...services].sort(), methods };
      return lastKnown;
    });

  const loadRuns = () => cache.get("load-runs", 10_000, () => readLoadRuns(options.loadResultsDir));

  const runsIn = async (range: TimeRange) =>
    (await loadRuns()).runs
      .filter((r) => r.endedAtMs >= range.fromS * 1000 && r.startedAtMs < range.toS * 1000)
      .map(({ file, scenario, startedAtMs, endedAtMs }) => ({ file, scenario, startedAtMs, endedAtMs }));

  const targetHealth = (): TargetHealth[] =>
    sampler.targets().map((s) => ({
      name: s.name,
      url: s.url,
      up: s.up,
      error: s.error,
      lastOkMs: s.lastOkMs,
      values: Object.fromEntries(
        OVERVIEW_METRICS.filter((n) => s.values.has(n)).map((n) => [n, s.values.get(n)!]),
      ),
      rates: Object.fromEntries(s.rates),
    }));

  const global = () =>
    cache.get("global", VIEW_TTL_MS, async (): Promise<GlobalData> => {
      const nowMs = Date.now();
      const block = await q.runBlock(reader, q.freshness(t, Math.floor(nowMs / 1000)));
      const status = reader.status();
      const row = block.rows[0];
      const newestEventMs = row ? num(row[0]) : 0;
      const newestPercentileS = row ? num(row[1]) : 0;
      const stale: string[] = [];
      if (!status.ok) {
        stale.push(
          `ClickHouse unreachable since ${
            new Date(status.downSince ?? nowMs).toISOString().slice(11, 19)
          } UTC`,
        );
      } else if (block.error) stale.push(`ClickHouse: ${block.error}`);
      const targets = sampler.targets();
      const serving = targets.some((s) => (s.rates.get("requests_total") ?? 0) > 0);
      const limitMs = options.staleAfterS * 1000;
      if (status.ok && !block.error && serving) {
        if (newestEventMs === 0 || nowMs - newestEventMs > limitMs) {
          stale.push(
            `requests are served but the newest row in request_events is ${
              newestEventMs ? `${Math.round((nowMs - newestEventMs) / 1000)} s old` : "over an hour old"
            }: is ingest running?`,
          );
        } else if (newestPercentileS === 0 || nowMs - newestPercentileS * 1000 > limitMs) {
          stale.push(
            `the newest latency_percentiles row is ${
              newestPercentileS ? `${Math.round(nowMs / 1000 - newestPercentileS)} s old` : "over an hour old"
            }: is the profiler running?`,
          );
        }
      }
      for (const s of targets) {
        if (!s.up) stale.push(`${s.name} metrics unreachable (${s.error ?? "no answer yet"})`);
        else if (s.error) stale.push(`${s.name}: ${s.error}`);
        const dropped = s.rates.get("events_dropped_total") ?? 0;
        if (dropped > 0) {
          stale.push(`${s.name} is dropping events (${dropped.toFixed(1)}/s): its buffer is full`);
        }
        const pending = s.values.get("ingest_consumer_pending");
        if (pending !== undefined && pending > 1000) {
          stale.push(`ingest lags: ${pending} messages (up to 256 events each) not yet delivered`);
        }
      }
      return {
        nowMs,
        clickhouse: { ok: status.ok, downSinceMs: status.downSince, error: status.lastError },
        firing: alerts.firing(),
        stale,
        newestEventMs,
        newestPercentileS,
        freshnessSql: block.sql ?? "",
      };
    });

  const overview = async (spec: ViewSpec & { page: "overview" }): Promise<OverviewData> => {
    const range = resolveRange(spec.range, Date.now());
    const [g, keys, now, rps, p99, faults, runs] = await Promise.all([
      global(),
      known(),
      q.runBlock(reader, q.latestPercentiles(t, spec.window, range.toS)),
      q.runBlock(reader, q.requestsByService(t, range)),
      q.runBlock(reader, q.p99ByService(t, range)),
      cache.get(
        `faults|${range.fromS}|${range.stepS}|${
          range.live ? Math.floor(Date.now() / SLOW_TTL_MS) : range.toS
        }`,
        SLOW_TTL_MS,
        () => q.runBlock(reader, q.faultMarkers(t, range)),
      ),
      runsIn(range),
    ]);
    return {
      page: "overview",
      query: viewQuery(spec).toString(),
      range,
      window: spec.window,
      global: g,
      services: keys.services,
      now,
      rps,
      p99,
      faults,
      targets: targetHealth(),
      processes: sampler.history(),
      loadRuns: runs,
    };
  };

  const service = async (spec: ViewSpec & { page: "service" }): Promise<ServiceData> => {
    const range = resolveRange(spec.range, Date.now());
    const { service, method, window } = spec;
    const [g, keys, now, percentiles, status, protocols, instances, histogram, faults, runs] = await Promise
      .all([
        global(),
        known(),
        q.runBlock(reader, q.latestPercentiles(t, window, range.toS, service)),
        q.runBlock(reader, q.percentilesOverTime(t, range, service, method, window)),
        q.runBlock(reader, q.statusOverTime(t, range, service, method)),
        q.runBlock(reader, q.protocolBreakdown(t, range.toS, window, service, method)),
        q.runBlock(reader, q.instanceBreakdown(t, range.toS, window, service, method)),
        cache.get(
          `histogram|${service}|${method}|${window}|${
            range.live ? Math.floor(Date.now() / HISTOGRAM_TTL_MS) : range.toS
          }`,
          HISTOGRAM_TTL_MS,
          () => q.runBlock(reader, q.latencyHistogram(t, range.toS, window, service, method)),
        ),
        cache.get(
          `faults|${service}|${range.fromS}|${range.stepS}|${
            range.live ? Math.floor(Date.now() / SLOW_TTL_MS) : range.toS
          }`,
          SLOW_TTL_MS,
          () => q.runBlock(reader, q.faultMarkers(t, range, service)),
        ),
        runsIn(range),
      ]);
    return {
      page: "service",
      query: viewQuery(spec).toString(),
      range,
      window,
      service,
      method,
      methods: keys.methods.get(service) ?? [],
      global: g,
      now,
      percentiles,
      status,
      protocols,
      instances,
      histogram,
      faults,
      loadRuns: runs,
    };
  };

  const traces = async (spec: ViewSpec & { page: "traces" }): Promise<TracesData> => {
    const range = resolveRange(spec.range, Date.now());
    const [g, slowest] = await Promise.all([global(), q.runBlock(reader, q.slowestRequests(t, range, spec))]);
    return { page: "traces", query: viewQuery(spec).toString(), range, global: g, slowest };
  };

  const alertsView = async (): Promise<AlertsData> => ({
    page: "alerts",
    query: "",
    global: await global(),
    rules: alerts.views(),
    fileErrors: alerts.fileErrors(),
    history: alerts.history(100),
    evaluation: alerts.evaluation(),
    rulesFile: "",
  });

  const compute = (spec: ViewSpec): Promise<ViewData> => {
    switch (spec.page) {
      case "overview":
        return overview(spec);
      case "service":
        return service(spec);
      case "traces":
        return traces(spec);
      case "alerts":
        return alertsView();
    }
  };

  return {
    get: (spec) =>
      spec.page === "alerts"
        ? compute(spec) // cheap, and must show a rule change at once
        : cache.get(`view|${viewKey(spec)}`, VIEW_TTL_MS, () => compute(spec)),
    global,
    known,
    trace: (spec) => q.runBlock(reader, q.traceSpans(t, spec.traceId, spec.atMs, Date.now())),
    runs: loadRuns,
    prune: () => cache.prune(60_000),
  };
}
