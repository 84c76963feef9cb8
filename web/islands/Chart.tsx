/**
 * A time-series chart: on the server (and before the bundle runs) an SVG drawing of the same series, so the
 * first render is complete without JavaScript; in the browser a uPlot chart that follows the live data
 * (setData on the same instance: nothing piles up however long the page stays open). Markers: injected
 * faults (red bands) and load runs (start and end lines).
 */
import { useEffect, useRef, useState } from "preact/hooks";
import type uPlotType from "uplot";
import { formatCount, formatRate, formatUs } from "./model.ts";
import { CopySql } from "./Sql.tsx";

export type Unit = "us" | "rps" | "pct" | "mib" | "count";

export interface Series {
  label: string;
  values: (number | null)[];
}

export interface Marker {
  /** Start (epoch s) and, for a band, its end. */
  t: number;
  t2?: number;
  kind: "fault" | "load-start" | "load-end";
  label: string;
}

export interface ChartProps {
  id: string;
  title: string;
  t: number[];
  series: Series[];
  unit: Unit;
  markers?: Marker[];
  height?: number;
  sql?: string;
  source?: string;
  error?: string;
}

export const COLORS = [
  "#5ab0ff",
  "#ffb74d",
  "#81c784",
  "#f06292",
  "#ba68c8",
  "#4dd0e1",
  "#fff176",
  "#a1887f",
];

export function formatValue(unit: Unit, value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  switch (unit) {
    case "us":
      return formatUs(value);
    case "rps":
      return `${formatRate(value)}/s`;
    case "pct":
      return `${value.toFixed(value < 10 ? 1 : 0)} %`;
    case "mib":
      return `${value.toFixed(0)} MiB`;
    case "count":
      return formatCount(value);
  }
}

function SvgFallback(props: ChartProps & { width: number; height: number }) {
  const { t, series, width, height } = props;
  const values = series.flatMap((s) => s.values.filter((v): v is number => v !== null && Number.isFinite(v)));
  const max = values.length ? Math.max(...values) * 1.05 || 1 : 1;
  const x0 = t[0] ?? 0;
  const x1 = t[t.length - 1] ?? 1;
  const sx = (x: number) => (x1 > x0 ? ((x - x0) / (x1 - x0)) * width : 0);
  const sy = (y: number) => height - (y / max) * (height - 4) - 2;
  const paths = series.map((s) => {
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${sx(t[i]).toFixed(1)},${sy(v).toFixed(1)}`;
      pen = true;
    });
    return d;
  });
  const last = series.map((s) =>
    [...s.values].reverse().find((v) => v !== null && Number.isFinite(v)) ?? null
  );
  return (
    <div class="chart-fallback">
      <svg
        viewBox={`0 0 ${width} ${height}`}
        preserveAspectRatio="none"
        role="img"
        aria-label={`${props.title}: ${
          series.map((s, i) => `${s.label} latest ${formatValue(props.unit, last[i])}`).join(", ") ||
          "no data"
        }`}
      >
        {(props.markers ?? []).map((m) => (
          <rect
            x={sx(m.t).toFixed(1)}
            width={Math.max(1, sx(m.t2 ?? m.t) - sx(m.t)).toFixed(1)}
            y="0"
            height={height}
            class={m.kind === "fault" ? "marker-fault" : "marker-load"}
          />
        ))}
        {paths.map((d, i) => (
          <path
            d={d}
            fill="none"
            stroke={COLORS[i % COLORS.length]}
            stroke-width="1.5"
            vector-effect="non-scaling-stroke"
          />
        ))}
      </svg>
      <ul class="legend">
        {series.map((s, i) => (
          <li>
            <span class="swatch" style={{ background: COLORS[i % COLORS.length] }} />
            {s.label}: {formatValue(props.unit, last[i])}
          </li>
        ))}
        <li class="muted">max {formatValue(props.unit, values.length ? Math.max(...values) : null)}</li>
      </ul>
    </div>
  );
}

function markersPlugin(markers: { current: Marker[] }): uPlotType.Plugin {
  return {
    hooks: {
      draw: [(u: uPlotType) => {
        const ctx = u.ctx;
        ctx.save();
        for (const m of markers.current) {
          const x = u.valToPos(m.t, "x", true);
          if (m.kind === "fault") {
            const x2 = u.valToPos(m.t2 ?? m.t + 1, "x", true);
            ctx.fillStyle = "rgba(255, 82, 82, 0.22)";
            ctx.fillRect(x, u.bbox.top, Math.max(2, x2 - x), u.bbox.height);
          } else {
            ctx.strokeStyle = m.kind === "load-start" ? "#81c784" : "#e0e0e0";
            ctx.setLineDash([4, 4]);
            ctx.lineWidth = 1.5;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.fillStyle = "#e0e0e0";
            ctx.font = `${12 * devicePixelRatio}px sans-serif`;
            ctx.fillText(m.label, x + 4, u.bbox.top + 14 * devicePixelRatio);
          }
        }
        ctx.restore();
      }],
    },
  };
}

export function Chart(props: ChartProps) {
  const height = props.height ?? 220;
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlotType | null>(null);
  const markers = useRef<Marker[]>(props.markers ?? []);
  const shape = useRef("");
  const [ready, setReady] = useState(false);
  markers.current = props.markers ?? [];

  useEffect(() => {
    let cancelled = false;
    const key = `${props.unit}|${props.series.map((s) => s.label).join("|")}`;
    const data = [props.t, ...props.series.map((s) => s.values)] as uPlotType.AlignedData;
    if (plot.current && shape.current === key) {
      plot.current.setData(data);
      return;
    }
    (async () => {
      const { default: uPlot } = await import("uplot");
      if (cancelled || !box.current) return;
      plot.current?.destroy();
      shape.current = key;
      // Colours that read on the dark and on the light theme alike.
      const text = getComputedStyle(document.body).color;
      const axis = {
        stroke: text,
        grid: { stroke: "rgba(128, 128, 128, 0.25)" },
        ticks: { stroke: "rgba(128, 128, 128, 0.4)" },
      };
      plot.current = new uPlot(
        {
          width: Math.max(300, box.current.clientWidth),
          height,
          tzDate: (ts: number) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
          scales: { x: { time: true } },
          legend: { live: true },
          series: [
            { label: "time (UTC)" },
            ...props.series.map((s, i) => ({
              label: s.label,
              stroke: COLORS[i % COLORS.length],
              width: 1.5,
              value: (_u: uPlotType, v: number | null) => formatValue(props.unit, v),
            })),
          ],
          axes: [
            axis,
            {
              ...axis,
              size: 80,
              values: (_u: uPlotType, ticks: number[]) => ticks.map((v) => formatValue(props.unit, v)),
            },
          ],
          plugins: [markersPlugin(markers)],
        },
        data,
        box.current,
      );
      setReady(true);
    })();
    return () => {
      cancelled = true;
    };
  }, [props.t, props.series]);

  useEffect(() => {
    const onResize = () => {
      if (plot.current && box.current) {
        plot.current.setSize({ width: Math.max(300, box.current.clientWidth), height });
      }
    };
    addEventListener("resize", onResize);
    return () => {
      removeEventListener("resize", onResize);
      plot.current?.destroy();
      plot.current = null;
    };
  }, []);

  return (
    <figure class="chart" id={`chart-${props.id}`} aria-labelledby={`chart-${props.id}-title`}>
      <figcaption id={`chart-${props.id}-title`}>{props.title}</figcaption>
      {props.error ? <p class="error-state">Could not read this chart: {props.error}</p> : null}
      {props.t.length > 0 && props.series.length === 0 && !props.error
        ? <p class="empty-state">No data in this range yet: run ./dev demo.</p>
        : null}
      <div ref={box} class="chart-box" />
      {ready ? null : <SvgFallback {...props} width={800} height={height} />}
      <CopySql id={props.id} sql={props.sql} source={props.source} />
    </figure>
  );
}

/** A small inline sparkline (SVG only; the same on the server and in the browser). */
export function Sparkline(props: { values: (number | null)[]; label: string; color?: string }) {
  const width = 120;
  const height = 28;
  const values = props.values.filter((v): v is number => v !== null && Number.isFinite(v));
  const max = values.length ? Math.max(...values) || 1 : 1;
  let d = "";
  let pen = false;
  props.values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) {
      pen = false;
      return;
    }
    const x = props.values.length > 1 ? (i / (props.values.length - 1)) * width : 0;
    const y = height - (v / max) * (height - 2) - 1;
    d += `${pen ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
    pen = true;
  });
  return (
    <svg
      class="sparkline"
      viewBox={`0 0 ${width} ${height}`}
      width={width}
      height={height}
      role="img"
      aria-label={props.label}
    >
      <path d={d} fill="none" stroke={props.color ?? COLORS[0]} stroke-width="1.5" />
    </svg>
  );
}
