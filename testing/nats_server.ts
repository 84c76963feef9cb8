import { freePort, waitForPort, waitUntil } from "./ports.ts";
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
}

/** Starts nats-server (natsServerBinary()) -js on free ports and waits until it reports healthy. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  const dir = options.dir ?? await Deno.makeTempDir({ prefix: "tailwatch-nats-" });
  const ownsDir = options.dir === undefined;
  const port = freePort();
  const monitorPort = freePort();
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
    await waitForPort(port);
    await waitUntil("nats-server /healthz", async () => {
      const response = await fetch(`http://127.0.0.1:${monitorPort}/healthz`);
      await response.body?.cancel();
      return response.ok;
    });
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
    async [Symbol.asyncDispose]() {
      await stop();
      if (ownsDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
