/** Service processes on free loopback ports, for benchmarks (the same `main.ts` that ./dev up runs). */
import { freePort, type ManagedProcess, spawnLogged, waitUntil } from "@tailwatch/testing";
import { SERVICE_DENO_FLAGS } from "@tailwatch/kit";

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
  const grpcPort = freePort();
  const httpPort = freePort();
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
  const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1].split(" ");
  // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the command name.
  return (Number(fields[11]) + Number(fields[12])) / 100;
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
