/** What every route gets: the server's parts, and per request who asks and the CSRF token of its forms. */
import type { Logger, Registry } from "@tailwatch/runtime";
import { renderToString } from "preact-render-to-string";
import type { VNode } from "preact";
import type { AlertEngine } from "./alerts.ts";
import type { Auth, Principal } from "./auth.ts";
import type { Assets } from "./build.ts";
import type { Reader } from "./clickhouse.ts";
import type { WebConfig } from "./config.ts";
import type { Hub } from "./hub.ts";
import type { PageContext } from "./components/Layout.tsx";
import type { Views } from "./views.ts";

export interface App {
  config: WebConfig;
  reader: Reader;
  views: Views;
  hub: Hub;
  auth: Auth;
  alerts: AlertEngine;
  assets: Assets;
  registry: Registry;
  logger: Logger;
}

export interface RequestContext {
  app: App;
  request: Request;
  url: URL;
  principal?: Principal;
  csrf: string;
  /** Set-Cookie headers the response must carry (a new CSRF cookie). */
  setCookies: string[];
}

export const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy":
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "same-origin",
  "x-frame-options": "DENY",
};

export async function pageContext(rc: RequestContext): Promise<PageContext> {
  const known = await rc.app.views.known();
  return {
    principal: rc.principal,
    csrf: rc.csrf,
    authRequired: rc.app.auth.required,
    assetVersion: rc.app.assets.version,
    services: known.services,
  };
}

export function html(
  rc: RequestContext,
  node: VNode,
  status = 200,
  extra: Record<string, string> = {},
): Response {
  const headers = new Headers({
    "content-type": "text/html; charset=utf-8",
    "cache-control": "no-store",
    ...SECURITY_HEADERS,
    ...extra,
  });
  for (const cookie of rc.setCookies) headers.append("set-cookie", cookie);
  return new Response("<!doctype html>" + renderToString(node), { status, headers });
}

export function json(value: unknown, status = 200, extra: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(value), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store", ...extra },
  });
}

/** Reads a form body of at most `limit` bytes; undefined when larger. */
export async function readForm(request: Request, limit = 65_536): Promise<URLSearchParams | undefined> {
  const length = Number(request.headers.get("content-length") ?? "0");
  if (length > limit) return undefined;
  const reader = request.body?.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (reader) {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > limit) {
        await reader.cancel();
        return undefined;
      }
      chunks.push(value);
    }
  }
  const body = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return new URLSearchParams(new TextDecoder().decode(body));
}
