import { assert, assertEquals } from "@tailwatch/testing";
import {
  ghzScheduleArgs,
  rampSlope,
  ratePieces,
  scaleSchedule,
  scenarioProblems,
  withPeakRate,
} from "./scenario.ts";
import { SCENARIOS } from "./scenarios/mod.ts";
import { weightedSequence } from "./run.ts";
import { hitsInDuration } from "./latency.ts";

Deno.test("every scenario is well formed: shares add up to 1, methods exist, a schedule or users", () => {
  assert(SCENARIOS.length >= 8);
  for (const scenario of SCENARIOS) assertEquals(scenarioProblems(scenario), [], scenario.name);
  const names = SCENARIOS.map((s) => s.name);
  for (const wanted of ["orders-create", "store-mix", "store-rest", "users-10", "users-100", "users-1000"]) {
    assert(names.includes(wanted), wanted);
  }
  const headline = SCENARIOS.find((s) => s.name === "orders-create")!;
  assertEquals(headline.schedule, { kind: "constant", rate: 1000 });
  assertEquals(headline.durationS, 60);
});

Deno.test("step and ramp schedules expand to the rate pieces ghz paces", () => {
  const step = { kind: "step", start: 500, step: 500, everyS: 20, end: 3000 } as const;
  const pieces = ratePieces(step, 140);
  assertEquals(pieces.map((p) => p.rate), [500, 1000, 1500, 2000, 2500, 3000]);
  assertEquals(pieces.map((p) => p.at), [0, 20, 40, 60, 80, 100]);
  assertEquals(hitsInDuration(pieces, 120), 20 * (500 + 1000 + 1500 + 2000 + 2500 + 3000));
  assertEquals(
    ghzScheduleArgs(step, 120).join(" "),
    "--rps 500 --load-schedule step --load-start 500 --load-step 500 --load-step-duration 20s --load-end 3000",
  );
  const ramp = { kind: "ramp", from: 100, to: 2000 } as const;
  assertEquals(rampSlope(ramp, 60), 33);
  const rampPieces = ratePieces(ramp, 60);
  assertEquals(rampPieces[0], { at: 0, rate: 100 });
  assertEquals(rampPieces[1], { at: 1, rate: 133 });
  assertEquals(rampPieces.at(-1)!.rate, 2000);
  assert(ghzScheduleArgs(ramp, 60).includes("line"));
  assertEquals(withPeakRate(step, 1500), { kind: "step", start: 250, step: 250, everyS: 20, end: 1500 });
  assertEquals(scaleSchedule({ kind: "constant", rate: 1000 }, 0.04), { kind: "constant", rate: 40 });
  assertEquals(scaleSchedule({ kind: "constant", rate: 10 }, 0.01), { kind: "constant", rate: 1 });
});

Deno.test("the REST mix interleaves its calls by weight", () => {
  const sequence = weightedSequence([0.5, 0.3, 0.2], 100);
  assertEquals([0, 1, 2].map((k) => sequence.filter((x) => x === k).length), [50, 30, 20]);
  assert(sequence.slice(0, 10).includes(2), "interleaved, not in blocks");
});
