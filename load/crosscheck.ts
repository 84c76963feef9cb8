/**
 * The proof after every run that what Tailwatch shows is what happened: per method and status code, the load
 * generator's counts = the services' /metrics counters = rows in ClickHouse for the run = distinct event ids;
 * the calls the generator cancelled itself accounted for (seen by the server or not); the events counters add
 * up; and the server's percentiles sit below the client's. Pure: run.ts gathers the inputs.
 */
import { Code } from "@tailwatch/grpc";
import type { Quantiles } from "./latency.ts";
import { requestKey } from "./metrics_text.ts";

/** A gRPC code's canonical name ("NOT_FOUND"), `CODE_<n>` for a number outside the codes. */
function grpcCodeName(code: number): string {
  return Code[code] ?? `CODE_${code}`;
}

/** Rows of request_events for one (service, method, protocol, grpc_code, http_status). */
export interface RowCount {
  service: string;
  method: string;
  protocol: string;
  grpcCode: number;
  httpStatus: number;
  rows: number;
  distinct: number;
  /** Of the rows, those of requests no other service made (no parent span): what a load generator sent. */
  root: number;
}

/** What the load generator saw of one method it called directly. */
export interface GeneratorCounts {
  service: string;
  /** "/pkg.Service/Method", as the events and metrics name it. */
  method: string;
  protocol: "grpc" | "http";
  /** Answers by status: gRPC code name, or "HTTP <status>" over REST. */
  byStatus: Record<string, number>;
  /** Calls the generator ended itself (end of a timed run, its own timeout): no answer was seen. */
  cancelled: number;
  /** How the generator reported those, e.g. { "UNAVAILABLE: transport is closing": 3 }. */
  cancelledAs: Record<string, number>;
}

/** Metric deltas of one service over the run (after - before). */
export interface MetricsDelta {
  service: string;
  /** requests_total by requestKey(method, protocol, code). */
  requests: Record<string, number>;
  eventsPublished: number;
  eventsDropped: number;
  eventsDisabled: number;
}

export interface LatencyInput {
  service: string;
  method: string;
  protocol: string;
  /** The generator's latencies (calls it cancelled left out). */
  client: Quantiles;
  /** Exact quantiles of the run's rows (ClickHouse quantilesExact, same rank). */
  server: Quantiles;
  /** The profiler's figures over the run's span, when it ran (`--once`: all traffic of the span). */
  profiler?: { count: number; p50: number; p99: number; p999: number; max: number };
}

export interface CrossCheckInput {
  generator: GeneratorCounts[];
  metrics: MetricsDelta[];
  /** The run's rows. */
  rows: RowCount[];
  /** Rows of other traffic (not this run) between the two metric scrapes: the counters include them. */
  otherRows: RowCount[];
  latency: LatencyInput[];
  /** How the run's rows were selected: by load_run_id, or (before ingest stores it) by the run's time span. */
  selection: "run-id" | "time-span";
  /** Milliseconds from the end of the load until the counts settled (or the wait gave up). */
  settledAfterMs: number;
}

export interface CheckLine {
  service: string;
  method: string;
  protocol: string;
  /** gRPC code name, or "HTTP <status>" for a REST line compared by status. */
  status: string;
  /** Answers the generator saw (directly called methods only). */
  generator?: number;
  /** requests_total delta (by code only: the counters have no HTTP status). */
  metrics?: number;
  /** Of which other traffic (rows outside the run in the same span). */
  metricsOther?: number;
  rows: number;
  distinct: number;
  /** Of the rows, those the generator sent (root spans); the rest came from another service (orders). */
  direct: number;
  /** Rows above what the generator saw: its cancelled calls that the server served with this status. */
  cancelledSeen?: number;
  ok: boolean;
  problems: string[];
}

export interface LatencyLine {
  service: string;
  method: string;
  protocol: string;
  client: Pick<Quantiles, "count" | "p50" | "p99" | "p999" | "max">;
  server: Pick<Quantiles, "count" | "p50" | "p99" | "p999" | "max">;
  profiler?: LatencyInput["profiler"];
  /** client - server, µs. */
  gapUs: { p50: number; p99: number; p999: number };
  /** The server's p50 and p99 at or below the client's (a request's server time lies inside its client time). */
  serverBelowClient: boolean;
}

export interface CrossCheck {
  ok: boolean;
  selection: CrossCheckInput["selection"];
  settledAfterMs: number;
  lines: CheckLine[];
  cancelled: Array<{
    service: string;
    method: string;
    protocol: string;
    cancelled: number;
    cancelledAs: Record<string, number>;
    seenByServer: Record<string, number>;
    notSeenByServer: number;
    ok: boolean;
  }>;
  events: Array<{
    service: string;
    served: number;
    published: number;
    dropped: number;
    disabled: number;
    ok: boolean;
    problems: string[];
  }>;
  latency: LatencyLine[];
  failures: string[];
}

const methodKey = (service: string, method: string, protocol: string) => `${service}|${method}|${protocol}`;

export function crossCheck(input: CrossCheckInput): CrossCheck {
  const failures: string[] = [];
  const lines: CheckLine[] = [];
  const direct = new Map(input.generator.map((g) => [methodKey(g.service, g.method, g.protocol), g]));

  // By gRPC code: every (service, method, protocol, code) the counters, the rows or the generator know.
  type Acc = { rows: number; distinct: number; root: number };
  const byCode = new Map<string, Acc>();
  const otherByCode = new Map<string, number>();
  const byHttp = new Map<string, Acc>();
  const codeKey = (s: string, m: string, p: string, c: string) => `${s}\u0000${m}\u0000${p}\u0000${c}`;
  for (const r of input.rows) {
    const code = grpcCodeName(r.grpcCode);
    const acc = byCode.get(codeKey(r.service, r.method, r.protocol, code)) ??
      { rows: 0, distinct: 0, root: 0 };
    acc.rows += r.rows;
    acc.distinct += r.distinct;
    acc.root += r.root;
    byCode.set(codeKey(r.service, r.method, r.protocol, code), acc);
    if (r.protocol === "http") {
      const key = codeKey(r.service, r.method, r.protocol, `HTTP ${r.httpStatus}`);
      const h = byHttp.get(key) ?? { rows: 0, distinct: 0, root: 0 };
      h.rows += r.rows;
      h.distinct += r.distinct;
      h.root += r.root;
      byHttp.set(key, h);
    }
  }
  for (const r of input.otherRows) {
    const key = codeKey(r.service, r.method, r.protocol, grpcCodeName(r.grpcCode));
    otherByCode.set(key, (otherByCode.get(key) ?? 0) + r.rows);
  }
  const metricsOf = new Map(input.metrics.map((m) => [m.service, m]));
  for (const m of input.metrics) {
    for (const key of Object.keys(m.requests)) {
      const [method, protocol, code] = key.split("|");
      const k = codeKey(m.service, method, protocol, code);
      if (!byCode.has(k)) byCode.set(k, { rows: 0, distinct: 0, root: 0 });
    }
  }
  for (const g of input.generator) {
    const table = g.protocol === "grpc" ? byCode : byHttp;
    for (const status of Object.keys(g.byStatus)) {
      const k = codeKey(g.service, g.method, g.protocol, status);
      if (!table.has(k)) table.set(k, { rows: 0, distinct: 0, root: 0 });
    }
  }

  /** Rows above the generator's count, per direct method (its cancelled calls the server saw), by status. */
  const seen = new Map<string, Record<string, number>>();
  const addLine = (key: string, acc: Acc, byStatus: "code" | "http") => {
    const [service, method, protocol, status] = key.split("\u0000");
    const problems: string[] = [];
    const line: CheckLine = {
      service,
      method,
      protocol,
      status,
      rows: acc.rows,
      distinct: acc.distinct,
      direct: acc.root,
      ok: true,
      problems,
    };
    if (acc.distinct !== acc.rows) problems.push(`${acc.rows - acc.distinct} duplicate rows`);
    if (byStatus === "code") {
      const metrics = metricsOf.get(service)?.requests[requestKey(method, protocol, status)] ?? 0;
      const other = otherByCode.get(key) ?? 0;
      line.metrics = metrics;
      if (other > 0) line.metricsOther = other;
      if (metrics !== acc.rows + other) {
        problems.push(
          other > 0
            ? `counters ${metrics} ≠ run rows ${acc.rows} + other traffic ${other}`
            : `counters ${metrics} ≠ rows ${acc.rows}`,
        );
      }
    }
    const generator = direct.get(methodKey(service, method, protocol));
    const comparable = generator && (byStatus === "http" ? protocol === "http" : protocol === "grpc");
    if (comparable) {
      const counted = generator.byStatus[status] ?? 0;
      line.generator = counted;
      // The generator's calls are the root spans: a method that orders also calls (payments.Refund when an
      // order is cancelled) has child-span rows besides.
      const extra = acc.root - counted;
      if (extra < 0) problems.push(`${-extra} answered calls have no row`);
      if (extra > 0) {
        line.cancelledSeen = extra;
        const mk = methodKey(service, method, protocol) + (byStatus === "http" ? "|http" : "");
        const record = seen.get(mk) ?? {};
        record[status] = extra;
        seen.set(mk, record);
      }
    }
    line.ok = problems.length === 0;
    lines.push(line);
  };
  for (const [key, acc] of byCode) addLine(key, acc, "code");
  for (const [key, acc] of byHttp) {
    const [service, method, protocol] = key.split("\u0000");
    if (direct.has(methodKey(service, method, protocol))) addLine(key, acc, "http");
  }

  // The generator's cancelled calls: each one either reached the server (a row with the code it recorded) or
  // did not (no row). Rows above the generator's counts must be no more than it cancelled.
  const cancelled: CrossCheck["cancelled"] = [];
  for (const g of input.generator) {
    const key = methodKey(g.service, g.method, g.protocol) + (g.protocol === "http" ? "|http" : "");
    const seenByServer = seen.get(key) ?? {};
    const seenCount = Object.values(seenByServer).reduce((a, b) => a + b, 0);
    const ok = seenCount <= g.cancelled;
    if (g.cancelled > 0 || seenCount > 0) {
      cancelled.push({
        service: g.service,
        method: g.method,
        protocol: g.protocol,
        cancelled: g.cancelled,
        cancelledAs: g.cancelledAs,
        seenByServer,
        notSeenByServer: Math.max(0, g.cancelled - seenCount),
        ok,
      });
    }
    if (!ok) {
      for (const line of lines) {
        if (line.service === g.service && line.method === g.method && line.cancelledSeen) {
          line.ok = false;
          line.problems.push(
            `${seenCount} rows above the generator's answers, but it cancelled only ${g.cancelled}`,
          );
        }
      }
    }
  }

  const events: CrossCheck["events"] = input.metrics.map((m) => {
    const served = Object.values(m.requests).reduce((a, b) => a + b, 0);
    const problems: string[] = [];
    if (m.eventsDropped > 0) problems.push(`${m.eventsDropped} events dropped`);
    if (served !== m.eventsPublished + m.eventsDropped + m.eventsDisabled) {
      problems.push(`served ${served} ≠ published ${m.eventsPublished} + dropped ${m.eventsDropped}`);
    }
    if (m.eventsDisabled > 0) {
      problems.push(`${m.eventsDisabled} requests with events off (EVENTS_ENABLED=false)`);
    }
    return {
      service: m.service,
      served,
      published: m.eventsPublished,
      dropped: m.eventsDropped,
      disabled: m.eventsDisabled,
      ok: problems.length === 0,
      problems,
    };
  });

  const pick = (q: Quantiles) => ({ count: q.count, p50: q.p50, p99: q.p99, p999: q.p999, max: q.max });
  const latency: LatencyLine[] = input.latency.map((l) => {
    const gapUs = {
      p50: l.client.p50 - l.server.p50,
      p99: l.client.p99 - l.server.p99,
      p999: l.client.p999 - l.server.p999,
    };
    const serverBelowClient = l.server.count === 0 || (gapUs.p50 >= 0 && gapUs.p99 >= 0);
    return {
      service: l.service,
      method: l.method,
      protocol: l.protocol,
      client: pick(l.client),
      server: pick(l.server),
      profiler: l.profiler,
      gapUs,
      serverBelowClient,
    };
  });

  for (const line of lines) {
    if (!line.ok) {
      failures.push(
        `${line.service} ${line.method || "(no method)"} ${line.protocol} ${line.status}: ${
          line.problems.join("; ")
        }`,
      );
    }
  }
  for (const c of cancelled) {
    if (!c.ok) failures.push(`${c.service} ${c.method}: more rows than answers plus cancelled calls`);
  }
  for (const e of events) if (!e.ok) failures.push(`${e.service} events: ${e.problems.join("; ")}`);
  for (const l of latency) {
    if (!l.serverBelowClient) {
      failures.push(
        `${l.service} ${l.method} ${l.protocol}: server percentiles above the client's (p50 gap ${l.gapUs.p50} µs, p99 gap ${l.gapUs.p99} µs)`,
      );
    }
  }
  const directWithoutRows = input.generator.filter((g) =>
    Object.values(g.byStatus).some((n) => n > 0) &&
    !input.rows.some((r) => r.service === g.service && r.method === g.method && r.protocol === g.protocol)
  );
  for (const g of directWithoutRows) {
    failures.push(`${g.service} ${g.method} ${g.protocol}: no rows for the run`);
  }
  lines.sort((a, b) =>
    a.service.localeCompare(b.service) || a.method.localeCompare(b.method) ||
    a.protocol.localeCompare(b.protocol) ||
    a.status.localeCompare(b.status)
  );
  return {
    ok: failures.length === 0,
    selection: input.selection,
    settledAfterMs: input.settledAfterMs,
    lines,
    cancelled,
    events,
    latency,
    failures,
  };
}
