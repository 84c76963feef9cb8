/**
 * A NATS client connection that speaks the client protocol directly (INFO, CONNECT, PUB/HPUB, SUB, UNSUB,
 * MSG/HMSG, PING/PONG) for the hot paths: the services' event publisher and ingest's pull receiver.
 *
 * Why not nats.js here: it turns every message into several objects and strings (parser arguments, a Msg,
 * decoded subjects, a headers object encoded per publish), which cost a service about as much CPU per event as
 * serving the request that emitted it. Here a caller writes protocol bytes it prepared itself, and a received
 * message is handed over as offsets into the chunk it was read into. nats.js stays for management (streams,
 * consumers) where a few calls a minute cost nothing.
 *
 * What a client owes a NATS cluster, as nats.js and nats.go do it:
 * - Servers: the configured ones, tried in turn (a fixed wait between rounds of attempts), plus those the
 *   cluster announces in INFO (`connect_urls`; dropped again when no longer announced, configured ones never).
 *   A server started with `no_advertise` announces nothing, and the configured list is all there is.
 * - Authentication: user and password, a token, or a `.creds` file (the user JWT in CONNECT, the server's
 *   nonce signed with the user's nkey seed: nkeys.ts), read again at each connection.
 * - `max_payload` from INFO: `maxPayload` says the current server's, so that a publisher never sends more (the
 *   server would answer `-ERR 'Maximum Payload Violation'` and close the connection).
 * - Lame duck mode: an INFO with `ldm: true` says the server will close its clients soon (after its grace
 *   period) and shut down. The client then connects to another server while the old connection keeps
 *   working; once the new one is up, writes go to it and the owner is told (`onMoved`: re-subscribe there,
 *   re-send what awaits an answer), while the old connection stays open for reading until its server closes
 *   it (or `retireAfterMs`), so that whatever was already on its way to it still arrives (`onRetired` then).
 *   The lame-duck server is not tried again for two minutes unless no other server is left.
 * - `-ERR`: handed to `onServerError` (a refusal at connect, a permission, an expired JWT); when the server
 *   closes the connection after one, the disconnect names it.
 *
 * The connection reconnects by itself; the owner learns of it through `onConnected` and re-subscribes there.
 * Bytes written while disconnected are dropped: callers that must not lose a message track it until the
 * server answers (an ack, a PONG).
 */
import type { Logger } from "@tailwatch/runtime";
import { credentialsConnectFields, currentCredentials, type NatsCredsFile } from "./nkeys.ts";

const CR = 0x0d;
const LF = 0x0a;
const SPACE = 0x20;
const TAB = 0x09;
const CHUNK = 1 << 20;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const PONG = encoder.encode("PONG\r\n");
const PING = encoder.encode("PING\r\n");

/** A server from a `nats://` or `tls://` URL; credentials as `user:pass@` or a token as `token@`. */
export interface NatsServerAddress {
  hostname: string;
  port: number;
  tls: boolean;
  user?: string;
  pass?: string;
  token?: string;
  /** A `.creds` file: the user JWT and the seed that signs the server's nonce. */
  creds?: NatsCredsFile;
  /** The name a TLS certificate is checked against when not `hostname` (a server announced by its IP). */
  tlsName?: string;
}

/** Parses one NATS URL; throws for anything but nats:// and tls://. */
export function parseNatsUrl(url: string): NatsServerAddress {
  const u = new URL(url.trim());
  const tls = u.protocol === "tls:";
  if (u.protocol !== "nats:" && !tls) throw new Error(`unsupported NATS URL ${url} (nats:// or tls://)`);
  const user = u.username ? decodeURIComponent(u.username) : undefined;
  const pass = u.password ? decodeURIComponent(u.password) : undefined;
  return {
    hostname: u.hostname.replace(/^\[|\]$/g, ""),
    port: u.port ? Number(u.port) : 4222,
    tls,
    ...(user !== undefined && pass === undefined ? { token: user } : { user, pass }),
  };
}

/** `host:port` of an address (IPv6 in brackets), as servers announce each other in `connect_urls`. */
export function serverKey(address: { hostname: string; port: number }): string {
  return `${address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname}:${address.port}`;
}

/** A `connect_urls` entry (`host:port`, `[v6]:port`, or a URL) as hostname and port; undefined if unreadable. */
export function parseConnectUrl(text: string): { hostname: string; port: number } | undefined {
  const match = /^(?:[a-z]+:\/\/)?(?:\[([^\]]+)\]|([^:/\s]+))(?::(\d{1,5}))?\/?$/i.exec(text.trim());
  if (!match) return undefined;
  const port = match[3] === undefined ? 4222 : Number(match[3]);
  if (port < 1 || port > 65535) return undefined;
  return { hostname: match[1] ?? match[2], port };
}

/** What a server says of itself in INFO (the fields a client uses). */
export interface NatsServerInfo {
  server_id?: string;
  server_name?: string;
  version?: string;
  /** The largest payload (headers included) the server accepts in one message. */
  max_payload?: number;
  headers?: boolean;
  tls_required?: boolean;
  auth_required?: boolean;
  /** What the client signs with its nkey (operator mode, nkey users). */
  nonce?: string;
  /** The cluster's client URLs (`host:port`), unless its servers run with `no_advertise`. */
  connect_urls?: string[];
  /** Lame duck mode: the server will close its clients soon and shut down. */
  ldm?: boolean;
  cluster?: string;
}

/** nats-server's default max_payload (1 MiB), assumed until a server said otherwise. */
export const DEFAULT_MAX_PAYLOAD = 1024 * 1024;

/**
 * A received MSG or HMSG: offsets into `buf`. The object is reused for the next message, but `buf` is never
 * written again where this message lies, so a receiver may keep views into it.
 * `headerEnd === payloadStart` for a MSG; for an HMSG the header block is `buf[payloadStart, headerEnd)` and the
 * body `buf[headerEnd, end)`.
 */
export interface WireMessage {
  buf: Uint8Array;
  subjectStart: number;
  subjectEnd: number;
  sid: number;
  /** -1 when the message has no reply subject. */
  replyStart: number;
  replyEnd: number;
  payloadStart: number;
  headerEnd: number;
  end: number;
}

export interface NatsWireOptions {
  /** Servers, tried in turn (with those the cluster announces). */
  servers: NatsServerAddress[];
  /** Connection name shown by the server (`/connz`). */
  name: string;
  logger: Logger;
  /** Wait between connection attempts, in ms. Default 250. */
  reconnectWaitMs?: number;
  /** A PING is sent this often; two PINGs without a PONG drop the connection. In ms. Default 5000. */
  pingIntervalMs?: number;
  /** A connection attempt (TCP, INFO, TLS, CONNECT, PONG) that takes longer fails. In ms. Default 5000. */
  connectTimeoutMs?: number;
  /** Add the servers the cluster announces (INFO `connect_urls`) to the rotation. Default true. */
  discoverServers?: boolean;
  /**
   * After a lame-duck move, the old connection is closed at the latest this long after the move (its server
   * normally closes it first, after its grace period). In ms. Default 30000.
   */
  retireAfterMs?: number;
  /** Called once connected (first time and after each reconnect), before anything is read: subscribe here. */
  onConnected(reconnected: boolean): void;
  /**
   * Called when a lame-duck move made another server's connection the current one: writes go there from now
   * on; subscribe there and send again what awaits an answer. The old connection still hands over what
   * arrives on it (its subscriptions stay) until `onRetired`. Without it, `onConnected(true)` is called.
   */
  onMoved?(): void;
  /** The connection left behind by a move has closed: nothing more arrives from it. */
  onRetired?(): void;
  /** Called when a connection is lost (not on `close`, nor for a connection left behind by a move). */
  onDisconnected?(reason: string): void;
  /** Every MSG and HMSG (the `message` object itself is reused: copy the offsets to keep them). */
  onMessage(message: WireMessage): void;
  /**
   * A `-ERR` from the server, on a connection or in answer to CONNECT (`'Authorization Violation'`,
   * `'Permissions Violation for Publish to "<subject>"'`, ...): the server refused something. Without it the
   * error is only logged. `natsErrorKind` classifies the text.
   */
  onServerError?(text: string): void;
  /** A connection attempt failed (refused, unreachable, bad credentials); the client tries again. */
  onConnectFailed?(reason: string): void;
  /** Every INFO of the current server (the first at connect, then the cluster's updates). */
  onInfo?(info: NatsServerInfo): void;
}

/** What kind of refusal a server `-ERR` is: a label for metrics. */
export type NatsErrorKind =
  | "permissions"
  | "authorization"
  | "expired"
  | "max_payload"
  | "slow_consumer"
  | "stale_connection"
  | "limits"
  | "other";

export function natsErrorKind(text: string): NatsErrorKind {
  if (/permissions violation/i.test(text)) return "permissions";
  if (/authentication expired|authentication revoked/i.test(text)) return "expired";
  if (/authori[sz]ation violation|authentication/i.test(text)) return "authorization";
  if (/maximum payload/i.test(text)) return "max_payload";
  if (/slow consumer/i.test(text)) return "slow_consumer";
  if (/stale connection/i.test(text)) return "stale_connection";
  if (/maximum (account )?(active )?connections|maximum subscriptions/i.test(text)) return "limits";
  return "other";
}

/** A server error line without its `-ERR` and quotes: `Permissions Violation for Publish to "x"`. */
export function natsErrorText(line: string): string {
  return line.replace(/^-ERR\s*/, "").trim().replace(/^'(.*)'$/s, "$1");
}

export interface NatsWire {
  readonly connected: boolean;
  /** `host:port` of the current server, while connected. */
  readonly server: string | undefined;
  /** The current (or, while disconnected, the latest) server's INFO. */
  readonly info: NatsServerInfo | undefined;
  /** The latest server's max_payload (DEFAULT_MAX_PAYLOAD until one said). */
  readonly maxPayload: number;
  /** The servers tried, in order: the configured ones and those the cluster announced (`host:port`). */
  readonly servers: string[];
  /** Queues protocol bytes for the socket (written on the next turn, coalesced); dropped while disconnected. */
  write(bytes: Uint8Array): boolean;
  writeText(text: string): boolean;
  /** Resolves when the server has processed everything written before (a PING/PONG round trip). */
  flush(timeoutMs?: number): Promise<void>;
  /** Lets queued writes go out (bounded), then closes for good. */
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The server answered CONNECT with -ERR (bad credentials, a user it does not know). */
class RefusedError extends Error {
  constructor(readonly text: string) {
    super(`the server refused the connection: ${text.slice(0, 200)}`);
  }
}

/** A server in the rotation. */
interface ServerEntry {
  address: NatsServerAddress;
  key: string;
  /** Given in the configuration (never dropped), or announced by the cluster. */
  configured: boolean;
  /** Not tried before this time (epoch ms) while another server is left: it announced lame duck mode. */
  avoidUntil: number;
}

interface PingWaiter {
  resolve(): void;
  reject(error: Error): void;
}

/** One TCP (or TLS) connection to a server, after its handshake. */
interface Link {
  conn: Deno.Conn;
  entry: ServerEntry;
  info: NatsServerInfo;
  alive: boolean;
  /** Left behind by a lame-duck move: read until it closes, never written to but PONGs. */
  retired: boolean;
  /** Its server announced lame duck mode. */
  lameDuck: boolean;
  writes: Uint8Array[];
  writeBytes: number;
  writing: boolean;
  /** One entry per PING sent, in order: a flush waiting for its PONG, or undefined for a keep-alive PING. */
  pings: (PingWaiter | undefined)[];
  /** The latest `-ERR` on it: the reason when the server closes it right after. */
  lastError?: string;
  /** Bytes read after the handshake's PONG, parsed before anything else. */
  leftover: Uint8Array;
  /** Resolves "ldm" when its server announces lame duck mode, "closed" when it closes (the first of them). */
  event: Promise<"ldm" | "closed">;
  signal(what: "ldm" | "closed"): void;
  retireTimer?: ReturnType<typeof setTimeout>;
}

/** How long a server that announced lame duck mode is not tried again (while another is left). */
const LAME_DUCK_AVOID_MS = 120_000;

/** Starts connecting in the background; `onConnected` tells when the connection is up. */
export function createNatsWire(options: NatsWireOptions): NatsWire {
  const { logger } = options;
  if (options.servers.length === 0) throw new Error("no NATS server given");
  const reconnectWaitMs = options.reconnectWaitMs ?? 250;
  const pingIntervalMs = options.pingIntervalMs ?? 5000;
  const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
  const retireAfterMs = options.retireAfterMs ?? 30_000;
  const discover = options.discoverServers ?? true;
  const entries: ServerEntry[] = [];
  for (const address of options.servers) {
    const key = serverKey(address);
    if (!entries.some((entry) => entry.key === key)) {
      entries.push({ address, key, configured: true, avoidUntil: 0 });
    }
  }
  /** Where the next attempt starts in `entries`. */
  let serverIndex = 0;
  let primary: Link | undefined;
  const retired = new Set<Link>();
  let latestInfo: NatsServerInfo | undefined;
  let closed = false;
  let everConnected = false;

  const isConnected = () => primary !== undefined && primary.alive;

  function linkWrite(link: Link, bytes: Uint8Array): boolean {
    if (!link.alive) return false;
    link.writes.push(bytes);
    link.writeBytes += bytes.length;
    if (!link.writing) {
      link.writing = true;
      // Everything written in this turn leaves in one socket write.
      queueMicrotask(() => void writeLoop(link));
    }
    return true;
  }

  async function writeLoop(link: Link): Promise<void> {
    try {
      while (link.writes.length > 0 && link.alive) {
        let out: Uint8Array;
        if (link.writes.length === 1) out = link.writes[0];
        else {
          out = new Uint8Array(link.writeBytes);
          let at = 0;
          for (const part of link.writes) {
            out.set(part, at);
            at += part.length;
          }
        }
        link.writes = [];
        link.writeBytes = 0;
        let written = 0;
        while (written < out.length) written += await link.conn.write(out.subarray(written));
      }
    } catch (error) {
      closeLink(link, `write failed: ${error}`);
    } finally {
      link.writing = false;
    }
  }

  function write(bytes: Uint8Array): boolean {
    return primary !== undefined && linkWrite(primary, bytes);
  }
  const writeText = (text: string) => write(encoder.encode(text));

  /** Closes a link (once) and tells whoever must know: the owner for the current one, `onRetired` for an old one. */
  function closeLink(link: Link, reason: string): void {
    if (!link.alive) return;
    link.alive = false;
    clearTimeout(link.retireTimer);
    try {
      link.conn.close();
    } catch {
      // already closed
    }
    for (const waiter of link.pings) waiter?.reject(new Error(`disconnected: ${reason}`));
    link.pings = [];
    link.writes = [];
    link.writeBytes = 0;
    link.signal("closed");
    if (retired.delete(link)) {
      if (!closed) {
        logger.info("nats: the connection left behind by a lame-duck move closed", {
          name: options.name,
          server: link.entry.key,
          reason,
        });
        options.onRetired?.();
      }
      return;
    }
    if (link === primary && !closed) {
      logger.warn("nats: disconnected", { name: options.name, server: link.entry.key, reason });
      options.onDisconnected?.(reason);
    }
  }

  /** The server to try next: in turn, passing over `avoid` and servers in lame duck mode while others are left. */
  function pickServer(avoid?: ServerEntry): { entry: ServerEntry; index: number } {
    const now = Date.now();
    let fallback: { entry: ServerEntry; index: number } | undefined;
    for (let i = 0; i < entries.length; i++) {
      const index = (serverIndex + i) % entries.length;
      const entry = entries[index];
      if (entry === avoid) continue;
      if (entry.avoidUntil > now) {
        fallback ??= { entry, index };
        continue;
      }
      return { entry, index };
    }
    if (fallback) return fallback;
    const index = serverIndex % entries.length;
    return { entry: entries[index], index };
  }

  /** Adds the servers an INFO announces, and drops announced ones it no longer names (configured ones stay). */
  function learnServers(link: Link, urls: string[] | undefined): void {
    if (!discover || urls === undefined || urls.length === 0) return;
    const base = link.entry.address;
    const announced = new Set<string>();
    const added: string[] = [];
    for (const url of urls) {
      const parsed = parseConnectUrl(url);
      if (parsed === undefined) continue;
      const key = serverKey(parsed);
      announced.add(key);
      if (entries.some((entry) => entry.key === key)) continue;
      const address: NatsServerAddress = {
        ...base,
        hostname: parsed.hostname,
        port: parsed.port,
        // A certificate names the host the configuration gave, not the IP a server announces.
        ...(base.tls ? { tlsName: base.tlsName ?? base.hostname } : {}),
      };
      entries.push({ address, key, configured: false, avoidUntil: 0 });
      added.push(key);
    }
    const dropped: string[] = [];
    for (let i = entries.length - 1; i >= 0; i--) {
      const entry = entries[i];
      if (!entry.configured && !announced.has(entry.key) && entry !== link.entry) {
        entries.splice(i, 1);
        dropped.push(entry.key);
      }
    }
    if (added.length > 0 || dropped.length > 0) {
      logger.info("nats: servers announced by the cluster", {
        name: options.name,
        added,
        dropped,
        servers: entries.map((entry) => entry.key),
      });
    }
  }

  /** An INFO after the handshake (or during it): the cluster's servers, max_payload, lame duck mode. */
  function applyInfo(link: Link, info: NatsServerInfo): void {
    link.info = info;
    if (link === primary) latestInfo = info;
    learnServers(link, info.connect_urls);
    if (info.ldm === true && !link.lameDuck) {
      link.lameDuck = true;
      link.entry.avoidUntil = Date.now() + LAME_DUCK_AVOID_MS;
      if (!link.retired) {
        logger.info("nats: the server entered lame duck mode; moving to another", {
          name: options.name,
          server: link.entry.key,
          servers: entries.map((entry) => entry.key),
        });
      }
      link.signal("ldm");
    }
    if (link === primary) options.onInfo?.(info);
  }

  const parseInfo = (text: string): NatsServerInfo | undefined => {
    try {
      const info = JSON.parse(text.replace(/^INFO\s+/, ""));
      return info !== null && typeof info === "object" ? info as NatsServerInfo : undefined;
    } catch {
      return undefined;
    }
  };

  /**
   * Connects and does the handshake: INFO, (TLS), CONNECT + PING, PONG, within `connectTimeoutMs`. INFO
   * updates before the PONG are taken in; whatever follows the PONG in the same read is kept for the reader.
   */
  async function handshake(entry: ServerEntry): Promise<Link> {
    const server = entry.address;
    let c: Deno.Conn | undefined;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        c?.close();
      } catch {
        // closed
      }
    }, connectTimeoutMs);
    try {
      const connecting = Deno.connect({ hostname: server.hostname, port: server.port });
      // A connect that never completes (a host that drops packets) fails at the deadline too.
      const late = connecting.then((conn) => {
        if (timedOut) conn.close();
        return conn;
      });
      c = await Promise.race([
        late,
        new Promise<never>((_, reject) => {
          const check = setInterval(() => {
            if (timedOut) {
              clearInterval(check);
              reject(new Error(`no connection within ${connectTimeoutMs} ms`));
            }
          }, 50);
          late.finally(() => clearInterval(check)).catch(() => {});
        }),
      ]);
      const lines = new LineReader();
      const first = await lines.next(c, "INFO");
      if (!first.startsWith("INFO ")) throw new Error(`expected INFO, got ${first.slice(0, 100)}`);
      let info = parseInfo(first);
      if (info === undefined) throw new Error("the server's INFO is not JSON");
      if (info.headers === false) throw new Error("the server does not support headers");
      const tls = server.tls || info.tls_required === true;
      if (tls) {
        c = await Deno.startTls(c as Deno.TcpConn, { hostname: server.tlsName ?? server.hostname });
      }
      const connectOptions: Record<string, unknown> = {
        verbose: false,
        pedantic: false,
        headers: true,
        no_responders: true,
        protocol: 1,
        lang: "deno-tailwatch",
        version: "1",
        name: options.name,
        tls_required: tls,
      };
      if (server.user !== undefined) connectOptions.user = server.user;
      if (server.pass !== undefined) connectOptions.pass = server.pass;
      if (server.token !== undefined) connectOptions.auth_token = server.token;
      if (server.creds !== undefined) {
        Object.assign(
          connectOptions,
          await credentialsConnectFields(currentCredentials(server.creds), info.nonce),
        );
      }
      const hello = encoder.encode(`CONNECT ${JSON.stringify(connectOptions)}\r\nPING\r\n`);
      let written = 0;
      while (written < hello.length) written += await c.write(hello.subarray(written));
      // PONG, or -ERR (bad credentials). INFO updates before it are taken in; a PING is answered.
      for (;;) {
        const line = await lines.next(c, "PONG");
        if (line === "PONG") break;
        if (line.startsWith("-ERR")) throw new RefusedError(natsErrorText(line));
        if (line.startsWith("INFO ")) info = parseInfo(line) ?? info;
        else if (line === "PING") await c.write(PONG);
      }
      clearTimeout(timer);
      let signal!: (what: "ldm" | "closed") => void;
      const event = new Promise<"ldm" | "closed">((resolve) => signal = resolve);
      return {
        conn: c,
        entry,
        info,
        alive: true,
        retired: false,
        lameDuck: false,
        writes: [],
        writeBytes: 0,
        writing: false,
        pings: [],
        leftover: lines.rest(),
        event,
        signal,
      };
    } catch (error) {
      clearTimeout(timer);
      try {
        c?.close();
      } catch {
        // closed
      }
      // A refusal the server closed the connection right after: "connection closed waiting for PONG: -ERR ...".
      const closedWith = /-ERR[^\r\n]*/.exec(error instanceof RefusedError ? "" : String(error));
      const refused = error instanceof RefusedError
        ? error
        : closedWith
        ? new RefusedError(natsErrorText(closedWith[0]))
        : undefined;
      if (refused) {
        options.onServerError?.(refused.text);
        throw refused;
      }
      if (timedOut) throw new Error(`no answer within ${connectTimeoutMs} ms (${error})`);
      throw error;
    }
  }

  /** Reads a link until it closes; every protocol message goes through its ProtocolReader. */
  async function readLoop(link: Link): Promise<void> {
    const reader = new ProtocolReader({
      onMessage: options.onMessage,
      onPing: () => void linkWrite(link, PONG),
      onPong: () => link.pings.shift()?.resolve(),
      onError: (line) => {
        const text = natsErrorText(line);
        link.lastError = text;
        if (options.onServerError) options.onServerError(text);
        else logger.warn("nats: server error", { name: options.name, server: link.entry.key, error: text });
      },
      onInfo: (text) => {
        const info = parseInfo(text);
        if (info !== undefined) applyInfo(link, info);
      },
    });
    try {
      if (link.leftover.length > 0) {
        reader.space().set(link.leftover);
        reader.commit(link.leftover.length);
      }
      for (;;) {
        if (!link.alive) return;
        const n = await link.conn.read(reader.space());
        if (n === null) {
          closeLink(
            link,
            link.lastError !== undefined
              ? `closed by the server after -ERR '${link.lastError}'`
              : "closed by the server",
          );
          return;
        }
        reader.commit(n);
      }
    } catch (error) {
      closeLink(link, String(error));
    }
  }

  /** Keeps the connection a move left behind readable until its server closes it (or retireAfterMs). */
  function retire(link: Link): void {
    link.retired = true;
    retired.add(link);
    link.retireTimer = setTimeout(
      () => closeLink(link, `closed ${retireAfterMs} ms after the lame-duck move`),
      retireAfterMs,
    );
  }

  async function run(): Promise<void> {
    let failures = 0;
    while (!closed) {
      // Moving: the current server is in lame duck mode and still up; another one is wanted.
      const moving = primary !== undefined && primary.alive && primary.lameDuck;
      const { entry, index } = pickServer(moving ? primary!.entry : undefined);
      let link: Link;
      try {
        link = await handshake(entry);
      } catch (error) {
        serverIndex = index + 1;
        const reason = error instanceof Error ? error.message : String(error);
        options.onConnectFailed?.(reason);
        if (failures++ % 20 === 0) {
          logger.warn(
            moving
              ? "nats: moving off a lame-duck server failed; retrying"
              : "nats: connect failed; retrying",
            {
              name: options.name,
              server: entry.key,
              error: reason,
            },
          );
        }
        await sleep(reconnectWaitMs);
        continue;
      }
      serverIndex = index;
      if (closed) {
        link.alive = false;
        link.conn.close();
        return;
      }
      const previous = primary;
      primary = link;
      latestInfo = link.info;
      const moved = previous !== undefined && previous.alive;
      if (moved) retire(previous);
      if (failures > 0 || everConnected) {
        logger.info(moved ? "nats: moved to another server (lame duck)" : "nats: connected", {
          name: options.name,
          server: entry.key,
          ...(moved ? { from: previous.entry.key } : {}),
        });
      }
      failures = 0;
      const reconnected = everConnected;
      everConnected = true;
      // The owner subscribes before anything is read (the leftover bytes included).
      if (moved && options.onMoved) options.onMoved();
      else options.onConnected(reconnected);
      applyInfo(link, link.info);
      void readLoop(link);
      const why = await link.event;
      if (why === "closed" && !closed) await sleep(reconnectWaitMs);
    }
  }

  const keepAlive = setInterval(() => {
    const link = primary;
    if (link === undefined || !link.alive) return;
    if (link.pings.length >= 2) {
      closeLink(link, "no PONG for two PINGs");
      return;
    }
    link.pings.push(undefined);
    linkWrite(link, PING);
  }, pingIntervalMs);

  const running = run();

  return {
    get connected() {
      return isConnected();
    },
    get server() {
      return isConnected() ? primary!.entry.key : undefined;
    },
    get info() {
      return latestInfo;
    },
    get maxPayload() {
      return latestInfo?.max_payload ?? DEFAULT_MAX_PAYLOAD;
    },
    get servers() {
      return entries.map((entry) => entry.key);
    },
    write,
    writeText,
    flush(timeoutMs = 10_000) {
      const link = primary;
      if (link === undefined || !link.alive) return Promise.reject(new Error("not connected"));
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("flush timed out")), timeoutMs);
        link.pings.push({
          resolve: () => (clearTimeout(timer), resolve()),
          reject: (error) => (clearTimeout(timer), reject(error)),
        });
        linkWrite(link, PING);
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(keepAlive);
      const link = primary;
      for (let i = 0; i < 100 && link && (link.writing || link.writes.length > 0); i++) await sleep(5);
      if (link) closeLink(link, "closed");
      for (const old of [...retired]) closeLink(old, "closed");
      await running.catch(() => {});
    },
  };
}

/** Protocol lines of a handshake, read from a connection (at most 64 KiB a line). */
class LineReader {
  #buf = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;

  /** The next line without its CRLF; reads more as needed. */
  async next(conn: Deno.Conn, what: string): Promise<string> {
    for (;;) {
      const lf = this.#buf.subarray(this.#start, this.#end).indexOf(LF);
      if (lf >= 0) {
        const line = decoder.decode(this.#buf.subarray(this.#start, this.#start + lf)).replace(/\r$/, "");
        this.#start += lf + 1;
        return line.trim();
      }
      if (this.#start > 0) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      }
      if (this.#end === this.#buf.length) {
        throw new Error(`a protocol line longer than 64 KiB waiting for ${what}`);
      }
      const n = await conn.read(this.#buf.subarray(this.#end));
      if (n === null) {
        const text = decoder.decode(this.#buf.subarray(this.#start, this.#end)).trim();
        throw new Error(`connection closed waiting for ${what}${text ? `: ${text.slice(0, 200)}` : ""}`);
      }
      this.#end += n;
    }
  }

  /** What was read past the last line returned. */
  rest(): Uint8Array {
    return this.#buf.slice(this.#start, this.#end);
  }
}

/** A non-negative decimal in buf[start, end), or -1 when it is not one (or too long to be exact). */
export function parseDecimal(buf: Uint8Array, start: number, end: number): number {
  if (end <= start || end - start > 15) return -1;
  let n = 0;
  for (let i = start; i < end; i++) {
    const c = buf[i];
    if (c < 0x30 || c > 0x39) return -1;
    n = n * 10 + c - 0x30;
  }
  return n;
}

/** What a `ProtocolReader` hands over. */
export interface ProtocolHandlers {
  /** Every MSG and HMSG (the object is reused: copy the offsets to keep them). */
  onMessage(message: WireMessage): void;
  onPing(): void;
  onPong(): void;
  /** A `-ERR` line's text. */
  onError(text: string): void;
  /** An `INFO` line (the whole line): a cluster update, lame duck mode. Skipped without it. */
  onInfo?(line: string): void;
}

/**
 * The largest message payload a reader accepts (nats-server allows at most 64 MiB, and so does nats.js's parser):
 * a MSG line announcing more is a protocol error, never an allocation.
 */
export const MAX_WIRE_PAYLOAD = 64 * 1024 * 1024;

/**
 * The server-to-client half of the protocol: bytes in, MSG/HMSG/PING/PONG/-ERR/INFO out (+OK skipped). Bytes
 * are read straight into its chunk (`space()`, then `commit(n)`); a message is handed over as offsets into the
 * chunk it lies in, and a chunk is never written again where messages were handed out, so receivers may keep
 * views into it. A message split across reads is parsed once it is complete; the unparsed tail moves to a new
 * chunk when the current one has less than 64 KiB left (bigger when one message needs it). Throws on a line
 * that is not the protocol (the connection is then dropped).
 */
export class ProtocolReader {
  #chunk = new Uint8Array(CHUNK);
  #filled = 0;
  #pos = 0;
  readonly #handlers: ProtocolHandlers;
  readonly #message: WireMessage = {
    buf: new Uint8Array(0),
    subjectStart: 0,
    subjectEnd: 0,
    sid: 0,
    replyStart: -1,
    replyEnd: -1,
    payloadStart: 0,
    headerEnd: 0,
    end: 0,
  };
  readonly #starts = new Int32Array(6);
  readonly #ends = new Int32Array(6);

  constructor(handlers: ProtocolHandlers) {
    this.#handlers = handlers;
  }

  /** Where the next read goes: at least 64 KiB. */
  space(): Uint8Array {
    if (this.#chunk.length - this.#filled < 64 * 1024) {
      const tail = this.#filled - this.#pos;
      const next = new Uint8Array(Math.max(CHUNK, 2 * tail + 64 * 1024));
      next.set(this.#chunk.subarray(this.#pos, this.#filled));
      this.#chunk = next;
      this.#filled = tail;
      this.#pos = 0;
    }
    return this.#chunk.subarray(this.#filled);
  }

  /** `n` bytes were written at the start of `space()`: parses every complete protocol message. */
  commit(n: number): void {
    this.#filled += n;
    this.#pos = this.#parse(this.#chunk, this.#pos, this.#filled);
  }

  /** Bytes received and not parsed yet (an incomplete message). */
  get buffered(): number {
    return this.#filled - this.#pos;
  }

  /** Parses complete protocol messages in buf[pos, end); returns where the first incomplete one starts. */
  #parse(buf: Uint8Array, pos: number, end: number): number {
    const starts = this.#starts;
    const ends = this.#ends;
    const message = this.#message;
    while (pos < end) {
      const lf = buf.indexOf(LF, pos);
      if (lf < 0 || lf >= end) {
        if (end - pos > 64 * 1024) throw new Error("nats: a protocol line longer than 64 KiB");
        return pos;
      }
      const op = buf[pos];
      if (op === 0x4d /* MSG */ || op === 0x48 /* HMSG */) {
        const withHeaders = op === 0x48;
        const count = this.#tokenize(buf, pos + (withHeaders ? 5 : 4), lf);
        const sizes = withHeaders ? 2 : 1;
        if (count !== 2 + sizes && count !== 3 + sizes) throw new Error("nats: bad MSG line");
        const total = parseDecimal(buf, starts[count - 1], ends[count - 1]);
        const header = withHeaders ? parseDecimal(buf, starts[count - 2], ends[count - 2]) : 0;
        const sid = parseDecimal(buf, starts[1], ends[1]);
        if (total < 0 || total > MAX_WIRE_PAYLOAD || header < 0 || header > total || sid < 0) {
          throw new Error("nats: bad MSG line");
        }
        const payloadStart = lf + 1;
        if (payloadStart + total + 2 > end) return pos;
        const hasReply = count === 3 + sizes;
        message.buf = buf;
        message.subjectStart = starts[0];
        message.subjectEnd = ends[0];
        message.sid = sid;
        message.replyStart = hasReply ? starts[2] : -1;
        message.replyEnd = hasReply ? ends[2] : -1;
        message.payloadStart = payloadStart;
        message.headerEnd = payloadStart + header;
        message.end = payloadStart + total;
        pos = payloadStart + total + 2;
        this.#handlers.onMessage(message);
      } else if (op === 0x50 /* PING or PONG */) {
        const ping = buf[pos + 1] === 0x49;
        pos = lf + 1;
        if (ping) this.#handlers.onPing();
        else this.#handlers.onPong();
      } else if (op === 0x2d /* -ERR */) {
        const text = decoder.decode(buf.subarray(pos, lf)).trim();
        pos = lf + 1;
        this.#handlers.onError(text);
      } else if (op === 0x49 /* INFO */ && this.#handlers.onInfo) {
        const line = decoder.decode(buf.subarray(pos, lf)).trim();
        pos = lf + 1;
        this.#handlers.onInfo(line);
      } else {
        pos = lf + 1; // +OK (and INFO when nobody wants it)
      }
    }
    return pos;
  }

  /** Splits a MSG/HMSG line after the op into `starts`/`ends`; returns the token count (7 for too many). */
  #tokenize(buf: Uint8Array, from: number, lf: number): number {
    const stop = buf[lf - 1] === CR ? lf - 1 : lf;
    let count = 0;
    let i = from;
    while (i < stop) {
      while (i < stop && (buf[i] === SPACE || buf[i] === TAB)) i++;
      if (i >= stop) break;
      if (count === 6) return 7;
      this.#starts[count] = i;
      while (i < stop && buf[i] !== SPACE && buf[i] !== TAB) i++;
      this.#ends[count++] = i;
    }
    return count;
  }
}
