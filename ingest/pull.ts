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
import {
  createNatsWire,
  EVENT_COUNT_HEADER,
  type Logger,
  type NatsWire,
  parseNatsUrl,
  type WireMessage,
} from "@tailwatch/kit";

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const ACK = encoder.encode("+ACK");
const WPI = encoder.encode("+WPI");
/** Bytes of "$JS.ACK." */
const ACK_PREFIX = encoder.encode("$JS.ACK.");

/** Stream sequence, delivery count and consumer sequence from a `$JS.ACK.` reply subject; undefined if not one. */
export interface AckInfo {
  seq: number;
  deliveries: number;
  consumerSeq: number;
}

/**
 * Reads `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>` (9 tokens) or
 * the newer form with `<domain>.<account hash>.` before the stream (11 tokens, 12 with a random token at the
 * end) from `buf[start, end)` into `into` (a new object by default; the receiver reuses one per message).
 * Returns undefined for anything else.
 */
export function parseAckReply(
  buf: Uint8Array,
  start: number,
  end: number,
  into: AckInfo = { seq: 0, deliveries: 0, consumerSeq: 0 },
): AckInfo | undefined {
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
  let deliveries = 0;
  let seq = 0;
  let consumerSeq = 0;
  for (let n = 0; n < 3; n++) {
    const first = i;
    let value = 0;
    for (; i < end && buf[i] >= 0x30 && buf[i] <= 0x39; i++) value = value * 10 + buf[i] - 0x30;
    if (i === first || i - first > 16 || value > Number.MAX_SAFE_INTEGER || i >= end || buf[i] !== DOT) {
      return undefined;
    }
    if (n === 0) deliveries = value;
    else if (n === 1) seq = value;
    else consumerSeq = value;
    i++;
  }
  into.seq = seq;
  into.deliveries = deliveries;
  into.consumerSeq = consumerSeq;
  return into;
}

/** `tailwatch-events:` in lower case (see EVENT_COUNT_HEADER in services/kit/stream.ts). */
const EVENT_COUNT_NAME = new TextEncoder().encode(`${EVENT_COUNT_HEADER.toLowerCase()}:`);

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

  /** When JetStream stored the message (epoch ms, from the reply subject's timestamp); NaN if not there. */
  storedAtMs(): number {
    const tokens = decoder.decode(this.replyBytes()).split(".");
    const nanos = tokens[tokens.length === 9 ? 7 : 9] ?? "";
    return /^\d{7,}$/.test(nanos) ? Number(nanos.slice(0, -6)) : NaN;
  }

  /**
   * The message's Tailwatch-Events header (the events of a RequestEventBatch) as a number: 0 when the message
   * has no such header (it holds one RequestEvent), NaN when the value is not a decimal integer. Read from the
   * header bytes, since every message is asked.
   */
  eventCount(): number {
    const { buf } = this;
    const end = this.dataStart;
    const name = EVENT_COUNT_NAME;
    outer: for (let i = this.headerStart; i + name.length < end; i++) {
      if (buf[i] !== LF) continue;
      for (let j = 0; j < name.length; j++) {
        // ASCII letters compared without case (bit 0x20); the name's other bytes have that bit set already.
        if ((buf[i + 1 + j] | 0x20) !== name[j]) continue outer;
      }
      let at = i + 1 + name.length;
      while (at < end && buf[at] === 0x20) at++;
      let value = 0;
      let digits = 0;
      for (; at < end && buf[at] >= 0x30 && buf[at] <= 0x39 && digits < 10; at++, digits++) {
        value = value * 10 + buf[at] - 0x30;
      }
      return digits > 0 && (buf[at] === 0x0d || at === end) ? value : NaN;
    }
    return 0;
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

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export function createPullReceiver(options: PullReceiverOptions): PullReceiver {
  const { logger } = options;
  const servers = options.servers.map(parseNatsUrl);
  const expiresMs = options.expiresMs ?? 30_000;
  const heartbeatMs = options.heartbeatMs ?? Math.min(15_000, Math.max(500, Math.floor(expiresMs / 2)));
  const reconnectWaitMs = options.reconnectWaitMs ?? 500;
  const pullSubject = `$JS.API.CONSUMER.MSG.NEXT.${options.stream}.${options.durable}`;
  const pullBody = encoder.encode(JSON.stringify({
    batch: options.batch,
    expires: expiresMs * 1_000_000,
    idle_heartbeat: heartbeatMs * 1_000_000,
  }));

  let wire: NatsWire | undefined;
  let closed = false;
  let paused = true;
  let broken = false;
  /** Messages asked for and not yet received, expired or refused. */
  let outstanding = 0;
  let lastConsumerSeq = 0;
  let lastActivity = Date.now();
  let sid = 0;
  let inbox = "";
  let pullRetryTimer: ReturnType<typeof setTimeout> | undefined;
  let silenceTimer: ReturnType<typeof setInterval> | undefined;

  const newInbox = () => {
    sid++;
    inbox = `_INBOX.${crypto.randomUUID().replaceAll("-", "")}`;
  };

  const connected = () => wire?.connected === true;
  const sendText = (text: string) => wire?.writeText(text);

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
    wire?.write(out);
  };

  const pull = () => {
    if (!connected() || paused || broken || closed) return;
    while (outstanding <= options.batch / 2) {
      sendText(`PUB ${pullSubject} ${inbox} ${pullBody.length}\r\n`);
      wire?.write(pullBody);
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

  /** Subscribes the inbox and pulls (after a connect, reconnect or restart). */
  const subscribe = () => {
    sendText(`SUB ${inbox} ${sid}\r\n`);
    outstanding = 0;
    lastActivity = Date.now();
    pull();
  };

  /** What parseAckReply read from the latest delivery (copied into its Delivery at once). */
  const ackScratch: AckInfo = { seq: 0, deliveries: 0, consumerSeq: 0 };

  function onMessage(message: WireMessage): void {
    lastActivity = Date.now();
    // Only HMSGs matter: deliveries and status messages. An old inbox's message, or one after a break, is
    // dropped.
    if (message.headerEnd === message.payloadStart || message.sid !== sid || broken) return;
    const { buf } = message;
    if (message.replyStart >= 0) {
      const info = parseAckReply(buf, message.replyStart, message.replyEnd, ackScratch);
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
            message.subjectStart,
            message.subjectEnd,
            message.replyStart,
            message.replyEnd,
            message.payloadStart,
            message.headerEnd,
            message.end,
            info.seq,
            info.deliveries,
          ),
        );
        if (outstanding <= options.batch / 2) pull();
        return;
      }
    }
    // A status message: "NATS/1.0 <code> <description>" and headers.
    const block = decoder.decode(buf.subarray(message.payloadStart, message.headerEnd));
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

  /** A silent pull request (no message, no heartbeat for two heartbeat intervals) is replaced. */
  const replaceSilentPull = () => {
    if (!connected() || outstanding === 0 || paused) return;
    if (Date.now() - lastActivity > 2 * heartbeatMs + 1_000) {
      logger.warn("pull request went silent; asking again");
      outstanding = 0;
      pull();
    }
  };

  return {
    async start(seq) {
      lastConsumerSeq = seq;
      newInbox();
      paused = false;
      broken = false;
      let firstConnect!: () => void;
      const connectedOnce = new Promise<void>((resolve) => firstConnect = resolve);
      wire = createNatsWire({
        servers,
        name: options.name,
        logger,
        reconnectWaitMs,
        pingIntervalMs: Math.max(1_000, Math.min(5_000, heartbeatMs)),
        onConnected() {
          subscribe();
          firstConnect();
        },
        onMessage,
      });
      silenceTimer = setInterval(replaceSilentPull, Math.max(1_000, Math.min(5_000, heartbeatMs)));
      // Until the first connection or close(), whichever comes first.
      while (!closed) {
        const ready = await Promise.race([
          connectedOnce.then(() => true),
          sleep(reconnectWaitMs).then(() => false),
        ]);
        if (ready) return;
      }
    },
    restart(seq) {
      lastConsumerSeq = seq;
      newInbox();
      broken = false;
      paused = false;
      if (connected()) subscribe();
    },
    ack(delivery) {
      publishTo(delivery.replyBytes(), ACK);
    },
    working(delivery) {
      publishTo(delivery.replyBytes(), WPI);
    },
    flush(timeoutMs = 10_000) {
      if (!wire) return Promise.reject(new Error("not connected"));
      return wire.flush(timeoutMs);
    },
    pause() {
      if (paused) return;
      paused = true;
      if (connected()) sendText(`UNSUB ${sid}\r\n`);
    },
    get broken() {
      return broken;
    },
    async close() {
      closed = true;
      paused = true;
      clearInterval(silenceTimer);
      if (pullRetryTimer !== undefined) clearTimeout(pullRetryTimer);
      // Queued writes (acks) go out before the connection closes.
      await wire?.close();
    },
  };
}
