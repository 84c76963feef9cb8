/** The banners every page shows (alerts firing, ClickHouse down, stale data) and the live/paused control. */
import { useEffect, useState } from "preact/hooks";
import { connection, lastUpdateMs, paused } from "./live.ts";
import { formatTime, type GlobalData } from "./model.ts";

export function Banners(props: { global: GlobalData }) {
  const g = props.global;
  return (
    <div class="banners" aria-live="polite">
      {g.firing.length > 0
        ? (
          <div class="banner banner-alert" role="alert">
            <strong>Alert firing:</strong> {g.firing.map((a, i) => (
              <span>
                {i > 0 ? "; " : ""}
                <a href="/alerts">{a.name}</a> ({Number.isFinite(a.value) ? a.value.toFixed(2) : "–"} {a.unit}
                {" "}
                above {a.threshold} {a.unit}, since {formatTime(a.sinceMs)} UTC)
              </span>
            ))}
          </div>
        )
        : null}
      {g.stale.length > 0
        ? (
          <div class={`banner ${g.clickhouse.ok ? "banner-stale" : "banner-down"}`} role="status">
            {g.stale.map((line) => <div key={line}>{line}</div>)}
            {g.clickhouse.ok
              ? null
              : <div class="muted">The page keeps retrying and recovers by itself.</div>}
          </div>
        )
        : null}
    </div>
  );
}

/** Live/paused (shared with the page's island through the `paused` signal) and the connection state. */
export function LiveToggle(props: { live: boolean }) {
  const [mounted, setMounted] = useState(false);
  useEffect(() => {
    setMounted(true);
    const params = new URLSearchParams(location.search);
    if (params.get("live") === "0") paused.value = true;
  }, []);
  if (!props.live) return <span class="live-state">static range</span>;
  const state = connection.value;
  const text = state === "live"
    ? `live · updated ${formatTime(lastUpdateMs.value)} UTC`
    : state === "paused"
    ? "paused"
    : state === "reconnecting"
    ? "reconnecting…"
    : mounted
    ? "connecting…"
    : "server render (no script)";
  return (
    <span class="live-control">
      {mounted
        ? (
          <button
            type="button"
            aria-pressed={paused.value}
            onClick={() => {
              paused.value = !paused.value;
              const url = new URL(location.href);
              if (paused.value) url.searchParams.set("live", "0");
              else url.searchParams.delete("live");
              history.replaceState(null, "", url);
            }}
          >
            {paused.value ? "Resume live" : "Pause"}
          </button>
        )
        : null}
      <span class={`live-state live-${state}`} role="status" data-live-state={state}>{text}</span>
    </span>
  );
}
