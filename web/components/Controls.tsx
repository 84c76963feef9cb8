/** The range picker and the window selector: a plain GET form, so it works without JavaScript. */
import { PRESETS, type RangeSpec, WINDOWS } from "../params.ts";

function isoMinute(ms: number): string {
  return new Date(ms).toISOString().slice(0, 16);
}

export function RangeControls(props: {
  action: string;
  range: RangeSpec;
  window?: number;
  /** Other parameters the form keeps (method, filters). */
  hidden?: Record<string, string>;
  children?: preact.ComponentChildren;
}) {
  const custom = props.range.preset === "custom";
  const now = Date.now();
  const fromMs = props.range.preset === "custom" ? props.range.fromMs : now - 3600_000;
  const toMs = props.range.preset === "custom" ? props.range.toMs : now;
  return (
    <form class="controls" method="get" action={props.action} aria-label="Time range">
      {Object.entries(props.hidden ?? {}).map(([k, v]) => <input key={k} type="hidden" name={k} value={v} />)}
      {props.children}
      <label>
        Range
        <select name="range">
          {PRESETS.map((p) => <option key={p} value={p} selected={props.range.preset === p}>last {p}
          </option>)}
          <option value="custom" selected={custom}>custom (from, to)</option>
        </select>
      </label>
      <label>
        From (UTC, custom)
        <input type="datetime-local" name="from" value={isoMinute(fromMs)} step="1" />
      </label>
      <label>
        To (UTC, custom)
        <input type="datetime-local" name="to" value={isoMinute(toMs)} step="1" />
      </label>
      {props.window !== undefined
        ? (
          <label>
            Window
            <select name="window">
              {WINDOWS.map((w) => <option key={w} value={w} selected={props.window === w}>{w} s</option>)}
            </select>
          </label>
        )
        : null}
      <button type="submit">Apply</button>
    </form>
  );
}
