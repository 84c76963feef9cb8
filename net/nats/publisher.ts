/**
 * Request events: a bounded in-process buffer drained by a background publisher with pipelined JetStream
 * publishes. `emit` never blocks and never throws; when the buffer is full the event is dropped and counted.
 * Events emitted close together share one JetStream message (an `events.v1.RequestEventBatch`, see stream.ts),
 * whose events are fixed when it is sealed: publishes that fail (NATS down, timeouts) are retried as the same
 * message with the same Nats-Msg-Id, so the stream's duplicate window turns a retry of a message that did
 * arrive into a no-op.
 */
import type { RequestEvent } from "@tailwatch/proto/events/v1";
import {
  BATCH_EVENT_TAG,
  encodeRequestEventView,
  EVENT_COUNT_HEADER,
  MAX_EVENT_PARTITIONS,
  REQUEST_EVENTS_STREAM,
  type RequestEventFields,
  requestEventsStreamProblems,
  requestEventSubject,
  splitFrame,
  type StreamConfigLike,
} from "@tailwatch/events";
import type { Logger, Registry } from "@tailwatch/runtime";
import { describeNats, type NatsConfig, natsConfig, wireServers } from "./config.ts";
import { createNatsWire, natsErrorKind, type NatsWire, parseDecimal, type WireMessage } from "./wire.ts";

export type { RequestEvent };
export type RequestEventInit = RequestEventFields;

/**
 * A sealed message as it waits for JetStream: its whole HPUB frame without a reply subject (subject, headers,
 * protobuf body), built in a shared page as its events are emitted and sent from there, again on a retry.
 * Why pages: a buffer of its own per event (over V8's 64-byte limit for on-heap arrays) is a malloc, a free and
 * GC bookkeeping each, which cost more than building the frame.
 */
interface QueuedMessage {
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

/** A message written and awaiting its ack on `<inbox>.<token>`. */
interface Awaited {
  message: QueuedMessage;
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

/** Whether events are being published, and if not, why (the reason in a 503 /readyz). */
export interface EventsReadiness {
  ready: boolean;
  reason: string;
}

export interface EventSink {
  /** Queues an event; never blocks, never throws. Returns false when it was dropped. */
  emit(event: RequestEventInit): boolean;
  /**
   * Ready while events reach JetStream: connected, the stream checked and fit, no refusal from the server since
   * the last stored message, nothing waiting long for its ack. Otherwise not ready, with the reason.
   */
  readiness(): EventsReadiness;
  /** Events accepted but not yet acknowledged by JetStream (being batched, queued, in flight). */
  pending(): number;
  /** Waits until every accepted event is acknowledged, or the timeout; true when nothing is left. */
  flush(timeoutMs: number): Promise<boolean>;
  /** Flushes (bounded by `timeoutMs`) and closes the NATS connection. */
  close(timeoutMs: number): Promise<void>;
}

export interface EventSinkOptions {
  service: string;
  /** Servers, credentials and inbox prefix (a URL is read as NATS_URL alone). */
  nats: NatsConfig | string;
  /** Events held at most (queued plus in flight). */
  capacity: number;
  /** Events awaiting their ack at once (a message larger than this still goes when nothing else is awaited). */
  concurrency: number;
  /**
   * Events one JetStream message holds at most. Default 256; 1 publishes each event as a message of its own (a
   * plain RequestEvent with Nats-Msg-Id = its event id). Why batch: storing a message cost nats-server about
   * 5 us of CPU whatever its size (file or memory storage alike), as much as a third of serving a cheap
   * request; a message of many events costs it little more than a message of one.
   */
  eventsPerMessage?: number;
  /**
   * Partitions the events are spread over (EVENT_PARTITIONS): 1 (default) publishes on
   * `events.requests.<service>`; N > 1 publishes each message on `events.requests.<service>.<p>`, p in
   * 0..N-1, which ingest worker p reads (stream.ts, `partitionFilterSubjects`). Per message: a message's events
   * stay together.
   */
  partitions?: number;
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
    readiness: () => ({ ready: true, reason: "events disabled" }),
    pending: () => 0,
    flush: () => Promise.resolve(true),
    close: () => Promise.resolve(),
  };
}

/**
 * Connects to NATS in the background (requests never wait for it) and publishes every emitted event.
 *
 * Publishing is pipelined and acknowledged per message: every message carries a reply subject of its own
 * (`<inbox>.<token>`, one inbox subscription) that brings back JetStream's ack for it, and its events are
 * counted as published only when that ack says the message is stored. Until 2026-12 only the last message of a
 * write carried a reply, on the argument that JetStream stores a connection's messages in order; but a server
 * may drop a message without a reply silently (an ingest queue that is full answers 429 only to messages with
 * a reply; a message over the stream's limits), and the events of such a message were counted as published
 * while they were lost. A message holds up to 256 events by default, so an ack per message is little next to
 * the ack per event it replaced earlier (about a third more nats-server CPU per event then).
 *
 * The frames are written by hand on a connection of the sink's own (`nats_wire.ts`): through nats.js, a
 * publish and its ack cost a service about 25 us of CPU per event, a quarter of serving the request. A message
 * whose ack does not come within the timeout, or comes back as an error, is published again with the same
 * Nats-Msg-Ids, which the stream's duplicate window turns into no-ops for the copies that were stored.
 *
 * The stream is not created here (stream.ts: the setup step does it). At each connect, and after JetStream
 * refused a message, the sink asks for the stream's configuration on its own connection (`$JS.API.STREAM.INFO`)
 * and publishes only once the stream exists and fits (its subjects take this service's, file storage, a
 * duplicate window covering a retry); until then events wait in the buffer, the check is repeated, and
 * `readiness()` says what is wrong. A `-ERR` from the server (a permission the NATS user lacks, a refused
 * connection) is counted (`events_nats_server_errors_total{kind}`), logged as an error and makes the sink not
 * ready until a message is stored again; the refused messages are published again after their ack timeout.
 */
export function createEventSink(options: EventSinkOptions): EventSink {
  const { logger, metrics } = options;
  const nats = typeof options.nats === "string" ? natsConfig(options.nats) : options.nats;
  const servers = wireServers(nats);
  const timeoutMs = options.publishTimeoutMs ?? 5000;
  const publishIntervalMs = options.publishIntervalMs ?? 0;
  const eventsPerMessage = Math.max(1, options.eventsPerMessage ?? 256);
  const partitions = Math.max(1, Math.min(MAX_EVENT_PARTITIONS, Math.floor(options.partitions ?? 1)));
  let batchTimer: ReturnType<typeof setTimeout> | undefined;
  /** Sealed messages, oldest first; `queuedEvents` events in all. */
  const queue = new Ring<QueuedMessage>(options.capacity);
  let queuedEvents = 0;
  /** Messages written and awaiting their ack, by token, in the order sent. */
  const awaiting = new Map<number, Awaited>();
  /** Events in `awaiting`. */
  let awaitingEvents = 0;
  let nextToken = 0;
  /** True when events wait because `concurrency` events awaited their acks (an ack then pumps at once). */
  let heldBack = false;
  let retryAt = 0;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let backoffMs = 0;
  let closed = false;
  /** True once the stream is known to exist and fit, on the server of the current connection. */
  let streamReady = false;
  /** Why the stream is not ready (missing, unfit, no answer), once a check said so. */
  let streamProblem: string | undefined;
  /** The server's latest refusal (-ERR), until a message is stored again or a new connection is made. */
  let refusal: { text: string; at: number } | undefined;
  /** Why the latest connection attempt failed. */
  let lastConnectError: string | undefined;
  /** When events last made progress: an ack that stored a message, or the first event after none pending. */
  let lastProgressAt = Date.now();
  const idleWaiters = new Set<() => void>();

  const published = metrics.counter(
    "events_published_total",
    "Events acknowledged by JetStream (each message is counted when its own ack comes).",
  );
  const duplicates = metrics.counter(
    "events_duplicate_acks_total",
    "Acks that reported a duplicate: a message published again that had been stored before.",
  );
  const refusals = metrics.counter(
    "events_publish_refused_total",
    "Messages JetStream answered with an error (stream full, queue full, no stream): published again.",
  );
  const dropped = metrics.counter(
    "events_dropped_total",
    "Events dropped: the buffer was full, or an event larger than the server's max_payload (events_too_large_total).",
  );
  const tooLarge = metrics.counter(
    "events_too_large_total",
    "Events dropped because no message the server's max_payload allows could hold them.",
  );
  const retries = metrics.counter(
    "events_publish_retries_total",
    "Events published again after an error, a timeout or a reconnect.",
  );
  metrics.gaugeFn(
    "events_buffer_depth",
    "Events accepted and not yet acknowledged.",
    () => pendingEvents(),
  );
  metrics.gaugeFn("events_buffer_capacity", "Events the buffer holds at most.", () => options.capacity);
  const connectedGauge = metrics.gauge("events_nats_connected", "1 while connected to NATS.");
  const disconnects = metrics.counter(
    "events_nats_disconnects_total",
    "Times the connection to NATS was lost.",
  );
  const serverErrors = metrics.counter(
    "events_nats_server_errors_total",
    "Errors (-ERR) the NATS server sent: a permission the user lacks, a refused connection, ...",
    ["kind"],
  );
  metrics.gaugeFn(
    "events_ready",
    "1 while events reach JetStream (/readyz says why not).",
    () => readiness().ready ? 1 : 0,
  );

  const inbox = `${nats.inboxPrefix}.${crypto.randomUUID().replaceAll("-", "")}`;
  /** The shortest duplicate window that drops a retried copy of a stored message: see `minDuplicateWindowMs`. */
  /** The subject of each partition: unpartitioned with one partition. */
  const subjects = partitions === 1
    ? [requestEventSubject(options.service)]
    : Array.from({ length: partitions }, (_, p) => requestEventSubject(options.service, p));
  const needs = {
    publishSubjects: subjects,
    minDuplicateWindowMs: minDuplicateWindowMs(timeoutMs),
  };
  const INBOX_SID = 1;
  /**
   * Room for `HPUB <subject> ` at the start of each message in its page (`seal` writes the unpartitioned
   * subject there; what is sent starts after it, behind the reply line of the message's partition).
   */
  const subjectPrefix = textEncoder.encode(`HPUB ${requestEventSubject(options.service)} `);
  /** `HPUB <subject> <inbox>.` per partition: every frame is sent with its partition's, its token follows. */
  const replyLineStarts = subjects.map((subject) => `HPUB ${subject} ${inbox}.`);
  const ackSubjectTokenStart = inbox.length + 1;
  /**
   * The partition of the next message: the one this publisher has given the fewest events so far, ties in turn
   * from a random start. Why not round-robin over messages: messages differ in size (a write's last message is
   * partial, sealed by the publish interval), so counting events keeps the workers' loads equal within one
   * message; why not a hash of the message id: a hash is even only on average, this is even at every moment.
   * The random start keeps many replicas that each publish little from all beginning with partition 0.
   */
  const partitionEvents = new Float64Array(partitions);
  let partitionTurn = Math.floor(Math.random() * partitions);
  function choosePartition(count: number): number {
    if (partitions === 1) return 0;
    let best = partitionTurn;
    for (let i = 1; i < partitions; i++) {
      const p = (partitionTurn + i) % partitions;
      if (partitionEvents[p] < partitionEvents[best]) best = p;
    }
    partitionEvents[best] += count;
    partitionTurn = (best + 1) % partitions;
    return best;
  }

  const PAGE_BYTES = 256 * 1024;
  /** Bytes of events one message holds at most (nats-server refuses payloads over 1 MiB by default). */
  const MAX_MESSAGE_BYTES = 256 * 1024;
  /**
   * Bytes of events one message holds at most now: 256 KiB, or less when the server's max_payload (from its
   * INFO; nats_wire.ts `maxPayload`) leaves less room after the headers. A message sealed larger than the
   * server it is sent to takes (sealed before the first INFO, or for another server) is split in `pump`.
   */
  const maxMessageBytes = () => Math.min(MAX_MESSAGE_BYTES, wire.maxPayload - MESSAGE_HEADER_ROOM);
  let page = new Uint8Array(PAGE_BYTES);
  let pageUsed = 0;

  /**
   * The message being filled: its events are written into the page as they come, each as field 1 of a
   * RequestEventBatch (tag, length, event), after room left for the frame's start (`HPUB` line and headers),
   * which `seal` writes once the events are known, right before them.
   */
  let openCount = 0;
  let openFirstId = "";
  /** Where the message's room starts, where its first event's tag is, and where that event's bytes are. */
  let openRoomStart = 0;
  let openPayloadStart = 0;
  let openFirstEventStart = 0;

  const pendingEvents = () => openCount + queuedEvents + awaitingEvents;

  /**
   * The most a message's frame start can take, given its first event id (`seal` checks it was enough):
   * `HPUB <subject> ` + two decimals of at most 10 digits, a space and CRLF; then the headers: the Msg-Id line
   * (the id at most 3 UTF-8 bytes a character) and CRLF, the count line (at most 10 digits) and CRLF, and the
   * blank line.
   */
  const roomFor = (eventId: string) =>
    subjectPrefix.length + (10 + 1 + 10 + 2) +
    MSG_ID_HEADER.length + 3 * eventId.length + 2 + EVENT_COUNT_LINE.length + 10 + 2 + 2;

  /** Adds an event to the open message, sealing it first when the event does not fit. */
  function appendEvent(eventId: string, event: Uint8Array): void {
    const need = 6 + event.length + 2;
    if (
      openCount > 0 &&
      (pageUsed + need > page.length || pageUsed - openPayloadStart + need > maxMessageBytes())
    ) {
      seal();
    }
    if (openCount === 0) {
      const room = roomFor(eventId);
      if (pageUsed + room + need > page.length) {
        // The old page lives on while messages in it wait for their acks.
        page = new Uint8Array(Math.max(PAGE_BYTES, room + need));
        pageUsed = 0;
      }
      openRoomStart = pageUsed;
      openPayloadStart = pageUsed + room;
      openFirstId = eventId;
      pageUsed = openPayloadStart;
    }
    let at = pageUsed;
    page[at++] = BATCH_EVENT_TAG;
    for (let length = event.length;; length >>>= 7) {
      if (length < 0x80) {
        page[at++] = length;
        break;
      }
      page[at++] = (length & 0x7f) | 0x80;
    }
    if (openCount === 0) openFirstEventStart = at;
    page.set(event, at);
    pageUsed = at + event.length;
    openCount++;
    if (openCount >= eventsPerMessage) seal();
  }

  /**
   * Writes the open message's frame start before its events and queues it. A message of one event is a plain
   * RequestEvent (its bytes without the batch's tag and length) with Nats-Msg-Id = its id; a message of several
   * is a RequestEventBatch with the Tailwatch-Events header and the first event's id as Nats-Msg-Id.
   */
  function seal(): void {
    if (openCount === 0) return;
    const payloadStart = openCount === 1 ? openFirstEventStart : openPayloadStart;
    const headers = textEncoder.encode(
      `${MSG_ID_HEADER_TEXT}${openFirstId}\r\n${
        openCount > 1 ? `${EVENT_COUNT_LINE}${openCount}\r\n` : ""
      }\r\n`,
    );
    const totalBytes = headers.length + pageUsed - payloadStart;
    const line = textEncoder.encode(`${headers.length} ${totalBytes}\r\n`);
    const start = payloadStart - headers.length - line.length - subjectPrefix.length;
    if (start < openRoomStart) throw new Error("events: the room for a message's headers was too small");
    page.set(subjectPrefix, start);
    page.set(line, start + subjectPrefix.length);
    page.set(headers, start + subjectPrefix.length + line.length);
    page[pageUsed++] = CR;
    page[pageUsed++] = LF;
    queue.pushBack({
      page,
      start,
      end: pageUsed,
      count: openCount,
      payloadBytes: totalBytes,
      partition: choosePartition(openCount),
    });
    queuedEvents += openCount;
    openCount = 0;
    openFirstId = "";
  }

  const wire: NatsWire = createNatsWire({
    servers,
    name: `${options.service}-events`,
    logger,
    onConnected(reconnected) {
      wire.writeText(`SUB ${inbox}.* ${INBOX_SID}\r\n`);
      connectedGauge.set(1);
      lastConnectError = undefined;
      refusal = undefined;
      lastProgressAt = Date.now();
      logger.info("events: connected to NATS", { nats: describeNats(nats) });
      // After a reconnect, acks for publishes sent before the disconnect may never come (the server may have
      // restarted); they are published again once the stream is checked, rather than after their timeout.
      if (reconnected) requeueUnacknowledged();
      checkStream();
    },
    onMoved() {
      // A lame-duck move: the old server is going. Acks of what was sent there may still come on the old
      // connection, but every message awaiting one is sent again here at once under its Nats-Msg-Id (the
      // stream drops the copies it stored), rather than after its ack timeout.
      wire.writeText(`SUB ${inbox}.* ${INBOX_SID}\r\n`);
      logger.info("events: moved to another NATS server (the old one is in lame duck mode)", {
        server: wire.server,
        awaiting: awaitingEvents,
      });
      requeueUnacknowledged();
      pump(publishIntervalMs === 0);
    },
    onDisconnected() {
      connectedGauge.set(0);
      disconnects.inc();
      streamReady = false;
      cancelCheck();
    },
    onMessage: onInboxMessage,
    onServerError,
    onConnectFailed(reason) {
      lastConnectError = reason;
    },
  });

  /** Distinct refusal texts logged, and when, so that a refusal repeated every retry is logged every 10 s. */
  const refusalLogged = new Map<string, number>();
  function onServerError(text: string): void {
    const kind = natsErrorKind(text);
    serverErrors.inc({ kind });
    const now = Date.now();
    refusal = { text, at: now };
    const last = refusalLogged.get(text);
    if (last === undefined || now - last >= 10_000) {
      if (refusalLogged.size > 100) refusalLogged.clear();
      refusalLogged.set(text, now);
      logger.error("events: NATS refused", {
        error: text,
        kind,
        nats: describeNats(nats),
        pending: pendingEvents(),
        hint: kind === "permissions"
          ? `the NATS user may publish to ${
            partitions === 1 ? subjects[0] : `${requestEventSubject(options.service)}.>`
          }, read $JS.API.STREAM.INFO.${REQUEST_EVENTS_STREAM} ` +
            `and subscribe to ${nats.inboxPrefix}.> (deploy/nats/auth.conf)`
          : undefined,
      });
    }
  }

  // The stream check: `$JS.API.STREAM.INFO.REQUEST_EVENTS` on this connection, answered on `<inbox>.s<n>`.
  let checkSerial = 0;
  /** The check awaiting its answer (its serial), or 0. */
  let checkAwaited = 0;
  let checkTimer: ReturnType<typeof setTimeout> | undefined;
  let checkFailures = 0;
  let lastProblemLog = 0;
  const cancelCheck = () => {
    checkAwaited = 0;
    clearTimeout(checkTimer);
    checkTimer = undefined;
  };
  /** Asks for the stream's configuration (again after a failed check: 0.5 s, doubling, at most 5 s). */
  function checkStream(): void {
    if (closed || !wire.connected || checkAwaited !== 0) return;
    clearTimeout(checkTimer);
    const serial = ++checkSerial;
    checkAwaited = serial;
    wire.writeText(`PUB $JS.API.STREAM.INFO.${REQUEST_EVENTS_STREAM} ${inbox}.s${serial} 0\r\n\r\n`);
    checkTimer = setTimeout(() => {
      if (checkAwaited !== serial) return;
      checkAwaited = 0;
      streamChecked([
        `no answer to the stream check within ${CHECK_TIMEOUT_MS / 1000} s` +
        (refusal ? ` (the server refused: ${refusal.text})` : ""),
      ]);
    }, CHECK_TIMEOUT_MS);
  }
  /** The answer to a stream check: the StreamInfo JSON, a JetStream error, or a 503 status (no JetStream). */
  function onCheckAnswer(message: WireMessage, serial: number): void {
    if (serial !== checkAwaited) return; // an earlier check's late answer
    cancelCheck();
    const headers = textDecoder.decode(message.buf.subarray(message.payloadStart, message.headerEnd));
    const body = textDecoder.decode(message.buf.subarray(message.headerEnd, message.end));
    if (/^NATS\/1\.0 503/.test(headers)) {
      streamChecked(["JetStream did not answer the stream check (503 no responders: is JetStream enabled?)"]);
      return;
    }
    let answer: {
      config?: StreamConfigLike;
      error?: { code?: number; err_code?: number; description?: string };
    };
    try {
      answer = JSON.parse(body);
    } catch {
      streamChecked([`the stream check got an answer that is not JSON: ${body.slice(0, 200)}`]);
      return;
    }
    if (answer.error) {
      if (answer.error.err_code === STREAM_NOT_FOUND || answer.error.code === 404) {
        streamChecked(requestEventsStreamProblems(undefined, needs));
      } else {
        streamChecked([
          `the stream check failed: ${answer.error.description ?? JSON.stringify(answer.error)}`,
        ]);
      }
      return;
    }
    streamChecked(requestEventsStreamProblems(answer.config ?? {}, needs));
  }
  function streamChecked(problems: string[]): void {
    if (problems.length === 0) {
      if (streamProblem !== undefined) logger.info("events: the stream is there and fits; publishing");
      streamReady = true;
      streamProblem = undefined;
      checkFailures = 0;
      lastProgressAt = Date.now();
      pump();
      return;
    }
    streamReady = false;
    const problem = problems.join("; ");
    const now = Date.now();
    if (problem !== streamProblem || now - lastProblemLog >= 60_000) {
      lastProblemLog = now;
      logger.error("events: waiting for the stream to be there and fit (events wait in the buffer)", {
        problem,
        pending: pendingEvents(),
      });
    }
    streamProblem = problem;
    const delay = Math.min(5_000, 500 * 2 ** Math.min(checkFailures++, 4));
    checkTimer = setTimeout(checkStream, delay);
  }

  function readiness(): EventsReadiness {
    if (closed) return { ready: false, reason: "events: closed" };
    if (!wire.connected) {
      return {
        ready: false,
        reason: `events: not connected to NATS${lastConnectError ? ` (${lastConnectError})` : ""}`,
      };
    }
    if (refusal) return { ready: false, reason: `events: NATS refused: ${refusal.text}` };
    if (!streamReady) return { ready: false, reason: `events: ${streamProblem ?? "checking the stream"}` };
    const waited = Date.now() - lastProgressAt;
    if (pendingEvents() > 0 && waited >= Math.max(2 * timeoutMs, 10_000)) {
      return {
        ready: false,
        reason: `events: ${pendingEvents()} events pending, none acknowledged by JetStream for ${
          Math.round(waited / 1000)
        } s`,
      };
    }
    return { ready: true, reason: "events: publishing" };
  }

  const notifyIfIdle = () => {
    if (pendingEvents() === 0) {
      for (const wake of idleWaiters) wake();
    }
  };

  let lastWarning = 0;
  /** Puts messages back at the front of the queue, in order, and backs off before the next write. */
  const requeue = (messages: QueuedMessage[]) => {
    // The ring has room: the messages held their places while they were awaited.
    for (let i = messages.length - 1; i >= 0; i--) {
      queue.pushFront(messages[i]);
      queuedEvents += messages[i].count;
    }
  };
  /** Puts messages that were not stored back in the queue, to be published again after a backoff. */
  const retry = (messages: QueuedMessage[], reason: string) => {
    if (messages.length === 0) return;
    retries.inc(undefined, messages.reduce((sum, message) => sum + message.count, 0));
    requeue(messages);
    const now = Date.now();
    // A failed round (many messages failing together) raises the backoff once.
    if (now >= retryAt) {
      backoffMs = Math.min(MAX_RETRY_BACKOFF_MS, backoffMs === 0 ? 50 : backoffMs * 2);
      retryAt = now + backoffMs;
    }
    if (now - lastWarning > 5000) {
      lastWarning = now;
      logger.warn("events: publish not acknowledged, retrying", {
        reason,
        pending: pendingEvents(),
      });
    }
    schedulePump();
  };

  const takeAwaited = (token: number): QueuedMessage | undefined => {
    const entry = awaiting.get(token);
    if (entry === undefined) return undefined;
    awaiting.delete(token);
    awaitingEvents -= entry.message.count;
    return entry.message;
  };

  /**
   * A JetStream ack on `<inbox>.<token>`: {"stream":..,"seq":..[,"duplicate": true]}. Anything else (an error
   * object such as a full stream, a 503 "no responders" status as an HMSG with an empty body) means the
   * message is not stored: it is published again, and counted only once an ack says it is stored. The answer
   * to a stream check comes on `<inbox>.s<serial>`.
   */
  function onInboxMessage(message: WireMessage) {
    if (message.sid !== INBOX_SID) return;
    const { buf } = message;
    const tokenStart = message.subjectStart + ackSubjectTokenStart;
    if (buf[tokenStart] === 0x73 /* s */) {
      onCheckAnswer(message, parseDecimal(buf, tokenStart + 1, message.subjectEnd));
      return;
    }
    const token = parseDecimal(buf, tokenStart, message.subjectEnd);
    // Unknown: already published again after a timeout; that copy's own ack will count it.
    const acked = takeAwaited(token);
    if (acked === undefined) return;
    const isStatus = message.headerEnd > message.payloadStart;
    if (
      !isStatus && contains(buf, message.headerEnd, message.end, SEQ_KEY) &&
      !contains(buf, message.headerEnd, message.end, ERROR_KEY)
    ) {
      backoffMs = 0;
      lastProgressAt = Date.now();
      if (refusal !== undefined) {
        logger.info("events: stored again after the server's refusal", { refusal: refusal.text });
        refusal = undefined;
      }
      published.inc(undefined, acked.count);
      if (isTrue(buf, message.headerEnd, message.end, DUPLICATE_KEY)) duplicates.inc();
      // Only messages held back by the concurrency limit go now; the open message waits for its timer, or acks
      // arriving one by one would seal and send it a few events per message. (Without a timer, at once.)
      if (heldBack) pump(publishIntervalMs === 0);
      notifyIfIdle();
    } else if (contains(buf, message.headerEnd, message.end, IN_PROCESS_CODE)) {
      // "duplicate message id is in process": a copy sent again (after a lame-duck move, a timeout) while the
      // server still stores the first. Not a refusal: sent again after the backoff, it is acked as a duplicate.
      retry([acked], "duplicate message id is in process");
    } else {
      refusals.inc();
      const reason = textDecoder.decode(buf.subarray(message.payloadStart, message.end)).trim();
      retry([acked], reason || "empty answer");
      // The stream may be gone (deleted, or a server that restarted without its store) or changed: check it
      // before the next write (publishing waits while it is missing or unfit).
      streamReady = false;
      checkStream();
    }
  }

  /** Puts every message awaiting its ack back at the front of the queue, in order. */
  function requeueUnacknowledged() {
    const messages = [...awaiting.values()].map((entry) => entry.message);
    awaiting.clear();
    awaitingEvents = 0;
    retries.inc(undefined, messages.reduce((sum, message) => sum + message.count, 0));
    requeue(messages);
    backoffMs = 0;
    retryAt = 0;
  }

  function sweep() {
    const cutoff = Date.now() - timeoutMs;
    const expired: QueuedMessage[] = [];
    for (const [token, entry] of awaiting) {
      // Map order is publish order: stop at the first message still within its timeout.
      if (entry.sentAt > cutoff) break;
      expired.push(takeAwaited(token)!);
    }
    retry(expired, "ack timeout");
  }
  const sweeper = setInterval(sweep, Math.min(1000, timeoutMs / 2));

  const schedulePump = () => {
    if (retryTimer !== undefined) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      pump();
    }, Math.max(0, retryAt - Date.now()));
  };

  /**
   * Seals the open message (unless `sealOpen` is false) and sends queued messages, up to `concurrency` events
   * awaiting their acks (at least one message when none is awaited), in one write, each with its own ack.
   */
  function pump(sealOpen = true) {
    if (!streamReady || !wire.connected || closed && pendingEvents() - awaitingEvents === 0) return;
    const now = Date.now();
    if (now < retryAt) {
      schedulePump();
      return;
    }
    if (sealOpen) seal();
    const messages: QueuedMessage[] = [];
    let room = options.concurrency - awaitingEvents;
    while (queue.size > 0) {
      const next = queue.peekFront()!;
      if (next.payloadBytes > wire.maxPayload) {
        fitToServer();
        continue;
      }
      if (next.count > room && (messages.length > 0 || awaitingEvents > 0)) break;
      queue.popFront();
      queuedEvents -= next.count;
      messages.push(next);
      room -= next.count;
    }
    heldBack = queue.size > 0;
    if (messages.length === 0) return;
    // Connected at the start of this synchronous call, so still connected: the writes are queued (and leave in
    // one socket write). Were the connection to drop before they leave, the reconnect requeues every message
    // awaiting an ack. Every message carries a reply subject of its own, `HPUB <subject> <inbox>.<token> `
    // and the rest of its frame: JetStream answers each, and a message it did not store (a full stream, an
    // ingest queue that is full answers 429 only to messages with a reply) is published again, never counted.
    for (const message of messages) {
      const token = nextToken++;
      wire.writeText(`${replyLineStarts[message.partition]}${token} `);
      wire.write(message.page.subarray(message.start + subjectPrefix.length, message.end));
      awaiting.set(token, { message, sentAt: now });
      awaitingEvents += message.count;
    }
  }

  /**
   * The message at the front of the queue is larger than the server's max_payload: it is split into messages
   * that fit (message_split.ts), and an event too large for any message is dropped and counted.
   */
  function fitToServer(): void {
    const message = queue.popFront()!;
    queuedEvents -= message.count;
    const pieces = splitFrame(
      message.page.subarray(message.start, message.end),
      message.count,
      wire.maxPayload,
    );
    const fitting = pieces.filter((piece) => piece.payloadBytes <= wire.maxPayload);
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
      queuedEvents += piece.count;
    }
    logger.info("events: a message larger than the server's max_payload split", {
      maxPayload: wire.maxPayload,
      bytes: message.payloadBytes,
      events: message.count,
      messages: fitting.length,
    });
    if (lost > 0) {
      dropped.inc(undefined, lost);
      tooLarge.inc(undefined, lost);
      logger.error("events: an event larger than the server's max_payload dropped", {
        maxPayload: wire.maxPayload,
        events: lost,
      });
      notifyIfIdle();
    }
  }

  return {
    emit(init) {
      const pendingBefore = pendingEvents();
      if (pendingBefore >= options.capacity || closed) {
        dropped.inc();
        return false;
      }
      if (pendingBefore === 0) lastProgressAt = Date.now();
      appendEvent(init.eventId, encodeRequestEventView(init));
      if (awaitingEvents >= options.concurrency) {
        // The next ack pumps: with no timer pending, nothing else would.
        heldBack = true;
      } else if (publishIntervalMs === 0) {
        pump();
      } else if (batchTimer === undefined) {
        batchTimer = setTimeout(() => {
          batchTimer = undefined;
          pump();
        }, publishIntervalMs);
      }
      return true;
    },
    readiness,
    pending: () => pendingEvents(),
    async flush(timeoutMs) {
      if (pendingEvents() === 0) return true;
      let wake!: () => void;
      const idle = new Promise<void>((resolve) => wake = resolve);
      idleWaiters.add(wake);
      const timer = setTimeout(wake, timeoutMs);
      await idle;
      clearTimeout(timer);
      idleWaiters.delete(wake);
      return pendingEvents() === 0;
    },
    async close(timeoutMs) {
      const flushed = await this.flush(timeoutMs);
      if (!flushed) {
        logger.error("events: shutting down with unpublished events", {
          pending: pendingEvents(),
        });
      }
      closed = true;
      cancelCheck();
      clearTimeout(retryTimer);
      clearTimeout(batchTimer);
      clearInterval(sweeper);
      await wire.close();
    },
  };
}

/** How long a stream check waits for its answer before it counts as failed (and is asked again). */
const CHECK_TIMEOUT_MS = 5_000;
/** JetStream's error code for "stream not found". */
const STREAM_NOT_FOUND = 10059;
/** The longest backoff between two publishes of a message (see `retry`). */
const MAX_RETRY_BACKOFF_MS = 1_000;
/** Room for a message's headers (Nats-Msg-Id, Tailwatch-Events) within max_payload. */
const MESSAGE_HEADER_ROOM = 512;

/**
 * The duplicate window the stream needs for a publisher whose acks time out after `publishTimeoutMs`: a copy
 * published again after the timeout and the backoff must still fall within the window of the first, or both
 * are stored (ingest would then drop the second by event id, but the stream would hold it twice). Twice that
 * delay, so a retry after a reconnect fits too: 12 s with the default 5 s timeout; the setup step's default is
 * 10 minutes.
 */
export function minDuplicateWindowMs(publishTimeoutMs: number): number {
  return 2 * (publishTimeoutMs + MAX_RETRY_BACKOFF_MS);
}

const CR = 0x0d;
const LF = 0x0a;
const SPACE = 0x20;
const COLON = 0x3a;
const textEncoder = new TextEncoder();
const MSG_ID_HEADER_TEXT = "NATS/1.0\r\nNats-Msg-Id: ";
const MSG_ID_HEADER = textEncoder.encode(MSG_ID_HEADER_TEXT);
const EVENT_COUNT_LINE = `${EVENT_COUNT_HEADER}: `;
const textDecoder = new TextDecoder();
const SEQ_KEY = textEncoder.encode(`"seq"`);
const ERROR_KEY = textEncoder.encode(`"error"`);
const DUPLICATE_KEY = textEncoder.encode(`"duplicate"`);
/** JetStream's err_code for "duplicate message id is in process" (JSStreamDuplicateMessageConflict). */
const IN_PROCESS_CODE = textEncoder.encode(`"err_code":10158`);

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
