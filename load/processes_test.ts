import { assertEquals } from "@tailwatch/testing";
import { machineCpu, parseMachineCpu, stealMeter } from "./processes.ts";

Deno.test("parseMachineCpu reads busy, steal and total seconds from the aggregate cpu line", () => {
  // user nice system idle iowait irq softirq steal guest guest_nice, in 1/100 s
  const stat = "cpu  1000 20 300 5000 40 5 15 120 700 0\ncpu0 500 10 150 2500 20 2 7 60 350 0\nintr 1\n";
  assertEquals(parseMachineCpu(stat), { busy: 13.4, steal: 1.2, total: 65 });
});

Deno.test("parseMachineCpu takes a kernel without a steal column as no steal", () => {
  assertEquals(parseMachineCpu("cpu  100 0 50 800 0 0 0\n"), { busy: 1.5, steal: 0, total: 9.5 });
});

Deno.test("parseMachineCpu refuses text without the aggregate cpu line", () => {
  let message = "";
  try {
    parseMachineCpu("cpu0 1 2 3 4\n");
  } catch (error) {
    message = (error as Error).message;
  }
  assertEquals(message, "no aggregate cpu line in /proc/stat");
});

Deno.test("stealMeter gives a share between 0 and 1 of this machine's CPU time", () => {
  const steal = stealMeter();
  const before = machineCpu();
  while (machineCpu().total - before.total < 0.05) { /* let the clock move at least 5 ticks */ }
  const share = steal();
  assertEquals(share >= 0 && share <= 1, true, `share ${share}`);
});
