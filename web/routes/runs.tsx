/**
 * GET /runs: the load runs in the results folder (`./dev load`, `./dev bench`), newest first, each with its
 * counts, the cross-check's verdict, client/server/profiler p99 per method, and links to its HTML report, its
 * JSON and its span on the overview. GET /runs/<file>: that report or JSON, served as written (names of the
 * results folder's fixed pattern only).
 */
import { html, pageContext, type RequestContext } from "../app.ts";
import { Layout } from "../components/Layout.tsx";
import { formatCount, formatDateTime, formatPct, formatRate, formatUs } from "../islands/model.ts";
import { readRunFile, type RunSummary } from "../runs.ts";
import { BadRequest, checkKnownParams } from "../params.ts";
import { errorPage } from "./errors.tsx";

/** The overview over a run's span, with a minute either side (a range spans at least 10 s). */
function overviewLink(run: RunSummary): string {
  const q = new URLSearchParams({
    range: "custom",
    from: String(Math.floor(run.startedAtMs - 60_000)),
    to: String(Math.ceil(Math.max(run.endedAtMs, run.startedAtMs + 10_000) + 60_000)),
  });
  return `/?${q}`;
}

function Verdict(props: { run: RunSummary }) {
  const { run } = props;
  if (run.crossCheckOk === undefined) return <span class="muted">none recorded</span>;
  if (run.crossCheckOk) return <span>green</span>;
  return (
    <span class="bad">
      failed{run.crossCheckFailures.length ? `: ${run.crossCheckFailures.slice(0, 3).join("; ")}` : ""}
    </span>
  );
}

export async function runsPage(rc: RequestContext): Promise<Response> {
  const problems: string[] = [];
  checkKnownParams(rc.url.searchParams, [], problems);
  if (problems.length > 0) throw new BadRequest(problems);
  const [{ runs, skipped }, ctx] = await Promise.all([rc.app.views.runs(), pageContext(rc)]);
  const newestFirst = [...runs].reverse();
  return html(
    rc,
    <Layout ctx={ctx} title="Load runs" current="runs" live={false}>
      <h1>Load runs</h1>
      <p class="muted">
        Every <code>./dev load</code> and <code>./dev bench</code> run in the results folder (
        <code>{rc.app.config.loadResultsDir}</code>): the generator's counts, the cross-check of those counts
        against the services' counters and the rows in ClickHouse, and the p99 the client saw next to the
        server's and the profiler's. Times are UTC.
      </p>
      {newestFirst.length === 0
        ? (
          <p id="runs-empty">
            No load runs yet: run <code>./dev load orders-create</code> (or <code>./dev load --list</code>).
          </p>
        )
        : (
          <table class="numbers" id="table-runs">
            <caption>Newest first</caption>
            <thead>
              <tr>
                <th scope="col">Started</th>
                <th scope="col">Scenario</th>
                <th scope="col">Schedule</th>
                <th scope="col">Requests</th>
                <th scope="col">OK</th>
                <th scope="col">Errors</th>
                <th scope="col">Cancelled</th>
                <th scope="col">Rate</th>
                <th scope="col">Cross-check</th>
                <th scope="col">p99 client / corrected / server / profiler</th>
                <th scope="col">Links</th>
              </tr>
            </thead>
            <tbody>
              {newestFirst.map((run) => (
                <tr key={run.file} data-run={run.runId}>
                  <td>{formatDateTime(run.startedAtMs)}</td>
                  <td>
                    {run.scenario}
                    {run.hostNote ? <div class="muted">{run.hostNote}</div> : null}
                  </td>
                  <td>{run.schedule}{run.durationS !== undefined ? `, ${run.durationS} s` : ""}</td>
                  <td>{formatCount(run.total)}</td>
                  <td>
                    {formatCount(run.ok)}
                    {run.total ? ` (${formatPct((run.ok ?? 0) / run.total)})` : ""}
                  </td>
                  <td>{formatCount(run.errors)}</td>
                  <td>{formatCount(run.cancelled)}</td>
                  <td>{formatRate(run.achievedRps)}/s</td>
                  <td>
                    <Verdict run={run} />
                  </td>
                  <td>
                    {run.latency.length === 0 ? <span class="muted">–</span> : (
                      <ul class="plain">
                        {run.latency.map((l) => (
                          <li key={l.method}>
                            <code>{l.method}</code>: {formatUs(l.clientP99Us)} / {formatUs(l.correctedP99Us)}
                            {" "}
                            / {formatUs(l.serverP99Us)} / {formatUs(l.profilerP99Us)}
                          </li>
                        ))}
                      </ul>
                    )}
                  </td>
                  <td>
                    {run.report
                      ? <a href={`/runs/${run.report}`}>report</a>
                      : <span class="muted">no report</span>}
                    {" · "}
                    <a href={`/runs/${run.file}`}>JSON</a>
                    {" · "}
                    <a href={overviewLink(run)}>on the overview</a>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      {skipped.length
        ? (
          <p class="muted" id="runs-skipped">
            Not load runs (unreadable, or still being written): {skipped.slice(0, 10).join(", ")}
            {skipped.length > 10 ? ` and ${skipped.length - 10} more` : ""}
          </p>
        )
        : null}
    </Layout>,
  );
}

/**
 * A run's report or JSON. The report is the load tool's own self-contained page (its script and styles
 * inline, no network): it gets a policy of its own that lets those run and reach nothing.
 */
export async function runFile(rc: RequestContext, name: string): Promise<Response> {
  const file = await readRunFile(rc.app.config.loadResultsDir, name);
  if (!file) {
    return await errorPage(rc, 404, "Not found", [`no load run file ${JSON.stringify(name.slice(0, 100))}`]);
  }
  return new Response(file.body as BodyInit, {
    headers: {
      "content-type": file.type,
      "cache-control": "no-store",
      "x-content-type-options": "nosniff",
      "x-frame-options": "DENY",
      "referrer-policy": "no-referrer",
      "content-security-policy":
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; " +
        "connect-src 'none'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    },
  });
}
