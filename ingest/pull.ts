/**
 * The worker's receive path: a JetStream pull consumer on a NATS connection of its own, speaking the NATS
 * client protocol directly (CONNECT, SUB, PUB, HMSG, PING/PONG) instead of through nats.js. nats.js turns
 * every delivered message into several objects and strings (parser arguments, Msg, JsMsg, the decoded
 * subject and reply, Buffer views); here a message is one `Delivery` that points into the chunk it was read
 * into, and its stream sequence, delivery count and consumer sequence come straight from the reply subject's
 * bytes. Management (stream and consumer info, create, delete) and dead letters stay on nats.js.
 *
 * JetStream semantics are the client's usual ones: pull requests (`$JS.API.CONSUMER.MSG.NEXT.<stream>.
 * <durable>`, with batch, expires and idle heartbeat) to a private inbox, a new one sent when half of what was
 * asked for has arrived; status messages (100 idle heartbeat, 404, 408, 409, 503) close requests or report
 * trouble; a request that went silent (no message, no heartbeat) is replaced; acks and in-progress marks are
 * published to a message's reply subject. The connection reconnects by itself.
 *
 * Delivery continuity: every delivery of a consumer, first or again, carries the next consumer sequence. A
 * gap (or a step back, after a NATS restart lost the consumer's state) means a message was handed out that
 * this process never saw, and a cumulative ack (AckPolicy.All) above it would ack it unseen. So the receiver
 * passes on only deliveries that continue the sequence; at the first one that does not, it stops (drops it
 * and everything after) and reports `broken`: the worker finishes the batches in hand, recreates the consumer
 * at its ack floor + 1 and calls `restart` (see ingest/README.md, "Exactly once").
 */
import type { Logger } from "@tailwatch/kit";

const CR = 0x0d;
const LF = 0x0a;
const SPACE = 0x20;
const TAB = 0x09;
const DOT = 0x2e;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const ACK = encoder.encode("+ACK");
const WPI = encoder.encode("+WPI");
/** Bytes of "$JS.ACK." */
const ACK_PREFIX = encoder.encode("$JS.ACK.");
const CHUNK = 1 << 20;

/** Stream sequence, delivery count and consumer sequence from a `$JS.ACK.` reply subject; undefined if not one. */
export interface AckInfo {
  seq: number;
  deliveries: number;
  consumerSeq: number;
}

/**
 * Reads `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>` (9 tokens) or
 * the newer form with `<domain>.<account hash>.` before the stream (11 tokens, 12 with a random token at the
 * end) from `buf[start, end)`. Returns undefined for anything else.
 */
export function parseAckReply(buf: Uint8Array, start: number, end: number): AckInfo | undefined {
  if (end - start < ACK_PREFIX.length) return undefined;
  for (let i = 0; i < ACK_PREFIX.length; i++) if (buf[start + i] !== ACK_PREFIX[i]) return undefined;
  let dots = 0;
  for (let i = start; i < end; i++) if (buf[i] === DOT) dots++;
  const at = dots === 8 ? 4 : dots === 10 || dots === 11 ? 6 : -1;
  if (at < 0) return undefined;
  let i = start;
  for (let t = 0; t < at; t++) {
    while (buf[i] !== DOT) i++;
    i++;
  }
  const numbers = [0, 0, 0];
  for (let n = 0; n < 3; n++) {
    const first = i;
    let value = 0;
    for (; i < end && buf[i] >= 0x30 && buf[i] <= 0x39; i++) value = value * 10 + buf[i] - 0x30;
    if (i === first || i - first > 16 || value > Number.MAX_SAFE_INTEGER || i >= end || buf[i] !== DOT) {
      return undefined;
    }
    numbers[n] = value;
    i++;
  }
  return { seq: numbers[1], deliveries: numbers[0], consumerSeq: numbers[2] };
}

/** One delivered message: views into the chunk it was read into. */
export class Delivery {
  constructor(
    private readonly buf: Uint8Array,
    private readonly subjectStart: number,
    private readonly subjectEnd: number,
    private readonly replyStart: number,
    private readonly replyEnd: number,
    private readonly headerStart: number,
    readonly dataStart: number,
    readonly dataEnd: number,
    /** Stream sequence. */
    readonly seq: number,
    /** Delivery count (1 on the first delivery). */
    readonly deliveries: number,
  ) {}

  /** The chunk holding the payload at [dataStart, dataEnd). */
  get chunk(): Uint8Array {
    return this.buf;
  }

  get data(): Uint8Array {
    return this.buf.subarray(this.dataStart, this.dataEnd);
  }

  get subject(): string {
    return decoder.decode(this.buf.subarray(this.subjectStart, this.subjectEnd));
  }

  /** The reply subject's bytes (acks and in-progress marks go there). */
  replyBytes(): Uint8Array {
    return this.buf.subarray(this.replyStart, this.replyEnd);
  }

  /** A header's first value, or undefined (header names compared case-insensitively). */
  header(name: string): string | undefined {
    const block = decoder.decode(this.buf.subarray(this.headerStart, this.dataStart));
    const lines = block.split("\r\n");
    const wanted = name.toLowerCase();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon > 0 && line.slice(0, colon).trim().toLowerCase() === wanted) {
        return line.slice(colon + 1).trim();
      }
    }
    return undefined;
  }
}

export interface PullReceiverOptions {
  /** nats:// or tls:// URLs (user and password or a token in the URL are sent in CONNECT). */
  servers: string[];
  name: string;
  stream: string;
  durable: string;
  /** Messages asked for by one pull request. */
  batch: number;
  /** A pull request's expiry and idle heartbeat. */
  expiresMs?: number;
  heartbeatMs?: number;
  /** Wait between reconnect attempts. */
  reconnectWaitMs?: number;
  logger: Logger;
  /** Called for each delivery that continues the consumer sequence. */
  onMessage: (delivery: Delivery) => void;
  /** Called once when delivery continuity broke (see the module comment); the receiver has stopped pulling. */
  onBroken: (reason: string) => void;
}

export interface PullReceiver {
  /** Connects (retrying until it succeeds or stop()) and starts pulling after consumer sequence `lastConsumerSeq`. */
  start(lastConsumerSeq: number): Promise<void>;
  /** After `broken`: a new inbox, deliveries expected from consumer sequence `lastConsumerSeq` + 1, pulls again. */
  restart(lastConsumerSeq: number): void;
  ack(delivery: Delivery): void;
  working(delivery: Delivery): void;
  /** Resolves when the server has processed everything sent so far (PING/PONG); rejects if disconnected. */
  flush(timeoutMs?: number): Promise<void>;
  /** Stops pulling; messages already received stay where they went. */
  pause(): void;
  /** True while continuity is broken (until restart). */
  readonly broken: boolean;
  close(): Promise<void>;
}

interface Server {
  hostname: string;
  port: number;
  tls: boolean;
  user?: string;
  pass?: string;
  token?: string;
}

function parseServer(url: string): Server {
  const u = new URL(url);
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

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export function createPullReceiver(options: PullReceiverOptions): PullReceiver {
  const { logger } = options;
  const servers = options.servers.map(parseServer);
  const expiresMs = options.expiresMs ?? 30_000;
  const heartbeatMs = options.heartbeatMs ?? Math.min(15_000, Math.max(500, Math.floor(expiresMs / 2)));
  const reconnectWaitMs = options.reconnectWaitMs ?? 500;
  const pullSubject = `$JS.API.CONSUMER.MSG.NEXT.${options.stream}.${options.durable}`;
  const pullBody = encoder.encode(JSON.stringify({
    batch: options.batch,
    expires: expiresMs * 1_000_000,
    idle_heartbeat: heartbeatMs * 1_000_000,
  }));

  let conn: Deno.Conn | undefined;
  let closed = false;
  let connected = false;
  let paused = true;
  let broken = false;
  /** Messages asked for and not yet received, expired or refused. */
  let outstanding = 0;
  let lastConsumerSeq = 0;
  let lastActivity = Date.now();
  let sid = 0;
  let inbox = "";
  let pendingWrites: Uint8Array[] = [];
  let pendingBytes = 0;
  let writing = false;
  /** One entry per PING sent, in order: a flush() waiting for its PONG, or undefined for a keep-alive PING. */
  let pings: ({ resolve: () => void; reject: (error: Error) => void } | undefined)[] = [];
  let pullRetryTimer: ReturnType<typeof setTimeout> | undefined;
  let readLoop: Promise<void> | undefined;
  let serverIndex = 0;
  const timers: ReturnType<typeof setInterval>[] = [];

  const newInbox = () => {
    sid++;
    inbox = `_INBOX.${crypto.randomUUID().replaceAll("-", "")}`;
  };

  const send = (bytes: Uint8Array) => {
    if (!connected) return;
    pendingWrites.push(bytes);
    pendingBytes += bytes.length;
    if (!writing) void writeLoop();
  };

  async function writeLoop(): Promise<void> {
    writing = true;
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

  const sendText = (text: string) => send(encoder.encode(text));

  /** PUB <subject> <n>\r\n<payload>\r\n with the subject given as bytes. */
  const publishTo = (subject: Uint8Array, payload: Uint8Array) => {
    const head = `PUB `;
    const tail = ` ${payload.length}\r\n`;
    const out = new Uint8Array(head.length + subject.length + tail.length + payload.length + 2);
    let at = encoder.encodeInto(head, out).written;
    out.set(subject, at);
    at += subject.length;
    at += encoder.encodeInto(tail, out.subarray(at)).written;
    out.set(payload, at);
    at += payload.length;
    out[at++] = CR;
    out[at] = LF;
    send(out);
  };

  const pull = () => {
    if (!connected || paused || broken || closed) return;
    while (outstanding <= options.batch / 2) {
      sendText(`PUB ${pullSubject} ${inbox} ${pullBody.length}\r\n`);
      send(pullBody);
      sendText("\r\n");
      outstanding += options.batch;
      lastActivity = Date.now();
    }
  };

  const retryPullLater = () => {
    if (pullRetryTimer !== undefined) return;
    pullRetryTimer = setTimeout(() => {
      pullRetryTimer = undefined;
      pull();
    }, reconnectWaitMs);
  };

  const breakContinuity = (reason: string) => {
    if (broken) return;
    broken = true;
    paused = true;
    outstanding = 0;
    // Messages still coming to this inbox are dropped: restart() subscribes a new one.
    sendText(`UNSUB ${sid}\r\n`);
    logger.warn("delivery continuity broken; the consumer will be recreated at its ack floor", { reason });
    options.onBroken(reason);
  };

  function dropConnection(reason: string): void {
    if (!connected) return;
    connected = false;
    if (!closed) logger.warn("nats (pull) disconnected", { reason });
    try {
      conn?.close();
    } catch {
      // already closed
    }
    for (const waiter of pings) waiter?.reject(new Error(`disconnected: ${reason}`));
    pings = [];
    pendingWrites = [];
    pendingBytes = 0;
  }

  /** Connects to the next server, does the CONNECT handshake, and returns the unparsed bytes after it. */
  async function connectOnce(server: Server): Promise<Deno.Conn> {
    let c: Deno.Conn = await Deno.connect({ hostname: server.hostname, port: server.port });
    try {
      // INFO {...}\r\n first.
      const buf = new Uint8Array(64 * 1024);
      let filled = 0;
      let lineEnd = -1;
      while (lineEnd < 0) {
        const n = await c.read(buf.subarray(filled));
        if (n === null) throw new Error("closed before INFO");
        filled += n;
        lineEnd = buf.subarray(0, filled).indexOf(LF);
        if (lineEnd < 0 && filled === buf.length) throw new Error("INFO too long");
      }
      const line = decoder.decode(buf.subarray(0, lineEnd)).trim();
      if (!line.startsWith("INFO ")) throw new Error(`expected INFO, got ${line.slice(0, 100)}`);
      const info = JSON.parse(line.slice(5)) as { tls_required?: boolean; headers?: boolean };
      if (info.headers === false) throw new Error("the server does not support headers");
      if (server.tls || info.tls_required) {
        c = await Deno.startTls(c as Deno.TcpConn, { hostname: server.hostname });
      }
      const connectOptions: Record<string, unknown> = {
        verbose: false,
        pedantic: false,
        headers: true,
        no_responders: true,
        protocol: 1,
        lang: "deno-tailwatch-pull",
        version: "1",
        name: options.name,
        tls_required: server.tls || info.tls_required === true,
      };
      if (server.user !== undefined) connectOptions.user = server.user;
      if (server.pass !== undefined) connectOptions.pass = server.pass;
      if (server.token !== undefined) connectOptions.auth_token = server.token;
      const hello = encoder.encode(`CONNECT ${JSON.stringify(connectOptions)}\r\nPING\r\n`);
      let written = 0;
      while (written < hello.length) written += await c.write(hello.subarray(written));
      // Expect PONG (or -ERR); anything else before it (INFO updates) is skipped.
      let text = "";
      const deadline = Date.now() + 10_000;
      const small = new Uint8Array(4096);
      while (!text.includes("PONG\r\n")) {
        if (text.includes("-ERR")) throw new Error(text.trim().slice(0, 200));
        if (Date.now() > deadline) throw new Error("no PONG after CONNECT");
        const n = await c.read(small);
        if (n === null) throw new Error(`closed after CONNECT: ${text.trim().slice(0, 200)}`);
        text += decoder.decode(small.subarray(0, n));
      }
      return c;
    } catch (error) {
      try {
        c.close();
      } catch {
        // closed
      }
      throw error;
    }
  }

  async function connectLoop(): Promise<void> {
    for (let attempt = 0; !closed; attempt++) {
      const server = servers[serverIndex % servers.length];
      try {
        conn = await connectOnce(server);
        connected = true;
        lastActivity = Date.now();
        if (attempt > 0) {
          logger.warn("nats (pull) reconnected", { server: `${server.hostname}:${server.port}` });
        }
        return;
      } catch (error) {
        serverIndex++;
        if (attempt % 20 === 0) logger.warn("nats (pull) connect failed; retrying", { error: String(error) });
        await sleep(reconnectWaitMs);
      }
    }
  }

  /** Subscribes the inbox and pulls (after a connect, reconnect or restart). */
  const subscribe = () => {
    sendText(`SUB ${inbox} ${sid}\r\n`);
    outstanding = 0;
    pull();
  };

  async function runConnection(): Promise<void> {
    while (!closed) {
      if (!connected) {
        await connectLoop();
        if (closed) return;
        subscribe();
      }
      try {
        await readFrom(conn as Deno.Conn);
      } catch (error) {
        if (!closed) dropConnection(String(error));
      }
      if (!closed) dropConnection("connection closed");
    }
  }

  /** Reads and parses until the connection ends. */
  async function readFrom(c: Deno.Conn): Promise<void> {
    let chunk = new Uint8Array(CHUNK);
    let filled = 0;
    let pos = 0;
    for (;;) {
      if (chunk.length - filled < 64 * 1024) {
        // Messages keep views into the old chunk; the unparsed tail moves to a new one.
        const next = new Uint8Array(Math.max(CHUNK, 2 * (filled - pos) + 64 * 1024));
        next.set(chunk.subarray(pos, filled));
        filled -= pos;
        pos = 0;
        chunk = next;
      }
      const n = await c.read(chunk.subarray(filled));
      if (n === null) return;
      filled += n;
      pos = parse(chunk, pos, filled);
      if (!connected) return;
    }
  }

  /** Parses complete protocol messages in buf[pos, end); returns where the first incomplete one starts. */
  function parse(buf: Uint8Array, pos: number, end: number): number {
    while (pos < end) {
      const lf = buf.indexOf(LF, pos);
      if (lf < 0 || lf >= end) return pos;
      const op = buf[pos];
      if (op === 0x48 /* H */) {
        // HMSG <subject> <sid> [reply] <header bytes> <total bytes>\r\n
        const tokens = tokenize(buf, pos + 5, lf, true);
        if (tokens === undefined) throw new Error("bad HMSG line");
        const total = tokens.total;
        const payloadStart = lf + 1;
        if (payloadStart + total + 2 > end) return pos;
        onHmsg(buf, tokens, payloadStart);
        pos = payloadStart + total + 2;
      } else if (op === 0x4d /* M */) {
        // MSG <subject> <sid> [reply] <bytes>\r\n (no headers: nothing JetStream sends us)
        const tokens = tokenize(buf, pos + 4, lf, false);
        if (tokens === undefined) throw new Error("bad MSG line");
        if (lf + 1 + tokens.total + 2 > end) return pos;
        pos = lf + 1 + tokens.total + 2;
        lastActivity = Date.now();
      } else if (op === 0x50 /* P */) {
        if (buf[pos + 1] === 0x49 /* PING */) sendText("PONG\r\n");
        else pings.shift()?.resolve();
        pos = lf + 1;
      } else if (op === 0x2d /* -ERR */) {
        const text = decoder.decode(buf.subarray(pos, lf)).trim();
        logger.warn("nats (pull) server error", { error: text });
        pos = lf + 1;
      } else {
        pos = lf + 1; // +OK, INFO
      }
    }
    return pos;
  }

  /** Token offsets of a (H)MSG line; the last one or two are sizes. */
  const starts = new Int32Array(6);
  const ends = new Int32Array(6);
  interface Tokens {
    count: number;
    sid: number;
    header: number;
    total: number;
  }
  const tokens: Tokens = { count: 0, sid: 0, header: 0, total: 0 };
  function tokenize(buf: Uint8Array, from: number, lf: number, isHeader: boolean): Tokens | undefined {
    const stop = buf[lf - 1] === CR ? lf - 1 : lf;
    let count = 0;
    let i = from;
    while (i < stop) {
      while (i < stop && (buf[i] === SPACE || buf[i] === TAB)) i++;
      if (i >= stop) break;
      if (count === 6) return undefined;
      starts[count] = i;
      while (i < stop && buf[i] !== SPACE && buf[i] !== TAB) i++;
      ends[count++] = i;
    }
    const sizes = isHeader ? 2 : 1;
    if (count !== 2 + sizes && count !== 3 + sizes) return undefined;
    tokens.count = count;
    tokens.sid = number(buf, starts[1], ends[1]);
    tokens.total = number(buf, starts[count - 1], ends[count - 1]);
    tokens.header = isHeader ? number(buf, starts[count - 2], ends[count - 2]) : 0;
    if (tokens.sid < 0 || tokens.total < 0 || tokens.header < 0 || tokens.header > tokens.total) {
      return undefined;
    }
    return tokens;
  }

  function number(buf: Uint8Array, start: number, end: number): number {
    if (end <= start || end - start > 15) return -1;
    let n = 0;
    for (let i = start; i < end; i++) {
      const c = buf[i];
      if (c < 0x30 || c > 0x39) return -1;
      n = n * 10 + c - 0x30;
    }
    return n;
  }

  function onHmsg(buf: Uint8Array, t: Tokens, payloadStart: number): void {
    lastActivity = Date.now();
    if (t.sid !== sid || broken) return; // an old inbox's message, or after a break: dropped
    const hasReply = t.count === 5;
    if (hasReply) {
      const info = parseAckReply(buf, starts[2], ends[2]);
      if (info !== undefined) {
        outstanding--;
        if (info.consumerSeq !== lastConsumerSeq + 1) {
          breakContinuity(`consumer sequence ${info.consumerSeq} after ${lastConsumerSeq}`);
          return;
        }
        lastConsumerSeq = info.consumerSeq;
        options.onMessage(
          new Delivery(
            buf,
            starts[0],
            ends[0],
            starts[2],
            ends[2],
            payloadStart,
            payloadStart + t.header,
            payloadStart + t.total,
            info.seq,
            info.deliveries,
          ),
        );
        if (outstanding <= options.batch / 2) pull();
        return;
      }
    }
    // A status message: "NATS/1.0 <code> <description>" and headers.
    const block = decoder.decode(buf.subarray(payloadStart, payloadStart + t.header));
    const code = Number(block.slice(9, 12));
    const description = block.slice(13, block.indexOf("\r\n")).trim();
    if (code === 100) return; // idle heartbeat
    const pendingMatch = /Nats-Pending-Messages:\s*(\d+)/i.exec(block);
    if (code === 408 || code === 409) {
      if (pendingMatch) outstanding -= Number(pendingMatch[1]);
      else outstanding = 0;
      if (outstanding < 0) outstanding = 0;
      if (code === 409 && /consumer deleted/i.test(description)) {
        breakContinuity(`pull request: 409 ${description}`);
        return;
      }
      if (code === 408) pull(); // expired: ask again at once
      else {
        // Refused (too many waiting requests, a message over max_bytes, a leader change): ask again later,
        // never in a tight loop.
        logger.warn("pull request ended", { code, description });
        retryPullLater();
      }
      return;
    }
    // 404 (no messages), 503 (no responders: JetStream not ready), anything else: ask again a little later.
    if (code !== 404) logger.warn("pull request refused; retrying", { code, description });
    outstanding = 0;
    retryPullLater();
  }

  const keepAlive = () => {
    if (!connected) return;
    const now = Date.now();
    // A silent pull request (no message, no heartbeat for two heartbeat intervals) is replaced.
    if (outstanding > 0 && !paused && now - lastActivity > 2 * heartbeatMs + 1_000) {
      logger.warn("pull request went silent; asking again");
      outstanding = 0;
      pull();
    }
    if (pings.length >= 2) {
      dropConnection("no PONG for two PINGs");
      return;
    }
    pings.push(undefined);
    sendText("PING\r\n");
  };

  return {
    async start(seq) {
      lastConsumerSeq = seq;
      newInbox();
      paused = false;
      broken = false;
      await connectLoop();
      if (closed) return;
      subscribe();
      readLoop = runConnection();
      timers.push(setInterval(keepAlive, Math.max(1_000, Math.min(5_000, heartbeatMs))));
    },
    restart(seq) {
      lastConsumerSeq = seq;
      newInbox();
      broken = false;
      paused = false;
      if (connected) subscribe();
    },
    ack(delivery) {
      publishTo(delivery.replyBytes(), ACK);
    },
    working(delivery) {
      publishTo(delivery.replyBytes(), WPI);
    },
    flush(timeoutMs = 10_000) {
      if (!connected) return Promise.reject(new Error("not connected"));
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("flush timed out")), timeoutMs);
        pings.push({
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
          reject: (error) => {
            clearTimeout(timer);
            reject(error);
          },
        });
        sendText("PING\r\n");
      });
    },
    pause() {
      if (paused) return;
      paused = true;
      if (connected) sendText(`UNSUB ${sid}\r\n`);
    },
    get broken() {
      return broken;
    },
    async close() {
      closed = true;
      paused = true;
      for (const timer of timers) clearInterval(timer);
      if (pullRetryTimer !== undefined) clearTimeout(pullRetryTimer);
      // Let queued writes (acks) go out before closing.
      for (let i = 0; i < 100 && (writing || pendingWrites.length > 0); i++) await sleep(5);
      dropConnection("closed");
      await readLoop?.catch(() => {});
    },
  };
}
