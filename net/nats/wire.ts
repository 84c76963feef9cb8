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
import { handshake, type Handshaken } from "./handshake.ts";
import {
  DEFAULT_MAX_PAYLOAD,
  natsErrorText,
  type NatsServerAddress,
  type NatsServerInfo,
  parseInfo,
  PING,
  PONG,
  type ProtocolHandlers,
  ProtocolReader,
  type WireMessage,
} from "./protocol.ts";
import { type ServerEntry, ServerRotation } from "./servers.ts";

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

const encoder = new TextEncoder();
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

interface PingWaiter {
  resolve(): void;
  reject(error: Error): void;
}

/** One TCP (or TLS) connection to a server, after its handshake. */
interface Link {
  /** The wire it belongs to. */
  wire: WireState;
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

/** Everything one wire holds: its settings, its servers and its connections. The steps below share it. */
interface WireState {
  readonly options: NatsWireOptions;
  readonly logger: Logger;
  readonly reconnectWaitMs: number;
  readonly pingIntervalMs: number;
  readonly connectTimeoutMs: number;
  readonly retireAfterMs: number;
  readonly discover: boolean;
  readonly servers: ServerRotation;
  /** The connection writes go to: the latest one made (alive or not). */
  primary: Link | undefined;
  /** Connections left behind by lame-duck moves, still read until they close. */
  readonly retired: Set<Link>;
  /** The current (or, while disconnected, the latest) server's INFO. */
  latestInfo: NatsServerInfo | undefined;
  /** `close()` was called. */
  closed: boolean;
  everConnected: boolean;
}

/**
 * Starts connecting in the background; `onConnected` tells when the connection is up.
 *
 * The steps, in the order a connection lives them: `connectLoop` picks a server (`ServerRotation`, servers.ts),
 * does the `handshake` (handshake.ts) and `adopt`s the new connection; `readLoop` hands over what arrives
 * (`applyInfo` takes in INFO updates and lame duck mode, which wakes `connectLoop` to move); `linkWrite` and
 * `writeLoop` send; `keepAlive` PINGs; `closeLink` ends a connection and tells the owner.
 */
export function createNatsWire(options: NatsWireOptions): NatsWire {
  const wire = wireState(options);
  const keepAliveTimer = setInterval(() => keepAlive(wire), wire.pingIntervalMs);
  const running = connectLoop(wire);
  const isConnected = () => wire.primary !== undefined && wire.primary.alive;
  const write = (bytes: Uint8Array) => wire.primary !== undefined && linkWrite(wire.primary, bytes);

  return {
    get connected() {
      return isConnected();
    },
    get server() {
      return isConnected() ? wire.primary!.entry.key : undefined;
    },
    get info() {
      return wire.latestInfo;
    },
    get maxPayload() {
      return wire.latestInfo?.max_payload ?? DEFAULT_MAX_PAYLOAD;
    },
    get servers() {
      return wire.servers.keys;
    },
    write,
    writeText: (text: string) => write(encoder.encode(text)),
    flush(timeoutMs = 10_000) {
      return flushLink(wire.primary, timeoutMs);
    },
    async close() {
      if (wire.closed) return;
      wire.closed = true;
      clearInterval(keepAliveTimer);
      await drainAndClose(wire);
      await running.catch(() => {});
    },
  };
}

/** The settings with their defaults, the configured servers, no connection yet. Throws without a server. */
function wireState(options: NatsWireOptions): WireState {
  const { logger } = options;
  if (options.servers.length === 0) throw new Error("no NATS server given");
  return {
    options,
    logger,
    reconnectWaitMs: options.reconnectWaitMs ?? 250,
    pingIntervalMs: options.pingIntervalMs ?? 5000,
    connectTimeoutMs: options.connectTimeoutMs ?? 5000,
    retireAfterMs: options.retireAfterMs ?? 30_000,
    discover: options.discoverServers ?? true,
    servers: new ServerRotation(options.servers),
    primary: undefined,
    retired: new Set<Link>(),
    latestInfo: undefined,
    closed: false,
    everConnected: false,
  };
}

// --- Connecting: the reconnect loop ---

/**
 * Keeps the wire connected until `close()`: picks a server, does the handshake and adopts the connection,
 * then waits until it closes (reconnects after `reconnectWaitMs`) or its server announces lame duck mode
 * (connects to another server at once, avoiding it, while the old connection keeps working). A failed attempt
 * moves on to the next server after `reconnectWaitMs`.
 */
async function connectLoop(wire: WireState): Promise<void> {
  let failures = 0;
  while (!wire.closed) {
    // Moving: the current server is in lame duck mode and still up; another one is wanted.
    const movingFrom = lameDuckPrimary(wire);
    const { entry, index } = wire.servers.pick(movingFrom);
    let handshaken: Handshaken;
    try {
      handshaken = await handshake(entry.address, wire.options, wire.connectTimeoutMs);
    } catch (error) {
      wire.servers.failed(index);
      connectFailed(wire, entry, error, movingFrom !== undefined, failures++);
      await sleep(wire.reconnectWaitMs);
      continue;
    }
    wire.servers.connected(index);
    if (wire.closed) {
      handshaken.conn.close();
      return;
    }
    const link = newLink(wire, entry, handshaken);
    adopt(wire, link, failures > 0);
    failures = 0;
    const why = await link.event;
    if (why === "closed" && !wire.closed) await sleep(wire.reconnectWaitMs);
  }
}

/** The current server's entry when it is in lame duck mode and still connected (a move is wanted), else undefined. */
function lameDuckPrimary(wire: WireState): ServerEntry | undefined {
  const primary = wire.primary;
  return primary !== undefined && primary.alive && primary.lameDuck ? primary.entry : undefined;
}

/** Tells the owner of a failed attempt (`onConnectFailed`), and logs one failure in 20 of a series. */
function connectFailed(
  wire: WireState,
  entry: ServerEntry,
  error: unknown,
  moving: boolean,
  failuresBefore: number,
): void {
  const reason = error instanceof Error ? error.message : String(error);
  wire.options.onConnectFailed?.(reason);
  if (failuresBefore % 20 === 0) {
    wire.logger.warn(
      moving ? "nats: moving off a lame-duck server failed; retrying" : "nats: connect failed; retrying",
      {
        name: wire.options.name,
        server: entry.key,
        error: reason,
      },
    );
  }
}

/** A link for a connection whose handshake is done: alive, nothing written, nothing awaited. */
function newLink(wire: WireState, entry: ServerEntry, handshaken: Handshaken): Link {
  let signal!: (what: "ldm" | "closed") => void;
  const event = new Promise<"ldm" | "closed">((resolve) => signal = resolve);
  return {
    wire,
    conn: handshaken.conn,
    entry,
    info: handshaken.info,
    alive: true,
    retired: false,
    lameDuck: false,
    writes: [],
    writeBytes: 0,
    writing: false,
    pings: [],
    leftover: handshaken.leftover,
    event,
    signal,
  };
}

/**
 * Makes a new connection the current one: writes go to it from now on. A previous connection still alive (a
 * lame-duck move) is retired and the owner told `onMoved` (or `onConnected(true)` without it); otherwise
 * `onConnected`. Then its INFO is applied and reading starts, so that the owner subscribes before anything
 * that arrived is handed over.
 */
function adopt(wire: WireState, link: Link, afterFailures: boolean): void {
  const { options } = wire;
  const previous = wire.primary;
  wire.primary = link;
  wire.latestInfo = link.info;
  const moved = previous !== undefined && previous.alive;
  if (moved) retire(previous);
  if (afterFailures || wire.everConnected) {
    wire.logger.info(moved ? "nats: moved to another server (lame duck)" : "nats: connected", {
      name: options.name,
      server: link.entry.key,
      ...(moved ? { from: previous.entry.key } : {}),
    });
  }
  const reconnected = wire.everConnected;
  wire.everConnected = true;
  // The owner subscribes before anything is read (the leftover bytes included).
  if (moved && options.onMoved) options.onMoved();
  else options.onConnected(reconnected);
  applyInfo(link, link.info);
  void readLoop(link);
}

// --- Lame duck mode and cluster updates ---

/**
 * An INFO after the handshake (or during it): the cluster's servers, max_payload, lame duck mode. A first
 * `ldm: true` marks the link lame, keeps its server out of the rotation for a while and wakes `connectLoop`
 * to move. The owner hears (`onInfo`) only of the current connection's INFO.
 */
function applyInfo(link: Link, info: NatsServerInfo): void {
  const wire = link.wire;
  link.info = info;
  if (link === wire.primary) wire.latestInfo = info;
  if (wire.discover) learnServers(wire, link, info.connect_urls);
  if (info.ldm === true && !link.lameDuck) {
    link.lameDuck = true;
    wire.servers.avoid(link.entry);
    if (!link.retired) {
      wire.logger.info("nats: the server entered lame duck mode; moving to another", {
        name: wire.options.name,
        server: link.entry.key,
        servers: wire.servers.keys,
      });
    }
    link.signal("ldm");
  }
  if (link === wire.primary) wire.options.onInfo?.(info);
}

/** Takes the servers an INFO announces into the rotation, and logs what changed. */
function learnServers(wire: WireState, link: Link, urls: string[] | undefined): void {
  const changes = wire.servers.learn(link.entry, urls);
  if (changes === undefined) return;
  wire.logger.info("nats: servers announced by the cluster", {
    name: wire.options.name,
    added: changes.added,
    dropped: changes.dropped,
    servers: wire.servers.keys,
  });
}

/**
 * Keeps the connection a move left behind readable (no longer written to but PONGs) until its server
 * closes it, or `retireAfterMs` after the move.
 */
function retire(link: Link): void {
  const wire = link.wire;
  link.retired = true;
  wire.retired.add(link);
  link.retireTimer = setTimeout(
    () => closeLink(link, `closed ${wire.retireAfterMs} ms after the lame-duck move`),
    wire.retireAfterMs,
  );
}

// --- Reading: inbound dispatch ---

/**
 * Reads a link until it closes; every protocol message goes through its ProtocolReader (the bytes read with
 * the handshake's PONG first). A read error, a protocol error or the server closing ends the link; after a
 * `-ERR`, the reason names it.
 */
async function readLoop(link: Link): Promise<void> {
  const reader = new ProtocolReader(linkHandlers(link));
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

/**
 * Where a link's protocol messages go: MSG/HMSG to the owner, a PING answered with PONG, a PONG to the
 * oldest PING awaiting one, a `-ERR` noted, an INFO applied. Made once per link.
 */
function linkHandlers(link: Link): ProtocolHandlers {
  const { options } = link.wire;
  return {
    onMessage: options.onMessage,
    onPing: () => void linkWrite(link, PONG),
    onPong: () => link.pings.shift()?.resolve(),
    onError: (line) => serverError(link, line),
    onInfo: (text) => {
      const info = parseInfo(text);
      if (info !== undefined) applyInfo(link, info);
    },
  };
}

/** A `-ERR` on a link: kept as the reason should the server close it, and told (`onServerError`) or logged. */
function serverError(link: Link, line: string): void {
  const { options } = link.wire;
  const text = natsErrorText(line);
  link.lastError = text;
  if (options.onServerError) options.onServerError(text);
  else {link.wire.logger.warn("nats: server error", {
      name: options.name,
      server: link.entry.key,
      error: text,
    });}
}

// --- Writing ---

/**
 * Queues bytes for a link's socket: everything written in one turn leaves in one socket write. False (and
 * dropped) when the link is closed.
 */
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

/** Writes a link's queued bytes, coalesced, until none are left; a failed write closes the link. */
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

// --- Keep-alive and flush ---

/** Every `pingIntervalMs`: a PING on the current connection, which is dropped when two PINGs went unanswered. */
function keepAlive(wire: WireState): void {
  const link = wire.primary;
  if (link === undefined || !link.alive) return;
  if (link.pings.length >= 2) {
    closeLink(link, "no PONG for two PINGs");
    return;
  }
  link.pings.push(undefined);
  linkWrite(link, PING);
}

/** A PING on `link`, resolved by its PONG: everything written before was processed. Rejects when not connected. */
function flushLink(link: Link | undefined, timeoutMs: number): Promise<void> {
  if (link === undefined || !link.alive) return Promise.reject(new Error("not connected"));
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("flush timed out")), timeoutMs);
    link.pings.push({
      resolve: () => (clearTimeout(timer), resolve()),
      reject: (error) => (clearTimeout(timer), reject(error)),
    });
    linkWrite(link, PING);
  });
}

// --- Closing ---

/**
 * Closes a link (once): its socket, its flushes (rejected), its queued writes (dropped), and wakes
 * `connectLoop`. Tells whoever must know: `onRetired` for one a move left behind, `onDisconnected` for the
 * current one; nobody after `close()`.
 */
function closeLink(link: Link, reason: string): void {
  if (!link.alive) return;
  const wire = link.wire;
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
  if (wire.retired.delete(link)) {
    if (!wire.closed) {
      wire.logger.info("nats: the connection left behind by a lame-duck move closed", {
        name: wire.options.name,
        server: link.entry.key,
        reason,
      });
      wire.options.onRetired?.();
    }
    return;
  }
  if (link === wire.primary && !wire.closed) {
    wire.logger.warn("nats: disconnected", { name: wire.options.name, server: link.entry.key, reason });
    wire.options.onDisconnected?.(reason);
  }
}

/** For `close()`: lets the current connection's queued writes go out (at most ~0.5 s), then closes every link. */
async function drainAndClose(wire: WireState): Promise<void> {
  const link = wire.primary;
  for (let i = 0; i < 100 && link && (link.writing || link.writes.length > 0); i++) await sleep(5);
  if (link) closeLink(link, "closed");
  for (const old of [...wire.retired]) closeLink(old, "closed");
}
