/**
 * Every query parameter the pages and the API take, validated into a typed view spec. A bad or unknown
 * parameter is a `BadRequest` naming what was wrong (a 400, never a 500); service and method names must be
 * ones the data or the configuration knows (they reach SQL only as bound values anyway).
 */

export class BadRequest extends Error {
  override name = "BadRequest";
  constructor(readonly problems: string[]) {
    super(problems.join("; "));
  }
}

export const PRESETS = ["5m", "15m", "1h", "6h"] as const;
export type Preset = typeof PRESETS[number];
export const PRESET_SECONDS: Record<Preset, number> = { "5m": 300, "15m": 900, "1h": 3600, "6h": 21_600 };
export const WINDOWS = [10, 60, 300] as const;
export type WindowS = typeof WINDOWS[number];

export type RangeSpec = { preset: Preset } | { preset: "custom"; fromMs: number; toMs: number };

/** A status filter of the traces page: any, ok (gRPC code 0), error (code ≠ 0), or one gRPC code. */
export type StatusFilter = "any" | "ok" | "error" | number;

export type ViewSpec =
  | { page: "overview"; range: RangeSpec; window: WindowS }
  | { page: "service"; service: string; method: string; range: RangeSpec; window: WindowS }
  | {
    page: "traces";
    range: RangeSpec;
    service: string;
    method: string;
    status: StatusFilter;
    minMs: number;
    limit: number;
  }
  | { page: "alerts" };

export type Page = ViewSpec["page"];

/** Services and methods that may be asked for: the configured services and every key seen in the data. */
export interface KnownKeys {
  services: string[];
  methods: Map<string, string[]>;
}

/** A resolved time range: [fromS, toS) in unix seconds, and the chart resolution. */
export interface TimeRange {
  fromS: number;
  toS: number;
  stepS: number;
  live: boolean;
  label: string;
}

const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600];
/** Most points a time series carries. */
export const MAX_POINTS = 300;

export function stepFor(spanS: number): number {
  return STEPS.find((step) => spanS / step <= MAX_POINTS) ?? 3600;
}

/** The range at `nowMs`: a preset ends with the current second (exclusive end: now's second + 1). */
export function resolveRange(range: RangeSpec, nowMs: number): TimeRange {
  if (range.preset === "custom") {
    const fromS = Math.floor(range.fromMs / 1000);
    const toS = Math.ceil(range.toMs / 1000);
    const stepS = stepFor(toS - fromS);
    return {
      fromS: Math.floor(fromS / stepS) * stepS,
      toS: Math.ceil(toS / stepS) * stepS,
      stepS,
      live: false,
      label: "custom",
    };
  }
  const span = PRESET_SECONDS[range.preset];
  const stepS = stepFor(span);
  // Whole steps, the last one holding the current second.
  const toS = (Math.floor(Math.floor(nowMs / 1000) / stepS) + 1) * stepS;
  return { fromS: toS - span, toS, stepS, live: true, label: `last ${range.preset}` };
}

const MIN_TIME_MS = Date.UTC(2000, 0, 1);
const MAX_SPAN_MS = 7 * 86_400_000;

/** Epoch ms, or an ISO date-time (without a zone it is read as UTC, as the pages show times). */
export function parseTime(name: string, text: string, problems: string[]): number | undefined {
  let ms: number;
  if (/^\d{10,14}$/.test(text)) ms = Number(text);
  else if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2})?$/.test(text)) {
    ms = Date.parse(/(Z|[+-]\d{2}:\d{2})$/.test(text) ? text : `${text}Z`);
  } else ms = NaN;
  if (!Number.isFinite(ms) || ms < MIN_TIME_MS || ms > Date.now() + 86_400_000) {
    problems.push(
      `${name} must be epoch milliseconds or an ISO date-time like 2026-12-06T21:30 (UTC), got ${
        JSON.stringify(text.slice(0, 40))
      }`,
    );
    return undefined;
  }
  return ms;
}

type Params = URLSearchParams;

/** Adds a problem for every parameter not in `allowed`, and for one given twice. */
export function checkKnownParams(params: Params, allowed: readonly string[], problems: string[]): void {
  const seen = new Set<string>();
  for (const key of params.keys()) {
    if (!allowed.includes(key)) problems.push(`unknown parameter ${JSON.stringify(key.slice(0, 40))}`);
    else if (seen.has(key)) problems.push(`parameter ${key} given twice`);
    seen.add(key);
  }
}

function parseRange(params: Params, problems: string[]): RangeSpec {
  const from = params.get("from");
  const to = params.get("to");
  const preset = params.get("range") ?? (from || to ? "custom" : "15m");
  if (preset === "custom") {
    if (!from || !to) {
      problems.push("a custom range needs both from and to");
      return { preset: "15m" };
    }
    const fromMs = parseTime("from", from, problems);
    const toMs = parseTime("to", to, problems);
    if (fromMs === undefined || toMs === undefined) return { preset: "15m" };
    if (toMs <= fromMs) problems.push("to must be after from");
    else if (toMs - fromMs > MAX_SPAN_MS) problems.push("a range spans at most 7 days");
    else if (toMs - fromMs < 10_000) problems.push("a range spans at least 10 seconds");
    return { preset: "custom", fromMs, toMs };
  }
  if (!(PRESETS as readonly string[]).includes(preset)) {
    problems.push(
      `range must be one of ${PRESETS.join(", ")} or custom, got ${JSON.stringify(preset.slice(0, 20))}`,
    );
    return { preset: "15m" };
  }
  // The range form always sends from and to; with a preset they must still be well-formed, and are ignored.
  if (from) parseTime("from", from, problems);
  if (to) parseTime("to", to, problems);
  return { preset: preset as Preset };
}

function parseWindow(params: Params, fallback: WindowS, problems: string[]): WindowS {
  const text = params.get("window");
  if (text === null) return fallback;
  const value = Number(text);
  if (!(WINDOWS as readonly number[]).includes(value) || !/^\d+$/.test(text)) {
    problems.push(
      `window must be one of ${WINDOWS.join(", ")} (seconds), got ${JSON.stringify(text.slice(0, 20))}`,
    );
    return fallback;
  }
  return value as WindowS;
}

function parseLive(params: Params, problems: string[]): void {
  const live = params.get("live");
  if (live !== null && live !== "1" && live !== "0") {
    problems.push(`live must be 1 or 0, got ${JSON.stringify(live.slice(0, 20))}`);
  }
}

function parseInteger(
  params: Params,
  name: string,
  fallback: number,
  min: number,
  max: number,
  problems: string[],
): number {
  const text = params.get(name);
  if (text === null || text === "") return fallback;
  if (!/^\d{1,10}$/.test(text) || Number(text) < min || Number(text) > max) {
    problems.push(
      `${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(text.slice(0, 20))}`,
    );
    return fallback;
  }
  return Number(text);
}

export function checkService(service: string, known: KnownKeys, problems: string[]): void {
  if (!known.services.includes(service)) {
    problems.push(
      `unknown service ${JSON.stringify(service.slice(0, 64))} (known: ${
        known.services.join(", ") || "none yet"
      })`,
    );
  }
}

export function checkMethod(service: string, method: string, known: KnownKeys, problems: string[]): void {
  if (method === "") return;
  const methods = known.methods.get(service) ?? [];
  if (!methods.includes(method)) {
    problems.push(
      `unknown method ${JSON.stringify(method.slice(0, 120))} of ${service} (known: ${
        methods.join(", ") || "none yet"
      })`,
    );
  }
}

const COMMON = ["range", "from", "to", "live"];

export function parseOverview(params: Params): ViewSpec & { page: "overview" } {
  const problems: string[] = [];
  checkKnownParams(params, [...COMMON, "window"], problems);
  const range = parseRange(params, problems);
  const window = parseWindow(params, 60, problems);
  parseLive(params, problems);
  if (problems.length) throw new BadRequest(problems);
  return { page: "overview", range, window };
}

export function parseService(
  service: string,
  params: Params,
  known: KnownKeys,
): ViewSpec & { page: "service" } {
  const problems: string[] = [];
  checkKnownParams(params, [...COMMON, "window", "method"], problems);
  checkService(service, known, problems);
  const method = params.get("method") ?? "";
  if (!problems.length) checkMethod(service, method, known, problems);
  const range = parseRange(params, problems);
  const window = parseWindow(params, 60, problems);
  parseLive(params, problems);
  if (problems.length) throw new BadRequest(problems);
  return { page: "service", service, method, range, window };
}

export function parseStatus(text: string | null, problems: string[]): StatusFilter {
  if (text === null || text === "" || text === "any") return "any";
  if (text === "ok" || text === "error") return text;
  if (/^\d{1,2}$/.test(text) && Number(text) <= 16) return Number(text);
  problems.push(
    `status must be any, ok, error or a gRPC code 0-16, got ${JSON.stringify(text.slice(0, 20))}`,
  );
  return "any";
}

export function parseTraces(params: Params, known: KnownKeys): ViewSpec & { page: "traces" } {
  const problems: string[] = [];
  checkKnownParams(params, [...COMMON, "service", "method", "status", "min_ms", "limit"], problems);
  const service = params.get("service") ?? "";
  const method = params.get("method") ?? "";
  if (service !== "") {
    checkService(service, known, problems);
    if (!problems.length) checkMethod(service, method, known, problems);
  } else if (method !== "") problems.push("method needs a service");
  const status = parseStatus(params.get("status"), problems);
  const minMs = parseInteger(params, "min_ms", 0, 0, 3_600_000, problems);
  const limit = parseInteger(params, "limit", 50, 1, 500, problems);
  const range = parseRange(params, problems);
  parseLive(params, problems);
  if (problems.length) throw new BadRequest(problems);
  return { page: "traces", range, service, method, status, minMs, limit };
}

export function parseAlerts(params: Params): ViewSpec & { page: "alerts" } {
  const problems: string[] = [];
  checkKnownParams(params, ["live", "msg", "error"], problems);
  parseLive(params, problems);
  if (problems.length) throw new BadRequest(problems);
  return { page: "alerts" };
}

export interface TraceSpec {
  traceId: string;
  /** Around when the trace happened (epoch ms): narrows the search to ±10 minutes; else the last 24 h. */
  atMs?: number;
}

export function parseTrace(traceId: string, params: Params): TraceSpec {
  const problems: string[] = [];
  checkKnownParams(params, ["at"], problems);
  if (!/^[0-9a-f]{32}$/.test(traceId)) {
    problems.push(`a trace id is 32 lowercase hex digits, got ${JSON.stringify(traceId.slice(0, 40))}`);
  }
  const at = params.get("at");
  const atMs = at === null ? undefined : parseTime("at", at, problems);
  if (problems.length) throw new BadRequest(problems);
  return { traceId, atMs };
}

/** The view of /api/view and /api/stream: `page` says which, the rest as on the page itself. */
export function parseViewParams(params: Params, known: KnownKeys): ViewSpec {
  const page = params.get("page");
  const rest = new URLSearchParams(params);
  rest.delete("page");
  switch (page) {
    case "overview":
      return parseOverview(rest);
    case "service": {
      const service = rest.get("service");
      rest.delete("service");
      if (service === null) throw new BadRequest(["page=service needs service"]);
      return parseService(service, rest, known);
    }
    case "traces":
      return parseTraces(rest, known);
    case "alerts":
      return parseAlerts(rest);
    default:
      throw new BadRequest([
        `page must be overview, service, traces or alerts, got ${JSON.stringify((page ?? "").slice(0, 20))}`,
      ]);
  }
}

/** One key per distinct view: pages open on the same view share its computation. */
export function viewKey(spec: ViewSpec): string {
  switch (spec.page) {
    case "overview":
      return JSON.stringify(["overview", rangeKey(spec.range), spec.window]);
    case "service":
      return JSON.stringify(["service", spec.service, spec.method, rangeKey(spec.range), spec.window]);
    case "traces":
      return JSON.stringify([
        "traces",
        rangeKey(spec.range),
        spec.service,
        spec.method,
        spec.status,
        spec.minMs,
        spec.limit,
      ]);
    case "alerts":
      return JSON.stringify(["alerts"]);
  }
}

function rangeKey(range: RangeSpec): string {
  return range.preset === "custom" ? `${range.fromMs}-${range.toMs}` : range.preset;
}

/** The query string of a view (what its page URL and its stream carry). */
export function viewQuery(spec: ViewSpec, withPage = false): URLSearchParams {
  const q = new URLSearchParams();
  if (withPage) q.set("page", spec.page);
  if (spec.page === "alerts") return q;
  if (spec.range.preset === "custom") {
    q.set("from", String(spec.range.fromMs));
    q.set("to", String(spec.range.toMs));
  } else q.set("range", spec.range.preset);
  if (spec.page === "overview") q.set("window", String(spec.window));
  if (spec.page === "service") {
    if (withPage) q.set("service", spec.service);
    if (spec.method) q.set("method", spec.method);
    q.set("window", String(spec.window));
  }
  if (spec.page === "traces") {
    if (spec.service) q.set("service", spec.service);
    if (spec.method) q.set("method", spec.method);
    if (spec.status !== "any") q.set("status", String(spec.status));
    if (spec.minMs) q.set("min_ms", String(spec.minMs));
    if (spec.limit !== 50) q.set("limit", String(spec.limit));
  }
  return q;
}
