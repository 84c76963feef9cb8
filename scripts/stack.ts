/**
 * The local stack for `./dev up` / `./dev down`: every component as a background process with its data
 * under .data/ and its log under .data/logs/, started in dependency order and checked healthy before the
 * next; stopped in reverse order with SIGTERM (each drains), SIGKILL only after a timeout.
 */
import { clickhouseConfigXml, clickhouseUsersXml, waitUntil } from "@tailwatch/testing";
import { LOCAL } from "./local.ts";
import { SERVICE_DENO_FLAGS } from "@tailwatch/kit";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const DATA = `${ROOT}/.data`;
const LOGS = `${DATA}/logs`;
const PIDS = `${DATA}/pids`;

interface Component {
  name: string;
  /** False when the component is not built or present in this checkout; it is then skipped. */
  available(): boolean;
  prepare?(): Promise<void>;
  command: string[];
  env?: Record<string, string>;
  /** Resolves true once the component answers. */
  healthy(): Promise<boolean>;
}

async function ok(url: string): Promise<boolean> {
  const response = await fetch(url);
  await response.body?.cancel();
  return response.ok;
}

const exists = (path: string) => {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
};

const deno = Deno.execPath();
const serviceEnv = (extra: Record<string, string> = {}) => ({
  NATS_URL: "nats://127.0.0.1:4222",
  ADMIN_TOKEN: LOCAL.adminToken,
  HOST: "127.0.0.1",
  ...extra,
});

const components: Component[] = [
  {
    name: "nats",
    available: () => true,
    command: ["nats-server", "-a", "127.0.0.1", "-p", "4222", "-m", "8222", "-js", "-sd", `${DATA}/nats`],
    healthy: () => ok("http://127.0.0.1:8222/healthz"),
  },
  {
    name: "clickhouse",
    available: () => exists(`${ROOT}/ingest/main.ts`),
    async prepare() {
      const dir = `${DATA}/clickhouse`;
      for (const sub of ["log", "data", "tmp", "user_files", "format_schemas"]) {
        await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
      }
      await Deno.writeTextFile(`${dir}/config.xml`, clickhouseConfigXml(dir, 8123, 9000));
      await Deno.writeTextFile(
        `${dir}/users.xml`,
        clickhouseUsersXml(LOCAL.clickhouseAdminPassword, LOCAL.clickhouseReaderPassword),
      );
    },
    command: ["clickhouse-server", `--config-file=${DATA}/clickhouse/config.xml`],
    healthy: () => ok("http://127.0.0.1:8123/ping"),
  },
  {
    name: "ingest",
    available: () => exists(`${ROOT}/ingest/main.ts`),
    command: [deno, "run", "-A", `${ROOT}/ingest/main.ts`],
    env: {
      NATS_URL: "nats://127.0.0.1:4222",
      CLICKHOUSE_URL: "http://127.0.0.1:8123",
      CLICKHOUSE_USER: "tailwatch_admin",
      CLICKHOUSE_PASSWORD: LOCAL.clickhouseAdminPassword,
      INGEST_METRICS_PORT: "9464",
    },
    healthy: () => ok("http://127.0.0.1:9464/healthz"),
  },
  ...["catalog", "payments", "orders"].map((service): Component => {
    const httpPort = { catalog: 8081, orders: 8082, payments: 8083 }[service]!;
    return {
      name: service,
      available: () => true,
      command: [deno, "run", "-A", ...SERVICE_DENO_FLAGS, `${ROOT}/services/${service}/main.ts`],
      env: serviceEnv(),
      healthy: () => ok(`http://127.0.0.1:${httpPort}/readyz`),
    };
  }),
  {
    name: "profiler",
    available: () => exists(`${ROOT}/native/profiler/build/tailwatch-profiler`),
    command: [`${ROOT}/native/profiler/build/tailwatch-profiler`],
    env: {
      TAILWATCH_CLICKHOUSE_URL: "http://127.0.0.1:8123",
      TAILWATCH_CLICKHOUSE_USER: "tailwatch_admin",
      TAILWATCH_CLICKHOUSE_PASSWORD: LOCAL.clickhouseAdminPassword,
      TAILWATCH_CLICKHOUSE_DATABASE: "profiler",
    },
    // It has no port; alive after its first tick is healthy enough.
    healthy: () => new Promise((resolve) => setTimeout(() => resolve(true), 1500)),
  },
  // The dashboard (web/README.md), last: it reads ClickHouse as the read-only user and the others' /metrics.
  {
    name: "web",
    available: () => exists(`${ROOT}/web/main.ts`),
    command: [deno, "run", "-A", `${ROOT}/web/main.ts`],
    env: {
      WEB_HOST: "127.0.0.1",
      WEB_PORT: "8080",
      CLICKHOUSE_URL: "http://127.0.0.1:8123",
      CLICKHOUSE_USER: "tailwatch_reader",
      CLICKHOUSE_PASSWORD: LOCAL.clickhouseReaderPassword,
      WEB_STATE_DIR: `${DATA}/web`,
    },
    healthy: () => ok("http://127.0.0.1:8080/healthz"),
  },
];

function pidOf(name: string): number | undefined {
  try {
    const pid = Number(Deno.readTextFileSync(`${PIDS}/${name}.pid`).trim());
    return alive(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT");
    return true;
  } catch {
    return false;
  }
}

async function start(component: Component): Promise<void> {
  if (pidOf(component.name)) {
    console.log(`${component.name}: already running`);
    return;
  }
  await component.prepare?.();
  const log = `${LOGS}/${component.name}.log`;
  const quoted = component.command.map((part) => `'${part.replaceAll("'", "'\\''")}'`).join(" ");
  // setsid + nohup: the process outlives this script and the terminal; its output goes to its log.
  const child = new Deno.Command("bash", {
    args: ["-c", `setsid nohup ${quoted} >> '${log}' 2>&1 < /dev/null & echo $!`],
    env: { ...Deno.env.toObject(), ...component.env },
    stdout: "piped",
  }).outputSync();
  const pid = Number(new TextDecoder().decode(child.stdout).trim());
  await Deno.writeTextFile(`${PIDS}/${component.name}.pid`, `${pid}\n`);
  try {
    await waitUntil(
      `${component.name} to answer`,
      async () => {
        if (!alive(pid)) throw new Error("exited");
        return await component.healthy();
      },
      90_000,
      200,
    );
  } catch {
    const tail = (await Deno.readTextFile(log).catch(() => "")).split("\n").slice(-15).join("\n");
    throw new Error(`${component.name} did not become healthy; last lines of ${log}:\n${tail}`);
  }
  console.log(`${component.name}: up (pid ${pid}, log ${log})`);
}

async function stop(component: Component): Promise<void> {
  const pid = pidOf(component.name);
  if (!pid) return;
  Deno.kill(pid, "SIGTERM");
  const deadline = Date.now() + 30_000;
  while (alive(pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
  if (alive(pid)) Deno.kill(pid, "SIGKILL");
  await Deno.remove(`${PIDS}/${component.name}.pid`).catch(() => {});
  console.log(`${component.name}: stopped`);
}

if (import.meta.main) {
  const command = Deno.args[0];
  await Deno.mkdir(LOGS, { recursive: true });
  await Deno.mkdir(PIDS, { recursive: true });
  if (command === "up") {
    for (const component of components) {
      if (component.available()) await start(component);
    }
    console.log(
      `\nstack up. REST: catalog :8081, orders :8082, payments :8083 (OpenAPI at /openapi.json); gRPC 50051-50053;` +
        `\nNATS :4222 (monitoring :8222); admin token "${LOCAL.adminToken}"; logs in .data/logs/. Stop with ./dev down.`,
    );
  } else if (command === "down") {
    for (const component of [...components].reverse()) await stop(component);
  } else {
    console.error("usage: stack.ts up|down");
    Deno.exit(2);
  }
}
