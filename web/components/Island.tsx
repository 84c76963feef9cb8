/**
 * An island as the server renders it: the component's HTML (complete, so the page works without
 * JavaScript) in a `data-island` element, and its props as JSON next to it, which the browser bundle
 * (islands/client.ts) hydrates.
 */
import { h } from "preact";
import { ISLANDS } from "../islands/registry.ts";

let counter = 0;

/** JSON safe inside a <script> element. */
export function scriptJson(value: unknown): string {
  return JSON.stringify(value).replaceAll("<", "\\u003c").replaceAll("\u2028", "\\u2028").replaceAll(
    "\u2029",
    "\\u2029",
  );
}

export function Island(props: { name: keyof typeof ISLANDS & string; props: Record<string, unknown> }) {
  const id = `island-${++counter % 1_000_000}`;
  const component = ISLANDS[props.name];
  return (
    <>
      <div data-island={props.name} data-props={id}>
        {h(component as Parameters<typeof h>[0], props.props)}
      </div>
      <script type="application/json" id={id} dangerouslySetInnerHTML={{ __html: scriptJson(props.props) }} />
    </>
  );
}
