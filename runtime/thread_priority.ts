/**
 * Lowers the CPU priority of V8's background worker threads, so that on a saturated machine the thread
 * that serves requests runs first and JIT compilation and GC helper work take the idle moments.
 *
 * Why: at 1000 orders/s on two cores, `perf sched` showed the slowest requests clustered in moments when
 * both cores were busy and a service's two "V8 DefaultWorker" threads ran 10 to 40 times their average
 * rate: TurboFan compiling (10-190 ms per function; about 100 compiles per service in the 30 s after the
 * benchmark's short warm-up, still about 15 per 30 s after 90 s) and concurrent GC marking. Linux shares a core by weight, so at nice 0 a compile takes
 * half a core from the request thread for its whole length. At nice 19 its weight is 15 against 1024: it
 * still runs, on whatever time the request threads leave. Measured in load/README.md ("V8's background
 * threads").
 *
 * Linux only (it reads /proc/self/task); elsewhere it does nothing and says so.
 */
import { setPriority } from "node:os";

/** Thread names V8's platform gives its worker threads (Linux truncates comm to 15 bytes). */
const V8_WORKER_THREAD_PREFIX = "V8 ";

export interface ThreadPriorityResult {
  /** Thread ids whose nice value was set. */
  readonly threads: number[];
  /** Why nothing was done, when nothing was: not Linux, no /proc, or no V8 worker thread found. */
  readonly skipped?: string;
}

/** A thread: its id, its name (`/proc/<pid>/task/<tid>/comm`) and its nice value (-20 to 19). */
export interface ProcessThread {
  readonly tid: number;
  readonly name: string;
  readonly nice: number;
}

/**
 * The fields of a /proc/<pid>/stat (or task/<tid>/stat) line after the name in parentheses: index 0 is field
 * 3 (state), so field n of proc(5) is at index n - 3. The name may hold spaces and parentheses ("V8
 * DefaultWorke"), so the fields are counted from the last ")".
 */
export function procStatFields(stat: string): string[] {
  return stat.slice(stat.lastIndexOf(")") + 2).trimEnd().split(" ");
}

const NICE_FIELD_INDEX = 19 - 3;

/**
 * The threads of a process now (this one by default). Empty when /proc is not there (not Linux), cannot be
 * read, or the process is gone.
 */
export function listProcessThreads(pid: number | "self" = "self"): ProcessThread[] {
  const threads: ProcessThread[] = [];
  try {
    for (const entry of Deno.readDirSync(`/proc/${pid}/task`)) {
      const tid = Number(entry.name);
      if (!Number.isInteger(tid)) continue;
      try {
        const name = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/comm`).trimEnd();
        const nice = Number(
          procStatFields(Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`))[NICE_FIELD_INDEX],
        );
        threads.push({ tid, name, nice });
      } catch {
        // the thread ended between listing and reading: nothing to do for it
      }
    }
  } catch {
    return [];
  }
  return threads;
}

/**
 * Sets the nice value of every V8 worker thread of this process to `nice` (0 to 19; higher yields more).
 * Threads V8 starts later inherit the nice value of the thread that starts them, so this is done once,
 * after start-up. Raising nice needs no privilege; lowering it below the current value does, and then
 * `setPriority` throws (EACCES), which is passed on.
 */
export function lowerV8WorkerPriority(nice: number): ThreadPriorityResult {
  if (!Number.isInteger(nice) || nice < 0 || nice > 19) {
    throw new RangeError(`nice must be an integer from 0 to 19, got ${nice}`);
  }
  if (Deno.build.os !== "linux") return { threads: [], skipped: `not Linux (${Deno.build.os})` };
  const workers = listProcessThreads().filter((thread) => thread.name.startsWith(V8_WORKER_THREAD_PREFIX));
  if (workers.length === 0) return { threads: [], skipped: "no V8 worker thread found in /proc/self/task" };
  // On Linux, setpriority(PRIO_PROCESS, tid) applies to that one thread, not the whole process.
  for (const worker of workers) setPriority(worker.tid, nice);
  return { threads: workers.map((worker) => worker.tid) };
}
