/** Service processes on free loopback ports, for benchmarks (the same `main.ts` that ./dev up runs). */
import { freePorts, type ManagedProcess, spawnLogged, waitUntil } from "@tailwatch/testing";
import { procStatFields, SERVICE_DENO_FLAGS } from "@tailwatch/runtime";

export interface ServiceProcess extends AsyncDisposable {
  name: string;
  grpcPort: number;
  httpPort: number;
  process: ManagedProcess;
  metrics(): Promise<string>;
}

const ROOT = new URL("../", import.meta.url).pathname;

export async function startServiceProcess(
  name: "catalog" | "orders" | "payments",
  env: Record<string, string>,
  logDir: string,
): Promise<ServiceProcess> {
  const [grpcPort, httpPort] = freePorts(2);
  const process = await spawnLogged(
    Deno.execPath(),
    ["run", "-A", ...SERVICE_DENO_FLAGS, `${ROOT}services/${name}/main.ts`],
    `${logDir}/${name}-${grpcPort}.log`,
    {
      env: {
        ...Deno.env.toObject(),
        HOST: "127.0.0.1",
        GRPC_PORT: String(grpcPort),
        HTTP_PORT: String(httpPort),
        LOG_LEVEL: "warn",
        ...env,
      },
    },
  );
  await waitUntil(`${name} ready`, async () => {
    const response = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
    await response.body?.cancel();
    return response.ok;
  }, 60_000);
  return {
    name,
    grpcPort,
    httpPort,
    process,
    metrics: async () => await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text(),
    [Symbol.asyncDispose]: async () => void await process.stop("SIGTERM", 20_000),
  };
}

/** CPU time (user + system, in seconds) a process has used so far, from /proc. */
export function cpuSeconds(pid: number): number {
  const fields = procStatFields(Deno.readTextFileSync(`/proc/${pid}/stat`));
  // utime and stime are fields 14 and 15 of stat.
  return (Number(fields[14 - 3]) + Number(fields[15 - 3])) / 100;
}

/** The machine's CPU time so far (seconds, summed over cores), from the first line of /proc/stat. */
export interface MachineCpu {
  /** Time the kernel ran anything here: user, nice, system, irq and softirq (guest time is inside user). */
  busy: number;
  /** Time a virtual CPU was ready to run but the hypervisor ran something else (another tenant). */
  steal: number;
  /** Every state: busy, idle, iowait and steal. */
  total: number;
}

const CLOCK_TICKS_PER_SECOND = 100;

/** Parses /proc/stat's aggregate `cpu` line; throws if it is not there (not Linux). */
export function parseMachineCpu(procStat: string): MachineCpu {
  const line = procStat.split("\n").find((l) => l.startsWith("cpu "));
  if (line === undefined) throw new Error("no aggregate cpu line in /proc/stat");
  const [user, nice, system, idle, iowait, irq, softirq, steal = 0] = line.trim().split(/\s+/).slice(1, 9)
    .map(
      Number,
    );
  const busy = user + nice + system + irq + softirq;
  return {
    busy: busy / CLOCK_TICKS_PER_SECOND,
    steal: steal / CLOCK_TICKS_PER_SECOND,
    total: (busy + idle + iowait + steal) / CLOCK_TICKS_PER_SECOND,
  };
}

export function machineCpu(): MachineCpu {
  return parseMachineCpu(Deno.readTextFileSync("/proc/stat"));
}

/**
 * Starts measuring steal; the function returned gives the share of the machine's CPU time (0..1) that the
 * hypervisor gave to someone else since. Why: on a shared host a benchmark run can lose a third of its CPU
 * to other tenants (seen here: 15-45 % for minutes, 2026-12-02), and its numbers then describe the host's
 * load, not the code; every bench section reports it next to its results.
 */
export function stealMeter(): () => number {
  const before = machineCpu();
  return () => {
    const after = machineCpu();
    const total = after.total - before.total;
    return total > 0 ? (after.steal - before.steal) / total : 0;
  };
}

/** catalog, payments and orders as processes, orders wired to the other two; disposed in reverse order. */
export interface StackProcesses extends AsyncDisposable {
  catalog: ServiceProcess;
  payments: ServiceProcess;
  orders: ServiceProcess;
}

export async function startStackProcesses(
  env: Record<string, string>,
  logDir: string,
): Promise<StackProcesses> {
  const catalog = await startServiceProcess("catalog", env, logDir);
  const payments = await startServiceProcess("payments", env, logDir);
  const orders = await startServiceProcess("orders", {
    ...env,
    CATALOG_ADDR: `127.0.0.1:${catalog.grpcPort}`,
    PAYMENTS_ADDR: `127.0.0.1:${payments.grpcPort}`,
  }, logDir);
  return {
    catalog,
    payments,
    orders,
    async [Symbol.asyncDispose]() {
      await orders[Symbol.asyncDispose]();
      await Promise.all([catalog[Symbol.asyncDispose](), payments[Symbol.asyncDispose]()]);
    },
  };
}
