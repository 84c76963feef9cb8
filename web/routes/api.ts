/** GET /api/view, /api/stream (server-sent events) and /api/trace/:id: the pages' data as JSON. */
import { json, type RequestContext } from "../app.ts";
import { parseTrace, parseViewParams } from "../params.ts";

export async function apiView(rc: RequestContext): Promise<Response> {
  const spec = parseViewParams(rc.url.searchParams, await rc.app.views.known());
  return json(await rc.app.views.get(spec));
}

export async function apiStream(rc: RequestContext): Promise<Response> {
  const spec = parseViewParams(rc.url.searchParams, await rc.app.views.known());
  const response = rc.app.hub.subscribe(spec, rc.request.signal);
  return response ??
    json({ error: "too many live connections or views: try again later" }, 503, { "retry-after": "5" });
}

export async function apiTrace(rc: RequestContext, traceId: string): Promise<Response> {
  const spec = parseTrace(traceId, rc.url.searchParams);
  return json(await rc.app.views.trace(spec));
}
