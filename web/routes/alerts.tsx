/**
 * GET /alerts: rules, their state, history; POST /alerts (admin, CSRF): add or replace a rule (same id), or
 * delete one. A bad rule is a 400 page with every problem and the form filled in again.
 */
import { html, pageContext, readForm, type RequestContext } from "../app.ts";
import { validateRule } from "../alerts.ts";
import { Island } from "../components/Island.tsx";
import { Layout } from "../components/Layout.tsx";
import type { AlertsData } from "../islands/model.ts";
import { BadRequest, parseAlerts } from "../params.ts";
import { errorPage } from "./errors.tsx";

const MESSAGES: Record<string, string> = { saved: "Rule saved.", deleted: "Rule deleted." };

function RuleForm(props: {
  csrf: string;
  services: string[];
  methods: string[];
  values: Record<string, string>;
  problems: string[];
}) {
  const v = props.values;
  return (
    <section aria-labelledby="add-title">
      <h2 id="add-title">Add or replace a rule</h2>
      <p class="muted">A rule with an existing id replaces it. Saved to the rules file.</p>
      {props.problems.length
        ? (
          <div class="banner banner-stale" role="alert" id="rule-errors">
            <strong>The rule was not saved:</strong>
            <ul class="errors">{props.problems.map((p) => <li key={p}>{p}</li>)}</ul>
          </div>
        )
        : null}
      <form method="post" action="/alerts" class="rule-form" id="rule-form">
        <input type="hidden" name="_csrf" value={props.csrf} />
        <input type="hidden" name="action" value="save" />
        <label>
          Id
          <input name="id" required pattern="[a-z0-9][a-z0-9_\-]{0,63}" value={v.id ?? ""} />
        </label>
        <label>
          Name
          <input name="name" value={v.name ?? ""} maxLength={120} />
        </label>
        <label>
          Condition
          <select name="kind">
            <option value="p99_above" selected={v.kind !== "error_rate_above"}>p99 above (ms)</option>
            <option value="error_rate_above" selected={v.kind === "error_rate_above"}>
              error rate above (%)
            </option>
          </select>
        </label>
        <label>
          Service
          <select name="service">
            {props.services.map((s) => <option key={s} value={s} selected={v.service === s}>{s}</option>)}
          </select>
        </label>
        <label>
          Method (empty: the whole service)
          <input name="method" list="rule-methods" value={v.method ?? ""} />
          <datalist id="rule-methods">{props.methods.map((m) => <option key={m} value={m} />)}</datalist>
        </label>
        <label>
          Threshold (ms or %)
          <input name="threshold" type="number" step="any" min="0" required value={v.threshold ?? ""} />
        </label>
        <label>
          For (seconds)
          <input name="for_s" type="number" min="1" max="3600" required value={v.for_s ?? "10"} />
        </label>
        <label>
          Window
          <select name="window_s">
            {["10", "60", "300"].map((w) => (
              <option value={w} selected={(v.window_s ?? "10") === w}>{w} s</option>
            ))}
          </select>
        </label>
        <label>
          Webhook (optional, allow-listed origins only)
          <input name="webhook" type="url" value={v.webhook ?? ""} />
        </label>
        <button type="submit">Save rule</button>
      </form>
    </section>
  );
}

async function render(
  rc: RequestContext,
  status: number,
  form: { values: Record<string, string>; problems: string[] },
  message?: string,
): Promise<Response> {
  const [data, ctx, known] = await Promise.all([
    rc.app.views.get({ page: "alerts" }),
    pageContext(rc),
    rc.app.views.known(),
  ]);
  const canEdit = rc.principal?.role === "admin";
  const methods = [...new Set([...known.methods.values()].flat())].sort();
  return html(
    rc,
    <Layout ctx={ctx} title="Alerts" current="alerts" live>
      {message ? <p class="banner banner-stale" role="status">{message}</p> : null}
      <Island
        name="Alerts"
        props={{ initial: data as AlertsData, stream: "page=alerts", canEdit, csrf: rc.csrf }}
      />
      {canEdit
        ? <RuleForm csrf={rc.csrf} services={known.services} methods={methods} {...form} />
        : <p class="muted">Signed in as a reader: rules can be changed by an admin.</p>}
    </Layout>,
    status,
  );
}

export async function alertsPage(rc: RequestContext): Promise<Response> {
  parseAlerts(rc.url.searchParams);
  const msg = rc.url.searchParams.get("msg");
  return await render(rc, 200, { values: {}, problems: [] }, msg ? MESSAGES[msg] : undefined);
}

export async function alertsPost(rc: RequestContext): Promise<Response> {
  if (rc.principal?.role !== "admin") {
    return await errorPage(rc, 403, "Not allowed", ["changing rules needs the admin role"]);
  }
  const form = await readForm(rc.request);
  if (!form) return await errorPage(rc, 413, "Too large", ["the form is larger than 64 KiB"]);
  if (!rc.app.auth.checkCsrf(rc.request, form.get("_csrf"))) {
    return await errorPage(rc, 403, "Refused", [
      "the form's CSRF token is missing or wrong: reload the page and try again",
    ]);
  }
  const action = form.get("action");
  if (action === "delete") {
    const id = form.get("id") ?? "";
    if (!rc.app.alerts.remove(id)) {
      throw new BadRequest([`no rule with id ${JSON.stringify(id.slice(0, 64))}`]);
    }
    return new Response(null, { status: 303, headers: { location: "/alerts?msg=deleted" } });
  }
  if (action !== "save") throw new BadRequest(["action must be save or delete"]);
  const values: Record<string, string> = {};
  for (
    const key of ["id", "name", "kind", "service", "method", "threshold", "for_s", "window_s", "webhook"]
  ) {
    values[key] = form.get(key) ?? "";
  }
  const input: Record<string, unknown> = { ...values };
  if (!values.name) input.name = values.id;
  const { rule, problems } = validateRule(input, rc.app.config.webhookAllowlist);
  const known = await rc.app.views.known();
  if (values.service && !known.services.includes(values.service)) {
    problems.push(`service ${JSON.stringify(values.service.slice(0, 64))} is not known`);
  }
  if (rule && rule.method && !(known.methods.get(rule.service) ?? []).includes(rule.method)) {
    problems.push(
      `method ${JSON.stringify(rule.method.slice(0, 120))} of ${rule.service} has no data in the last 24 h`,
    );
  }
  if (!rule || problems.length) return await render(rc, 400, { values, problems });
  try {
    rc.app.alerts.upsert(rule);
  } catch (error) {
    return await render(rc, 400, { values, problems: [(error as Error).message] });
  }
  return new Response(null, { status: 303, headers: { location: "/alerts?msg=saved" } });
}
