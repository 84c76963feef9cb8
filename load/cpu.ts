/**
 * CPU per process over an interval, from /proc: the whole process (every thread) and its main thread (for
 * Deno, the event loop that serves every request: at 100 % of a core it is the bottleneck, however many cores
 * the machine has left).
 */
import { machineCpu } from "./processes.ts";

const TICKS = 100;

function ticksOf(path: string): number | undefined {
  try {
    const stat = Deno.readTextFileSync(path);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime are fields 14 and 15 of stat.
    return (Number(fields[14 - 3]) + Number(fields[15 - 3])) / TICKS;
  } catch {
    return undefined;
  }
}

export interface ProcessCpu {
  /** Cores used on average over the interval (CPU seconds / wall seconds). */
  cores: number;
  /** The main thread's share of one core over the interval (0..1). */
  mainThread: number;
  cpuSeconds: number;
}

export interface CpuInterval {
  wallSeconds: number;
  processes: Record<string, ProcessCpu>;
  /** Cores the whole machine was busy, and how many it has. */
  machineBusyCores: number;
  cores: number;
  /** Share of the machine's CPU time the hypervisor gave to other tenants. */
  stealShare: number;
}

/** Starts measuring `pids`; the function returned ends the interval. */
export function cpuMeter(pids: Record<string, number>): () => CpuInterval {
  const startWall = performance.now();
  const machineBefore = machineCpu();
  const before = Object.fromEntries(
    Object.entries(pids).map(([name, pid]) => [
      name,
      { total: ticksOf(`/proc/${pid}/stat`), main: ticksOf(`/proc/${pid}/task/${pid}/stat`) },
    ]),
  );
  return () => {
    const wallSeconds = (performance.now() - startWall) / 1000;
    const machineAfter = machineCpu();
    const processes: Record<string, ProcessCpu> = {};
    for (const [name, pid] of Object.entries(pids)) {
      const total = ticksOf(`/proc/${pid}/stat`);
      const main = ticksOf(`/proc/${pid}/task/${pid}/stat`);
      const b = before[name];
      if (total === undefined || b.total === undefined) continue;
      const cpuSeconds = total - b.total;
      processes[name] = {
        cpuSeconds,
        cores: cpuSeconds / wallSeconds,
        mainThread: main !== undefined && b.main !== undefined ? (main - b.main) / wallSeconds : NaN,
      };
    }
    const total = machineAfter.total - machineBefore.total;
    return {
      wallSeconds,
      processes,
      machineBusyCores: (machineAfter.busy - machineBefore.busy) / wallSeconds,
      cores: navigator.hardwareConcurrency,
      stealShare: total > 0 ? (machineAfter.steal - machineBefore.steal) / total : 0,
    };
  };
}

/**
 * Which process limited the throughput, from the CPU of an interval at (or past) the limit: a process whose
 * main thread was busy at least 85 % of the time (its event loop saturated), else the machine itself when its
 * cores were at least 90 % busy, else none.
 */
export function bottleneck(interval: CpuInterval): { process: string; why: string } {
  const byMain = Object.entries(interval.processes).filter(([, p]) => Number.isFinite(p.mainThread))
    .sort((a, b) => b[1].mainThread - a[1].mainThread);
  const byCores = Object.entries(interval.processes).sort((a, b) => b[1].cores - a[1].cores);
  const top = byCores.slice(0, 3).map(([name, p]) => `${name} ${p.cores.toFixed(2)}`).join(", ");
  if (byMain.length > 0 && byMain[0][1].mainThread >= 0.85) {
    const [name, p] = byMain[0];
    return {
      process: name,
      why:
        `${name}'s main thread was busy ${(p.mainThread * 100).toFixed(0)} % of the time (its event loop ` +
        `saturated); cores used: ${top}`,
    };
  }
  if (interval.machineBusyCores >= 0.9 * interval.cores) {
    return {
      process: "machine",
      why: `all ${interval.cores} cores busy (${
        interval.machineBusyCores.toFixed(2)
      } cores); largest: ${top}`,
    };
  }
  return {
    process: "none",
    why:
      `no process saturated (machine ${interval.machineBusyCores.toFixed(2)} of ${interval.cores} cores; ` +
      `largest: ${top})`,
  };
}
