import { assertEquals } from "@tailwatch/testing";
import { searchRates } from "./capacity.ts";
import { bottleneck } from "./cpu.ts";

Deno.test("capacity: steps up to the first failure, then bisects to the resolution", async () => {
  const tried: number[] = [];
  const threshold = (limit: number) => (rate: number) => {
    tried.push(rate);
    return Promise.resolve(rate <= limit);
  };
  const options = { startRate: 500, stepRate: 500, maxRate: 6000, resolution: 50 };
  assertEquals(await searchRates(threshold(1730), options), { rate: 1720, reachedMax: false });
  assertEquals(tried, [500, 1000, 1500, 2000, 1750, 1630, 1690, 1720]);
  tried.length = 0;
  assertEquals(await searchRates(threshold(10_000), options), { rate: 6000, reachedMax: true });
  assertEquals(tried.length, 12);
  // Nothing passes: bisect below the first step, down to the resolution.
  assertEquals(await searchRates(threshold(120), options), { rate: 100, reachedMax: false });
});

Deno.test("capacity: the search on errors alone starts above a rate known to pass and bisects from it", async () => {
  const tried: number[] = [];
  const threshold = (limit: number) => (rate: number) => {
    tried.push(rate);
    return Promise.resolve(rate <= limit);
  };
  const options = { startRate: 1000, stepRate: 500, maxRate: 6000, resolution: 250, knownPass: 500 };
  assertEquals(await searchRates(threshold(2300), options), { rate: 2250, reachedMax: false });
  assertEquals(tried, [1000, 1500, 2000, 2500, 2250]);
  // The first step fails: the known rate stands, bisection between it and the step.
  tried.length = 0;
  assertEquals(await searchRates(threshold(600), options), { rate: 500, reachedMax: false });
  assertEquals(tried, [1000, 750]);
});

Deno.test("capacity: the bottleneck is a saturated event loop, else the machine, else none", () => {
  const interval = (main: number, busy: number) => ({
    wallSeconds: 30,
    machineBusyCores: busy,
    cores: 2,
    stealShare: 0,
    processes: {
      orders: { cores: main + 0.05, mainThread: main, cpuSeconds: 30 * (main + 0.05) },
      ghz: { cores: 0.5, mainThread: NaN, cpuSeconds: 15 },
    },
  });
  assertEquals(bottleneck(interval(0.95, 1.5)).process, "orders");
  assertEquals(bottleneck(interval(0.6, 1.95)).process, "machine");
  assertEquals(bottleneck(interval(0.3, 1.0)).process, "none");
});
