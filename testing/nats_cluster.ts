import { freePorts, waitUntil } from "./ports.ts";
import { type NatsServer, startNatsServer } from "./nats_server.ts";

/** One node of a test cluster: a NatsServer with its name and configuration file. */
export interface NatsClusterNode extends NatsServer {
  readonly name: string;
  readonly dir: string;
  readonly configFile: string;
  /** The node's log so far. */
  log(): Promise<string>;
  /**
   * Lame duck mode (`nats-server --signal ldm=<pid>`, which is SIGUSR2): the node stops accepting clients,
   * hands its JetStream leaderships to the others, tells its clients (INFO `ldm: true`), waits its grace period,
   * closes them one by one and exits. Resolves when the process has exited.
   */
  lameDuck(timeoutMs?: number): Promise<void>;
}

/** A JetStream cluster of nats-servers on loopback, each with its own store; `await using` stops them all. */
export interface NatsCluster extends AsyncDisposable {
  readonly nodes: NatsClusterNode[];
  /** Every node's client URL, comma-separated (NATS_URL). */
  readonly url: string;
  /** Waits until every running node reports JetStream healthy (`/healthz`: the meta group has a leader). */
  healthy(timeoutMs?: number): Promise<void>;
  /** The indexes of the running nodes that have a client connection named `name` (each node's `/connz`). */
  nodesWithConnection(name: string): Promise<number[]>;
}

export interface NatsClusterOptions {
  /** Nodes (3 by default: a JetStream cluster needs a quorum of 2 to keep a replicated stream writable). */
  size?: number;
  /** Configuration text added to every node's file (e.g. `max_payload: 8KB`, accounts, an operator). */
  extraConfig?: string;
  /** The cluster's `no_advertise`: the nodes do not announce each other to clients (INFO `connect_urls`). */
  noAdvertise?: boolean;
  /** Lame duck mode's grace period (before the first client is closed). Default "3s". */
  lameDuckGracePeriod?: string;
  /** Environment of the server processes. */
  env?: Record<string, string>;
}

/**
 * Starts a cluster of nats-servers (the release NATS_SERVER_VERSION) with JetStream, on free loopback ports,
 * all at once (a node's JetStream is healthy only once the meta group has a quorum), and waits until each is
 * healthy. Each node's configuration sets its server name, store directory, cluster listen port and routes to
 * every node, and lame duck mode's timing (`lame_duck_duration` 30 s, the server's minimum; grace 3 s, so a
 * test sees clients move within seconds). Nodes can be stopped (SIGTERM, SIGKILL) and started again on the
 * same ports and store, and put in lame duck mode.
 */
export async function startNatsCluster(options: NatsClusterOptions = {}): Promise<NatsCluster> {
  const size = options.size ?? 3;
  const root = await Deno.makeTempDir({ prefix: "tailwatch-nats-cluster-" });
  // Every node's cluster, client and monitoring port, chosen at once so that no two of them are the same.
  const ports = freePorts(size * 3);
  const clusterPorts = ports.slice(0, size);
  const routes = clusterPorts.map((port) => `nats-route://127.0.0.1:${port}`);
  const nodes: NatsClusterNode[] = [];
  const started = await Promise.allSettled(clusterPorts.map(async (clusterPort, i) => {
    const name = `n${i + 1}`;
    const dir = `${root}/${name}`;
    await Deno.mkdir(dir, { recursive: true });
    const configFile = `${dir}/nats.conf`;
    await Deno.writeTextFile(
      configFile,
      [
        `server_name: ${name}`,
        `jetstream { store_dir: "${dir}/jetstream" }`,
        `cluster {`,
        `  name: tailwatch-test`,
        `  listen: 127.0.0.1:${clusterPort}`,
        `  routes: [${routes.join(", ")}]`,
        `  no_advertise: ${options.noAdvertise === true}`,
        `}`,
        `lame_duck_duration: "30s"`,
        `lame_duck_grace_period: "${options.lameDuckGracePeriod ?? "3s"}"`,
        options.extraConfig ?? "",
        "",
      ].join("\n"),
    );
    const server = await startNatsServer({
      dir,
      configFile,
      env: options.env,
      ports: { client: ports[size + i], monitor: ports[2 * size + i] },
    });
    const node: NatsClusterNode = Object.assign(server, {
      name,
      dir,
      configFile,
      log: () => Deno.readTextFile(`${dir}/nats.log`).catch(() => ""),
      async lameDuck(timeoutMs = 60_000) {
        const pid = server.pid;
        if (pid === undefined) throw new Error(`${name} is not running`);
        Deno.kill(pid, "SIGUSR2");
        await server.exited(timeoutMs);
      },
    });
    nodes[i] = node;
    return node;
  }));
  const failed = started.find((result) => result.status === "rejected");
  if (failed) {
    await Promise.all(nodes.filter(Boolean).map((node) => node.stop("SIGKILL").catch(() => {})));
    await Deno.remove(root, { recursive: true }).catch(() => {});
    throw (failed as PromiseRejectedResult).reason;
  }
  const cluster: NatsCluster = {
    nodes,
    url: nodes.map((node) => node.url).join(","),
    async healthy(timeoutMs = 30_000) {
      await waitUntil("every running node healthy", async () => {
        for (const node of nodes) {
          if (node.pid === undefined) continue;
          const response = await fetch(`http://127.0.0.1:${node.monitorPort}/healthz`);
          await response.body?.cancel();
          if (!response.ok) return false;
        }
        return true;
      }, timeoutMs);
    },
    async nodesWithConnection(name: string) {
      const found: number[] = [];
      for (const [index, node] of nodes.entries()) {
        if (node.pid === undefined) continue;
        const response = await fetch(`http://127.0.0.1:${node.monitorPort}/connz?limit=1024`).catch(() =>
          undefined
        );
        const connz = await response?.json().catch(() => ({})) as
          | { connections?: { name?: string }[] }
          | undefined;
        if (connz?.connections?.some((c) => c.name === name)) found.push(index);
      }
      return found;
    },
    async [Symbol.asyncDispose]() {
      await Promise.all(nodes.map((node) => node.stop("SIGKILL").catch(() => {})));
      await Deno.remove(root, { recursive: true }).catch(() => {});
    },
  };
  return cluster;
}
