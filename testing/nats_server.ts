import { freePorts, waitForPort, waitUntil } from "./ports.ts";
import { type ManagedProcess, spawnLogged } from "./process.ts";

/**
 * The nats-server release the tests and ./dev up run: `go install github.com/nats-io/nats-server/v2@<this>`
 * (./dev does it), the same release line as the images in deploy/. Keep in step with NATS_SERVER_VERSION in ./dev.
 */
export const NATS_SERVER_VERSION = "v2.15.3";

let checkedBinary: string | undefined;

/**
 * The nats-server binary: $NATS_SERVER_BIN, else the one `go install` put in $GOBIN or $HOME/go/bin (not
 * Debian's 2.9.10 in /usr/sbin). Throws, saying how to install it, when it is missing or another version.
 */
export function natsServerBinary(): string {
  if (checkedBinary) return checkedBinary;
  const home = Deno.env.get("HOME") ?? "";
  const path = Deno.env.get("NATS_SERVER_BIN") ?? `${Deno.env.get("GOBIN") ?? `${home}/go/bin`}/nats-server`;
  let version = "";
  try {
    const output = new Deno.Command(path, { args: ["--version"], stdout: "piped", stderr: "piped" })
      .outputSync();
    version = new TextDecoder().decode(output.stdout).trim();
  } catch (error) {
    version = `not runnable (${error instanceof Error ? error.message : error})`;
  }
  if (version !== `nats-server: ${NATS_SERVER_VERSION}`) {
    throw new Error(
      `${path}: ${
        version || "no version"
      }; the tests need nats-server ${NATS_SERVER_VERSION}: run ./dev test ` +
        `(or go install github.com/nats-io/nats-server/v2@${NATS_SERVER_VERSION})`,
    );
  }
  return checkedBinary = path;
}

/** A private nats-server with JetStream, on free ports, with its own store directory. */
export interface NatsServer extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  readonly monitorPort: number;
  readonly storeDir: string;
  /** Stops the server (SIGTERM, or SIGKILL for a crash) keeping its store and port. */
  stop(signal?: Deno.Signal): Promise<void>;
  /** Starts it again on the same port with the same store. */
  start(): Promise<void>;
  /** The running server's pid (for SIGSTOP/SIGCONT: a server that holds connections but answers nothing). */
  readonly pid: number | undefined;
  /**
   * Resolves with the exit code once the running server ends by itself (after lame duck mode, SIGUSR2), or
   * at once when none runs; rejects after `timeoutMs`.
   */
  exited(timeoutMs?: number): Promise<number>;
}

export interface NatsServerOptions {
  /** Directory for the store and log; a new temporary one by default (removed on dispose). */
  dir?: string;
  /**
   * A server configuration file (`-c`), e.g. a copy of deploy/nats/nats.conf with its accounts and permissions.
   * The address and ports given on the command line win over the file's; the store directory does not (the
   * server refuses both), so the file must set `store_dir` to `storeDir` (`<dir>/jetstream`).
   */
  configFile?: string;
  /** Environment of the server process (a configuration file reads passwords from `$NAME` variables). */
  env?: Record<string, string>;
  /** The client and monitoring ports; free ones by default (a cluster passes ports chosen with its routes'). */
  ports?: { client: number; monitor: number };
}

/** Starts nats-server (natsServerBinary()) -js on free ports and waits until it reports healthy. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  const dir = options.dir ?? await Deno.makeTempDir({ prefix: "tailwatch-nats-" });
  const ownsDir = options.dir === undefined;
  const [port, monitorPort] = options.ports ? [options.ports.client, options.ports.monitor] : freePorts(2);
  const storeDir = `${dir}/jetstream`;
  let process: ManagedProcess | undefined;

  const start = async () => {
    process = await spawnLogged(
      natsServerBinary(),
      [
        ...(options.configFile ? ["-c", options.configFile] : []),
        "-a",
        "127.0.0.1",
        "-p",
        String(port),
        "-m",
        String(monitorPort),
        "-js",
        ...(options.configFile ? [] : ["-sd", storeDir]),
      ],
      `${dir}/nats.log`,
      { env: options.env },
    );
    const started = process;
    try {
      // A server that exits at once (a port taken meanwhile, a bad configuration) fails the start at once.
      const exited = started.status.then(({ code }) => {
        throw new Error(`nats-server exited with code ${code} before it answered`);
      });
      exited.catch(() => {});
      await Promise.race([
        exited,
        (async () => {
          await waitForPort(port);
          await waitUntil("nats-server /healthz", async () => {
            const response = await fetch(`http://127.0.0.1:${monitorPort}/healthz`);
            await response.body?.cancel();
            return response.ok;
          });
        })(),
      ]);
    } catch (error) {
      await started.stop("SIGKILL").catch(() => {});
      process = undefined;
      // The server's own words (a port taken, a bad configuration) are what a reader of the failure needs.
      const log = await Deno.readTextFile(`${dir}/nats.log`).catch(() => "");
      // Each failed probe logs a line: keep the last of those, and the last 30 lines that say anything else.
      const lines = log.split("\n").filter((line) => line !== "");
      const probes = lines.filter((line) => line.includes("Healthcheck failed"));
      const tail = [
        ...lines.filter((line) => !line.includes("Healthcheck failed")).slice(-30),
        ...probes.slice(-1),
      ]
        .join("\n");
      throw new Error(`${error instanceof Error ? error.message : error}; nats-server's log ends:\n${tail}`, {
        cause: error,
      });
    }
  };
  const stop = async (signal: Deno.Signal = "SIGTERM") => {
    await process?.stop(signal);
    process = undefined;
  };
  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    monitorPort,
    storeDir,
    stop,
    start,
    get pid() {
      return process?.pid;
    },
    async exited(timeoutMs = 60_000) {
      const running = process;
      if (running === undefined) return 0;
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        const { code } = await Promise.race([
          running.status,
          new Promise<never>((_, reject) => {
            timer = setTimeout(
              () => reject(new Error(`nats-server did not exit within ${timeoutMs} ms`)),
              timeoutMs,
            );
          }),
        ]);
        if (process === running) process = undefined;
        return code;
      } finally {
        clearTimeout(timer);
      }
    },
    async [Symbol.asyncDispose]() {
      await stop();
      if (ownsDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** The passwords of deploy/nats/auth.conf's users in tests (the server reads them from its environment). */
export const TEST_NATS_PASSWORDS: Readonly<Record<string, string>> = Object.freeze({
  setup: "setup-pw",
  catalog: "catalog-pw",
  orders: "orders-pw",
  payments: "payments-pw",
  ingest: "ingest-pw",
});

/** A nats-server with the shipped users and permissions; `envOf` gives a process's NATS_* for a user. */
export interface SecuredNatsServer extends NatsServer {
  /** The directory of the configuration (nats.conf, auth.conf), the store and the server's log (nats.log). */
  readonly dir: string;
  /** NATS_URL, NATS_USER and NATS_PASSWORD of `user` (a password of its own when given: a wrong one). */
  envOf(user: string, password?: string): Record<string, string>;
  /** The server's log so far. */
  log(): Promise<string>;
  /** Replaces auth.conf with `edit(the shipped text)` and makes the running server reload its configuration. */
  reloadAuth(edit: (authConf: string) => string): Promise<void>;
}

const REPO = new URL("../", import.meta.url).pathname;

/**
 * Starts nats-server with deploy/nats/nats.conf and auth.conf as shipped (only the store directory moved into a
 * temporary one), passwords TEST_NATS_PASSWORDS: the users and subject permissions of a deployment.
 */
export async function startSecuredNatsServer(): Promise<SecuredNatsServer> {
  const dir = await Deno.makeTempDir({ prefix: "tailwatch-nats-auth-" });
  const shipped = await Deno.readTextFile(`${REPO}deploy/nats/nats.conf`);
  if (!shipped.includes("store_dir: /data/jetstream")) throw new Error("nats.conf: no store_dir to move");
  await Deno.writeTextFile(
    `${dir}/nats.conf`,
    shipped.replace("store_dir: /data/jetstream", `store_dir: "${dir}/jetstream"`),
  );
  const auth = await Deno.readTextFile(`${REPO}deploy/nats/auth.conf`);
  await Deno.writeTextFile(`${dir}/auth.conf`, auth);
  const env: Record<string, string> = { NATS_SERVER_NAME: "tailwatch-test" };
  for (const [user, password] of Object.entries(TEST_NATS_PASSWORDS)) {
    env[`NATS_${user.toUpperCase()}_PASSWORD`] = password;
  }
  const server = await startNatsServer({ dir, configFile: `${dir}/nats.conf`, env });
  return Object.assign(server, {
    dir,
    envOf: (user: string, password?: string) => ({
      NATS_URL: server.url,
      NATS_USER: user,
      NATS_PASSWORD: password ?? TEST_NATS_PASSWORDS[user] ?? "",
    }),
    log: () => Deno.readTextFile(`${dir}/nats.log`).catch(() => ""),
    async reloadAuth(edit: (authConf: string) => string) {
      await Deno.writeTextFile(`${dir}/auth.conf`, edit(auth));
      const before = (await Deno.readTextFile(`${dir}/nats.log`).catch(() => "")).split("Reloaded").length;
      Deno.kill(server.pid!, "SIGHUP");
      await waitUntil(
        "nats-server reloaded its configuration",
        async () => (await Deno.readTextFile(`${dir}/nats.log`)).split("Reloaded").length > before,
        10_000,
      );
    },
    async [Symbol.asyncDispose]() {
      await server.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  });
}
