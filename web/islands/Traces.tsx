/** The slowest recent requests, each linked to its trace's call tree. */
import { useLiveData } from "./live.ts";
import { col, formatDateTime, formatUs, grpcCodeName, type TracesData } from "./model.ts";
import { BlockError } from "./Overview.tsx";
import { CopySql } from "./Sql.tsx";
import { Banners } from "./Status.tsx";

export function TracesView(props: { data: TracesData }) {
  const d = props.data;
  const b = d.slowest;
  const c = (name: string) => col(b, name);
  return (
    <div>
      <Banners global={d.global} />
      <p class="muted updated">
        Data as of <time data-updated>{formatDateTime(d.global.nowMs)}</time> UTC · {d.range.label}{" "}
        · refreshed every 5 s while live
      </p>
      <BlockError block={b} />
      {b.rows.length === 0 && !b.error
        ? (
          <p class="empty-state">
            No request matches in this range: no data yet (run ./dev demo), or loosen the filters.
          </p>
        )
        : (
          <table class="numbers" id="table-slowest">
            <caption>{b.title}, slowest first</caption>
            <thead>
              <tr>
                <th scope="col">duration</th>
                <th scope="col">started (UTC)</th>
                <th scope="col">service</th>
                <th scope="col">method</th>
                <th scope="col">protocol</th>
                <th scope="col">status</th>
                <th scope="col">instance</th>
                <th scope="col">trace</th>
              </tr>
            </thead>
            <tbody>
              {b.rows.map((r) => {
                const code = Number(r[c("grpc_code")]);
                const traceId = String(r[c("trace_id")]);
                return (
                  <tr>
                    <td data-col="duration_us">{formatUs(Number(r[c("duration_us")]))}</td>
                    <td>{formatDateTime(Number(r[c("ts_ms")]))}</td>
                    <td>{r[c("service")]}</td>
                    <td>{r[c("method")]}</td>
                    <td>{r[c("protocol")]}{r[c("route")] ? ` ${r[c("route")]}` : ""}</td>
                    <td class={code !== 0 ? "bad" : ""}>
                      {grpcCodeName(code)}
                      {r[c("protocol")] === "http" ? ` (${r[c("http_status")]})` : ""}
                      {Number(r[c("fault_injected")]) ? " · fault" : ""}
                    </td>
                    <td>{r[c("instance")]}</td>
                    <td>
                      {/^[0-9a-f]{32}$/.test(traceId)
                        ? (
                          <a class="trace-link" href={`/traces/${traceId}?at=${r[c("ts_ms")]}`}>
                            {traceId.slice(0, 12)}…
                          </a>
                        )
                        : "–"}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
      <CopySql id="slowest" sql={b.sql} />
    </div>
  );
}

export default function Traces(props: { initial: TracesData; stream: string | null }) {
  const data = useLiveData(props.initial, props.stream);
  return <TracesView data={data.value} />;
}
