/** Every island by name: the server renders them by these names and the browser bundle hydrates them. */
import Alerts from "./Alerts.tsx";
import Overview from "./Overview.tsx";
import Service from "./Service.tsx";
import { CopySql } from "./Sql.tsx";
import { LiveToggle } from "./Status.tsx";
import Traces from "./Traces.tsx";

// deno-lint-ignore no-explicit-any
export const ISLANDS: Record<string, (props: any) => unknown> = {
  Overview,
  Service,
  Traces,
  Alerts,
  LiveToggle,
  CopySql,
};
