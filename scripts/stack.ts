/**
 * The local stack for `./dev up` / `./dev down`: every component as a background process with its data under
 * .data/ and its log under .data/logs/, started in dependency order and each checked ready (its readiness
 * probe, or for a process without one, alive) before the next; at the end every process is checked again, and
 * a component that is not ready is named with its reason and the end of its log, and `up` exits 1. Stopped in
 * reverse order with SIGTERM (each drains), SIGKILL only after a timeout.
 */
import { clickhouseConfigXml, clickhouseUsersXml, natsServerBinary } from "@tailwatch/testing";
import { LOCAL } from "./local.ts";
import { SERVICE_DENO_FLAGS } from "@tailwatch/runtime";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const DATA = `${ROOT}/.data`;
const LOGS = `${DATA}/logs`;
const PIDS = `${DATA}/pids`;

export interface Component {
  name: string;
  /** False when the component is not built or present in this checkout; it is then skipped. */
  available(): boolean;
  prepare?(): Promise<void>;
  command: string[];
  env?: Record<string, string>;
  /**
   * undefined once the component is ready, else why not (its readiness probe's answer). A component without a
   * probe is ready while its process is alive, after `settleMs`.
   */
  ready(): Promise<string | undefined>;
  /** How long a component without a probe must stay alive before it counts as ready. */
  settleMs?: number;
  /**
   * A step, not a process: run to its end at its place in the order (every `up`), done when it exits 0. The
   * setup step (deploy/setup.ts: the stream, then the migrations), as compose's one-shot and the k8s Job.
   */
  oneShot?: boolean;
}

/** undefined when `url` answers 2xx, else the status and the start of the body (or the connection error). */
export async function probe(url: string): Promise<string | undefined> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(5_000) });
    const body = (await response.text()).trim().slice(0, 300);
    return response.ok ? undefined : `${url} answered ${response.status}${body ? `: ${body}` : ""}`;
  } catch (error) {
    return `${url}: ${error instanceof Error ? error.message : error}`;
  }
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
    // The pinned release from the Go module proxy (./dev installs it; testing/nats_server.ts checks it).
    command: [
      natsServerBinary(),
      "-a",
      "127.0.0.1",
      "-p",
      "4222",
      "-m",
      "8222",
      "-js",
      "-sd",
      `${DATA}/nats`,
    ],
    ready: () => probe("http://127.0.0.1:8222/healthz"),
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
    ready: () => probe("http://127.0.0.1:8123/ping"),
  },
  // The stream and the schema are configuration applied by this step, as in compose and k8s: the services
  // and ingest only check the stream (services/README.md, ingest/README.md). Every `up` runs it again (a no-op
  // when nothing changed).
  {
    name: "setup",
    available: () => exists(`${ROOT}/deploy/setup.ts`) && exists(`${ROOT}/ingest/main.ts`),
    oneShot: true,
    command: [deno, "run", "-A", `${ROOT}/deploy/setup.ts`],
    env: {
      NATS_URL: "nats://127.0.0.1:4222",
      CLICKHOUSE_URL: "http://127.0.0.1:8123",
      CLICKHOUSE_USER: "tailwatch_admin",
      CLICKHOUSE_PASSWORD: LOCAL.clickhouseAdminPassword,
      SETUP_WAIT_S: "60",
    },
    ready: () => Promise.resolve(undefined),
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
    // Consuming: connected, migrated, the consumer there, nothing stalled (ingest/README.md, "Health").
    ready: () => probe("http://127.0.0.1:9464/readyz"),
  },
  ...["catalog", "payments", "orders"].map((service): Component => {
    const httpPort = { catalog: 8081, orders: 8082, payments: 8083 }[service]!;
    return {
      name: service,
      available: () => true,
      command: [deno, "run", "-A", ...SERVICE_DENO_FLAGS, `${ROOT}/services/${service}/main.ts`],
      env: serviceEnv(),
      ready: () => probe(`http://127.0.0.1:${httpPort}/readyz`),
    };
  }),
  {
    name: "profiler",
    available: () => exists(`${ROOT}/native/profiler/build/tailwatch-profiler`),
    // Windows by completion second; tick T is written once the clock passes T + settle, and rewritten
    // (a higher version) when late requests arrive (native/profiler/README.md).
    command: [
      `${ROOT}/native/profiler/build/tailwatch-profiler`,
      "--windows",
      "10,60,300",
      "--settle",
      "1s",
      "--correction-memory",
      "300s",
    ],
    env: {
      TAILWATCH_CLICKHOUSE_URL: "http://127.0.0.1:8123",
      TAILWATCH_CLICKHOUSE_USER: "tailwatch_admin",
      TAILWATCH_CLICKHOUSE_PASSWORD: LOCAL.clickhouseAdminPassword,
      TAILWATCH_CLICKHOUSE_DATABASE: "profiler",
    },
    // It has no port and no probe: ready while its process is alive (checked after its first ticks).
    ready: () => Promise.resolve(undefined),
    settleMs: 3_000,
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
    ready: () => probe("http://127.0.0.1:8080/healthz"),
  },
  ...monitoringComponents(),
];

/**
 * Alerting and metrics (deploy/README.md): the alert webhook receiver, Alertmanager and Prometheus (Debian's,
 * ./dev installs them) with deploy/'s files: Prometheus scrapes the services' REST ports, ingest :9464 and web
 * :8080 when it is part of the checkout, and evaluates deploy/prometheus/rules; Alertmanager sends to the
 * webhook, which logs each alert (.data/logs/alert-webhook.log).
 */
function monitoringComponents(): Component[] {
  const deploy = `${ROOT}/deploy`;
  const binary = (name: string) => () => {
    try {
      return new Deno.Command(name, { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
        .success;
    } catch {
      return false;
    }
  };
  return [
    {
      name: "alert-webhook",
      available: () => exists(`${deploy}/alert_webhook.ts`),
      command: [deno, "run", "-A", `${deploy}/alert_webhook.ts`],
      env: { ALERT_WEBHOOK_HOST: "127.0.0.1", ALERT_WEBHOOK_PORT: "9099" },
      ready: () => probe("http://127.0.0.1:9099/healthz"),
    },
    {
      name: "alertmanager",
      available: binary("prometheus-alertmanager"),
      async prepare() {
        await Deno.mkdir(`${DATA}/alertmanager`, { recursive: true });
        const config = await Deno.readTextFile(`${deploy}/alertmanager/alertmanager.yml`);
        await Deno.writeTextFile(
          `${DATA}/alertmanager/alertmanager.yml`,
          config.replaceAll("http://alert-webhook:9099/", "http://127.0.0.1:9099/"),
        );
      },
      command: [
        "prometheus-alertmanager",
        `--config.file=${DATA}/alertmanager/alertmanager.yml`,
        `--storage.path=${DATA}/alertmanager/data`,
        "--web.listen-address=127.0.0.1:9093",
        "--cluster.listen-address=",
      ],
      ready: () => probe("http://127.0.0.1:9093/-/ready"),
    },
    {
      name: "prometheus",
      available: binary("prometheus"),
      async prepare() {
        await Deno.mkdir(`${DATA}/prometheus`, { recursive: true });
        let config = (await Deno.readTextFile(`${deploy}/prometheus/prometheus.local.yml`))
          .replace("  - rules/*.rules.yml", `  - ${deploy}/prometheus/rules/*.rules.yml`);
        if (!exists(`${ROOT}/web/main.ts`)) config = config.replace(/ {2}- job_name: web\n( {4}.*\n)+/, "");
        await Deno.writeTextFile(`${DATA}/prometheus/prometheus.yml`, config);
      },
      command: [
        "prometheus",
        `--config.file=${DATA}/prometheus/prometheus.yml`,
        `--storage.tsdb.path=${DATA}/prometheus/data`,
        "--storage.tsdb.retention.time=7d",
        "--web.listen-address=127.0.0.1:9090",
      ],
      ready: () => probe("http://127.0.0.1:9090/-/ready"),
    },
  ];
}

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

/** Why a component is not ready (its process gone, or its probe's answer), or undefined when it is. */
async function notReady(component: Component, pid: number): Promise<string | undefined> {
  if (!alive(pid)) return "its process exited";
  return await component.ready();
}

/** The last lines of a component's log, for a message about it. */
async function logTail(name: string): Promise<string> {
  const log = `${LOGS}/${name}.log`;
  const tail = (await Deno.readTextFile(log).catch(() => "")).split("\n").slice(-15).join("\n");
  return `last lines of ${log}:\n${tail}`;
}

/** A component that did not become ready: named, with the reason; `up` exits 1. */
export class NotReady extends Error {
  constructor(readonly component: string, readonly reason: string, tail: string) {
    super(`${component} is not ready: ${reason}\n${tail}`);
  }
}

/**
 * Waits until `component` (process `pid`) is ready, `timeoutMs` at most: polls its probe; a process without one
 * must stay alive for its settle time. Throws NotReady naming it, with the last reason seen.
 */
export async function waitReady(
  component: Component,
  pid: number,
  timeoutMs = 90_000,
  settle = true,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const aliveSince = Date.now();
  let reason: string | undefined = "not checked yet";
  for (;;) {
    reason = await notReady(component, pid);
    if (reason === undefined && (!settle || Date.now() - aliveSince >= (component.settleMs ?? 0))) return;
    if (reason === "its process exited" || Date.now() > deadline) {
      throw new NotReady(component.name, reason ?? "not settled", await logTail(component.name));
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** Runs a one-shot step to its end, its output appended to its log; NotReady (with the log's end) unless 0. */
export async function runStep(component: Component, logDir = LOGS): Promise<void> {
  const log = `${logDir}/${component.name}.log`;
  const file = await Deno.open(log, { create: true, append: true });
  try {
    const [command, ...args] = component.command;
    const child = new Deno.Command(command, {
      args,
      env: { ...Deno.env.toObject(), ...component.env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const copy = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream) await file.write(chunk);
    };
    const [status] = await Promise.all([child.status, copy(child.stdout), copy(child.stderr)]);
    if (!status.success) {
      const tail = (await Deno.readTextFile(log).catch(() => "")).split("\n").slice(-15).join("\n");
      throw new NotReady(component.name, `exited with code ${status.code}`, `last lines of ${log}:\n${tail}`);
    }
  } finally {
    file.close();
  }
}

async function start(component: Component): Promise<void> {
  if (component.oneShot) {
    await component.prepare?.();
    await runStep(component);
    console.log(`${component.name}: done (log ${LOGS}/${component.name}.log)`);
    return;
  }
  const running = pidOf(component.name);
  if (running) {
    // Running already, but perhaps not ready (ingest waiting for a ClickHouse just started again): waited for too.
    await waitReady(component, running, 90_000, false);
    console.log(`${component.name}: already running, ready (pid ${running})`);
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
  await waitReady(component, pid);
  console.log(`${component.name}: ready (pid ${pid}, log ${log})`);
}

/**
 * After every component started: each one still alive and ready (one may have failed after its start), given
 * a little time for what the later ones started (an INSERT retried, a consumer created).
 */
async function checkAll(started: Component[]): Promise<void> {
  for (const component of started.filter((c) => !c.oneShot)) {
    const pid = pidOf(component.name);
    if (pid === undefined) {
      throw new NotReady(component.name, "its process exited", await logTail(component.name));
    }
    await waitReady(component, pid, 30_000, false);
  }
}

async function stop(component: Component): Promise<void> {
  if (component.oneShot) return;
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
    const started = components.filter((component) => component.available());
    try {
      for (const component of started) await start(component);
      await checkAll(started);
    } catch (error) {
      if (!(error instanceof NotReady)) throw error;
      console.error(
        `\nstack NOT up: ${error.message}\n(the components started so far keep running; ./dev down)`,
      );
      Deno.exit(1);
    }
    console.log(
      `\nstack up. REST: catalog :8081, orders :8082, payments :8083 (OpenAPI at /openapi.json); gRPC 50051-50053;` +
        `\nNATS :4222 (monitoring :8222); Prometheus :9090, Alertmanager :9093 (alerts logged by alert-webhook);` +
        `\nadmin token "${LOCAL.adminToken}"; logs in .data/logs/. Stop with ./dev down.`,
    );
  } else if (command === "down") {
    for (const component of [...components].reverse()) await stop(component);
  } else {
    console.error("usage: stack.ts up|down");
    Deno.exit(2);
  }
}
