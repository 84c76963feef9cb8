/** Inline SVG charts for the offline reports: nothing loaded from anywhere, one file opens anywhere. */

export interface Series {
  name: string;
  color: string;
  /** [x, y]; a null y breaks the line. */
  points: Array<[number, number | null]>;
  dash?: boolean;
  /** Dots instead of a line (sparse series such as the profiler's ticks). */
  dots?: boolean;
}

export interface ChartOptions {
  title: string;
  series: Series[];
  xLabel: string;
  yLabel: string;
  logY?: boolean;
  width?: number;
  height?: number;
  /** Label of an x value (default: the number). */
  xFormat?: (x: number) => string;
  /** Fixed x ticks (default: about eight nice ones). */
  xTicks?: number[];
  yFormat?: (y: number) => string;
}

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function niceTicks(min: number, max: number, count: number): number[] {
  if (!(max > min)) return [min];
  const raw = (max - min) / count;
  const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) {
    ticks.push(Number(v.toPrecision(12)));
  }
  return ticks;
}

function logTicks(min: number, max: number): number[] {
  const ticks: number[] = [];
  for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * Math.pow(10, e);
      if (v >= min / 1.0001 && v <= max * 1.0001) ticks.push(v);
    }
  }
  return ticks.length >= 2 ? ticks : [min, max];
}

const fmt = (v: number) =>
  Math.abs(v) >= 1000
    ? v.toFixed(0)
    : Math.abs(v) >= 10
    ? String(Number(v.toFixed(1)))
    : String(Number(v.toPrecision(3)));

export function lineChart(options: ChartOptions): string {
  const width = options.width ?? 860;
  const height = options.height ?? 300;
  const margin = { left: 64, right: 16, top: 28, bottom: 44 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const all = options.series.flatMap((s) =>
    s.points.filter((p): p is [number, number] =>
      p[1] !== null && Number.isFinite(p[1]) && (!options.logY || p[1] > 0)
    )
  );
  const head = `<figure class="chart"><figcaption>${escapeHtml(options.title)}</figcaption>`;
  if (all.length === 0) return `${head}<p class="muted">no data</p></figure>`;
  let xMin = Math.min(...all.map((p) => p[0]));
  let xMax = Math.max(...all.map((p) => p[0]));
  if (options.xTicks?.length) {
    xMin = Math.min(xMin, ...options.xTicks);
    xMax = Math.max(xMax, ...options.xTicks);
  }
  if (xMax === xMin) xMax = xMin + 1;
  let yMin = Math.min(...all.map((p) => p[1]));
  let yMax = Math.max(...all.map((p) => p[1]));
  if (!options.logY) yMin = Math.min(0, yMin);
  if (yMax === yMin) yMax = yMin + (options.logY ? yMin || 1 : 1);
  const ty = (y: number) =>
    options.logY
      ? margin.top + plotH -
        (Math.log10(y) - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin)) * plotH
      : margin.top + plotH - (y - yMin) / (yMax - yMin) * plotH;
  const tx = (x: number) => margin.left + (x - xMin) / (xMax - xMin) * plotW;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img">`,
    `<rect x="${margin.left}" y="${margin.top}" width="${plotW}" height="${plotH}" fill="#fafafa" stroke="#ccc"/>`,
  ];
  const yTicks = options.logY ? logTicks(yMin, yMax) : niceTicks(yMin, yMax, 6);
  for (const y of yTicks) {
    const py = ty(y).toFixed(1);
    parts.push(
      `<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${py}" y2="${py}" stroke="#e6e6e6"/>`,
      `<text x="${margin.left - 6}" y="${py}" text-anchor="end" dominant-baseline="middle" font-size="11">${
        escapeHtml((options.yFormat ?? fmt)(y))
      }</text>`,
    );
  }
  for (const x of options.xTicks ?? niceTicks(xMin, xMax, 8)) {
    const px = tx(x).toFixed(1);
    parts.push(
      `<line x1="${px}" x2="${px}" y1="${margin.top}" y2="${margin.top + plotH}" stroke="#eee"/>`,
      `<text x="${px}" y="${margin.top + plotH + 16}" text-anchor="middle" font-size="11">${
        escapeHtml((options.xFormat ?? fmt)(x))
      }</text>`,
    );
  }
  parts.push(
    `<text x="${margin.left + plotW / 2}" y="${height - 6}" text-anchor="middle" font-size="12">${
      escapeHtml(options.xLabel)
    }</text>`,
    `<text x="14" y="${
      margin.top + plotH / 2
    }" text-anchor="middle" font-size="12" transform="rotate(-90 14 ${margin.top + plotH / 2})">${
      escapeHtml(options.yLabel)
    }</text>`,
  );
  for (const s of options.series) {
    const points = s.points.map(([x, y]) =>
      y === null || !Number.isFinite(y) || (options.logY && y <= 0) ? null : [tx(x), ty(y)] as const
    );
    if (s.dots) {
      for (const p of points) {
        if (p) {
          parts.push(`<circle cx="${p[0].toFixed(1)}" cy="${p[1].toFixed(1)}" r="2.5" fill="${s.color}"/>`);
        }
      }
      continue;
    }
    let d = "";
    let pen = false;
    for (const p of points) {
      if (!p) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${p[0].toFixed(1)},${p[1].toFixed(1)}`;
      pen = true;
    }
    if (d) {
      parts.push(
        `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.6"${
          s.dash ? ' stroke-dasharray="5 4"' : ""
        }/>`,
      );
    }
  }
  const legend = options.series.map((s) =>
    `<span class="key"><span class="swatch" style="background:${s.color}${
      s.dash ? ";opacity:.55" : ""
    }"></span>${escapeHtml(s.name)}</span>`
  ).join(" ");
  parts.push("</svg>");
  return `${head}${parts.join("")}<div class="legend">${legend}</div></figure>`;
}

/** x of a percentile on the "nines" axis: 0 at 0 %, 1 at 90 %, 2 at 99 %, 3 at 99.9 %... */
export function nines(percentile: number): number {
  return -Math.log10(Math.max(1e-12, 1 - percentile));
}

/**
 * A percentile spectrum chart (HdrHistogram's plot): latency against the percentile on a nines axis; the
 * maximum is drawn a quarter step past the last finite point.
 */
export function spectrumChart(
  title: string,
  spectra: Array<
    { name: string; color: string; dash?: boolean; points: Array<{ percentile: number; valueUs: number }> }
  >,
): string {
  let lastX = 0;
  for (const s of spectra) {
    for (const p of s.points) if (p.percentile < 1) lastX = Math.max(lastX, nines(p.percentile));
  }
  const maxX = lastX + 0.25;
  const series: Series[] = spectra.map((s) => ({
    name: s.name,
    color: s.color,
    dash: s.dash,
    points: s.points.map((p) =>
      [p.percentile < 1 ? nines(p.percentile) : maxX, p.valueUs / 1000] as [number, number]
    ),
  }));
  const ticks = Array.from({ length: Math.floor(lastX) + 1 }, (_, i) => i);
  const label = (x: number) => {
    if (x > lastX) return "max";
    const p = (1 - Math.pow(10, -x)) * 100;
    return `${Number(p.toPrecision(6))}%`;
  };
  return lineChart({
    title,
    series,
    xLabel: "percentile",
    yLabel: "latency, ms (log)",
    logY: true,
    xTicks: [...ticks, maxX],
    xFormat: label,
  });
}

export const REPORT_CSS = `
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.ok{color:#1b7f2a;font-weight:600}.bad{color:#b00020;font-weight:600}
.muted{color:#777}.chart{margin:12px 0}.chart figcaption{font-weight:600;margin-bottom:4px}
.legend{font-size:12px}.key{margin-right:14px;white-space:nowrap}.swatch{display:inline-block;width:14px;height:3px;vertical-align:middle;margin-right:4px}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}code{font-size:12px}
`;
