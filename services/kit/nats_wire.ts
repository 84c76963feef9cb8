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
 * The connection reconnects by itself (round robin over the servers, a fixed wait between attempts); the owner
 * learns of it through `onConnected` and re-subscribes there. Bytes written while disconnected are dropped:
 * callers that must not lose a message track it until the server answers (an ack, a PONG).
 */
import type { Logger } from "./log.ts";

const CR = 0x0d;
const LF = 0x0a;
const SPACE = 0x20;
const TAB = 0x09;
const CHUNK = 1 << 20;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A server from a `nats://` or `tls://` URL; credentials as `user:pass@` or a token as `token@`. */
export interface NatsServerAddress {
  hostname: string;
  port: number;
  tls: boolean;
  user?: string;
  pass?: string;
  token?: string;
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
  /** Servers, tried in turn. */
  servers: NatsServerAddress[];
  /** Connection name shown by the server (`/connz`). */
  name: string;
  logger: Logger;
  /** Wait between connection attempts, in ms. Default 250. */
  reconnectWaitMs?: number;
  /** A PING is sent this often; two PINGs without a PONG drop the connection. In ms. Default 5000. */
  pingIntervalMs?: number;
  /** Called once connected (first time and after each reconnect), before anything is read: subscribe here. */
  onConnected(reconnected: boolean): void;
  /** Called when a connection is lost (not on `close`). */
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
}

/** What kind of refusal a server `-ERR` is: a label for metrics. */
export type NatsErrorKind = "permissions" | "authorization" | "max_payload" | "slow_consumer" | "other";

export function natsErrorKind(text: string): NatsErrorKind {
  if (/permissions violation/i.test(text)) return "permissions";
  if (/authori[sz]ation violation|authentication|user authentication expired/i.test(text)) {
    return "authorization";
  }
  if (/maximum payload/i.test(text)) return "max_payload";
  if (/slow consumer/i.test(text)) return "slow_consumer";
  return "other";
}

/** A server error line without its `-ERR` and quotes: `Permissions Violation for Publish to "x"`. */
export function natsErrorText(line: string): string {
  return line.replace(/^-ERR\s*/, "").trim().replace(/^'(.*)'$/s, "$1");
}

export interface NatsWire {
  readonly connected: boolean;
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

/** Starts connecting in the background; `onConnected` tells when the connection is up. */
export function createNatsWire(options: NatsWireOptions): NatsWire {
  const { logger } = options;
  if (options.servers.length === 0) throw new Error("no NATS server given");
  const reconnectWaitMs = options.reconnectWaitMs ?? 250;
  const pingIntervalMs = options.pingIntervalMs ?? 5000;
  let conn: Deno.Conn | undefined;
  let connected = false;
  let closed = false;
  let everConnected = false;
  let serverIndex = 0;
  let pendingWrites: Uint8Array[] = [];
  let pendingBytes = 0;
  let writing = false;
  /** One entry per PING sent, in order: a flush waiting for its PONG, or undefined for a keep-alive PING. */
  let pings: ({ resolve: () => void; reject: (error: Error) => void } | undefined)[] = [];

  function write(bytes: Uint8Array): boolean {
    if (!connected) return false;
    pendingWrites.push(bytes);
    pendingBytes += bytes.length;
    if (!writing) {
      writing = true;
      // Everything written in this turn leaves in one socket write.
      queueMicrotask(() => void writeLoop());
    }
    return true;
  }

  async function writeLoop(): Promise<void> {
    try {
      while (pendingWrites.length > 0 && conn && connected) {
        let out: Uint8Array;
        if (pendingWrites.length === 1) out = pendingWrites[0];
        else {
          out = new Uint8Array(pendingBytes);
          let at = 0;
          for (const part of pendingWrites) {
            out.set(part, at);
            at += part.length;
          }
        }
        pendingWrites = [];
        pendingBytes = 0;
        let written = 0;
        while (written < out.length) written += await conn.write(out.subarray(written));
      }
    } catch (error) {
      dropConnection(`write failed: ${error}`);
    } finally {
      writing = false;
    }
  }

  function dropConnection(reason: string): void {
    if (!connected) return;
    connected = false;
    try {
      conn?.close();
    } catch {
      // already closed
    }
    for (const waiter of pings) waiter?.reject(new Error(`disconnected: ${reason}`));
    pings = [];
    pendingWrites = [];
    pendingBytes = 0;
    if (!closed) {
      logger.warn("nats: disconnected", { name: options.name, reason });
      options.onDisconnected?.(reason);
    }
  }

  async function readUntil(c: Deno.Conn, done: (text: string) => boolean, what: string): Promise<string> {
    const small = new Uint8Array(64 * 1024);
    let text = "";
    const deadline = Date.now() + 10_000;
    while (!done(text)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      const n = await c.read(small);
      if (n === null) throw new Error(`connection closed waiting for ${what}: ${text.trim().slice(0, 200)}`);
      text += decoder.decode(small.subarray(0, n));
    }
    return text;
  }

  /** Connects and does the handshake: INFO, (TLS), CONNECT + PING, PONG. */
  async function handshake(server: NatsServerAddress): Promise<Deno.Conn> {
    let c: Deno.Conn = await Deno.connect({ hostname: server.hostname, port: server.port });
    try {
      const first = await readUntil(c, (text) => text.includes("\n"), "INFO");
      const line = first.slice(0, first.indexOf("\n")).trim();
      if (!line.startsWith("INFO ")) throw new Error(`expected INFO, got ${line.slice(0, 100)}`);
      const info = JSON.parse(line.slice(5)) as { tls_required?: boolean; headers?: boolean };
      if (info.headers === false) throw new Error("the server does not support headers");
      const tls = server.tls || info.tls_required === true;
      if (tls) c = await Deno.startTls(c as Deno.TcpConn, { hostname: server.hostname });
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
      const hello = encoder.encode(`CONNECT ${JSON.stringify(connectOptions)}\r\nPING\r\n`);
      let written = 0;
      while (written < hello.length) written += await c.write(hello.subarray(written));
      // PONG, or -ERR (bad credentials); INFO updates before it are skipped.
      const answer = await readUntil(
        c,
        (text) => text.includes("PONG\r\n") || /-ERR[^\n]*\n/.test(text),
        "PONG",
      );
      const refusal = /-ERR[^\r\n]*/.exec(answer);
      if (refusal) throw new RefusedError(natsErrorText(refusal[0]));
      return c;
    } catch (error) {
      try {
        c.close();
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
      throw error;
    }
  }

  async function run(): Promise<void> {
    let failures = 0;
    while (!closed) {
      const server = options.servers[serverIndex % options.servers.length];
      try {
        conn = await handshake(server);
      } catch (error) {
        serverIndex++;
        options.onConnectFailed?.(error instanceof Error ? error.message : String(error));
        if (failures++ % 20 === 0) {
          logger.warn("nats: connect failed; retrying", { name: options.name, error: String(error) });
        }
        await sleep(reconnectWaitMs);
        continue;
      }
      if (closed) {
        conn.close();
        return;
      }
      connected = true;
      if (failures > 0 || everConnected) {
        logger.info("nats: connected", { name: options.name, server: `${server.hostname}:${server.port}` });
      }
      failures = 0;
      const reconnected = everConnected;
      everConnected = true;
      options.onConnected(reconnected);
      try {
        await readFrom(conn);
        dropConnection("closed by the server");
      } catch (error) {
        dropConnection(String(error));
      }
      if (!closed) await sleep(reconnectWaitMs);
    }
  }

  async function readFrom(c: Deno.Conn): Promise<void> {
    const reader = new ProtocolReader({
      onMessage: options.onMessage,
      onPing: () => writeText("PONG\r\n"),
      onPong: () => pings.shift()?.resolve(),
      onError: (line) => {
        if (options.onServerError) options.onServerError(natsErrorText(line));
        else logger.warn("nats: server error", { name: options.name, error: line });
      },
    });
    for (;;) {
      const n = await c.read(reader.space());
      if (n === null) return;
      reader.commit(n);
      if (!connected) return;
    }
  }

  const writeText = (text: string) => write(encoder.encode(text));

  const keepAlive = setInterval(() => {
    if (!connected) return;
    if (pings.length >= 2) {
      dropConnection("no PONG for two PINGs");
      return;
    }
    pings.push(undefined);
    writeText("PING\r\n");
  }, pingIntervalMs);

  const running = run();

  return {
    get connected() {
      return connected;
    },
    write,
    writeText,
    flush(timeoutMs = 10_000) {
      if (!connected) return Promise.reject(new Error("not connected"));
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("flush timed out")), timeoutMs);
        pings.push({
          resolve: () => (clearTimeout(timer), resolve()),
          reject: (error) => (clearTimeout(timer), reject(error)),
        });
        writeText("PING\r\n");
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(keepAlive);
      for (let i = 0; i < 100 && (writing || pendingWrites.length > 0); i++) await sleep(5);
      dropConnection("closed");
      await running.catch(() => {});
    },
  };
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
}

/**
 * The largest message payload a reader accepts (nats-server allows at most 64 MiB, and so does nats.js's parser):
 * a MSG line announcing more is a protocol error, never an allocation.
 */
export const MAX_WIRE_PAYLOAD = 64 * 1024 * 1024;

/**
 * The server-to-client half of the protocol: bytes in, MSG/HMSG/PING/PONG/-ERR out (+OK and INFO skipped). Bytes
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
      } else {
        pos = lf + 1; // +OK, INFO
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
