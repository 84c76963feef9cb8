/** Alert rules with their live state, the firing/resolved history, and (for admins) the rule editor. */
import { useLiveData } from "./live.ts";
import { type AlertsData, formatDateTime, formatTime } from "./model.ts";
import { CopySql } from "./Sql.tsx";
import { Banners } from "./Status.tsx";

export interface AlertsProps {
  initial: AlertsData;
  stream: string | null;
  /** Per user, not part of the shared live view. */
  canEdit: boolean;
  csrf: string;
}

export function AlertsView(props: { data: AlertsData; canEdit: boolean; csrf: string }) {
  const d = props.data;
  return (
    <div>
      <Banners global={d.global} />
      <p class="muted updated">
        Evaluated every second on the server · data as of{" "}
        <time data-updated>{formatTime(d.global.nowMs)}</time> UTC
      </p>
      {d.fileErrors.length
        ? (
          <div class="banner banner-stale" role="alert">
            <strong>Rules file problems (those rules are ignored):</strong>
            <ul>{d.fileErrors.map((e) => <li key={e}>{e}</li>)}</ul>
          </div>
        )
        : null}
      <section aria-labelledby="rules-title">
        <h2 id="rules-title">Rules</h2>
        {d.rules.length === 0
          ? <p class="empty-state">No rules yet.{props.canEdit ? " Add one below." : ""}</p>
          : (
            <table class="numbers" id="table-rules">
              <thead>
                <tr>
                  <th scope="col">rule</th>
                  <th scope="col">condition</th>
                  <th scope="col">state</th>
                  <th scope="col">value now</th>
                  <th scope="col">since</th>
                  {props.canEdit ? <th scope="col">change</th> : null}
                </tr>
              </thead>
              <tbody>
                {d.rules.map((r) => {
                  const unit = r.kind === "p99_above" ? "ms" : "%";
                  return (
                    <tr data-rule={r.id} data-state={r.state}>
                      <th scope="row">
                        {r.name} <span class="muted">({r.id})</span>
                      </th>
                      <td>
                        {r.kind === "p99_above" ? "p99" : "error rate"} of{" "}
                        {r.method || `${r.service} (all methods)`}
                        {r.method ? ` (${r.service})` : ""} above {r.threshold} {unit} for {r.forS}{" "}
                        s ({r.windowS} s windows){r.webhook ? ` · webhook ${r.webhook}` : ""}
                      </td>
                      <td class={`state state-${r.state.replace(" ", "-")}`}>{r.state}</td>
                      <td>
                        {r.value === null ? "–" : `${r.value.toFixed(2)} ${unit}`}
                        {r.valueAtS ? <span class="muted">at {formatTime(r.valueAtS * 1000)}</span> : null}
                      </td>
                      <td>{r.sinceMs ? formatTime(r.sinceMs) : "–"}</td>
                      {props.canEdit
                        ? (
                          <td>
                            <form method="post" action="/alerts">
                              <input type="hidden" name="_csrf" value={props.csrf} />
                              <input type="hidden" name="action" value="delete" />
                              <input type="hidden" name="id" value={r.id} />
                              <button type="submit" aria-label={`Delete rule ${r.id}`}>Delete</button>
                            </form>
                          </td>
                        )
                        : null}
                    </tr>
                  );
                })}
              </tbody>
            </table>
          )}
        <CopySql id="evaluation" sql={d.evaluation.sql} />
      </section>
      <section aria-labelledby="history-title">
        <h2 id="history-title">History</h2>
        <p class="source">Source: the web server's own store (SQLite), newest first, last 100.</p>
        {d.history.length === 0
          ? <p class="empty-state">Nothing has fired yet.</p>
          : (
            <table class="numbers" id="table-history">
              <thead>
                <tr>
                  <th scope="col">when (UTC)</th>
                  <th scope="col">rule</th>
                  <th scope="col">state</th>
                  <th scope="col">what</th>
                </tr>
              </thead>
              <tbody>
                {d.history.map((e) => (
                  <tr data-event-state={e.state} data-event-rule={e.ruleId}>
                    <td>{formatDateTime(e.atMs)}</td>
                    <td>{e.ruleName}</td>
                    <td class={`state state-${e.state}`}>{e.state}</td>
                    <td>{e.message}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
      </section>
    </div>
  );
}

export default function Alerts(props: AlertsProps) {
  const data = useLiveData(props.initial, props.stream);
  return <AlertsView data={data.value} canEdit={props.canEdit} csrf={props.csrf} />;
}
