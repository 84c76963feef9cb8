/**
 * Where the profiler's binaries are, for its Deno tests and benchmark: $TAILWATCH_PROFILER_BIN,
 * $TAILWATCH_BUCKETS_BIN and $TAILWATCH_BENCH_BIN (ctest sets the first two to its own, possibly sanitized,
 * build), else native/profiler/build. A missing binary is built with scripts/build; if it still is missing,
 * this throws, so a test never passes without the program it tests.
 */
export const PROFILER_DIR: string = new URL("./", import.meta.url).pathname;

export interface ProfilerBinaries {
  profiler: string;
  buckets: string;
  bench: string;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

export async function profilerBinaries(): Promise<ProfilerBinaries> {
  const paths: ProfilerBinaries = {
    profiler: Deno.env.get("TAILWATCH_PROFILER_BIN") ?? `${PROFILER_DIR}build/tailwatch-profiler`,
    buckets: Deno.env.get("TAILWATCH_BUCKETS_BIN") ?? `${PROFILER_DIR}build/tailwatch-buckets`,
    bench: Deno.env.get("TAILWATCH_BENCH_BIN") ?? `${PROFILER_DIR}build/bench/profiler_bench`,
  };
  const all = Object.values(paths);
  if (!(await Promise.all(all.map(isFile))).every(Boolean)) {
    const build = await new Deno.Command(`${PROFILER_DIR}scripts/build`, {
      stdout: "inherit",
      stderr: "inherit",
    })
      .output();
    if (!build.success) throw new Error(`scripts/build failed (exit ${build.code}); cannot run the profiler`);
  }
  for (const path of all) {
    if (!(await isFile(path))) throw new Error(`${path} is missing after scripts/build`);
  }
  return paths;
}

/** The flags that point the profiler at a ClickHouse database. */
export function connectionFlags(url: string, user: string, password: string, database: string): string[] {
  return ["--clickhouse-url", url, "--user", user, "--password", password, "--database", database];
}
