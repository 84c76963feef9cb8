export { connectionFlags, PROFILER_DIR, type ProfilerBinaries, profilerBinaries } from "./binaries.ts";
