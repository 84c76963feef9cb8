/** GET /traces : the slowest recent requests, filtered. */
import { html, pageContext, type RequestContext } from "../app.ts";
import { RangeControls } from "../components/Controls.tsx";
import { Island } from "../components/Island.tsx";
import { Layout } from "../components/Layout.tsx";
import { grpcCodeName, type TracesData } from "../islands/model.ts";
import { parseTraces, viewQuery } from "../params.ts";

export async function tracesPage(rc: RequestContext): Promise<Response> {
  const known = await rc.app.views.known();
  const spec = parseTraces(rc.url.searchParams, known);
  const [data, ctx] = await Promise.all([rc.app.views.get(spec), pageContext(rc)]);
  const live = spec.range.preset !== "custom";
  const allMethods = [...new Set([...known.methods.values()].flat())].sort();
  return html(
    rc,
    <Layout ctx={ctx} title="Traces" current="traces" live={live}>
      <RangeControls action="/traces" range={spec.range}>
        <label>
          Service
          <select name="service">
            <option value="" selected={spec.service === ""}>any</option>
            {known.services.map((s) => <option key={s} value={s} selected={spec.service === s}>{s}</option>)}
          </select>
        </label>
        <label>
          Method (full name)
          <input name="method" value={spec.method} list="methods" size={36} />
          <datalist id="methods">{allMethods.map((m) => <option key={m} value={m} />)}</datalist>
        </label>
        <label>
          Status
          <select name="status">
            <option value="any" selected={spec.status === "any"}>any</option>
            <option value="ok" selected={spec.status === "ok"}>OK</option>
            <option value="error" selected={spec.status === "error"}>any error</option>
            {Array.from({ length: 16 }, (_, i) => i + 1).map((code) => (
              <option value={code} selected={spec.status === code}>{grpcCodeName(code)}</option>
            ))}
          </select>
        </label>
        <label>
          Min duration (ms)
          <input name="min_ms" type="number" min="0" max="3600000" value={spec.minMs} />
        </label>
        <label>
          Rows
          <input name="limit" type="number" min="1" max="500" value={spec.limit} />
        </label>
      </RangeControls>
      <Island
        name="Traces"
        props={{ initial: data as TracesData, stream: live ? viewQuery(spec, true).toString() : null }}
      />
    </Layout>,
  );
}
