/**
 * `./dev load SCENARIO [--rate N] [--duration S] [--users N] [--warmup S] [--baseline FILE|latest]`,
 * `./dev load --list`, `./dev load --compare A B`: one load scenario against the local stack with its
 * cross-checks; bench/results/load-<time>.json and .html. Exits 1 when a cross-check fails.
 */
import { findScenario, SCENARIOS } from "./scenarios/mod.ts";
import { describeSchedule } from "./scenario.ts";
import { fileStamp, type LoadResult, runLoad } from "./run.ts";
import { localTarget } from "./target.ts";
import { compareRuns, comparisonText } from "./compare.ts";
import { renderCompareReport } from "./report_html.ts";
import { printSummary } from "./summary.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const RESULTS = `${ROOT}bench/results`;

function usage(): never {
  console.error(
    "usage: ./dev load SCENARIO [--rate N] [--duration S] [--users N] [--warmup S] [--baseline FILE|latest]\n" +
      "       ./dev load --list\n" +
      "       ./dev load --compare A.json B.json",
  );
  Deno.exit(2);
}

/** A result file by path, run id, or "latest" (the newest load-*.json, of `scenario` when given). */
export async function findResult(reference: string, scenario?: string): Promise<LoadResult> {
  const read = async (path: string) => JSON.parse(await Deno.readTextFile(path)) as LoadResult;
  try {
    if ((await Deno.stat(reference)).isFile) return await read(reference);
  } catch { /* not a path */ }
  const files: string[] = [];
  for await (const entry of Deno.readDir(RESULTS)) {
    if (entry.isFile && /^load-.*\.json$/.test(entry.name)) files.push(entry.name);
  }
  files.sort().reverse();
  for (const file of files) {
    const result = await read(`${RESULTS}/${file}`).catch(() => undefined);
    if (!result) continue;
    if (reference === "latest" ? (!scenario || result.scenario === scenario) : result.runId === reference) {
      return result;
    }
  }
  throw new Error(`no load result ${reference}${scenario ? ` of ${scenario}` : ""} in bench/results`);
}

if (import.meta.main) {
  const args = [...Deno.args];
  const flag = (name: string): string | undefined => {
    const i = args.indexOf(name);
    if (i < 0) return undefined;
    const value = args[i + 1];
    if (value === undefined) usage();
    args.splice(i, 2);
    return value;
  };
  if (args.includes("--list")) {
    for (const s of SCENARIOS) {
      const what = s.model === "open" ? describeSchedule(s.schedule!) : `${s.users} users (closed)`;
      console.log(
        `${s.name.padEnd(15)} ${what}, ${s.durationS} s (+${s.warmupS} s warm-up)\n${
          " ".repeat(16)
        }${s.description}`,
      );
    }
    Deno.exit(0);
  }
  const compareIndex = args.indexOf("--compare");
  if (compareIndex >= 0) {
    const [a, b] = [args[compareIndex + 1], args[compareIndex + 2]];
    if (!a || !b) usage();
    const [ra, rb] = [await findResult(a), await findResult(b)];
    const comparison = compareRuns(ra, rb);
    console.log(comparisonText(comparison));
    await Deno.mkdir(RESULTS, { recursive: true });
    const base = `${RESULTS}/compare-${fileStamp(Date.now())}`;
    await Deno.writeTextFile(`${base}.json`, JSON.stringify(comparison, null, 1) + "\n");
    await Deno.writeTextFile(`${base}.html`, renderCompareReport(comparison, ra, rb));
    console.log(`written to ${base.slice(ROOT.length)}.{json,html}`);
    Deno.exit(0);
  }
  const number = (name: string) => {
    const value = flag(name);
    if (value === undefined) return undefined;
    const parsed = Number(value.replace(/s$/, ""));
    if (!(parsed > 0)) usage();
    return parsed;
  };
  const rate = number("--rate");
  const durationS = number("--duration");
  const users = number("--users");
  const warmupValue = flag("--warmup");
  const baselineRef = flag("--baseline");
  if (args.length !== 1) usage();
  const scenario = findScenario(args[0]);
  if (!scenario) {
    console.error(`unknown scenario ${args[0]}; ./dev load --list`);
    Deno.exit(2);
  }
  const baseline = baselineRef ? await findResult(baselineRef, scenario.name) : undefined;
  const result = await runLoad({
    scenario,
    target: localTarget(),
    rate,
    users,
    durationS,
    warmupS: warmupValue === undefined ? undefined : Number(warmupValue.replace(/s$/, "")),
    resultsDir: RESULTS,
    baseline,
  });
  printSummary(result);
  if (result.baseline) console.log("\n" + comparisonText(result.baseline));
  console.log(
    `\nwritten to ${result.files!.json.slice(ROOT.length)} and ${result.files!.html.slice(ROOT.length)}`,
  );
  Deno.exit(result.crossCheck.ok ? 0 : 1);
}
