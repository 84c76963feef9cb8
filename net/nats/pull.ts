/**
 * The worker's receive path: a JetStream pull consumer on a NATS connection of its own, speaking the NATS
 * client protocol directly (CONNECT, SUB, PUB, MSG/HMSG, PING/PONG) instead of through nats.js. nats.js turns
 * every delivered message into several objects and strings (parser arguments, Msg, JsMsg, the decoded
 * subject and reply, Buffer views); here a message is one `Delivery` that points into the chunk it was read
 * into, and its stream sequence, delivery count, consumer sequence and store time come straight from the reply
 * subject's bytes. Management (stream and consumer info, create, delete) and dead letters stay on nats.js.
 *
 * JetStream semantics are the client's usual ones: pull requests (`$JS.API.CONSUMER.MSG.NEXT.<stream>.
 * <durable>`, with batch, max_bytes, expires and idle heartbeat), each to a reply subject (and subscription)
 * of its own, so that every delivery and status message is known to belong to its request; a new one sent
 * when half of what was asked for has arrived; status messages (100 idle heartbeat, 404, 408, 409, 503) close
 * requests or report trouble; a request that went silent (no message, no heartbeat) is replaced; acks and
 * in-progress marks are published to a message's reply subject. The connection reconnects by itself.
 *
 * Memory: a request asks for at most `requestBytes` bytes (the server's max_bytes, counted as it counts them:
 * subject, reply, headers and payload), and a request is sent only while the bytes the worker holds
 * (`heldBytes()`, received and not yet acked) plus the bytes every open request may still bring stay within
 * `maxBytesInFlight`. So what is in this process's hands, or on its way, is bounded in bytes whatever the
 * messages hold (ingest/README.md, "Limits").
 *
 * Delivery continuity: every delivery of a consumer, first or again, carries the next consumer sequence. A
 * gap (or a step back, after a NATS restart lost the consumer's state) means a message was handed out that
 * this process never saw, and a cumulative ack (AckPolicy.All) above it would ack it unseen. So the receiver
 * passes on only deliveries that continue the sequence; at the first one that does not, it stops (drops it
 * and everything after) and reports trouble: the worker finishes the batches in hand, recreates the consumer
 * at its ack floor + 1 and calls `restart` (see ingest/README.md, "Exactly once"). The same happens when the
 * consumer is gone (409 Consumer Deleted; 503 no responders: nothing answers pull requests for it) or cannot
 * serve these requests (409 Exceeded MaxRequestBatch / MaxRequestExpires / MaxRequestMaxBytes, Consumer is
 * push based): retrying the same request would fail the same way forever.
 *
 * Lame duck mode (a NATS server about to shut down says so in INFO): the wire connects to another server and
 * writes go there (`onMoved`), while the old connection keeps reading until its server closes it. The open pull
 * requests are carried over: their reply subjects are subscribed on the new connection too, so whatever the
 * consumer sends them reaches this process whichever connection is still up (the cluster routes a message to
 * every server with interest), and new requests go out on the new connection. During this handover a delivery
 * may come twice (once per connection: the copy is dropped when its consumer and stream sequences match what
 * was passed on), or ahead of one still on its way on the other connection (held, in order, until the gap
 * fills). A gap still open a moment after the old connection closed was lost with it: trouble, as above.
 */
import { createNatsWire, type NatsWire } from "./wire.ts";
import type { WireMessage } from "./protocol.ts";
import { EVENT_COUNT_HEADER } from "@tailwatch/events";
import type { Logger } from "@tailwatch/runtime";
import { type NatsConfig, natsConfig, wireServers } from "./config.ts";

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const SPACE = 0x20;
const TAB = 0x09;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const ACK = encoder.encode("+ACK");
const WPI = encoder.encode("+WPI");
/** Bytes of "$JS.ACK." */
const ACK_PREFIX = encoder.encode("$JS.ACK.");
/** Bytes of "NATS/1.0", the first line of every header block (a status message's carries a code after it). */
const HEADER_VERSION = encoder.encode("NATS/1.0");

/** From a `$JS.ACK.` reply subject: stream sequence, delivery count, consumer sequence and store time. */
export interface AckInfo {
  seq: number;
  deliveries: number;
  consumerSeq: number;
  /** When JetStream stored the message (epoch ms, from the reply's nanosecond timestamp); NaN if unreadable. */
  timestampMs: number;
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
  into: AckInfo = { seq: 0, deliveries: 0, consumerSeq: 0, timestampMs: NaN },
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
  // The timestamp in ns (19 digits today): its leading digits but the last six are the ms.
  const first = i;
  while (i < end && buf[i] >= 0x30 && buf[i] <= 0x39) i++;
  let timestampMs = NaN;
  if (i - first > 6 && i - first <= 21 && (i === end || buf[i] === DOT)) {
    timestampMs = 0;
    for (let k = first; k < i - 6; k++) timestampMs = timestampMs * 10 + buf[k] - 0x30;
  }
  into.seq = seq;
  into.deliveries = deliveries;
  into.consumerSeq = consumerSeq;
  into.timestampMs = timestampMs;
  return into;
}

/** A status message of a pull request: `NATS/1.0 <code> <description>` and its headers. */
export interface PullStatus {
  code: number;
  /** Lower case, trimmed (as nats.js compares them). */
  description: string;
  /** Nats-Pending-Messages / Nats-Pending-Bytes: what the request had left (0 when absent). */
  pendingMessages: number;
  pendingBytes: number;
}

/**
 * Reads a status from the header block `buf[start, end)`: undefined when its first line is not `NATS/1.0`
 * followed by a code (a message with ordinary headers). What nats.js's MsgHdrsImpl.decode and JetStreamStatus
 * read from the same bytes (pull_fuzz_test.ts compares them).
 */
export function parseStatus(buf: Uint8Array, start: number, end: number): PullStatus | undefined {
  if (end - start < HEADER_VERSION.length) return undefined;
  for (let i = 0; i < HEADER_VERSION.length; i++) {
    if (buf[start + i] !== HEADER_VERSION[i]) return undefined;
  }
  let lineEnd = start;
  while (lineEnd < end && !(buf[lineEnd] === CR && buf[lineEnd + 1] === LF)) lineEnd++;
  let i = start + HEADER_VERSION.length;
  while (i < lineEnd && (buf[i] === SPACE || buf[i] === TAB)) i++;
  let code = 0;
  const digitsFrom = i;
  for (; i < lineEnd && buf[i] >= 0x30 && buf[i] <= 0x39 && i - digitsFrom < 9; i++) {
    code = code * 10 + buf[i] - 0x30;
  }
  if (code === 0) return undefined;
  const description = decoder.decode(buf.subarray(i, lineEnd)).trim().toLowerCase();
  const status: PullStatus = { code, description, pendingMessages: 0, pendingBytes: 0 };
  // The other lines: `Name: value`; only the two counts matter here.
  for (let at = lineEnd + 2; at < end;) {
    let stop = at;
    while (stop < end && !(buf[stop] === CR && buf[stop + 1] === LF)) stop++;
    const line = decoder.decode(buf.subarray(at, stop));
    const colon = line.indexOf(":");
    if (colon > 0) {
      const name = line.slice(0, colon);
      const value = Number.parseInt(line.slice(colon + 1).trim(), 10);
      if (name === "Nats-Pending-Messages" && value > 0) status.pendingMessages = value;
      else if (name === "Nats-Pending-Bytes" && value > 0) status.pendingBytes = value;
    }
    at = stop + 2;
  }
  return status;
}

/** `tailwatch-events:` in lower case (see EVENT_COUNT_HEADER in events/stream.ts). */
const EVENT_COUNT_NAME = encoder.encode(`${EVENT_COUNT_HEADER.toLowerCase()}:`);
/** `Nats-Msg-Id` as nats-server looks for it: case and all. */
const MSG_ID_NAME = encoder.encode("Nats-Msg-Id");

/** One delivered message: views into the chunk it was read into. */
export class Delivery {
  constructor(
    private readonly buf: Uint8Array,
    private readonly subjectStart: number,
    private readonly subjectEnd: number,
    private readonly replyStart: number,
    private readonly replyEnd: number,
    /** Where the header block starts; equal to dataStart for a message without headers (a MSG). */
    private readonly headerStart: number,
    readonly dataStart: number,
    readonly dataEnd: number,
    /** Stream sequence. */
    readonly seq: number,
    /** Delivery count (1 on the first delivery). */
    readonly deliveries: number,
    /** When JetStream stored it (epoch ms), NaN if the reply subject did not say. */
    readonly timestampMs: number = NaN,
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

  /**
   * What the message counts for against a pull request's max_bytes, as nats-server counts it: subject, reply
   * subject, headers and payload. The receiver's and the worker's memory accounting use it too.
   */
  get size(): number {
    return (this.subjectEnd - this.subjectStart) + (this.replyEnd - this.replyStart) +
      (this.dataEnd - this.headerStart);
  }

  /** The reply subject's bytes (acks and in-progress marks go there). */
  replyBytes(): Uint8Array {
    return this.buf.subarray(this.replyStart, this.replyEnd);
  }

  /** When JetStream stored the message (epoch ms, from the reply subject's timestamp); NaN if not there. */
  storedAtMs(): number {
    return this.timestampMs;
  }

  /**
   * Where the value of the first header named `name` (lower case, with its colon) starts, or -1. A header line
   * starts after a CRLF, as nats-server and nats.js read them (a bare LF inside a value starts nothing).
   */
  private headerValueAt(name: Uint8Array): number {
    const { buf } = this;
    const end = this.dataStart;
    outer: for (let i = this.headerStart + 1; i + name.length < end; i++) {
      if (buf[i] !== LF || buf[i - 1] !== CR) continue;
      for (let j = 0; j < name.length; j++) {
        // ASCII letters compared without case (bit 0x20); the name's other bytes have that bit set already.
        if ((buf[i + 1 + j] | 0x20) !== name[j]) continue outer;
      }
      return i + 1 + name.length;
    }
    return -1;
  }

  /**
   * The message's Tailwatch-Events header (the events of a RequestEventBatch) as a number: 0 when the message
   * has no such header (it holds one RequestEvent), NaN when the value is not a positive decimal integer of
   * at most 10 digits. Read from the header bytes, since every message is asked.
   */
  eventCount(): number {
    let at = this.headerValueAt(EVENT_COUNT_NAME);
    if (at < 0) return 0;
    const { buf } = this;
    const end = this.dataStart;
    while (at < end && (buf[at] === SPACE || buf[at] === TAB)) at++;
    let value = 0;
    let digits = 0;
    for (; at < end && buf[at] >= 0x30 && buf[at] <= 0x39 && digits < 10; at++, digits++) {
      value = value * 10 + buf[at] - 0x30;
    }
    return digits > 0 && value > 0 && (buf[at] === CR || at === end) ? value : NaN;
  }

  /**
   * True when JetStream's duplicate window covers the message: it has a Nats-Msg-Id that nats-server reads
   * (getHeader: the first occurrence of the exact name, right after a CRLF and followed by a colon, and a
   * value that is not empty).
   */
  hasMsgId(): boolean {
    const { buf } = this;
    const end = this.dataStart;
    const name = MSG_ID_NAME;
    let at = -1;
    outer: for (let i = this.headerStart; i + name.length <= end; i++) {
      for (let j = 0; j < name.length; j++) if (buf[i + j] !== name[j]) continue outer;
      at = i;
      break;
    }
    if (at < this.headerStart + 2 || buf[at - 1] !== LF || buf[at - 2] !== CR) return false;
    at += name.length;
    if (at >= end || buf[at] !== 0x3a /* : */) return false;
    at++;
    while (at < end && buf[at] === SPACE) at++;
    return at < end && !(buf[at] === CR && buf[at + 1] === LF);
  }

  /** A header's first value, or undefined (header names compared case-insensitively). */
  header(name: string): string | undefined {
    if (this.headerStart === this.dataStart) return undefined;
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

/**
 * What a message on a pull request's inbox is: a delivery of the stream (its reply subject is a `$JS.ACK.`
 * one; with headers, an HMSG, or without, a MSG: both are messages of the stream, and a MSG once went unseen
 * here, breaking the consumer sequence on every try), with its reply's numbers in `ack`; a status (a header
 * block `NATS/1.0 <code> ...`); or neither (undefined).
 */
export function readPullMessage(message: WireMessage, ack: AckInfo): Delivery | PullStatus | undefined {
  const { buf } = message;
  if (
    message.replyStart >= 0 && parseAckReply(buf, message.replyStart, message.replyEnd, ack) !== undefined
  ) {
    return new Delivery(
      buf,
      message.subjectStart,
      message.subjectEnd,
      message.replyStart,
      message.replyEnd,
      message.payloadStart,
      message.headerEnd,
      message.end,
      ack.seq,
      ack.deliveries,
      ack.timestampMs,
    );
  }
  return message.headerEnd > message.payloadStart
    ? parseStatus(buf, message.payloadStart, message.headerEnd)
    : undefined;
}

/**
 * Why the receiver stopped pulling (reported once; `restart` resumes):
 * - `continuity`: a delivery did not continue the consumer sequence (see the module comment);
 * - `missing`: the consumer is gone (409 Consumer Deleted), or nothing answers its pull requests (503 no
 *   responders: deleted while no request was waiting, or JetStream itself unavailable);
 * - `unusable`: the consumer refuses these pull requests for good (409 Exceeded MaxRequestBatch,
 *   MaxRequestExpires or MaxRequestMaxBytes; Consumer is push based).
 */
export type PullTrouble = "continuity" | "missing" | "unusable";

export interface PullReceiverOptions {
  /** Servers, credentials (sent in CONNECT) and inbox prefix (of the pull requests' replies); a URL is read as NATS_URL. */
  nats: NatsConfig | string;
  name: string;
  stream: string;
  durable: string;
  /** Messages asked for by one pull request. */
  batch: number;
  /**
   * Bytes asked for by one pull request (its max_bytes). Must be at least the largest message the server
   * can deliver (max_payload plus subject and reply), or such a message would never come.
   */
  requestBytes: number;
  /** Bytes received and not yet acked plus bytes open requests may bring: sent requests stay within it. */
  maxBytesInFlight: number;
  /** Bytes of deliveries passed on and not yet released by the worker (acked). */
  heldBytes: () => number;
  /** A pull request's expiry and idle heartbeat. */
  expiresMs?: number;
  heartbeatMs?: number;
  /** Wait between reconnect attempts, and before asking again after a refused request. */
  reconnectWaitMs?: number;
  logger: Logger;
  /** Called for each delivery that continues the consumer sequence. */
  onMessage: (delivery: Delivery) => void;
  /** Called once when the receiver stopped pulling (see PullTrouble); `restart` resumes. */
  onTrouble: (trouble: PullTrouble, reason: string) => void;
  /**
   * A `-ERR` from the server: a refused connection, or a pull request or ack the NATS user may not publish
   * (`Permissions Violation for Publish to "$JS.ACK..."`). Without it the error is only logged.
   */
  onServerError?: (text: string) => void;
}

export interface PullReceiver {
  /** Connects (retrying until it succeeds or stop()) and starts pulling after consumer sequence `lastConsumerSeq`. */
  start(lastConsumerSeq: number): Promise<void>;
  /** After trouble: deliveries expected from consumer sequence `lastConsumerSeq` + 1, pulls again. */
  restart(lastConsumerSeq: number): void;
  ack(delivery: Delivery): void;
  working(delivery: Delivery): void;
  /** Sends another pull request if the limits allow one now (the worker calls it after releasing bytes). */
  more(): void;
  /** Resolves when the server has processed everything sent so far (PING/PONG); rejects if disconnected. */
  flush(timeoutMs?: number): Promise<void>;
  /** Stops pulling; messages already received stay where they went. */
  pause(): void;
  /** True while the receiver stopped pulling because of trouble (until restart). */
  readonly broken: boolean;
  /** True while its NATS connection is up. */
  readonly connected: boolean;
  /** The trouble that stopped it, while broken. */
  readonly trouble: PullTrouble | undefined;
  close(): Promise<void>;
}

/**
 * A pull request in flight: what it may still bring, and when it was last heard of. A request whose bytes are
 * used up (as nats-server counts them, Delivery.size) no longer counts as open, but keeps its subscription
 * until its status or silence: the server ends such a request without a word when its bytes come out exactly.
 */
interface OpenRequest {
  sid: number;
  messages: number;
  bytes: number;
  lastActivity: number;
}

const isOpen = (request: OpenRequest) => request.messages > 0 && request.bytes > 0;

/** A lame-duck move under way (see the module comment): what was passed on, and what came ahead. */
interface Handover {
  /** Consumer sequence → stream sequence of deliveries passed on during the handover (to spot the copies). */
  seen: Map<number, number>;
  /** Deliveries that came ahead of the next consumer sequence, by consumer sequence. */
  ahead: Map<number, Delivery>;
  aheadBytes: number;
  endTimer?: ReturnType<typeof setTimeout>;
}

/** How long the handover lasts after the old connection closed (copies and late ones still on their way). */
const HANDOVER_SETTLE_MS = 2_000;
/** Deliveries held ahead of a gap at most, and deliveries remembered to spot copies. */
const MAX_AHEAD = 10_000;
const MAX_SEEN = 200_000;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export function createPullReceiver(options: PullReceiverOptions): PullReceiver {
  const { logger } = options;
  const nats = typeof options.nats === "string" ? natsConfig(options.nats) : options.nats;
  const servers = wireServers(nats);
  const expiresMs = options.expiresMs ?? 30_000;
  const heartbeatMs = options.heartbeatMs ?? Math.min(15_000, Math.max(500, Math.floor(expiresMs / 2)));
  const reconnectWaitMs = options.reconnectWaitMs ?? 500;
  const pullSubject = `$JS.API.CONSUMER.MSG.NEXT.${options.stream}.${options.durable}`;
  const requestBytes = Math.max(1, Math.floor(options.requestBytes));
  const pullBody = encoder.encode(JSON.stringify({
    batch: options.batch,
    max_bytes: requestBytes,
    expires: expiresMs * 1_000_000,
    idle_heartbeat: heartbeatMs * 1_000_000,
  }));

  let wire: NatsWire | undefined;
  let closed = false;
  let paused = true;
  let trouble: PullTrouble | undefined;
  let lastConsumerSeq = 0;
  let nextSid = 0;
  /** Requests in flight by subscription id; a message of any other sid is stale (dropped). */
  const requests = new Map<number, OpenRequest>();
  let inbox = "";
  let pullRetryTimer: ReturnType<typeof setTimeout> | undefined;
  let silenceTimer: ReturnType<typeof setInterval> | undefined;
  let lastRefusalLog = 0;
  let handover: Handover | undefined;

  const newInbox = () => {
    inbox = `${nats.inboxPrefix}.${crypto.randomUUID().replaceAll("-", "")}`;
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

  /** Requests still open, and the messages and bytes they may still bring (kept as they change). */
  const open = { count: 0, messages: 0, bytes: 0 };
  /** Adds (sign 1) or takes away (-1) what `request` counts for in `open`, if it is open. */
  const account = (request: OpenRequest, sign: 1 | -1) => {
    if (!isOpen(request)) return;
    open.count += sign;
    open.messages += sign * request.messages;
    open.bytes += sign * request.bytes;
  };

  const closeRequest = (sid: number) => {
    const request = requests.get(sid);
    if (request === undefined) return;
    account(request, -1);
    requests.delete(sid);
    if (connected()) sendText(`UNSUB ${sid}\r\n`);
  };
  const closeAll = () => {
    for (const sid of [...requests.keys()]) closeRequest(sid);
  };

  /**
   * Sends pull requests while fewer than two are open, at most half a batch of messages is still asked for,
   * and the bytes held plus the bytes open requests may bring leave room for another request (one request is
   * always allowed when nothing is held or asked for, whatever the limit: the largest message must come).
   */
  const pull = () => {
    while (connected() && !paused && trouble === undefined && !closed) {
      if (open.count >= 2 || open.messages > options.batch / 2) return;
      const reserved = open.bytes + (handover?.aheadBytes ?? 0);
      const held = options.heldBytes();
      if (held + reserved > 0 && held + reserved + requestBytes > options.maxBytesInFlight) return;
      const sid = ++nextSid;
      const reply = `${inbox}.${sid}`;
      sendText(`SUB ${reply} ${sid}\r\nPUB ${pullSubject} ${reply} ${pullBody.length}\r\n`);
      wire?.write(pullBody);
      sendText("\r\n");
      const request = { sid, messages: options.batch, bytes: requestBytes, lastActivity: Date.now() };
      requests.set(sid, request);
      account(request, 1);
    }
  };

  const retryPullLater = () => {
    if (pullRetryTimer !== undefined) return;
    pullRetryTimer = setTimeout(() => {
      pullRetryTimer = undefined;
      pull();
    }, reconnectWaitMs);
  };

  const stopFor = (kind: PullTrouble, reason: string) => {
    if (trouble !== undefined) return;
    trouble = kind;
    paused = true;
    endHandover(false);
    // Messages still coming to the open requests are dropped: restart() sends new ones.
    closeAll();
    logger.warn(
      kind === "continuity"
        ? "delivery continuity broken; the consumer will be recreated at its ack floor"
        : "the consumer cannot be pulled from; it will be checked and recreated if needed",
      { trouble: kind, reason },
    );
    options.onTrouble(kind, reason);
  };

  /** What parseAckReply read from the latest delivery (copied into its Delivery at once). */
  const ackScratch: AckInfo = { seq: 0, deliveries: 0, consumerSeq: 0, timestampMs: NaN };

  function onMessage(message: WireMessage): void {
    const request = requests.get(message.sid);
    // An old request's message, or one after trouble: dropped.
    if (request === undefined || trouble !== undefined) return;
    const now = Date.now();
    request.lastActivity = now;
    const read = readPullMessage(message, ackScratch);
    if (read instanceof Delivery) {
      const consumerSeq = ackScratch.consumerSeq;
      if (handover !== undefined && isCopy(handover, consumerSeq, read.seq)) return;
      account(request, -1);
      request.messages--;
      request.bytes -= read.size;
      account(request, 1);
      if (request.messages <= 0) closeRequest(request.sid);
      if (consumerSeq !== lastConsumerSeq + 1) {
        if (handover !== undefined && consumerSeq > lastConsumerSeq + 1 && handover.ahead.size < MAX_AHEAD) {
          // The one before it may still be on its way on the other connection.
          handover.ahead.set(consumerSeq, read);
          handover.aheadBytes += read.size;
          return;
        }
        stopFor("continuity", `consumer sequence ${consumerSeq} after ${lastConsumerSeq}`);
        return;
      }
      passOn(read, consumerSeq);
      while (handover !== undefined && handover.ahead.has(lastConsumerSeq + 1)) {
        const next = handover.ahead.get(lastConsumerSeq + 1)!;
        handover.ahead.delete(lastConsumerSeq + 1);
        handover.aheadBytes -= next.size;
        passOn(next, lastConsumerSeq + 1);
      }
      pull();
      return;
    }
    const status = read;
    if (status === undefined) {
      // Neither a delivery nor a status: not from JetStream. Nothing to do with it.
      logRefusal("a message on the pull inbox that is neither a delivery nor a status; ignored", {
        subject: decoder.decode(message.buf.subarray(message.subjectStart, message.subjectEnd)).slice(0, 200),
      });
      return;
    }
    const { code, description } = status;
    if (code === 100) return; // idle heartbeat (activity noted above)
    closeRequest(request.sid);
    if (code === 503) {
      stopFor("missing", "pull request: 503 no responders (the consumer or JetStream is not there)");
      return;
    }
    if (code === 409) {
      if (description.includes("consumer deleted")) {
        stopFor("missing", `pull request: 409 ${description}`);
        return;
      }
      if (
        description.includes("exceeded maxrequestbatch") ||
        description.includes("exceeded maxrequestexpires") ||
        description.includes("exceeded maxrequestmaxbytes") ||
        description.includes("push based")
      ) {
        stopFor("unusable", `pull request: 409 ${description}`);
        return;
      }
      if (
        description.includes("message size exceeds maxbytes") || description.includes("leadership change")
      ) {
        pull(); // the request is over; the next one starts at once
        return;
      }
      // Exceeded MaxWaiting (other clients' requests), anything else: ask again later, never in a tight loop.
      logRefusal("pull request ended", { code, description });
      retryPullLater();
      return;
    }
    if (code === 404 || code === 408) {
      pull(); // no messages / expired: ask again at once
      return;
    }
    // 400 (a request the server cannot read) and anything else: ask again a little later.
    logRefusal("pull request refused; retrying", { code, description });
    retryPullLater();
  }

  /** A delivery that continues the consumer sequence goes to the worker. */
  function passOn(delivery: Delivery, consumerSeq: number): void {
    lastConsumerSeq = consumerSeq;
    if (handover !== undefined) {
      handover.seen.set(consumerSeq, delivery.seq);
      if (handover.seen.size > MAX_SEEN) handover.seen.delete(handover.seen.keys().next().value!);
    }
    options.onMessage(delivery);
  }

  /** During a handover: the second copy of a delivery (the same consumer and stream sequence) came. */
  function isCopy(h: Handover, consumerSeq: number, streamSeq: number): boolean {
    if (consumerSeq <= lastConsumerSeq) return h.seen.get(consumerSeq) === streamSeq;
    return h.ahead.get(consumerSeq)?.seq === streamSeq;
  }

  /** A lame-duck move: the open requests' replies are subscribed on the new connection too (module comment). */
  function beginHandover(): void {
    endHandover(false);
    handover = { seen: new Map(), ahead: new Map(), aheadBytes: 0 };
    for (const sid of requests.keys()) sendText(`SUB ${inbox}.${sid} ${sid}\r\n`);
    logger.info("pull: moved to another NATS server (lame duck); open pull requests carried over", {
      requests: requests.size,
      server: wire?.server,
    });
    pull();
  }

  /**
   * Ends the handover. With `check`, a delivery still held ahead of a gap means the gap was lost with the old
   * connection: trouble (continuity), as for any gap.
   */
  function endHandover(check: boolean): void {
    const h = handover;
    if (h === undefined) return;
    handover = undefined;
    clearTimeout(h.endTimer);
    if (check && h.ahead.size > 0 && trouble === undefined) {
      const first = Math.min(...h.ahead.keys());
      stopFor(
        "continuity",
        `consumer sequence ${first} after ${lastConsumerSeq} (lost with the lame-duck server)`,
      );
      return;
    }
    if (check) pull();
  }

  /** Warnings about refused requests, at most one a second (a refusal repeats every reconnectWaitMs). */
  function logRefusal(message: string, fields: Record<string, unknown>): void {
    const now = Date.now();
    if (now - lastRefusalLog < 1_000) return;
    lastRefusalLog = now;
    logger.warn(message, fields);
  }

  /** A silent pull request (no message, no heartbeat for two heartbeat intervals) is replaced. */
  const replaceSilentPulls = () => {
    if (!connected() || paused) return;
    const now = Date.now();
    let replaced = false;
    for (const request of [...requests.values()]) {
      if (now - request.lastActivity > 2 * heartbeatMs + 1_000) {
        closeRequest(request.sid);
        // One whose bytes came out exactly was ended by the server without a status: nothing went wrong.
        if (isOpen(request)) replaced = true;
      }
    }
    if (replaced) {
      logger.warn("pull request went silent; asking again");
      pull();
    }
  };

  /** After a connect, reconnect or restart: requests of an earlier connection are gone; ask again. */
  const resume = () => {
    endHandover(false); // what it held ahead of a gap is not passed on: the gap will show
    requests.clear(); // their subscriptions died with the connection, or were unsubscribed
    open.count = open.messages = open.bytes = 0;
    pull();
  };

  return {
    async start(seq) {
      lastConsumerSeq = seq;
      newInbox();
      paused = false;
      trouble = undefined;
      let firstConnect!: () => void;
      const connectedOnce = new Promise<void>((resolve) => firstConnect = resolve);
      wire = createNatsWire({
        servers,
        name: options.name,
        logger,
        reconnectWaitMs,
        pingIntervalMs: Math.max(1_000, Math.min(5_000, heartbeatMs)),
        onConnected() {
          resume();
          firstConnect();
        },
        onMoved: beginHandover,
        onRetired() {
          if (handover === undefined) return;
          clearTimeout(handover.endTimer);
          handover.endTimer = setTimeout(() => endHandover(true), HANDOVER_SETTLE_MS);
        },
        onMessage,
        ...(options.onServerError ? { onServerError: options.onServerError } : {}),
      });
      silenceTimer = setInterval(replaceSilentPulls, Math.max(1_000, Math.min(5_000, heartbeatMs)));
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
      closeAll();
      trouble = undefined;
      paused = false;
      if (connected()) resume();
    },
    ack(delivery) {
      publishTo(delivery.replyBytes(), ACK);
    },
    working(delivery) {
      publishTo(delivery.replyBytes(), WPI);
    },
    more() {
      pull();
    },
    flush(timeoutMs = 10_000) {
      if (!wire) return Promise.reject(new Error("not connected"));
      return wire.flush(timeoutMs);
    },
    pause() {
      if (paused) return;
      paused = true;
      closeAll();
    },
    get broken() {
      return trouble !== undefined;
    },
    get connected() {
      return connected();
    },
    get trouble() {
      return trouble;
    },
    async close() {
      closed = true;
      paused = true;
      clearInterval(silenceTimer);
      if (pullRetryTimer !== undefined) clearTimeout(pullRetryTimer);
      clearTimeout(handover?.endTimer);
      // Queued writes (acks) go out before the connection closes.
      await wire?.close();
    },
  };
}
