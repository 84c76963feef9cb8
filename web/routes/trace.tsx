/**
 * GET /traces/:trace_id?at= : one trace's call tree across the services, parent and child from the stored
 * span ids, timing bars from each span's start (ts_us; rows written before the services sent it have only
 * ts_ms, and the page says their offsets are to the millisecond) and duration.
 */
import { html, pageContext, type RequestContext } from "../app.ts";
import { Island } from "../components/Island.tsx";
import { Layout } from "../components/Layout.tsx";
import { type Cell, col, formatDateTime, formatUs, grpcCodeName } from "../islands/model.ts";
import { parseTrace } from "../params.ts";

export interface SpanNode {
  row: Cell[];
  spanId: string;
  parentSpanId: string;
  startUs: number;
  durationUs: number;
  depth: number;
}

/** Orders spans as a tree (depth-first, children by start); spans whose parent is absent are roots. */
export function buildTree(columns: string[], rows: Cell[][]): { spans: SpanNode[]; exact: boolean } {
  const c = (name: string) => columns.indexOf(name);
  const nodes = rows.map((row) => {
    const tsUs = Number(row[c("ts_us")]);
    return {
      row,
      spanId: String(row[c("span_id")]),
      parentSpanId: String(row[c("parent_span_id")]),
      startUs: tsUs > 0 ? tsUs : Number(row[c("ts_ms")]) * 1000,
      durationUs: Number(row[c("duration_us")]),
      depth: 0,
    };
  });
  const exact = rows.every((row) => Number(row[c("ts_us")]) > 0);
  const ids = new Set(nodes.map((n) => n.spanId));
  const children = new Map<string, SpanNode[]>();
  for (const node of nodes) {
    const parent = node.parentSpanId && ids.has(node.parentSpanId) && node.parentSpanId !== node.spanId
      ? node.parentSpanId
      : "";
    children.set(parent, [...(children.get(parent) ?? []), node]);
  }
  for (const list of children.values()) list.sort((a, b) => a.startUs - b.startUs);
  const out: SpanNode[] = [];
  const seen = new Set<SpanNode>();
  const walk = (parent: string, depth: number) => {
    for (const node of children.get(parent) ?? []) {
      if (seen.has(node)) continue;
      seen.add(node);
      node.depth = depth;
      out.push(node);
      if (node.spanId) walk(node.spanId, depth + 1);
    }
  };
  walk("", 0);
  // Spans in a cycle of parents (never from real services) are still shown, at the top level.
  for (const node of nodes) if (!seen.has(node)) out.push(node);
  return { spans: out, exact };
}

export async function tracePage(rc: RequestContext, traceId: string): Promise<Response> {
  const spec = parseTrace(traceId, rc.url.searchParams);
  const [block, ctx] = await Promise.all([rc.app.views.trace(spec), pageContext(rc)]);
  const { spans, exact } = buildTree(block.columns, block.rows);
  const t0 = Math.min(...spans.map((s) => s.startUs));
  const t1 = Math.max(...spans.map((s) => s.startUs + s.durationUs));
  const total = Math.max(1, t1 - t0);
  const c = (name: string) => col(block, name);
  return html(
    rc,
    <Layout ctx={ctx} title={`Trace ${spec.traceId}`} current="traces">
      <p>
        <a href="/traces">← slowest requests</a>
      </p>
      {block.error ? <p class="error-state">Could not read the trace: {block.error}</p> : null}
      {spans.length === 0 && !block.error
        ? (
          <p class="empty-state">
            No span of this trace {spec.atMs ? "within 10 minutes of the time given" : "in the last 24 h"}.
          </p>
        )
        : null}
      {spans.length > 0
        ? (
          <>
            <p class="muted">
              {spans.length} spans, {formatUs(total)} from the first start to the last end, started{" "}
              {formatDateTime(t0 / 1000)} UTC. {exact
                ? "Offsets from each span's start in microseconds (ts_us)."
                : "Some spans were stored before the services sent their start in microseconds: their offsets are to the millisecond (ts_ms)."}
            </p>
            <table class="trace" id="trace-tree">
              <caption class="muted">Call tree (parent → child from span ids) with timing bars</caption>
              <thead>
                <tr>
                  <th scope="col">span</th>
                  <th scope="col">status</th>
                  <th scope="col">offset</th>
                  <th scope="col">duration</th>
                  <th scope="col" class="timeline">timeline</th>
                </tr>
              </thead>
              <tbody>
                {spans.map((s) => {
                  const code = Number(s.row[c("grpc_code")]);
                  const left = ((s.startUs - t0) / total) * 100;
                  const width = (s.durationUs / total) * 100;
                  return (
                    <tr data-span={s.spanId} data-depth={s.depth}>
                      <th scope="row" style={{ paddingLeft: `${6 + s.depth * 18}px` }}>
                        {s.depth > 0 ? "└ " : ""}
                        <strong>{s.row[c("service")]}</strong> {s.row[c("method")]}{" "}
                        <span class="muted">
                          {s.row[c("protocol")]} · {s.row[c("instance")]}
                        </span>
                      </th>
                      <td class={code ? "bad" : ""}>
                        {grpcCodeName(code)}
                        {s.row[c("error_message")] ? `: ${s.row[c("error_message")]}` : ""}
                        {Number(s.row[c("fault_injected")]) ? " · fault injected" : ""}
                      </td>
                      <td>+{formatUs(s.startUs - t0)}</td>
                      <td>{formatUs(s.durationUs)}</td>
                      <td class="timeline">
                        <span
                          class={`span-bar${code ? " error" : ""}`}
                          style={{
                            left: `${left.toFixed(2)}%`,
                            width: `${Math.max(0.3, width).toFixed(2)}%`,
                          }}
                          title={`${formatUs(s.durationUs)} at +${formatUs(s.startUs - t0)}`}
                        />
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </>
        )
        : null}
      <Island name="CopySql" props={{ id: "trace", sql: block.sql }} />
    </Layout>,
  );
}
