/**
 * Request events: a bounded in-process buffer drained by a background publisher with pipelined JetStream
 * publishes. `emit` never blocks and never throws; when the buffer is full the event is dropped and counted.
 * Publishes that fail (NATS down, timeouts) are retried with the same Nats-Msg-Id, so the stream's
 * duplicate window turns a retry of an event that did arrive into a no-op.
 */
import { connect } from "@nats-io/transport-node";
import type { RequestEvent } from "@tailwatch/proto/events/v1";
import { encodeRequestEventView, type RequestEventFields } from "./event_codec.ts";
import type { Logger } from "./log.ts";
import type { Registry } from "./metrics.ts";
import { createNatsWire, type NatsWire, parseDecimal, parseNatsUrl, type WireMessage } from "./nats_wire.ts";
import { ensureRequestEventsStream, requestEventSubject } from "./stream.ts";

export type { RequestEvent };
export type RequestEventInit = RequestEventFields;

/**
 * An event as it waits for JetStream: its whole HPUB frame without a reply subject (subject, Nats-Msg-Id
 * header, protobuf body), built once when it is emitted into a shared page and sent from there, again on a
 * retry. Why pages: a buffer of its own per event (over V8's 64-byte limit for on-heap arrays) is a malloc, a
 * free and GC bookkeeping each, which cost more than building the frame.
 */
interface QueuedEvent {
  page: Uint8Array;
  start: number;
  end: number;
}

/** Events written together; the last one carries the reply subject `<inbox>.<token>` that acks them all. */
interface Batch {
  events: QueuedEvent[];
  sentAt: number;
}

/** A fixed-capacity FIFO that can also put an item back at the front (for retries). */
class Ring<T> {
  #items: (T | undefined)[];
  #head = 0;
  #size = 0;
  constructor(capacity: number) {
    this.#items = new Array(capacity);
  }
  get size() {
    return this.#size;
  }
  get capacity() {
    return this.#items.length;
  }
  pushBack(item: T): boolean {
    if (this.#size === this.#items.length) return false;
    this.#items[(this.#head + this.#size++) % this.#items.length] = item;
    return true;
  }
  pushFront(item: T): boolean {
    if (this.#size === this.#items.length) return false;
    this.#head = (this.#head - 1 + this.#items.length) % this.#items.length;
    this.#items[this.#head] = item;
    this.#size++;
    return true;
  }
  popFront(): T | undefined {
    if (this.#size === 0) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.#items.length;
    this.#size--;
    return item;
  }
}

export interface EventSink {
  /** Queues an event; never blocks, never throws. Returns false when it was dropped. */
  emit(event: RequestEventInit): boolean;
  /** Events accepted but not yet acknowledged by JetStream (queued plus in flight). */
  pending(): number;
  /** Waits until every accepted event is acknowledged, or the timeout; true when nothing is left. */
  flush(timeoutMs: number): Promise<boolean>;
  /** Flushes (bounded by `timeoutMs`) and closes the NATS connection. */
  close(timeoutMs: number): Promise<void>;
}

export interface EventSinkOptions {
  service: string;
  natsUrl: string;
  /** Events held at most (queued plus in flight). */
  capacity: number;
  /** Publishes awaiting their ack at once. */
  concurrency: number;
  /** How long one publish waits for its ack before it is retried. Default 5000 ms. */
  publishTimeoutMs?: number;
  /**
   * Events emitted within this many milliseconds are published together, in one socket write. Default 0
   * (each at once). Why: a write to NATS per event was a tenth of a service's CPU (on loopback a send()
   * also runs the receiver's side); a few milliseconds later in the stream costs nothing that matters.
   */
  publishIntervalMs?: number;
  logger: Logger;
  metrics: Registry;
}

/** A sink that counts every event and publishes none (EVENTS_ENABLED=false). */
export function createDisabledEventSink(metrics: Registry): EventSink {
  const disabled = metrics.counter(
    "events_disabled_total",
    "Events not published because events are disabled.",
  );
  return {
    emit: () => (disabled.inc(), true),
    pending: () => 0,
    flush: () => Promise.resolve(true),
    close: () => Promise.resolve(),
  };
}

/**
 * Connects to NATS in the background (requests never wait for it) and publishes every emitted event.
 *
 * Publishing is pipelined, and acknowledged per write rather than per event: the events that leave together
 * are plain HPUBs except the last, whose reply subject (`<inbox>.<token>`, one inbox subscription) brings back
 * JetStream's ack for the batch. Why that is enough: JetStream stores the messages of one connection to a
 * stream in the order they arrive, one after the other, so the last one's ack comes after every earlier one
 * was processed; with this stream's configuration (limits with DiscardOld, bytes reserved when it is created)
 * storing a message fails only for reasons that fail the whole write (no stream, no server, a restart),
 * and then the whole batch is published again. An ack per event cost nats-server about a third more CPU per
 * event (a JSON answer and a socket write each), and the service a parse and a map entry each.
 *
 * The frames are written by hand on a connection of the sink's own (`nats_wire.ts`): through nats.js, a
 * publish and its ack cost a service about 25 us of CPU per event, a quarter of serving the request. A batch
 * whose ack does not come within the timeout, or comes back as an error, is published again with the same
 * Nats-Msg-Ids, which the stream's duplicate window turns into no-ops for the copies that were stored. The
 * stream itself is created (or updated) through nats.js at each connect, before anything is published.
 */
export function createEventSink(options: EventSinkOptions): EventSink {
  const { logger, metrics } = options;
  const servers = options.natsUrl.split(",").map(parseNatsUrl);
  const timeoutMs = options.publishTimeoutMs ?? 5000;
  const publishIntervalMs = options.publishIntervalMs ?? 0;
  let batchTimer: ReturnType<typeof setTimeout> | undefined;
  const queue = new Ring<QueuedEvent>(options.capacity);
  /** Batches written and awaiting their ack, by token, in the order sent. */
  const awaiting = new Map<number, Batch>();
  /** Events in `awaiting`. */
  let awaitingEvents = 0;
  let nextToken = 0;
  /** True when the last pump left events queued because `concurrency` events awaited their acks. */
  let heldBack = false;
  let retryAt = 0;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let backoffMs = 0;
  let closed = false;
  /** True once the stream is known to exist on the server of the current connection. */
  let streamReady = false;
  const idleWaiters = new Set<() => void>();

  const published = metrics.counter("events_published_total", "Events acknowledged by JetStream.");
  const duplicates = metrics.counter(
    "events_duplicate_acks_total",
    "Acks that reported a duplicate: a batch published again whose last event had been stored.",
  );
  const dropped = metrics.counter("events_dropped_total", "Events dropped because the buffer was full.");
  const retries = metrics.counter(
    "events_publish_retries_total",
    "Events published again after an error, a timeout or a reconnect.",
  );
  metrics.gaugeFn(
    "events_buffer_depth",
    "Events accepted and not yet acknowledged.",
    () => queue.size + awaitingEvents,
  );
  metrics.gaugeFn("events_buffer_capacity", "Events the buffer holds at most.", () => options.capacity);
  const connectedGauge = metrics.gauge("events_nats_connected", "1 while connected to NATS.");
  const disconnects = metrics.counter(
    "events_nats_disconnects_total",
    "Times the connection to NATS was lost.",
  );

  const inbox = `_INBOX.${crypto.randomUUID().replaceAll("-", "")}`;
  const INBOX_SID = 1;
  const subjectPrefix = textEncoder.encode(`HPUB ${requestEventSubject(options.service)} `);
  /** `HPUB <subject> <inbox>.`: a batch's last frame starts with it, its token follows. */
  const replyLineStart = `HPUB ${requestEventSubject(options.service)} ${inbox}.`;
  const ackSubjectTokenStart = inbox.length + 1;

  const PAGE_BYTES = 256 * 1024;
  let page = new Uint8Array(PAGE_BYTES);
  let pageUsed = 0;

  /**
   * Appends `HPUB <subject> <header bytes> <total bytes>\r\n<headers>\r\n\r\n<event>\r\n` to the current page,
   * byte by byte (a template string and TextEncoder cost twice the protobuf encoding).
   */
  function appendFrame(eventId: string, event: Uint8Array): QueuedEvent {
    const headerBytes = MSG_ID_HEADER.length + eventId.length + 4;
    const totalBytes = headerBytes + event.length;
    const size = subjectPrefix.length + decimalDigits(headerBytes) + 1 + decimalDigits(totalBytes) + 2 +
      totalBytes + 2;
    if (pageUsed + size > page.length) {
      // The old page lives on while events in it wait for their acks.
      page = new Uint8Array(Math.max(PAGE_BYTES, size));
      pageUsed = 0;
    }
    const start = pageUsed;
    page.set(subjectPrefix, start);
    let at = writeDecimal(page, start + subjectPrefix.length, headerBytes);
    page[at++] = SPACE;
    at = writeDecimal(page, at, totalBytes);
    page[at++] = CR;
    page[at++] = LF;
    page.set(MSG_ID_HEADER, at);
    at += MSG_ID_HEADER.length;
    // Event ids are UUIDs: ASCII, one byte per character.
    for (let i = 0; i < eventId.length; i++) page[at++] = eventId.charCodeAt(i) & 0x7f;
    page[at++] = CR;
    page[at++] = LF;
    page[at++] = CR;
    page[at++] = LF;
    page.set(event, at);
    at += event.length;
    page[at++] = CR;
    page[at++] = LF;
    pageUsed = at;
    return { page, start, end: at };
  }

  const wire: NatsWire = createNatsWire({
    servers,
    name: `${options.service}-events`,
    logger,
    onConnected(reconnected) {
      wire.writeText(`SUB ${inbox}.* ${INBOX_SID}\r\n`);
      connectedGauge.set(1);
      logger.info("events: connected to NATS", { url: options.natsUrl });
      // After a reconnect, acks for publishes sent before the disconnect may never come (the server may have
      // restarted); they are published again once the stream is checked, rather than after their timeout.
      if (reconnected) requeueUnacknowledged();
      void ensureStream();
    },
    onDisconnected() {
      connectedGauge.set(0);
      disconnects.inc();
      streamReady = false;
    },
    onMessage: onAck,
  });

  let ensuring = false;
  /** Creates or updates the stream through nats.js (a short-lived connection), then starts publishing. */
  async function ensureStream(): Promise<void> {
    if (ensuring) return;
    ensuring = true;
    try {
      for (let attempt = 0; !closed && wire.connected && !streamReady; attempt++) {
        try {
          const nc = await connect({ servers: options.natsUrl.split(","), timeout: 2000, reconnect: false });
          try {
            await ensureRequestEventsStream(nc);
          } finally {
            await nc.close().catch(() => {});
          }
          streamReady = true;
        } catch (error) {
          if (attempt % 20 === 0) {
            logger.warn("events: stream not ready yet, buffering", { error: String(error) });
          }
          await new Promise((resolve) => setTimeout(resolve, 250));
        }
      }
    } finally {
      ensuring = false;
    }
    pump();
  }

  const notifyIfIdle = () => {
    if (queue.size === 0 && awaitingEvents === 0) {
      for (const wake of idleWaiters) wake();
    }
  };

  let lastWarning = 0;
  /** Puts events back at the front of the queue, in order, and backs off before the next write. */
  const retry = (events: QueuedEvent[], reason: string) => {
    retries.inc(undefined, events.length);
    // The ring has room: the events held their places while they were awaited.
    for (let i = events.length - 1; i >= 0; i--) queue.pushFront(events[i]);
    const now = Date.now();
    // A failed round (many batches failing together) raises the backoff once.
    if (now >= retryAt) {
      backoffMs = Math.min(1000, backoffMs === 0 ? 50 : backoffMs * 2);
      retryAt = now + backoffMs;
    }
    if (now - lastWarning > 5000) {
      lastWarning = now;
      logger.warn("events: publish not acknowledged, retrying", {
        reason,
        pending: queue.size + awaitingEvents,
      });
    }
    schedulePump();
  };

  const takeAwaited = (token: number): Batch | undefined => {
    const batch = awaiting.get(token);
    if (batch === undefined) return undefined;
    awaiting.delete(token);
    awaitingEvents -= batch.events.length;
    return batch;
  };

  /**
   * A JetStream ack on `<inbox>.<token>`: {"stream":..,"seq":..[,"duplicate": true]}. Anything else (an error
   * object, a 503 "no responders" status as an HMSG with an empty body) means the batch is not stored.
   */
  function onAck(message: WireMessage) {
    if (message.sid !== INBOX_SID) return;
    const { buf } = message;
    const token = parseDecimal(buf, message.subjectStart + ackSubjectTokenStart, message.subjectEnd);
    // Unknown: already published again after a timeout; that copy's own ack will count it.
    const batch = takeAwaited(token);
    if (batch === undefined) return;
    const isStatus = message.headerEnd > message.payloadStart;
    if (
      !isStatus && contains(buf, message.headerEnd, message.end, SEQ_KEY) &&
      !contains(buf, message.headerEnd, message.end, ERROR_KEY)
    ) {
      backoffMs = 0;
      published.inc(undefined, batch.events.length);
      if (isTrue(buf, message.headerEnd, message.end, DUPLICATE_KEY)) duplicates.inc();
      // Only events held back by the concurrency limit go now; the others wait for their batch's timer, or
      // acks arriving one by one would send the queue a few events per write.
      if (heldBack) pump();
      notifyIfIdle();
    } else {
      const reason = textDecoder.decode(buf.subarray(message.payloadStart, message.end)).trim();
      retry(batch.events, reason || "empty answer");
      // The stream may be gone (deleted, or a server that restarted without its store): check it, create
      // it again if needed, before the next write.
      streamReady = false;
      void ensureStream();
    }
  }

  /** Puts every batch awaiting its ack back at the front of the queue, in order. */
  function requeueUnacknowledged() {
    const events = [...awaiting.values()].flatMap((batch) => batch.events);
    awaiting.clear();
    awaitingEvents = 0;
    retries.inc(undefined, events.length);
    for (let i = events.length - 1; i >= 0; i--) queue.pushFront(events[i]);
    backoffMs = 0;
    retryAt = 0;
  }

  function sweep() {
    const cutoff = Date.now() - timeoutMs;
    for (const [token, batch] of awaiting) {
      // Map order is publish order: stop at the first batch still within its timeout.
      if (batch.sentAt > cutoff) break;
      takeAwaited(token);
      retry(batch.events, "ack timeout");
    }
  }
  const sweeper = setInterval(sweep, Math.min(1000, timeoutMs / 2));

  const schedulePump = () => {
    if (retryTimer !== undefined) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      pump();
    }, Math.max(0, retryAt - Date.now()));
  };

  /** Sends queued events, up to `concurrency` awaiting their acks, as one batch. */
  function pump() {
    if (!streamReady || !wire.connected || closed && queue.size === 0) return;
    const now = Date.now();
    if (now < retryAt) {
      schedulePump();
      return;
    }
    const count = Math.min(queue.size, options.concurrency - awaitingEvents);
    heldBack = count < queue.size;
    if (count <= 0) return;
    const events = new Array<QueuedEvent>(count);
    for (let i = 0; i < count; i++) events[i] = queue.popFront()!;
    // Connected at the start of this synchronous call, so still connected: the writes are queued. Were the
    // connection to drop before they leave, the reconnect requeues every batch awaiting an ack.
    let runPage = events[0].page;
    let runStart = events[0].start;
    let runEnd = runStart;
    for (let i = 0; i < count - 1; i++) {
      const event = events[i];
      if (event.page !== runPage || event.start !== runEnd) {
        if (runEnd > runStart) wire.write(runPage.subarray(runStart, runEnd));
        runPage = event.page;
        runStart = event.start;
      }
      runEnd = event.end;
    }
    if (runEnd > runStart) wire.write(runPage.subarray(runStart, runEnd));
    // The last frame again with a reply subject: `HPUB <subject> <inbox>.<token> ` and the rest of its frame.
    const last = events[count - 1];
    const token = nextToken++;
    wire.writeText(`${replyLineStart}${token} `);
    wire.write(last.page.subarray(last.start + subjectPrefix.length, last.end));
    awaiting.set(token, { events, sentAt: now });
    awaitingEvents += count;
  }

  return {
    emit(init) {
      if (queue.size + awaitingEvents >= options.capacity || closed) {
        dropped.inc();
        return false;
      }
      queue.pushBack(appendFrame(init.eventId, encodeRequestEventView(init)));
      if (publishIntervalMs === 0) {
        if (awaitingEvents < options.concurrency) pump();
      } else if (batchTimer === undefined) {
        batchTimer = setTimeout(() => {
          batchTimer = undefined;
          pump();
        }, publishIntervalMs);
      }
      return true;
    },
    pending: () => queue.size + awaitingEvents,
    async flush(timeoutMs) {
      if (queue.size === 0 && awaitingEvents === 0) return true;
      let wake!: () => void;
      const idle = new Promise<void>((resolve) => wake = resolve);
      idleWaiters.add(wake);
      const timer = setTimeout(wake, timeoutMs);
      await idle;
      clearTimeout(timer);
      idleWaiters.delete(wake);
      return queue.size === 0 && awaitingEvents === 0;
    },
    async close(timeoutMs) {
      const flushed = await this.flush(timeoutMs);
      if (!flushed) {
        logger.error("events: shutting down with unpublished events", {
          pending: queue.size + awaitingEvents,
        });
      }
      closed = true;
      clearTimeout(retryTimer);
      clearTimeout(batchTimer);
      clearInterval(sweeper);
      await wire.close();
    },
  };
}

const CR = 0x0d;
const LF = 0x0a;
const SPACE = 0x20;
const COLON = 0x3a;
const textEncoder = new TextEncoder();
const MSG_ID_HEADER = textEncoder.encode("NATS/1.0\r\nNats-Msg-Id: ");
const textDecoder = new TextDecoder();
const SEQ_KEY = textEncoder.encode(`"seq"`);
const ERROR_KEY = textEncoder.encode(`"error"`);
const DUPLICATE_KEY = textEncoder.encode(`"duplicate"`);

function decimalDigits(value: number): number {
  let digits = 1;
  for (let rest = value; rest >= 10; rest = Math.floor(rest / 10)) digits++;
  return digits;
}

/** Writes a non-negative integer in decimal at `at`; returns the offset after it. */
function writeDecimal(buf: Uint8Array, at: number, value: number): number {
  const digits = decimalDigits(value);
  for (let i = at + digits - 1; i >= at; i--) {
    buf[i] = 0x30 + (value % 10);
    value = Math.floor(value / 10);
  }
  return at + digits;
}

/** Whether the JSON in buf[start, end) has `key` set to true (nats-server writes `"duplicate": true`). */
function isTrue(buf: Uint8Array, start: number, end: number, key: Uint8Array): boolean {
  const at = indexOf(buf, start, end, key);
  if (at < 0) return false;
  let i = at + key.length;
  while (i < end && (buf[i] === SPACE || buf[i] === COLON)) i++;
  return buf[i] === 0x74; // t
}

/** Whether buf[start, end) contains `pattern`. */
function contains(buf: Uint8Array, start: number, end: number, pattern: Uint8Array): boolean {
  return indexOf(buf, start, end, pattern) >= 0;
}

/** Where `pattern` first occurs in buf[start, end), or -1. */
function indexOf(buf: Uint8Array, start: number, end: number, pattern: Uint8Array): number {
  const first = pattern[0];
  outer: for (let i = start; i <= end - pattern.length; i++) {
    if (buf[i] !== first) continue;
    for (let j = 1; j < pattern.length; j++) if (buf[i + j] !== pattern[j]) continue outer;
    return i;
  }
  return -1;
}
