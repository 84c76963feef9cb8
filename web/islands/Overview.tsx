/** The overview: every service now and over the range, the pipeline's health, and the processes themselves. */
import { Chart, COLORS, formatValue, type Marker, Sparkline } from "./Chart.tsx";
import { useLiveData } from "./live.ts";
import {
  type Block,
  col,
  formatAge,
  formatCount,
  formatPct,
  formatRate,
  formatTime,
  formatUs,
  type LoadRun,
  type OverviewData,
  pivot,
  type TimeRangeData,
} from "./model.ts";
import { CopySql } from "./Sql.tsx";
import { Banners } from "./Status.tsx";

export function markersOf(
  faults: Block,
  loadRuns: LoadRun[],
  range: TimeRangeData,
  service?: string,
): Marker[] {
  const markers: Marker[] = [];
  const ti = col(faults, "t");
  const si = col(faults, "service");
  const fi = col(faults, "faulted");
  for (const row of faults.rows) {
    if (service !== undefined && row[si] !== service) continue;
    const t = Number(row[ti]);
    markers.push({ t, t2: t + range.stepS, kind: "fault", label: `${row[si]}: ${row[fi]} faulted` });
  }
  for (const run of loadRuns) {
    markers.push({ t: run.startedAtMs / 1000, kind: "load-start", label: `${run.scenario} start` });
    markers.push({ t: run.endedAtMs / 1000, kind: "load-end", label: `${run.scenario} end` });
  }
  return markers;
}

export function BlockError(props: { block: Block }) {
  return props.block.error
    ? <p class="error-state">Could not read “{props.block.title}”: {props.block.error}</p>
    : null;
}

export function OverviewView(props: { data: OverviewData }) {
  const d = props.data;
  const range = d.range;
  const markers = markersOf(d.faults, d.loadRuns, range);
  const rps = pivot(d.rps, range, (r) => String(r[1]), (r) => Number(r[2]) / range.stepS);
  const p99 = pivot(d.p99, range, (r) => String(r[1]), (r) => Number(r[2]));
  const nowRows = new Map(d.now.rows.map((r) => [String(r[0]), r]));
  const c = (name: string) => col(d.now, name);
  const services = [...new Set([...d.services, ...nowRows.keys()])].sort();
  const empty = d.now.rows.length === 0 && d.rps.rows.length === 0 && !d.now.error;
  const eventAge = d.global.newestEventMs ? d.global.nowMs - d.global.newestEventMs : null;
  const pctAge = d.global.newestPercentileS ? d.global.nowMs - d.global.newestPercentileS * 1000 : null;
  const history = d.processes;
  const ingest = d.targets.find((t) => t.name === "ingest");
  return (
    <div>
      <Banners global={d.global} />
      <p class="muted updated">
        Data as of <time data-updated>{formatTime(d.global.nowMs)}</time> UTC · {range.label} (one point per
        {" "}
        {range.stepS} s) · percentiles over {d.window} s windows
      </p>
      {empty
        ? <p class="empty-state">No data yet: run ./dev demo (or send requests to the services).</p>
        : null}

      <section aria-labelledby="services-title">
        <h2 id="services-title">Services</h2>
        <BlockError block={d.now} />
        <table class="numbers" id="table-now">
          <caption>
            Per service now: the newest {d.window} s window of latency_percentiles; sparklines over the range
          </caption>
          <thead>
            <tr>
              <th scope="col">service</th>
              <th scope="col">rps</th>
              <th scope="col">error rate</th>
              <th scope="col">p50</th>
              <th scope="col">p95</th>
              <th scope="col">p99</th>
              <th scope="col">window end</th>
              <th scope="col">requests/s over the range</th>
              <th scope="col">p99 over the range (10 s windows)</th>
            </tr>
          </thead>
          <tbody>
            {services.map((service) => {
              const row = nowRows.get(service);
              const ri = rps.keys.indexOf(service);
              const pi = p99.keys.indexOf(service);
              return (
                <tr data-service={service}>
                  <th scope="row">
                    <a href={`/service/${encodeURIComponent(service)}?${d.query}`}>{service}</a>
                  </th>
                  <td data-col="rps">{row ? formatRate(Number(row[c("rps")])) : "–"}</td>
                  <td data-col="error_rate">{row ? formatPct(Number(row[c("error_rate")])) : "–"}</td>
                  <td data-col="p50_us">{row ? formatUs(Number(row[c("p50_us")])) : "–"}</td>
                  <td data-col="p95_us">{row ? formatUs(Number(row[c("p95_us")])) : "–"}</td>
                  <td data-col="p99_us">{row ? formatUs(Number(row[c("p99_us")])) : "–"}</td>
                  <td>
                    {row ? formatTime(Number(row[c("latest_ts")]) * 1000) : "no data in the last 2 min"}
                  </td>
                  <td>
                    {ri >= 0
                      ? <Sparkline values={rps.series[ri]} label={`requests per second of ${service}`} />
                      : "–"}
                  </td>
                  <td>
                    {pi >= 0
                      ? <Sparkline values={p99.series[pi]} label={`p99 of ${service}`} color={COLORS[1]} />
                      : "–"}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
        <CopySql id="now" sql={d.now.sql} />
      </section>

      <section class="grid2" aria-label="Requests and latency over the range">
        <Chart
          id="rps"
          title="Requests per second by service (request_stats_1s)"
          t={rps.t}
          series={rps.keys.map((k, i) => ({ label: k, values: rps.series[i] }))}
          unit="rps"
          markers={markers}
          sql={d.rps.sql}
          error={d.rps.error}
        />
        <Chart
          id="p99"
          title="p99 by service (latency_percentiles, 10 s windows)"
          t={p99.t}
          series={p99.keys.map((k, i) => ({ label: k, values: p99.series[i] }))}
          unit="us"
          markers={markers}
          sql={d.p99.sql}
          error={d.p99.error}
        />
      </section>
      <p class="muted">
        Red bands: requests with an injected fault (<code>fault_injected</code>); dashed lines: load runs
        (bench/results/load-*.json){d.loadRuns.length
          ? `: ${d.loadRuns.map((r) => r.scenario).join(", ")}`
          : ", none in range"}.
      </p>
      <CopySql id="faults" sql={d.faults.sql} />

      <section aria-labelledby="pipeline-title">
        <h2 id="pipeline-title">Pipeline health</h2>
        <table class="numbers" id="table-pipeline">
          <caption>
            Events from the services' /metrics; ingest lag from ingest's /metrics; ages from ClickHouse
          </caption>
          <thead>
            <tr>
              <th scope="col">process</th>
              <th scope="col">/metrics</th>
              <th scope="col">requests/s</th>
              <th scope="col">events published (total, /s)</th>
              <th scope="col">events dropped (total, /s)</th>
              <th scope="col">event buffer</th>
            </tr>
          </thead>
          <tbody>
            {d.targets.filter((t) => t.name !== "ingest").map((t) => (
              <tr data-target={t.name}>
                <th scope="row">{t.name}</th>
                <td>{t.up ? "up" : <span class="bad">down: {t.error}</span>}</td>
                <td>{formatRate(t.rates.requests_total)}</td>
                <td>
                  {formatCount(t.values.events_published_total)} ·{" "}
                  {formatRate(t.rates.events_published_total)}/s
                </td>
                <td class={(t.rates.events_dropped_total ?? 0) > 0 ? "bad" : ""}>
                  {formatCount(t.values.events_dropped_total)} · {formatRate(t.rates.events_dropped_total)}/s
                </td>
                <td>{formatCount(t.values.events_buffer_depth)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        <dl class="facts" id="facts-pipeline">
          <div>
            <dt>ingest /metrics</dt>
            <dd>
              {ingest ? (ingest.up ? "up" : <span class="bad">down: {ingest.error}</span>) : "not configured"}
            </dd>
          </div>
          <div>
            <dt>ingest lag: pending in the stream</dt>
            <dd data-fact="pending">
              {formatCount(ingest?.values.ingest_consumer_pending)}{" "}
              messages (a message holds up to 256 events)
            </dd>
          </div>
          <div>
            <dt>ingest lag: delivered, not yet acked</dt>
            <dd data-fact="ack_pending">
              {formatCount(ingest?.values.ingest_consumer_ack_pending)} messages (up to 256 events each)
            </dd>
          </div>
          <div>
            <dt>rows inserted</dt>
            <dd>{formatRate(ingest?.rates.ingest_rows_inserted_total)}/s</dd>
          </div>
          <div>
            <dt>newest row in request_events</dt>
            <dd data-fact="event_age">{formatAge(eventAge)} old</dd>
          </div>
          <div>
            <dt>newest latency_percentiles row</dt>
            <dd data-fact="percentile_age">{formatAge(pctAge)} old (the profiler settles 1-2 s behind)</dd>
          </div>
        </dl>
        <CopySql id="freshness" sql={d.global.freshnessSql} />
      </section>

      <section aria-labelledby="processes-title">
        <h2 id="processes-title">Processes</h2>
        <div class="grid2">
          <Chart
            id="cpu"
            title="CPU (% of one core) per process"
            t={history.t}
            series={history.processes.map((p) => ({ label: p.name, values: p.cpuPct }))}
            unit="pct"
            source="process_cpu_seconds_total of each /metrics (web: /proc/self), sampled by the web server"
          />
          <Chart
            id="memory"
            title="Resident memory (MiB) per process"
            t={history.t}
            series={history.processes.map((p) => ({ label: p.name, values: p.rssMiB }))}
            unit="mib"
            source="process_resident_memory_bytes of each /metrics (web: /proc/self)"
          />
        </div>
        <table class="numbers" id="table-processes">
          <caption>Latest sample per process</caption>
          <thead>
            <tr>
              <th scope="col">process</th>
              <th scope="col">CPU</th>
              <th scope="col">memory</th>
              <th scope="col">open fds</th>
            </tr>
          </thead>
          <tbody>
            {history.processes.map((p) => (
              <tr>
                <th scope="row">{p.name}</th>
                <td>{formatValue("pct", p.cpuPct[p.cpuPct.length - 1])}</td>
                <td>{formatValue("mib", p.rssMiB[p.rssMiB.length - 1])}</td>
                <td>{formatCount(p.fds[p.fds.length - 1])}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
    </div>
  );
}

export default function Overview(props: { initial: OverviewData; stream: string | null }) {
  const data = useLiveData(props.initial, props.stream);
  return <OverviewView data={data.value} />;
}
