/** The page frame: header with navigation, live control and user, the page, the bundle. */
import type { ComponentChildren } from "preact";
import type { Principal } from "../auth.ts";
import { Island } from "./Island.tsx";

export interface PageContext {
  principal?: Principal;
  csrf: string;
  authRequired: boolean;
  assetVersion: string;
  services: string[];
}

export function Layout(props: {
  ctx: PageContext;
  title: string;
  current: "overview" | "service" | "traces" | "alerts" | "runs" | "login" | "error";
  currentService?: string;
  live?: boolean;
  children: ComponentChildren;
}) {
  const { ctx } = props;
  const v = ctx.assetVersion;
  const link = (href: string, text: string, current: boolean) => (
    <li>
      <a href={href} aria-current={current ? "page" : undefined}>{text}</a>
    </li>
  );
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="color-scheme" content="dark light" />
        <title>{props.title} · Tailwatch</title>
        <link rel="stylesheet" href={`/static/app.css?v=${v}`} />
        <script type="module" src={`/static/app.js?v=${v}`} defer />
      </head>
      <body>
        <a class="skip" href="#main">Skip to content</a>
        <header class="top">
          <a class="brand" href="/">Tailwatch</a>
          {props.current !== "login"
            ? (
              <nav aria-label="Pages">
                <ul>
                  {link("/", "Overview", props.current === "overview")}
                  {ctx.services.map((s) =>
                    link(
                      `/service/${encodeURIComponent(s)}`,
                      s,
                      props.current === "service" && props.currentService === s,
                    )
                  )}
                  {link("/traces", "Traces", props.current === "traces")}
                  {link("/alerts", "Alerts", props.current === "alerts")}
                  {link("/runs", "Runs", props.current === "runs")}
                </ul>
              </nav>
            )
            : null}
          {props.live !== undefined ? <Island name="LiveToggle" props={{ live: props.live }} /> : null}
          <span class="muted">times in UTC</span>
          {ctx.principal && ctx.authRequired
            ? (
              <span class="user">
                <span>
                  {ctx.principal.user} <span class="muted">({ctx.principal.role})</span>
                </span>
                <form method="post" action="/logout">
                  <input type="hidden" name="_csrf" value={ctx.csrf} />
                  <button type="submit">Sign out</button>
                </form>
              </span>
            )
            : null}
        </header>
        <main id="main">
          <h1>{props.title}</h1>
          {props.children}
        </main>
      </body>
    </html>
  );
}
