/**
 * Two load runs side by side (`./dev load SCENARIO --baseline RUN`, `./dev load --compare A B`): per method,
 * each percentile (plain and corrected for coordinated omission), the difference, and whether it is beyond the
 * run-to-run spread: the range of the same percentile across each run's own segments (about 10 s each), the
 * larger of the two. A difference inside that range is what the same code does from one minute to the next.
 */
import type { LoadResult, MethodStats } from "./run.ts";

export type Figure = "p50" | "p90" | "p99" | "p999";
export const FIGURES: readonly Figure[] = ["p50", "p90", "p99", "p999"];

export interface ComparedFigure {
  figure: Figure;
  kind: "plain" | "corrected";
  baselineUs: number;
  currentUs: number;
  diffUs: number;
  /** The larger of the two runs' segment ranges; NaN when a run had fewer than three full segments. */
  spreadUs: number;
  /** true / false; null when no spread could be measured (then nothing is flagged). */
  beyondSpread: boolean | null;
  /** "slower", "faster" or "same" (within the spread, or no spread). */
  verdict: "slower" | "faster" | "same";
}

export interface ComparedMethod {
  service: string;
  method: string;
  protocol: string;
  countBaseline: number;
  countCurrent: number;
  okShareBaseline: number;
  okShareCurrent: number;
  figures: ComparedFigure[];
}

export interface Comparison {
  baseline: { runId: string; scenario: string; startedAtMs: number; file?: string };
  current: { runId: string; scenario: string; startedAtMs: number; file?: string };
  methods: ComparedMethod[];
  /** Methods only one run called. */
  unmatched: string[];
  /** Human lines: every figure beyond the spread. */
  flagged: string[];
}

const okShare = (m: MethodStats) =>
  m.count === 0 ? NaN : ((m.byStatus["OK"] ?? 0) + (m.byStatus["HTTP 200"] ?? 0)) / m.count;

export function compareRuns(baseline: LoadResult, current: LoadResult): Comparison {
  const key = (m: MethodStats) => `${m.service} ${m.method} ${m.protocol}`;
  const before = new Map(baseline.client.methods.map((m) => [key(m), m]));
  const methods: ComparedMethod[] = [];
  const flagged: string[] = [];
  const unmatched: string[] = [];
  for (const m of current.client.methods) {
    const b = before.get(key(m));
    if (!b) {
      unmatched.push(`${key(m)} (only in ${current.runId})`);
      continue;
    }
    before.delete(key(m));
    const figures: ComparedFigure[] = [];
    for (const kind of ["plain", "corrected"] as const) {
      const qa = kind === "plain" ? b.plain : b.corrected;
      const qb = kind === "plain" ? m.plain : m.corrected;
      if (!qa || !qb) continue;
      const sa = kind === "plain" ? b.segments.plain : b.segments.corrected;
      const sb = kind === "plain" ? m.segments.plain : m.segments.corrected;
      for (const figure of FIGURES) {
        const spreads = [sa?.spread[figure], sb?.spread[figure]].filter((v): v is number =>
          Number.isFinite(v)
        );
        const spreadUs = spreads.length === 2 ? Math.max(...spreads) : NaN;
        const diffUs = qb[figure] - qa[figure];
        const beyondSpread = Number.isFinite(spreadUs) ? Math.abs(diffUs) > spreadUs : null;
        const verdict = beyondSpread ? (diffUs > 0 ? "slower" : "faster") : "same";
        figures.push({
          figure,
          kind,
          baselineUs: qa[figure],
          currentUs: qb[figure],
          diffUs,
          spreadUs,
          beyondSpread,
          verdict,
        });
        if (beyondSpread) {
          flagged.push(
            `${m.service} ${m.method} ${m.protocol} ${kind} ${figure}: ${(qa[figure] / 1000).toFixed(2)} → ${
              (qb[figure] / 1000).toFixed(2)
            } ms (${verdict}; spread ${(spreadUs / 1000).toFixed(2)} ms)`,
          );
        }
      }
    }
    methods.push({
      service: m.service,
      method: m.method,
      protocol: m.protocol,
      countBaseline: b.count,
      countCurrent: m.count,
      okShareBaseline: okShare(b),
      okShareCurrent: okShare(m),
      figures,
    });
  }
  for (const k of before.keys()) unmatched.push(`${k} (only in ${baseline.runId})`);
  return {
    baseline: {
      runId: baseline.runId,
      scenario: baseline.scenario,
      startedAtMs: baseline.startedAtMs,
      file: baseline.files?.json,
    },
    current: {
      runId: current.runId,
      scenario: current.scenario,
      startedAtMs: current.startedAtMs,
      file: current.files?.json,
    },
    methods,
    unmatched,
    flagged,
  };
}

/** The comparison as a plain-text table for the terminal. */
export function comparisonText(comparison: Comparison): string {
  const lines = [
    `baseline ${comparison.baseline.runId} (${comparison.baseline.scenario}) → ${comparison.current.runId} (${comparison.current.scenario})`,
  ];
  for (const m of comparison.methods) {
    lines.push(`  ${m.service} ${m.method} ${m.protocol}: ${m.countBaseline} → ${m.countCurrent} requests`);
    for (const f of m.figures) {
      const spread = Number.isFinite(f.spreadUs) ? `±${(f.spreadUs / 1000).toFixed(2)}` : "no spread";
      lines.push(
        `    ${f.kind.padEnd(9)} ${f.figure.padEnd(5)} ${(f.baselineUs / 1000).toFixed(2).padStart(9)} → ${
          (f.currentUs / 1000).toFixed(2).padStart(9)
        } ms  Δ ${(f.diffUs / 1000).toFixed(2).padStart(8)} (${spread})  ${
          f.beyondSpread ? f.verdict.toUpperCase() : "within spread"
        }`,
      );
    }
  }
  for (const u of comparison.unmatched) lines.push(`  ${u}`);
  return lines.join("\n");
}
