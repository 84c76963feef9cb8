/** Service → method: per method now, percentiles and statuses over time, protocols, instances, histogram. */
import { Chart } from "./Chart.tsx";
import { useLiveData } from "./live.ts";
import {
  type Block,
  col,
  formatCount,
  formatPct,
  formatRate,
  formatTime,
  formatUs,
  grpcCodeName,
  logBins,
  pivot,
  type ServiceData,
} from "./model.ts";
import { BlockError, markersOf } from "./Overview.tsx";
import { CopySql } from "./Sql.tsx";
import { Banners } from "./Status.tsx";

function BreakdownTable(props: { block: Block; keyLabel: string; windowS: number }) {
  const b = props.block;
  return (
    <section aria-labelledby={`${b.id}-title`}>
      <h3 id={`${b.id}-title`}>{b.title}</h3>
      <BlockError block={b} />
      {b.rows.length === 0 && !b.error
        ? <p class="empty-state">No requests in the last {props.windowS} s.</p>
        : (
          <table class="numbers" id={`table-${b.id}`}>
            <thead>
              <tr>
                <th scope="col">{props.keyLabel}</th>
                <th scope="col">requests</th>
                <th scope="col">rps</th>
                <th scope="col">errors</th>
                <th scope="col">avg</th>
                <th scope="col">p50</th>
                <th scope="col">p99</th>
                <th scope="col">max</th>
              </tr>
            </thead>
            <tbody>
              {b.rows.map((r) => (
                <tr>
                  <th scope="row">{r[0]}</th>
                  <td>{formatCount(Number(r[1]))}</td>
                  <td>{formatRate(Number(r[1]) / props.windowS)}</td>
                  <td>{formatCount(Number(r[2]))}</td>
                  <td>{formatUs(Number(r[3]))}</td>
                  <td>{formatUs(Number(r[4]))}</td>
                  <td>{formatUs(Number(r[5]))}</td>
                  <td>{formatUs(Number(r[6]))}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      <CopySql id={b.id} sql={b.sql} />
    </section>
  );
}

function Histogram(props: { block: Block }) {
  const bins = logBins(props.block.rows);
  const max = Math.max(1, ...bins.map((b) => b.count));
  const total = bins.reduce((a, b) => a + b.count, 0);
  return (
    <section aria-labelledby="histogram-title">
      <h3 id="histogram-title">{props.block.title}</h3>
      <BlockError block={props.block} />
      {total === 0 && !props.block.error
        ? <p class="empty-state">No completed requests in this window.</p>
        : (
          <table class="histogram" id="table-histogram">
            <caption class="muted">{formatCount(total)} requests; bars on a log scale of latency</caption>
            <thead>
              <tr>
                <th scope="col">latency</th>
                <th scope="col">requests</th>
              </tr>
            </thead>
            <tbody>
              {bins.map((b) => (
                <tr>
                  <th scope="row">{formatUs(b.lowerUs)} – {formatUs(b.upperUs)}</th>
                  <td>
                    <span class="bar" style={{ width: `${(b.count / max) * 100}%` }} />
                    <span class="bar-label">{b.count ? formatCount(b.count) : ""}</span>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      <CopySql id="histogram" sql={props.block.sql} />
    </section>
  );
}

export function ServiceView(props: { data: ServiceData }) {
  const d = props.data;
  const range = d.range;
  const markers = markersOf(d.faults, d.loadRuns, range, d.service);
  const pc = (name: string) => col(d.percentiles, name);
  const percentileNames = ["p50_us", "p90_us", "p95_us", "p99_us", "p999_us"];
  const t: number[] = [];
  for (let s = range.fromS; s < range.toS; s += range.stepS) t.push(s);
  const byT = new Map(d.percentiles.rows.map((r) => [Number(r[pc("t")]), r]));
  const percentileSeries = percentileNames.map((name) => ({
    label: name.replace("_us", "").replace("p999", "p99.9"),
    values: t.map((s) => {
      const row = byT.get(s);
      return row ? Number(row[pc(name)]) : null;
    }),
  }));
  const status = pivot(
    d.status,
    range,
    (r) => r[1] === "grpc" ? `gRPC ${grpcCodeName(Number(r[2]))}` : `REST ${r[3]}`,
    (r) => Number(r[4]) / range.stepS,
  );
  const nc = (name: string) => col(d.now, name);
  const methodLink = (method: string) => {
    const q = new URLSearchParams(d.query);
    if (method) q.set("method", method);
    else q.delete("method");
    return `/service/${encodeURIComponent(d.service)}?${q}`;
  };
  return (
    <div>
      <Banners global={d.global} />
      <p class="muted updated">
        Data as of <time data-updated>{formatTime(d.global.nowMs)}</time> UTC · {range.label} (one point per
        {" "}
        {range.stepS} s) · {d.window} s windows · {d.method ? <code>{d.method}</code> : "all methods"}
      </p>
      <section aria-labelledby="methods-title">
        <h2 id="methods-title">Methods of {d.service} now</h2>
        <BlockError block={d.now} />
        {d.now.rows.length === 0 && !d.now.error
          ? (
            <p class="empty-state">
              No percentiles for {d.service} in the last 2 minutes: no data yet, run ./dev demo.
            </p>
          )
          : null}
        <table class="numbers" id="table-methods">
          <caption>
            The newest {d.window} s window of latency_percentiles per method (all methods: the whole service)
          </caption>
          <thead>
            <tr>
              <th scope="col">method</th>
              <th scope="col">requests</th>
              <th scope="col">rps</th>
              <th scope="col">errors</th>
              <th scope="col">error rate</th>
              <th scope="col">p50</th>
              <th scope="col">p95</th>
              <th scope="col">p99</th>
              <th scope="col">p99.9</th>
              <th scope="col">max</th>
              <th scope="col">window end</th>
            </tr>
          </thead>
          <tbody>
            {d.now.rows.map((r) => {
              const method = String(r[0]);
              return (
                <tr data-method={method} class={method === d.method ? "selected" : ""}>
                  <th scope="row">
                    <a href={methodLink(method)} aria-current={method === d.method ? "true" : undefined}>
                      {method || "(all methods)"}
                    </a>
                  </th>
                  <td data-col="count">{formatCount(Number(r[nc("count")]))}</td>
                  <td data-col="rps">{formatRate(Number(r[nc("rps")]))}</td>
                  <td data-col="errors">{formatCount(Number(r[nc("errors")]))}</td>
                  <td data-col="error_rate">{formatPct(Number(r[nc("error_rate")]))}</td>
                  <td data-col="p50_us">{formatUs(Number(r[nc("p50_us")]))}</td>
                  <td data-col="p95_us">{formatUs(Number(r[nc("p95_us")]))}</td>
                  <td data-col="p99_us">{formatUs(Number(r[nc("p99_us")]))}</td>
                  <td data-col="p999_us">{formatUs(Number(r[nc("p999_us")]))}</td>
                  <td data-col="max_us">{formatUs(Number(r[nc("max_us")]))}</td>
                  <td>{formatTime(Number(r[nc("latest_ts")]) * 1000)}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
        <CopySql id="now" sql={d.now.sql} />
      </section>
      <section class="grid2" aria-label="Over the range">
        <Chart
          id="percentiles"
          title={d.percentiles.title}
          t={t}
          series={d.percentiles.rows.length ? percentileSeries : []}
          unit="us"
          markers={markers}
          sql={d.percentiles.sql}
          error={d.percentiles.error}
        />
        <Chart
          id="status"
          title="Requests per second by protocol and status (request_stats_1s)"
          t={status.t}
          series={status.keys.map((k, i) => ({ label: k, values: status.series[i] }))}
          unit="rps"
          markers={markers}
          sql={d.status.sql}
          error={d.status.error}
        />
      </section>
      <div class="grid2">
        <BreakdownTable block={d.protocols} keyLabel="protocol" windowS={d.window} />
        <BreakdownTable block={d.instances} keyLabel="instance" windowS={d.window} />
      </div>
      <Histogram block={d.histogram} />
    </div>
  );
}

export default function Service(props: { initial: ServiceData; stream: string | null }) {
  const data = useLiveData(props.initial, props.stream);
  return <ServiceView data={data.value} />;
}
