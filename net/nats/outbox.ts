/**
 * The event sink's buffer: events are written into shared pages as they are emitted, sealed into messages
 * (each its whole HPUB frame, ready to send and to send again), queued oldest first, and split when a server's
 * max_payload is smaller than a message. Nothing here touches the connection.
 */
import { BATCH_EVENT_TAG, EVENT_COUNT_HEADER, requestEventSubject, splitFrame } from "@tailwatch/events";

/**
 * A sealed message as it waits for JetStream: its whole HPUB frame without a reply subject (subject, headers,
 * protobuf body), built in a shared page as its events are emitted and sent from there, again on a retry.
 * Why pages: a buffer of its own per event (over V8's 64-byte limit for on-heap arrays) is a malloc, a free and
 * GC bookkeeping each, which cost more than building the frame.
 */
export interface QueuedMessage {
  page: Uint8Array;
  start: number;
  end: number;
  /** Events in the message. */
  count: number;
  /** Its partition (the subject's last token when partitioned), fixed when it is sealed: a retry goes there too. */
  partition: number;
  /** Its headers and body: what the server's max_payload limits. */
  payloadBytes: number;
}

/** Room for a message's headers (Nats-Msg-Id, Tailwatch-Events) within max_payload. */
export const MESSAGE_HEADER_ROOM = 512;

const PAGE_BYTES = 256 * 1024;
/** Bytes of events one message holds at most (nats-server refuses payloads over 1 MiB by default). */
const MAX_MESSAGE_BYTES = 256 * 1024;
const CR = 0x0d;
const LF = 0x0a;
const textEncoder = new TextEncoder();
const MSG_ID_HEADER_TEXT = "NATS/1.0\r\nNats-Msg-Id: ";
const MSG_ID_HEADER = textEncoder.encode(MSG_ID_HEADER_TEXT);
const EVENT_COUNT_LINE = `${EVENT_COUNT_HEADER}: `;

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
  peekFront(): T | undefined {
    return this.#size === 0 ? undefined : this.#items[this.#head];
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

/**
 * Sealed messages waiting to be sent, oldest first, and the events they hold (`events`). Sized for `capacity`
 * messages: with at most `capacity` events held by the sink (each message holds at least one, and a message
 * sent keeps its place until its ack), it never runs out of room, so a message put back always fits.
 */
export class MessageQueue {
  readonly #ring: Ring<QueuedMessage>;
  /** Events in the queued messages. */
  events = 0;

  constructor(capacity: number) {
    this.#ring = new Ring<QueuedMessage>(capacity);
  }

  /** Messages queued. */
  get size(): number {
    return this.#ring.size;
  }

  /** Queues a sealed message behind the others. */
  pushBack(message: QueuedMessage): void {
    this.#ring.pushBack(message);
    this.events += message.count;
  }

  /** Puts a message back in front of the others (a retry, a piece of a split). */
  pushFront(message: QueuedMessage): void {
    this.#ring.pushFront(message);
    this.events += message.count;
  }

  /** Puts messages back in front of the others, in their order. */
  requeue(messages: QueuedMessage[]): void {
    for (let i = messages.length - 1; i >= 0; i--) this.pushFront(messages[i]);
  }

  peekFront(): QueuedMessage | undefined {
    return this.#ring.peekFront();
  }

  popFront(): QueuedMessage | undefined {
    const message = this.#ring.popFront();
    if (message !== undefined) this.events -= message.count;
    return message;
  }
}

/** What `splitFront` did to a message larger than a server's max_payload. */
export interface SplitResult {
  /** The message split. */
  message: QueuedMessage;
  /** Messages it became (queued in its place). */
  messages: number;
  /** Its events that no message within max_payload could hold (dropped). */
  lost: number;
}

/**
 * Replaces the message at the front of `queue` with messages that fit `maxPayload` (events/batch.ts
 * `splitFrame`), in its partition and order; an event too large for any message is dropped (`lost`).
 */
export function splitFront(queue: MessageQueue, maxPayload: number): SplitResult {
  const message = queue.popFront()!;
  const pieces = splitFrame(message.page.subarray(message.start, message.end), message.count, maxPayload);
  const fitting = pieces.filter((piece) => piece.payloadBytes <= maxPayload);
  const lost = message.count - fitting.reduce((sum, piece) => sum + piece.count, 0);
  for (let i = fitting.length - 1; i >= 0; i--) {
    const piece = fitting[i];
    queue.pushFront({
      page: piece.frame,
      start: 0,
      end: piece.frame.length,
      count: piece.count,
      payloadBytes: piece.payloadBytes,
      partition: message.partition,
    });
  }
  return { message, messages: fitting.length, lost };
}

/**
 * The partition of each message: the one given the fewest events so far, ties in turn from a random start.
 * Why not round-robin over messages: messages differ in size (a write's last message is partial, sealed by the
 * publish interval), so counting events keeps the workers' loads equal within one message; why not a hash of
 * the message id: a hash is even only on average, this is even at every moment. The random start keeps many
 * replicas that each publish little from all beginning with partition 0.
 */
export class Partitioner {
  readonly #partitions: number;
  readonly #events: Float64Array;
  #turn: number;

  constructor(partitions: number) {
    this.#partitions = partitions;
    this.#events = new Float64Array(partitions);
    this.#turn = Math.floor(Math.random() * partitions);
  }

  /** The partition for a message of `count` events (0 with one partition), counted as given to it. */
  choose(count: number): number {
    const partitions = this.#partitions;
    if (partitions === 1) return 0;
    const events = this.#events;
    let best = this.#turn;
    for (let i = 1; i < partitions; i++) {
      const p = (this.#turn + i) % partitions;
      if (events[p] < events[best]) best = p;
    }
    events[best] += count;
    this.#turn = (best + 1) % partitions;
    return best;
  }
}

/**
 * Builds messages from events as they are emitted, and queues each once sealed. The open message's events are
 * written into the current page as they come, each as field 1 of a RequestEventBatch (tag, length, event),
 * after room left for the frame's start (`HPUB` line and headers), which `seal` writes once the events are
 * known, right before them.
 *
 * Promises: events keep their order; a message holds at most `eventsPerMessage` events and, unless one event
 * alone is larger, at most `maxMessageBytes()` bytes of them; a sealed frame is never written again (a page
 * is left for a new one when full, and lives on while its messages wait); sealing with no open event does
 * nothing. Cost per event: the copy of its bytes, nothing allocated (a page per 256 KiB).
 */
export class MessageBuilder {
  /** Events in the open message (emitted, not sealed yet). */
  openCount = 0;
  /** `HPUB <subject> `: what a frame starts with in its page (the unpartitioned subject). */
  readonly subjectPrefix: Uint8Array;
  readonly #eventsPerMessage: number;
  readonly #queue: MessageQueue;
  readonly #partitioner: Partitioner;
  /** The server's limits, read when a message is filled (the connection's `maxPayload`). */
  readonly #server: { readonly maxPayload: number };
  #page = new Uint8Array(PAGE_BYTES);
  #pageUsed = 0;
  #openFirstId = "";
  /** Where the open message's room starts, where its first event's tag is, and where that event's bytes are. */
  #openRoomStart = 0;
  #openPayloadStart = 0;
  #openFirstEventStart = 0;

  constructor(
    service: string,
    eventsPerMessage: number,
    queue: MessageQueue,
    partitioner: Partitioner,
    server: { readonly maxPayload: number },
  ) {
    /**
     * Room for `HPUB <subject> ` at the start of each message in its page (`seal` writes the unpartitioned
     * subject there; what is sent starts after it, behind the reply line of the message's partition).
     */
    this.subjectPrefix = textEncoder.encode(`HPUB ${requestEventSubject(service)} `);
    this.#eventsPerMessage = eventsPerMessage;
    this.#queue = queue;
    this.#partitioner = partitioner;
    this.#server = server;
  }

  /**
   * Bytes of events one message holds at most now: 256 KiB, or less when the server's max_payload (from its
   * INFO; wire.ts `maxPayload`) leaves less room after the headers. A message sealed larger than the server it
   * is sent to takes (sealed before the first INFO, or for another server) is split before it is sent.
   */
  maxMessageBytes(): number {
    return Math.min(MAX_MESSAGE_BYTES, this.#server.maxPayload - MESSAGE_HEADER_ROOM);
  }

  /** Adds an event to the open message, sealing it first when the event does not fit, after when it is full. */
  append(eventId: string, event: Uint8Array): void {
    const need = 6 + event.length + 2;
    if (
      this.openCount > 0 &&
      (this.#pageUsed + need > this.#page.length ||
        this.#pageUsed - this.#openPayloadStart + need > this.maxMessageBytes())
    ) {
      this.seal();
    }
    if (this.openCount === 0) {
      const room = this.#roomFor(eventId);
      if (this.#pageUsed + room + need > this.#page.length) {
        // The old page lives on while messages in it wait for their acks.
        this.#page = new Uint8Array(Math.max(PAGE_BYTES, room + need));
        this.#pageUsed = 0;
      }
      this.#openRoomStart = this.#pageUsed;
      this.#openPayloadStart = this.#pageUsed + room;
      this.#openFirstId = eventId;
      this.#pageUsed = this.#openPayloadStart;
    }
    const page = this.#page;
    let at = this.#pageUsed;
    page[at++] = BATCH_EVENT_TAG;
    for (let length = event.length;; length >>>= 7) {
      if (length < 0x80) {
        page[at++] = length;
        break;
      }
      page[at++] = (length & 0x7f) | 0x80;
    }
    if (this.openCount === 0) this.#openFirstEventStart = at;
    page.set(event, at);
    this.#pageUsed = at + event.length;
    this.openCount++;
    if (this.openCount >= this.#eventsPerMessage) this.seal();
  }

  /**
   * Writes the open message's frame start before its events and queues it. A message of one event is a plain
   * RequestEvent (its bytes without the batch's tag and length) with Nats-Msg-Id = its id; a message of several
   * is a RequestEventBatch with the Tailwatch-Events header and the first event's id as Nats-Msg-Id.
   */
  seal(): void {
    const count = this.openCount;
    if (count === 0) return;
    const page = this.#page;
    const subjectPrefix = this.subjectPrefix;
    const payloadStart = count === 1 ? this.#openFirstEventStart : this.#openPayloadStart;
    const headers = textEncoder.encode(
      `${MSG_ID_HEADER_TEXT}${this.#openFirstId}\r\n${
        count > 1 ? `${EVENT_COUNT_LINE}${count}\r\n` : ""
      }\r\n`,
    );
    const totalBytes = headers.length + this.#pageUsed - payloadStart;
    const line = textEncoder.encode(`${headers.length} ${totalBytes}\r\n`);
    const start = payloadStart - headers.length - line.length - subjectPrefix.length;
    if (start < this.#openRoomStart) {
      throw new Error("events: the room for a message's headers was too small");
    }
    page.set(subjectPrefix, start);
    page.set(line, start + subjectPrefix.length);
    page.set(headers, start + subjectPrefix.length + line.length);
    page[this.#pageUsed++] = CR;
    page[this.#pageUsed++] = LF;
    this.#queue.pushBack({
      page,
      start,
      end: this.#pageUsed,
      count,
      payloadBytes: totalBytes,
      partition: this.#partitioner.choose(count),
    });
    this.openCount = 0;
    this.#openFirstId = "";
  }

  /**
   * The most a message's frame start can take, given its first event id (`seal` checks it was enough):
   * `HPUB <subject> ` + two decimals of at most 10 digits, a space and CRLF; then the headers: the Msg-Id line
   * (the id at most 3 UTF-8 bytes a character) and CRLF, the count line (at most 10 digits) and CRLF, and the
   * blank line.
   */
  #roomFor(eventId: string): number {
    return this.subjectPrefix.length + (10 + 1 + 10 + 2) +
      MSG_ID_HEADER.length + 3 * eventId.length + 2 + EVENT_COUNT_LINE.length + 10 + 2 + 2;
  }
}
