/**
 * What Grafana does to a panel's query text before the datasource runs it, for the tests that run every panel
 * (deploy/grafana_test.ts, deploy/prometheus_test.ts):
 *
 * 1. Dashboard variables (Grafana's template service): `$name`, `${name}`, `${name:format}`, `[[name]]`; the
 *    formats the dashboards use are `singlequote` (each value in single quotes, `'` escaped as `\'`, joined by
 *    commas) and `raw`. A variable the dashboard does not define is left as is (Grafana does the same).
 * 2. grafana-clickhouse-datasource's macros (its pkg/macros/macros.go): `$__timeFilter(col)` is
 *    `col >= toDateTime(<from s>) AND col <= toDateTime(<to s>)`, `$__fromTime` / `$__toTime` are
 *    `toDateTime(<s>)`, `$__interval_s` is the interval in whole seconds, at least 1. Unix seconds are the range's
 *    milliseconds truncated. Any other macro fails the expansion: the rest need DateTime64 or
 *    toStartOfInterval, which ClickHouse 18.16 lacks, or are not used here.
 * 3. Prometheus' built-ins: `$__rate_interval` (max(interval + scrape interval, 4 × scrape interval)),
 *    `$__interval`, `$__range`, `$__range_s`.
 */

export interface TimeRange {
  /** Range start and end, epoch ms (what Grafana's time picker holds). */
  fromMs: number;
  toMs: number;
  /** The panel's interval in ms (range / max data points, rounded by Grafana; a fixed value in tests). */
  intervalMs: number;
}

/** A variable's selected values (several for multi-value or "All"). */
export type VariableValues = Record<string, string[]>;

/** Grafana's variable syntax: $name, [[name:format]], ${name:format}. */
const VARIABLE = /\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::([^}]+))?\}/g;

function formatValues(name: string, values: string[], format: string | undefined): string {
  switch (format) {
    case "singlequote":
      return values.map((v) => `'${v.replaceAll("'", "\\'")}'`).join(",");
    case "raw":
    case undefined:
      if (format === undefined && values.length !== 1) {
        throw new Error(
          `variable ${name} has ${values.length} values: give it a format (e.g. \${${name}:singlequote})`,
        );
      }
      return values.join(",");
    case "csv":
      return values.join(",");
    default:
      throw new Error(`variable format ${format} (of ${name}) is not one the tests know`);
  }
}

/** Replaces the dashboard's variables in `text`; names that are not variables (e.g. `$__timeFilter`) stay. */
export function interpolateVariables(text: string, variables: VariableValues): string {
  return text.replace(VARIABLE, (match, plain, bracket, bracketFormat, braced, bracedFormat) => {
    const name: string = plain ?? bracket ?? braced;
    const values = variables[name];
    if (values === undefined) return match;
    return formatValues(name, values, bracketFormat ?? bracedFormat);
  });
}

/** The macro's argument text up to the matching `)`, and the index after it. */
function readArguments(text: string, open: number): { args: string[]; end: number } {
  let depth = 0;
  let quote: string | undefined;
  const args: string[] = [];
  let start = open + 1;
  for (let i = open; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === "\\") i++;
      else if (c === quote) quote = undefined;
      continue;
    }
    if (c === "'" || c === '"' || c === "`") quote = c;
    else if (c === "(") depth++;
    else if (c === ")") {
      depth--;
      if (depth === 0) {
        args.push(text.slice(start, i).trim());
        return { args: args.filter((a, n) => a !== "" || n > 0), end: i + 1 };
      }
    } else if (c === "," && depth === 1) {
      args.push(text.slice(start, i).trim());
      start = i + 1;
    }
  }
  throw new Error(`unbalanced parentheses after ${text.slice(open - 20, open + 20)}`);
}

/** Expands grafana-clickhouse-datasource's macros as its backend does (see the module comment). */
export function expandClickHouseMacros(sql: string, range: TimeRange): string {
  const from = Math.trunc(range.fromMs / 1000);
  const to = Math.trunc(range.toMs / 1000);
  const intervalS = Math.max(Math.trunc(range.intervalMs / 1000), 1);
  let out = "";
  let i = 0;
  for (;;) {
    const at = sql.indexOf("$__", i);
    if (at < 0) return out + sql.slice(i);
    out += sql.slice(i, at);
    const name = /^\$__(\w+)/.exec(sql.slice(at))![1];
    let end = at + 3 + name.length;
    let args: string[] = [];
    if (sql[end] === "(") ({ args, end } = readArguments(sql, end));
    const arity = (n: number) => {
      if (args.length !== n) throw new Error(`$__${name} takes ${n} argument(s), got ${args.length}`);
    };
    switch (name) {
      case "timeFilter":
        arity(1);
        out += `${args[0]} >= toDateTime(${from}) AND ${args[0]} <= toDateTime(${to})`;
        break;
      case "fromTime":
        out += `toDateTime(${from})`;
        break;
      case "toTime":
        out += `toDateTime(${to})`;
        break;
      case "interval_s":
        out += String(intervalS);
        break;
      default:
        throw new Error(
          `macro $__${name}: not one the dashboards may use ($__timeFilter, $__fromTime, $__toTime, $__interval_s ` +
            "expand to SQL both ClickHouse 18.16 and current releases accept)",
        );
    }
    i = end;
  }
}

/** Grafana's Prometheus built-ins for a range and a scrape interval (the datasource's timeInterval). */
export function prometheusBuiltins(range: TimeRange, scrapeIntervalS: number): VariableValues {
  const intervalS = Math.max(Math.round(range.intervalMs / 1000), 1);
  const rangeS = Math.round((range.toMs - range.fromMs) / 1000);
  return {
    __rate_interval: [`${Math.max(intervalS + scrapeIntervalS, 4 * scrapeIntervalS)}s`],
    __interval: [`${intervalS}s`],
    __range: [`${rangeS}s`],
    __range_s: [String(rangeS)],
  };
}

/** Every query of a dashboard's panels: datasource uid, panel title and type, the target. */
export interface PanelQuery {
  dashboard: string;
  panel: string;
  panelType: string;
  datasourceUid: string;
  target: Record<string, unknown>;
}

export function panelQueries(dashboard: Record<string, unknown>): PanelQuery[] {
  const out: PanelQuery[] = [];
  const panels = (dashboard.panels ?? []) as Array<Record<string, unknown>>;
  for (const p of panels) {
    for (const target of (p.targets ?? []) as Array<Record<string, unknown>>) {
      const ds = (target.datasource ?? p.datasource) as { uid?: string } | undefined;
      out.push({
        dashboard: String(dashboard.uid),
        panel: String(p.title),
        panelType: String(p.type),
        datasourceUid: String(ds?.uid ?? ""),
        target,
      });
    }
  }
  return out;
}
