/**
 * The offline HTML reports next to the JSON: a load run (latency over time from the client, the raw rows and
 * the profiler on one chart per method; plain and corrected percentiles and their spectra; throughput and
 * errors; the cross-check), a comparison of two runs, and a bench run. One self-contained file each.
 */
import type { Comparison } from "./compare.ts";
import type { LoadResult, MethodStats } from "./run.ts";
import { escapeHtml, lineChart, REPORT_CSS, type Series, spectrumChart } from "./svg.ts";

const ms = (us: number | undefined | null) =>
  us === undefined || us === null || !Number.isFinite(us) ? "–" : (us / 1000).toFixed(us < 10_000 ? 2 : 1);
const n = (v: number | undefined) => v === undefined || !Number.isFinite(v) ? "–" : v.toLocaleString("en-US");
const okCell = (ok: boolean) => ok ? `<td class="ok">ok</td>` : `<td class="bad">FAIL</td>`;
type Spectrum = Parameters<typeof spectrumChart>[1][number];
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>` +
    `<style>${REPORT_CSS}</style></head><body>${body}</body></html>\n`;
}

function table(headers: string[], rows: string[][], leftColumns = 1): string {
  const th = headers.map((h, i) => `<th${i < leftColumns ? ' class="l"' : ""}>${h}</th>`).join("");
  const body = rows.map((r) =>
    `<tr>${
      r.map((c, i) => (c.startsWith("<td") ? c : `<td${i < leftColumns ? ' class="l"' : ""}>${c}</td>`)).join(
        "",
      )
    }</tr>`
  ).join("");
  return `<table><thead><tr>${th}</tr></thead><tbody>${body}</tbody></table>`;
}

const shortMethod = (m: string) => m.split("/").pop() || "(no method)";

function latencyOverTime(result: LoadResult, m: MethodStats): string {
  const server = result.server.methods.find((s) =>
    s.service === m.service && s.method === m.method && s.protocol === m.protocol
  );
  const series: Series[] = [
    {
      name: "client p50",
      color: "#1f77b4",
      points: m.timeline.t.map((
        t,
        i,
      ) => [t, m.timeline.p50Us[i] === null ? null : m.timeline.p50Us[i]! / 1000]),
    },
    {
      name: "client p99",
      color: "#d62728",
      points: m.timeline.t.map((
        t,
        i,
      ) => [t, m.timeline.p99Us[i] === null ? null : m.timeline.p99Us[i]! / 1000]),
    },
  ];
  if (m.corrected) {
    series.push({
      name: "client p99 corrected (from intended send time)",
      color: "#ff7f0e",
      dash: true,
      points: m.timeline.t.map((
        t,
        i,
      ) => [t, m.timeline.p99CorrectedUs[i] === null ? null : m.timeline.p99CorrectedUs[i]! / 1000]),
    });
  }
  if (server) {
    series.push(
      {
        name: "server p50 (raw rows, exact)",
        color: "#2ca02c",
        points: server.timeline.t.map((t, i) => [t, server.timeline.p50Us[i] / 1000]),
      },
      {
        name: "server p99 (raw rows, exact)",
        color: "#9467bd",
        points: server.timeline.t.map((t, i) => [t, server.timeline.p99Us[i] / 1000]),
      },
    );
    if (server.profilerTicks.t.length > 0) {
      series.push({
        name: "profiler p99 (10 s window, at its ticks)",
        color: "#8c564b",
        dots: true,
        points: server.profilerTicks.t.map((t, i) => [t, server.profilerTicks.p99Us[i] / 1000]),
      });
    }
  }
  return lineChart({
    title: `${m.service} ${shortMethod(m.method)} (${m.protocol}): latency per second (completion second)`,
    series,
    xLabel: "seconds into the run",
    yLabel: "ms (log)",
    logY: true,
  });
}

function percentileTable(result: LoadResult): string {
  const rows = result.client.methods.map((m) => {
    const server = result.server.methods.find((s) =>
      s.service === m.service && s.method === m.method && s.protocol === m.protocol
    );
    const cells = (
      q: { p50: number; p90: number; p99: number; p999: number; p9999: number; max: number } | undefined,
    ) =>
      q
        ? [ms(q.p50), ms(q.p90), ms(q.p99), ms(q.p999), ms(q.p9999), ms(q.max)]
        : ["–", "–", "–", "–", "–", "–"];
    return [
      [
        `${m.service} ${escapeHtml(shortMethod(m.method))} ${m.protocol}`,
        "client",
        n(m.count),
        ...cells(m.plain),
      ],
      ...(m.corrected
        ? [["", "client, corrected", n(m.count), ...cells(m.corrected)]]
        : [["", "client, corrected", "", "closed model: none", "", "", "", "", ""]]),
      ["", "server (rows)", n(server?.quantiles.count), ...cells(server?.quantiles)],
    ];
  }).flat();
  return table(
    ["method", "measured by", "requests", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "p99.99 ms", "max ms"],
    rows,
    2,
  );
}

function crossCheckSection(result: LoadResult): string {
  const c = result.crossCheck;
  const lines = c.lines.map((l) => [
    l.service,
    escapeHtml(shortMethod(l.method)),
    l.protocol,
    l.status,
    l.generator === undefined ? "–" : n(l.generator),
    l.metrics === undefined
      ? "–"
      : n(l.metrics) + (l.metricsOther ? ` (other traffic ${n(l.metricsOther)})` : ""),
    n(l.rows) +
    (l.direct !== l.rows && l.generator !== undefined ? ` (${n(l.direct)} from the generator)` : ""),
    n(l.distinct),
    l.cancelledSeen ? n(l.cancelledSeen) : "",
    okCell(l.ok),
    escapeHtml(l.problems.join("; ")),
  ]);
  const events = c.events.map((
    e,
  ) => [
    e.service,
    n(e.served),
    n(e.published),
    n(e.dropped),
    okCell(e.ok),
    escapeHtml(e.problems.join("; ")),
  ]);
  const cancelled = c.cancelled.map((x) => [
    `${x.service} ${escapeHtml(shortMethod(x.method))} ${x.protocol}`,
    n(x.cancelled),
    escapeHtml(Object.entries(x.cancelledAs).map(([k, v]) => `${v} × ${k}`).join(", ")),
    escapeHtml(Object.entries(x.seenByServer).map(([k, v]) => `${v} × ${k}`).join(", ") || "none"),
    n(x.notSeenByServer),
    okCell(x.ok),
  ]);
  const latency = c.latency.map((l) => [
    `${l.service} ${escapeHtml(shortMethod(l.method))} ${l.protocol}`,
    `${ms(l.client.p50)} / ${ms(l.client.p99)} / ${ms(l.client.p999)}`,
    `${ms(l.server.p50)} / ${ms(l.server.p99)} / ${ms(l.server.p999)}`,
    l.profiler
      ? `${ms(l.profiler.p50)} / ${ms(l.profiler.p99)} / ${ms(l.profiler.p999)} (n ${n(l.profiler.count)})`
      : "–",
    `${ms(l.gapUs.p50)} / ${ms(l.gapUs.p99)} / ${ms(l.gapUs.p999)}`,
    okCell(l.serverBelowClient),
  ]);
  return [
    `<h2>Cross-check: ${
      c.ok ? '<span class="ok">all counts agree</span>' : '<span class="bad">FAILED</span>'
    }</h2>`,
    `<p>Rows selected by ${
      c.selection === "run-id"
        ? `<b>load_run_id = ${escapeHtml(result.runId)}</b> (exact, whatever else the stack served)`
        : "<b>the run's time span</b> (ingest does not store load_run_id yet: exact only when nothing else ran)"
    }; the counts settled ${(c.settledAfterMs / 1000).toFixed(1)} s after the load ended.</p>`,
    ...(c.failures.length
      ? [`<ul>${c.failures.map((f) => `<li class="bad">${escapeHtml(f)}</li>`).join("")}</ul>`]
      : []),
    "<h3>Per method and status: generator = /metrics counters = rows = distinct event ids</h3>",
    table(
      [
        "service",
        "method",
        "protocol",
        "status",
        "generator",
        "/metrics",
        "rows",
        "distinct ids",
        "cancelled, seen",
        "",
        "problems",
      ],
      lines,
      4,
    ),
    `<p class="muted">Calls the generator did not make itself (orders' calls to catalog and payments) have no generator count; where a method is called both ways (payments.Refund directly and by CancelOrder) the generator is compared with the rows of root spans. Over REST the counters know the gRPC code, the generator the HTTP status: both lines are shown.</p>`,
    "<h3>Calls the generator cancelled itself</h3>",
    cancelled.length
      ? table(["method", "cancelled", "as reported", "seen by the server (rows)", "not seen", ""], cancelled)
      : "<p>none</p>",
    "<h3>Events: served = published + dropped, nothing dropped</h3>",
    table(["service", "served", "published", "dropped", "", "problems"], events),
    "<h3>Client against server: p50 / p99 / p99.9 (ms)</h3>",
    table([
      "method",
      "client (generator)",
      "server (rows, exact)",
      "profiler (--once over the span)",
      "gap client − server",
      "server ≤ client",
    ], latency),
  ].join("\n");
}

export function renderLoadReport(result: LoadResult, baseline?: LoadResult): string {
  const started = new Date(result.startedAtMs).toISOString();
  const body: string[] = [
    `<h1>Load run ${escapeHtml(result.scenario)} <span class="muted">${escapeHtml(result.runId)}</span></h1>`,
    `<p>${escapeHtml(result.description)}</p>`,
    `<p>${escapeHtml(result.scheduleText)} for ${result.durationS} s from ${started} against the ${
      escapeHtml(result.target)
    }. ${escapeHtml(result.warmup.note)}. ${escapeHtml(result.host.note)}; hypervisor steal ${
      (result.host.stealShare * 100).toFixed(1)
    } %; load average before: ${escapeHtml(result.host.loadavgBefore)}.</p>`,
    `<p>Requests ${n(result.client.total)} (${result.client.achievedRps.toFixed(0)}/s), OK ${
      n(result.client.ok)
    }, errors ${n(result.client.errors)}, cancelled by the generator ${
      n(result.client.cancelled)
    }. Cross-check: ${
      result.crossCheck.ok ? '<span class="ok">ok</span>' : '<span class="bad">FAILED</span>'
    }.</p>`,
    "<h2>Calls</h2>",
    table(
      ["call", "method", "protocol", "share", "tool", "expected"],
      result.calls.map((
        c,
      ) => [
        escapeHtml(c.label),
        escapeHtml(c.method),
        c.protocol,
        `${(c.weight * 100).toFixed(0)} %`,
        c.tool,
        escapeHtml(c.expect),
      ]),
    ),
    "<h2>Latency over time: client, raw rows and profiler</h2>",
    ...result.client.methods.slice(0, 4).map((m) => latencyOverTime(result, m)),
    "<h2>Percentiles: plain, corrected for coordinated omission, and the server's</h2>",
    `<p class="muted">Corrected: each request's latency measured from the time the schedule intended to send it (wrk2's correction), so a stall also counts against the requests it held back.</p>`,
    percentileTable(result),
    ...result.client.methods.slice(0, 4).map((m) => {
      const spectra: Spectrum[] = [{ name: "plain", color: COLORS[0], points: m.spectrum }];
      if (m.correctedSpectrum) {
        spectra.push({ name: "corrected", color: COLORS[1], points: m.correctedSpectrum });
      }
      const b = baseline?.client.methods.find((x) =>
        x.service === m.service && x.method === m.method && x.protocol === m.protocol
      );
      if (b) {
        spectra.push({
          name: `baseline ${baseline!.runId} plain`,
          color: COLORS[0],
          dash: true,
          points: b.spectrum,
        });
        if (b.correctedSpectrum) {
          spectra.push({
            name: `baseline corrected`,
            color: COLORS[1],
            dash: true,
            points: b.correctedSpectrum,
          });
        }
      }
      return spectrumChart(
        `${m.service} ${shortMethod(m.method)} (${m.protocol}): percentile spectrum`,
        spectra,
      );
    }),
    "<h2>Throughput and errors</h2>",
    lineChart({
      title: "requests per second (sent by start second; answers by completion second)",
      series: [
        {
          name: "sent",
          color: "#1f77b4",
          points: result.client.timeline.t.map((t, i) => [t, result.client.timeline.sent[i]]),
        },
        {
          name: "OK",
          color: "#2ca02c",
          points: result.client.timeline.t.map((t, i) => [t, result.client.timeline.ok[i]]),
        },
        {
          name: "errors",
          color: "#d62728",
          points: result.client.timeline.t.map((t, i) => [t, result.client.timeline.errors[i]]),
        },
      ],
      xLabel: "seconds into the run",
      yLabel: "requests / s",
    }),
    crossCheckSection(result),
    "<h2>CPU per process during the run</h2>",
    table(
      ["process", "CPU s", "cores", "main thread", "CPU s per 1000 requests"],
      Object.keys(result.cpu.seconds).map((name) => [
        escapeHtml(name),
        result.cpu.seconds[name].toFixed(2),
        result.cpu.cores[name]?.toFixed(2) ?? "–",
        Number.isFinite(result.cpu.mainThread[name])
          ? `${(result.cpu.mainThread[name] * 100).toFixed(0)} %`
          : "–",
        result.cpu.perThousandRequests[name].toFixed(3),
      ]),
    ),
    `<p>Machine busy ${result.cpu.machineBusyCores.toFixed(2)} of ${result.host.cores} cores.</p>`,
  ];
  if (result.baseline) body.push(comparisonSection(result.baseline));
  body.push(
    "<h2>Full spectra (HdrHistogram format)</h2>",
    ...result.client.methods.map((m) =>
      `<h3>${m.service} ${escapeHtml(shortMethod(m.method))} ${m.protocol}</h3><pre>${
        escapeHtml(m.spectrumText)
      }</pre>${
        m.correctedSpectrumText ? `<p>corrected:</p><pre>${escapeHtml(m.correctedSpectrumText)}</pre>` : ""
      }`
    ),
  );
  return page(`load ${result.scenario} ${result.runId}`, body.join("\n"));
}

export function comparisonSection(c: Comparison): string {
  const rows = c.methods.flatMap((m) =>
    m.figures.map((f) => [
      `${m.service} ${escapeHtml(shortMethod(m.method))} ${m.protocol}`,
      f.kind,
      f.figure,
      ms(f.baselineUs),
      ms(f.currentUs),
      ms(f.diffUs),
      Number.isFinite(f.spreadUs) ? ms(f.spreadUs) : "not measured",
      f.beyondSpread === null ? "–" : f.beyondSpread ? `<td class="bad">${f.verdict}</td>` : "within spread",
    ])
  );
  return [
    `<h2>Compared with ${escapeHtml(c.baseline.runId)}</h2>`,
    `<p>A difference counts only beyond the run-to-run spread: the range of the same percentile across each run's own ~10 s segments, the larger of the two runs'.</p>`,
    table(
      ["method", "", "figure", "baseline ms", "this run ms", "difference ms", "spread ms", "verdict"],
      rows,
      3,
    ),
    ...(c.unmatched.length
      ? [`<p class="muted">Only in one run: ${escapeHtml(c.unmatched.join(", "))}</p>`]
      : []),
  ].join("\n");
}

/** `./dev load --compare A B`: both runs' spectra overlaid per method, and the table. */
export function renderCompareReport(c: Comparison, a: LoadResult, b: LoadResult): string {
  const charts = b.client.methods.map((m) => {
    const am = a.client.methods.find((x) =>
      x.service === m.service && x.method === m.method && x.protocol === m.protocol
    );
    const spectra = [
      { name: `${b.runId} plain`, color: COLORS[0], points: m.spectrum },
      ...(m.correctedSpectrum
        ? [{ name: `${b.runId} corrected`, color: COLORS[1], points: m.correctedSpectrum }]
        : []),
      ...(am ? [{ name: `${a.runId} plain`, color: COLORS[0], dash: true, points: am.spectrum }] : []),
      ...(am?.correctedSpectrum
        ? [{ name: `${a.runId} corrected`, color: COLORS[1], dash: true, points: am.correctedSpectrum }]
        : []),
    ];
    return spectrumChart(`${m.service} ${shortMethod(m.method)} (${m.protocol})`, spectra);
  });
  return page(
    `compare ${a.runId} ${b.runId}`,
    [
      `<h1>${escapeHtml(a.runId)} → ${escapeHtml(b.runId)}</h1>`,
      comparisonSection(c),
      "<h2>Spectra</h2>",
      ...charts,
    ].join("\n"),
  );
}

/** Minimal Markdown (headings, lists, tables, code fences, paragraphs) for the bench report. */
export function markdownToHtml(markdown: string): string {
  const out: string[] = [];
  const lines = markdown.split("\n");
  const inline = (text: string) =>
    escapeHtml(text).replace(/\*\*(.+?)\*\*/g, "<b>$1</b>").replace(/`([^`]+)`/g, "<code>$1</code>");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const code: string[] = [];
      while (++i < lines.length && !lines[i].startsWith("```")) code.push(lines[i]);
      out.push(`<pre>${escapeHtml(code.join("\n"))}</pre>`);
    } else if (/^#{1,4} /.test(line)) {
      const level = line.indexOf(" ");
      out.push(`<h${level}>${inline(line.slice(level + 1))}</h${level}>`);
    } else if (line.startsWith("|")) {
      const rows: string[][] = [];
      for (; i < lines.length && lines[i].startsWith("|"); i++) {
        if (/^\|[\s:|-]+\|$/.test(lines[i])) continue;
        rows.push(lines[i].slice(1, -1).split("|").map((c) => c.trim()));
      }
      i--;
      const [head, ...rest] = rows;
      out.push(
        `<table><thead><tr>${head.map((h) => `<th>${inline(h)}</th>`).join("")}</tr></thead><tbody>${
          rest.map((r) => `<tr>${r.map((c) => `<td>${inline(c)}</td>`).join("")}</tr>`).join("")
        }</tbody></table>`,
      );
    } else if (line.startsWith("- ")) {
      const items: string[] = [];
      for (; i < lines.length && lines[i].startsWith("- "); i++) {
        items.push(`<li>${inline(lines[i].slice(2))}</li>`);
      }
      i--;
      out.push(`<ul>${items.join("")}</ul>`);
    } else if (line.trim() !== "") {
      out.push(`<p>${inline(line)}</p>`);
    }
  }
  return out.join("\n");
}

/** The bench report: its Markdown, and the orders runs' spectra (plain and corrected) as charts. */
export function renderBenchReport(
  title: string,
  markdown: string,
  spectra: Array<
    {
      title: string;
      plain: Array<{ percentile: number; valueUs: number }>;
      corrected?: Array<{ percentile: number; valueUs: number }>;
    }
  >,
): string {
  const charts = spectra.map((s) =>
    spectrumChart(s.title, [
      { name: "plain", color: COLORS[0], points: s.plain },
      ...(s.corrected
        ? [{ name: "corrected for coordinated omission", color: COLORS[1], points: s.corrected }]
        : []),
    ])
  );
  return page(title, markdownToHtml(markdown) + charts.join("\n"));
}
