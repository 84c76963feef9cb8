/** The stack a load run drives and checks: service addresses, ClickHouse, the profiler, the processes. */
import { LOCAL } from "@tailwatch/scripts";
import type { ServiceName } from "./scenario.ts";

export interface ClickHouseAccess {
  url: string;
  username: string;
  password: string;
  database: string;
}

export interface StackTarget {
  label: string;
  /** gRPC "host:port" and REST base URL of each service (loopback only). */
  services: Record<ServiceName, { grpc: string; http: string }>;
  clickhouse: ClickHouseAccess;
  /** tailwatch-profiler, for the server-side percentiles of the run's span (`--once`), when built. */
  profilerBinary?: string;
  /** The stack's processes now, by name (pids), for CPU per process. */
  processes(): Record<string, number>;
  /** How long after a run the events may take to reach ClickHouse before the cross-check gives up. */
  settleTimeoutMs?: number;
}

const ROOT = new URL("../", import.meta.url).pathname;

function alive(pid: number): boolean {
  try {
    Deno.readTextFileSync(`/proc/${pid}/stat`);
    return true;
  } catch {
    return false;
  }
}

/** The local stack of `./dev up` (ports of DESIGN.md; pids from .data/pids). */
export function localTarget(): StackTarget {
  const profiler = `${ROOT}native/profiler/build/tailwatch-profiler`;
  let profilerBinary: string | undefined;
  try {
    Deno.statSync(profiler);
    profilerBinary = profiler;
  } catch { /* not built */ }
  return {
    label: "local stack (./dev up)",
    services: {
      catalog: { grpc: "127.0.0.1:50051", http: "http://127.0.0.1:8081" },
      orders: { grpc: "127.0.0.1:50052", http: "http://127.0.0.1:8082" },
      payments: { grpc: "127.0.0.1:50053", http: "http://127.0.0.1:8083" },
    },
    clickhouse: {
      url: "http://127.0.0.1:8123",
      username: "tailwatch_admin",
      password: LOCAL.clickhouseAdminPassword,
      database: "profiler",
    },
    profilerBinary,
    processes() {
      const found: Record<string, number> = {};
      try {
        for (const entry of Deno.readDirSync(`${ROOT}.data/pids`)) {
          if (!entry.name.endsWith(".pid")) continue;
          const pid = Number(Deno.readTextFileSync(`${ROOT}.data/pids/${entry.name}`).trim());
          if (pid > 0 && alive(pid)) found[entry.name.slice(0, -4)] = pid;
        }
      } catch { /* the stack is not up */ }
      return found;
    },
  };
}
