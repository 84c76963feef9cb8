import { freePort, waitForPort, waitUntil } from "./ports.ts";
import { type ManagedProcess, spawnLogged } from "./process.ts";

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
}

/** Starts nats-server -js on free ports and waits until it reports healthy. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  const dir = options.dir ?? await Deno.makeTempDir({ prefix: "tailwatch-nats-" });
  const ownsDir = options.dir === undefined;
  const port = freePort();
  const monitorPort = freePort();
  const storeDir = `${dir}/jetstream`;
  let process: ManagedProcess | undefined;

  const start = async () => {
    process = await spawnLogged("nats-server", [
      "-a",
      "127.0.0.1",
      "-p",
      String(port),
      "-m",
      String(monitorPort),
      "-js",
      "-sd",
      storeDir,
    ], `${dir}/nats.log`);
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
