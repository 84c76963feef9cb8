/**
 * Deno flags a service process runs with (`deno run -A <flags> services/<name>/main.ts`; ./dev up and the
 * benchmarks use them).
 *
 * Why `--no-allocation-site-pretenuring`: measured, at 1000 orders/s on two cores, orders' young-generation
 * scavenges paused it for 8-12 ms (median) every ~630 ms with V8's pretenuring and 4-5 ms without, over four
 * paired runs (load/HISTORY.md, "What the tail is made of"). The likely reason: pretenured per-request objects
 * live in the old generation and point at young ones, which every scavenge must then trace.
 *
 * Why `--max-semi-space-size=4` (MB): V8 grows the young generation as a service's kept state grows, and each
 * scavenge then copies more survivors at once. At 1000 orders/s the three services' median scavenge pause
 * went from 0.9 ms in the first minute to 1.6-2.4 ms in the third (maximum 5-6 ms), and p99 with it: three 60 s
 * runs in a row gave 4.87 / 9.46 / 7.06 and 4.83 / 7.33 / 7.29 ms. Capped at 4 MB the pauses stayed at 0.5 ms
 * (maximum 2-4 ms) and p99 at 4.60 / 4.78 / 4.78 and 4.71 / 3.97 / 5.98 ms, at the same CPU per order
 * (load/HISTORY.md, 2026-12-04).
 */
export const SERVICE_DENO_FLAGS: readonly string[] = [
  "--v8-flags=--no-allocation-site-pretenuring,--max-semi-space-size=4",
];
