/** GET /service/:name?method=&window=&range= : one service, one method or all of them. */
import { html, pageContext, type RequestContext } from "../app.ts";
import { RangeControls } from "../components/Controls.tsx";
import { Island } from "../components/Island.tsx";
import { Layout } from "../components/Layout.tsx";
import type { ServiceData } from "../islands/model.ts";
import { parseService, viewQuery } from "../params.ts";

export async function servicePage(rc: RequestContext, service: string): Promise<Response> {
  const known = await rc.app.views.known();
  const spec = parseService(service, rc.url.searchParams, known);
  const [data, ctx] = await Promise.all([rc.app.views.get(spec), pageContext(rc)]);
  const live = spec.range.preset !== "custom";
  const methods = known.methods.get(spec.service) ?? [];
  return html(
    rc,
    <Layout
      ctx={ctx}
      title={`Service ${spec.service}`}
      current="service"
      currentService={spec.service}
      live={live}
    >
      <RangeControls
        action={`/service/${encodeURIComponent(spec.service)}`}
        range={spec.range}
        window={spec.window}
      >
        <label>
          Method
          <select name="method">
            <option value="" selected={spec.method === ""}>all methods</option>
            {methods.map((m) => <option key={m} value={m} selected={spec.method === m}>{m}</option>)}
          </select>
        </label>
      </RangeControls>
      <Island
        name="Service"
        props={{ initial: data as ServiceData, stream: live ? viewQuery(spec, true).toString() : null }}
      />
    </Layout>,
  );
}
