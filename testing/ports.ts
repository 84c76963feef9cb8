/** Returns a TCP port on 127.0.0.1 that was free a moment ago (the OS picks it). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/**
 * Returns `count` distinct TCP ports on 127.0.0.1 that were free a moment ago: all are held open until every
 * one is chosen, so (unlike calls of freePort one after another) the OS cannot hand out the same port twice.
 */
export function freePorts(count: number): number[] {
  const listeners = Array.from({ length: count }, () => Deno.listen({ hostname: "127.0.0.1", port: 0 }));
  const ports = listeners.map((listener) => (listener.addr as Deno.NetAddr).port);
  for (const listener of listeners) listener.close();
  return ports;
}

/** Resolves once a TCP connection to the port succeeds; throws after `timeoutMs`. */
export async function waitForPort(port: number, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      return;
    } catch (error) {
      if (Date.now() > deadline) {
        throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms: ${error}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/** Polls `probe` until it returns true; throws with `what` after `timeoutMs`. */
export async function waitUntil(
  what: string,
  probe: () => boolean | Promise<boolean>,
  timeoutMs = 20_000,
  intervalMs = 50,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await probe()) return;
    } catch {
      // A probe that throws counts as "not yet".
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
