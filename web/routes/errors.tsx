/** The 400 page (what was wrong, with a way back) and the other error pages. */
import { html, pageContext, type RequestContext } from "../app.ts";
import { Layout } from "../components/Layout.tsx";

export async function errorPage(
  rc: RequestContext,
  status: number,
  title: string,
  problems: string[],
): Promise<Response> {
  const ctx = await pageContext(rc);
  return html(
    rc,
    <Layout ctx={ctx} title={title} current="error">
      <div class="banner banner-stale" role="alert">
        <ul class="errors">
          {problems.map((p) => <li key={p}>{p}</li>)}
        </ul>
      </div>
      <p>
        <a href={rc.url.pathname}>Open this page with its defaults</a> or go to the <a href="/">overview</a>.
      </p>
    </Layout>,
    status,
  );
}
