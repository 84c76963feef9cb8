/** GET / : the overview. */
import { html, pageContext, type RequestContext } from "../app.ts";
import { RangeControls } from "../components/Controls.tsx";
import { Island } from "../components/Island.tsx";
import { Layout } from "../components/Layout.tsx";
import type { OverviewData } from "../islands/model.ts";
import { parseOverview, viewQuery } from "../params.ts";

export async function overviewPage(rc: RequestContext): Promise<Response> {
  const spec = parseOverview(rc.url.searchParams);
  const [data, ctx] = await Promise.all([rc.app.views.get(spec), pageContext(rc)]);
  const live = spec.range.preset !== "custom";
  return html(
    rc,
    <Layout ctx={ctx} title="Overview" current="overview" live={live}>
      <RangeControls action="/" range={spec.range} window={spec.window} />
      <Island
        name="Overview"
        props={{ initial: data as OverviewData, stream: live ? viewQuery(spec, true).toString() : null }}
      />
    </Layout>,
  );
}
