/**
 * The NATS client protocol as text and bytes, with no connection behind it: server addresses and the URLs
 * that name them, what a server says in INFO and -ERR, the handshake's line reader, and `ProtocolReader`,
 * which turns what a server sends (MSG/HMSG, PING/PONG, -ERR, INFO) into calls without copying a message.
 * `wire.ts` (the connection) is built on it and re-exports its public names.
 */
import type { NatsCredsFile } from "./nkeys.ts";

const CR = 0x0d;
const LF = 0x0a;
const SPACE = 0x20;
const TAB = 0x09;
const CHUNK = 1 << 20;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** A PONG line: the answer to a server's PING. */
export const PONG = encoder.encode("PONG\r\n");
/** A PING line: a keep-alive, or a flush waiting for its PONG. */
export const PING = encoder.encode("PING\r\n");

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

/** An INFO line's JSON (with or without its `INFO `), or undefined when it is not a JSON object. */
export function parseInfo(text: string): NatsServerInfo | undefined {
  try {
    const info = JSON.parse(text.replace(/^INFO\s+/, ""));
    return info !== null && typeof info === "object" ? info as NatsServerInfo : undefined;
  } catch {
    return undefined;
  }
}

/** Protocol lines of a handshake, read from a connection (at most 64 KiB a line). */
export class LineReader {
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
