/**
 * The browser entry (bundled by esbuild at start-up): hydrates every island the server rendered, with the
 * props it serialized next to it.
 */
import { h, hydrate } from "preact";
import "uplot/dist/uPlot.min.css";
import { ISLANDS } from "./registry.ts";

for (const element of document.querySelectorAll<HTMLElement>("[data-island]")) {
  const component = ISLANDS[element.dataset.island ?? ""];
  const propsElement = document.getElementById(element.dataset.props ?? "");
  if (!component || !propsElement) continue;
  // deno-lint-ignore no-explicit-any
  hydrate(h(component as any, JSON.parse(propsElement.textContent ?? "{}")), element);
}
