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
  encodeRequestEventView,
  MAX_EVENT_PARTITIONS,
  REQUEST_EVENTS_STREAM,
  type RequestEventFields,
  requestEventSubject,
} from "@tailwatch/events";
import type { Logger, Registry } from "@tailwatch/runtime";
import { ackOutcome, AckTracker } from "./acks.ts";
import { MessageBuilder, MessageQueue, Partitioner, type QueuedMessage, splitFront } from "./outbox.ts";
import { describeNats, type NatsConfig, natsConfig, wireServers } from "./config.ts";
import { natsErrorKind, parseDecimal, type WireMessage } from "./protocol.ts";
import { StreamCheck } from "./stream_check.ts";
import { createNatsWire, type NatsWire } from "./wire.ts";

export type { RequestEvent };
export type RequestEventInit = RequestEventFields;

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
 * The frames are written by hand on a connection of the sink's own (`wire.ts`): through nats.js, a publish
 * and its ack cost a service about 25 us of CPU per event, a quarter of serving the request. A message whose
 * ack does not come within the timeout, or comes back as an error, is published again with the same
 * Nats-Msg-Ids, which the stream's duplicate window turns into no-ops for the copies that were stored.
 *
 * The stream is not created here (stream.ts: the setup step does it). At each connect, and after JetStream
 * refused a message, the sink asks for the stream's configuration on its own connection (`$JS.API.STREAM.INFO`)
 * and publishes only once the stream exists and fits (its subjects take this service's, file storage, a
 * duplicate window covering a retry); until then events wait in the buffer, the check is repeated, and
 * `readiness()` says what is wrong. A `-ERR` from the server (a permission the NATS user lacks, a refused
 * connection) is counted (`events_nats_server_errors_total{kind}`), logged as an error and makes the sink not
 * ready until a message is stored again; the refused messages are published again after their ack timeout.
 *
 * How an event travels, and the steps that move it: `emit` appends it to the open message (`MessageBuilder`,
 * outbox.ts), sealed into the queue (`MessageQueue`) when full or when `pump` sends; `pump` (the flush loop)
 * writes queued messages up to `concurrency` events awaiting acks (`AckTracker`, acks.ts), splitting one too
 * large for the server (`fitToServer`); `onInboxMessage` takes each ack (`stored`, or `retry` after a backoff,
 * with `refused` asking for a new stream check, stream_check.ts); `sweep` retries what timed out, and a
 * reconnect or a lame-duck move (`onConnected`, `onMoved`) requeues everything awaited at once. `readiness`
 * and the metrics (`sinkCounters`) say how it goes.
 */
export function createEventSink(options: EventSinkOptions): EventSink {
  const nats = typeof options.nats === "string" ? natsConfig(options.nats) : options.nats;
  const servers = wireServers(nats);
  const counters = sinkCounters(
    options.metrics,
    options.capacity,
    () => pendingEvents(sink),
    () => readiness(sink).ready,
  );
  const inbox = `${nats.inboxPrefix}.${crypto.randomUUID().replaceAll("-", "")}`;
  // The wire calls back only once a connection attempt has ended (never before this function returns), so
  // `sink` is set by then.
  const wire: NatsWire = createNatsWire({
    servers,
    name: `${options.service}-events`,
    logger: options.logger,
    onConnected: (reconnected) => onConnected(sink, reconnected),
    onMoved: () => onMoved(sink),
    onDisconnected: () => onDisconnected(sink),
    onMessage: (message) => onInboxMessage(sink, message),
    onServerError: (text) => onServerError(sink, text),
    onConnectFailed(reason) {
      sink.lastConnectError = reason;
    },
  });
  const sink = sinkState(options, nats, inbox, counters, wire);
  const sweeper = setInterval(() => sweep(sink), Math.min(1000, sink.timeoutMs / 2));
  return sinkHandle(sink, sweeper);
}

/** The sink's counters and gauges (registered in this order; the gauges read the sink at scrape time). */
interface SinkCounters {
  published: Counter;
  duplicates: Counter;
  refusals: Counter;
  dropped: Counter;
  tooLarge: Counter;
  retries: Counter;
  connected: Gauge;
  disconnects: Counter;
  serverErrors: Counter;
}
type Counter = ReturnType<Registry["counter"]>;
type Gauge = ReturnType<Registry["gauge"]>;

/** Registers the sink's metrics: `pending` and `ready` are read at each scrape. */
function sinkCounters(
  metrics: Registry,
  capacity: number,
  pending: () => number,
  ready: () => boolean,
): SinkCounters {
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
  metrics.gaugeFn("events_buffer_depth", "Events accepted and not yet acknowledged.", pending);
  metrics.gaugeFn("events_buffer_capacity", "Events the buffer holds at most.", () => capacity);
  const connected = metrics.gauge("events_nats_connected", "1 while connected to NATS.");
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
    () => ready() ? 1 : 0,
  );
  return {
    published,
    duplicates,
    refusals,
    dropped,
    tooLarge,
    retries,
    connected,
    disconnects,
    serverErrors,
  };
}

/** The inbox subscription's sid: acks on `<inbox>.<token>`, stream checks on `<inbox>.s<serial>`. */
const INBOX_SID = 1;

/** Everything one sink holds; the steps below share it. */
interface SinkState {
  readonly options: EventSinkOptions;
  readonly logger: Logger;
  readonly nats: NatsConfig;
  /** How long one publish waits for its ack before it is retried. */
  readonly timeoutMs: number;
  readonly publishIntervalMs: number;
  readonly partitions: number;
  /** The subject of each partition: unpartitioned with one partition. */
  readonly subjects: string[];
  readonly inbox: string;
  /** `HPUB <subject> <inbox>.` per partition: every frame is sent with its partition's, its token follows. */
  readonly replyLineStarts: string[];
  /** Where the token starts in an inbox subject (`<inbox>.<token>`). */
  readonly ackSubjectTokenStart: number;
  readonly wire: NatsWire;
  readonly counters: SinkCounters;
  // The buffer: the open message, then sealed messages queued, then messages awaiting their acks.
  readonly builder: MessageBuilder;
  readonly queue: MessageQueue;
  readonly acks: AckTracker;
  readonly check: StreamCheck;
  // The flush loop.
  batchTimer: ReturnType<typeof setTimeout> | undefined;
  /** True when events wait because `concurrency` events awaited their acks (an ack then pumps at once). */
  heldBack: boolean;
  /** No write before this time (epoch ms): the backoff after a failed publish. */
  retryAt: number;
  retryTimer: ReturnType<typeof setTimeout> | undefined;
  backoffMs: number;
  /** When a retry was last logged (one warning per 5 s). */
  lastWarning: number;
  closed: boolean;
  // Readiness.
  /** The server's latest refusal (-ERR), until a message is stored again or a new connection is made. */
  refusal: { text: string; at: number } | undefined;
  /** Distinct refusal texts logged, and when, so that a refusal repeated every retry is logged every 10 s. */
  readonly refusalLogged: Map<string, number>;
  /** Why the latest connection attempt failed. */
  lastConnectError: string | undefined;
  /** When events last made progress: an ack that stored a message, or the first event after none pending. */
  lastProgressAt: number;
  /** `flush` calls waiting for nothing to be pending. */
  readonly idleWaiters: Set<() => void>;
}

/** The sink's settings with their defaults, its empty buffer, and its stream check (not asked yet). */
function sinkState(
  options: EventSinkOptions,
  nats: NatsConfig,
  inbox: string,
  counters: SinkCounters,
  wire: NatsWire,
): SinkState {
  const timeoutMs = options.publishTimeoutMs ?? 5000;
  const eventsPerMessage = Math.max(1, options.eventsPerMessage ?? 256);
  const partitions = Math.max(1, Math.min(MAX_EVENT_PARTITIONS, Math.floor(options.partitions ?? 1)));
  const subjects = partitions === 1
    ? [requestEventSubject(options.service)]
    : Array.from({ length: partitions }, (_, p) => requestEventSubject(options.service, p));
  /** What the stream must be for this sink: its subjects stored, a duplicate window that drops a retry. */
  const needs = {
    publishSubjects: subjects,
    minDuplicateWindowMs: minDuplicateWindowMs(timeoutMs),
  };
  const queue = new MessageQueue(options.capacity);
  const sink: SinkState = {
    options,
    logger: options.logger,
    nats,
    timeoutMs,
    publishIntervalMs: options.publishIntervalMs ?? 0,
    partitions,
    subjects,
    inbox,
    replyLineStarts: subjects.map((subject) => `HPUB ${subject} ${inbox}.`),
    ackSubjectTokenStart: inbox.length + 1,
    wire,
    counters,
    builder: new MessageBuilder(options.service, eventsPerMessage, queue, new Partitioner(partitions), wire),
    queue,
    acks: new AckTracker(),
    check: new StreamCheck(wire, inbox, needs, options.logger, {
      closed: () => sink.closed,
      refusal: () => sink.refusal?.text,
      pending: () => pendingEvents(sink),
      ready() {
        sink.lastProgressAt = Date.now();
        pump(sink);
      },
    }),
    batchTimer: undefined,
    heldBack: false,
    retryAt: 0,
    retryTimer: undefined,
    backoffMs: 0,
    lastWarning: 0,
    closed: false,
    refusal: undefined,
    refusalLogged: new Map<string, number>(),
    lastConnectError: undefined,
    lastProgressAt: Date.now(),
    idleWaiters: new Set<() => void>(),
  };
  return sink;
}

/** What the sink's owner calls. */
function sinkHandle(sink: SinkState, sweeper: ReturnType<typeof setInterval>): EventSink {
  return {
    emit: (init) => emit(sink, init),
    readiness: () => readiness(sink),
    pending: () => pendingEvents(sink),
    flush: (timeoutMs) => flush(sink, timeoutMs),
    async close(timeoutMs) {
      const flushed = await this.flush(timeoutMs);
      if (!flushed) {
        sink.logger.error("events: shutting down with unpublished events", {
          pending: pendingEvents(sink),
        });
      }
      sink.closed = true;
      sink.check.cancel();
      clearTimeout(sink.retryTimer);
      clearTimeout(sink.batchTimer);
      clearInterval(sweeper);
      await sink.wire.close();
    },
  };
}

// --- The buffer and its bounds ---

/** Events accepted and not yet acknowledged: in the open message, queued, awaiting their acks. */
function pendingEvents(sink: SinkState): number {
  return sink.builder.openCount + sink.queue.events + sink.acks.events;
}

/**
 * Takes an event into the open message, unless `capacity` events are pending (or the sink is closed): then
 * it is dropped and counted. Sends at once (`publishIntervalMs` 0), or starts the publish interval's timer,
 * or, when `concurrency` events await their acks, leaves it to the next ack.
 */
function emit(sink: SinkState, init: RequestEventInit): boolean {
  const { options } = sink;
  const pendingBefore = pendingEvents(sink);
  if (pendingBefore >= options.capacity || sink.closed) {
    sink.counters.dropped.inc();
    return false;
  }
  if (pendingBefore === 0) sink.lastProgressAt = Date.now();
  sink.builder.append(init.eventId, encodeRequestEventView(init));
  if (sink.acks.events >= options.concurrency) {
    // The next ack pumps: with no timer pending, nothing else would.
    sink.heldBack = true;
  } else if (sink.publishIntervalMs === 0) {
    pump(sink);
  } else if (sink.batchTimer === undefined) {
    sink.batchTimer = setTimeout(() => {
      sink.batchTimer = undefined;
      pump(sink);
    }, sink.publishIntervalMs);
  }
  return true;
}

/** Waits until nothing is pending, or `timeoutMs`; true when nothing is. */
async function flush(sink: SinkState, timeoutMs: number): Promise<boolean> {
  if (pendingEvents(sink) === 0) return true;
  let wake!: () => void;
  const idle = new Promise<void>((resolve) => wake = resolve);
  sink.idleWaiters.add(wake);
  const timer = setTimeout(wake, timeoutMs);
  await idle;
  clearTimeout(timer);
  sink.idleWaiters.delete(wake);
  return pendingEvents(sink) === 0;
}

/** Wakes the `flush` calls once nothing is pending. */
function notifyIfIdle(sink: SinkState): void {
  if (pendingEvents(sink) === 0) {
    for (const wake of sink.idleWaiters) wake();
  }
}

// --- The flush loop ---

/**
 * Seals the open message (unless `sealOpen` is false) and sends queued messages, up to `concurrency` events
 * awaiting their acks (at least one message when none is awaited), in one write, each with its own ack.
 * Sends nothing while the stream is not known fit, while disconnected, or before the backoff's end (then it
 * comes back at that time). A message larger than the server's max_payload is split first (`fitToServer`).
 */
function pump(sink: SinkState, sealOpen = true): void {
  const { wire, queue, acks } = sink;
  if (!sink.check.ready || !wire.connected || sink.closed && pendingEvents(sink) - acks.events === 0) return;
  const now = Date.now();
  if (now < sink.retryAt) {
    schedulePump(sink);
    return;
  }
  if (sealOpen) sink.builder.seal();
  const messages: QueuedMessage[] = [];
  let room = sink.options.concurrency - acks.events;
  while (queue.size > 0) {
    const next = queue.peekFront()!;
    if (next.payloadBytes > wire.maxPayload) {
      fitToServer(sink);
      continue;
    }
    if (next.count > room && (messages.length > 0 || acks.events > 0)) break;
    queue.popFront();
    messages.push(next);
    room -= next.count;
  }
  sink.heldBack = queue.size > 0;
  if (messages.length === 0) return;
  // Connected at the start of this synchronous call, so still connected: the writes are queued (and leave in
  // one socket write). Were the connection to drop before they leave, the reconnect requeues every message
  // awaiting an ack. Every message carries a reply subject of its own, `HPUB <subject> <inbox>.<token> `
  // and the rest of its frame: JetStream answers each, and a message it did not store (a full stream, an
  // ingest queue that is full answers 429 only to messages with a reply) is published again, never counted.
  const subjectPrefixLength = sink.builder.subjectPrefix.length;
  for (const message of messages) {
    const token = acks.track(message, now);
    wire.writeText(`${sink.replyLineStarts[message.partition]}${token} `);
    wire.write(message.page.subarray(message.start + subjectPrefixLength, message.end));
  }
}

/** Runs `pump` once the backoff is over (one timer at a time). */
function schedulePump(sink: SinkState): void {
  if (sink.retryTimer !== undefined) return;
  sink.retryTimer = setTimeout(() => {
    sink.retryTimer = undefined;
    pump(sink);
  }, Math.max(0, sink.retryAt - Date.now()));
}

/**
 * The message at the front of the queue is larger than the server's max_payload: it is split into messages
 * that fit (outbox.ts `splitFront`), and an event too large for any message is dropped and counted.
 */
function fitToServer(sink: SinkState): void {
  const { logger, counters } = sink;
  const maxPayload = sink.wire.maxPayload;
  const { message, messages, lost } = splitFront(sink.queue, maxPayload);
  logger.info("events: a message larger than the server's max_payload split", {
    maxPayload,
    bytes: message.payloadBytes,
    events: message.count,
    messages,
  });
  if (lost > 0) {
    counters.dropped.inc(undefined, lost);
    counters.tooLarge.inc(undefined, lost);
    logger.error("events: an event larger than the server's max_payload dropped", {
      maxPayload,
      events: lost,
    });
    notifyIfIdle(sink);
  }
}

// --- Acks and re-sending ---

/**
 * A message on the inbox: a JetStream ack on `<inbox>.<token>` (acks.ts `ackOutcome` says what it means), or
 * the answer to a stream check on `<inbox>.s<serial>`. An ack whose message is no longer awaited (published
 * again after a timeout: that copy's own ack counts it) is ignored.
 */
function onInboxMessage(sink: SinkState, message: WireMessage): void {
  if (message.sid !== INBOX_SID) return;
  const { buf } = message;
  const tokenStart = message.subjectStart + sink.ackSubjectTokenStart;
  if (buf[tokenStart] === 0x73 /* s */) {
    sink.check.answer(message, parseDecimal(buf, tokenStart + 1, message.subjectEnd));
    return;
  }
  const token = parseDecimal(buf, tokenStart, message.subjectEnd);
  // Unknown: already published again after a timeout; that copy's own ack will count it.
  const acked = sink.acks.take(token);
  if (acked === undefined) return;
  const outcome = ackOutcome(message);
  if (outcome === "stored" || outcome === "duplicate") {
    stored(sink, acked, outcome === "duplicate");
  } else if (outcome === "in_process") {
    // "duplicate message id is in process": a copy sent again (after a lame-duck move, a timeout) while the
    // server still stores the first. Not a refusal: sent again after the backoff, it is acked as a duplicate.
    retry(sink, [acked], "duplicate message id is in process");
  } else {
    refused(sink, acked, message);
  }
}

/** A message is stored: its events count as published, the backoff and any refusal end, held-back events go. */
function stored(sink: SinkState, acked: QueuedMessage, duplicate: boolean): void {
  sink.backoffMs = 0;
  sink.lastProgressAt = Date.now();
  if (sink.refusal !== undefined) {
    sink.logger.info("events: stored again after the server's refusal", { refusal: sink.refusal.text });
    sink.refusal = undefined;
  }
  sink.counters.published.inc(undefined, acked.count);
  if (duplicate) sink.counters.duplicates.inc();
  // Only messages held back by the concurrency limit go now; the open message waits for its timer, or acks
  // arriving one by one would seal and send it a few events per message. (Without a timer, at once.)
  if (sink.heldBack) pump(sink, sink.publishIntervalMs === 0);
  notifyIfIdle(sink);
}

/**
 * JetStream did not store a message (an error, an empty answer): it is published again after the backoff, and
 * the stream checked first (it may be gone, deleted or on a server that restarted without its store, or
 * changed: publishing waits while it is missing or unfit).
 */
function refused(sink: SinkState, acked: QueuedMessage, message: WireMessage): void {
  sink.counters.refusals.inc();
  const reason = textDecoder.decode(message.buf.subarray(message.payloadStart, message.end)).trim();
  retry(sink, [acked], reason || "empty answer");
  sink.check.ready = false;
  sink.check.request();
}

/**
 * Puts messages that were not stored back at the front of the queue, in order, to be published again after a
 * backoff (50 ms, doubling per failed round up to `MAX_RETRY_BACKOFF_MS`; an ack that stores ends it).
 */
function retry(sink: SinkState, messages: QueuedMessage[], reason: string): void {
  if (messages.length === 0) return;
  sink.counters.retries.inc(undefined, messages.reduce((sum, message) => sum + message.count, 0));
  // The ring has room: the messages held their places while they were awaited.
  sink.queue.requeue(messages);
  const now = Date.now();
  // A failed round (many messages failing together) raises the backoff once.
  if (now >= sink.retryAt) {
    sink.backoffMs = Math.min(MAX_RETRY_BACKOFF_MS, sink.backoffMs === 0 ? 50 : sink.backoffMs * 2);
    sink.retryAt = now + sink.backoffMs;
  }
  if (now - sink.lastWarning > 5000) {
    sink.lastWarning = now;
    sink.logger.warn("events: publish not acknowledged, retrying", {
      reason,
      pending: pendingEvents(sink),
    });
  }
  schedulePump(sink);
}

/** Every `min(1 s, timeout / 2)`: messages whose ack did not come within the timeout are retried. */
function sweep(sink: SinkState): void {
  retry(sink, sink.acks.takeSentBy(Date.now() - sink.timeoutMs), "ack timeout");
}

/** Puts every message awaiting its ack back at the front of the queue, in order, to be sent with no backoff. */
function requeueUnacknowledged(sink: SinkState): void {
  const messages = sink.acks.takeAll();
  sink.counters.retries.inc(undefined, messages.reduce((sum, message) => sum + message.count, 0));
  sink.queue.requeue(messages);
  sink.backoffMs = 0;
  sink.retryAt = 0;
}

// --- The connection's events ---

/**
 * Connected (first time or again): subscribes to the inbox, clears the latest failure and refusal, requeues
 * what awaited acks (after a reconnect), and checks the stream, which starts publishing.
 */
function onConnected(sink: SinkState, reconnected: boolean): void {
  sink.wire.writeText(`SUB ${sink.inbox}.* ${INBOX_SID}\r\n`);
  sink.counters.connected.set(1);
  sink.lastConnectError = undefined;
  sink.refusal = undefined;
  sink.lastProgressAt = Date.now();
  sink.logger.info("events: connected to NATS", { nats: describeNats(sink.nats) });
  // After a reconnect, acks for publishes sent before the disconnect may never come (the server may have
  // restarted); they are published again once the stream is checked, rather than after their timeout.
  if (reconnected) requeueUnacknowledged(sink);
  sink.check.request();
}

/**
 * A lame-duck move: the old server is going. Acks of what was sent there may still come on the old
 * connection, but every message awaiting one is sent again here at once under its Nats-Msg-Id (the stream
 * drops the copies it stored), rather than after its ack timeout.
 */
function onMoved(sink: SinkState): void {
  sink.wire.writeText(`SUB ${sink.inbox}.* ${INBOX_SID}\r\n`);
  sink.logger.info("events: moved to another NATS server (the old one is in lame duck mode)", {
    server: sink.wire.server,
    awaiting: sink.acks.events,
  });
  requeueUnacknowledged(sink);
  pump(sink, sink.publishIntervalMs === 0);
}

/** Disconnected: counted; the stream is checked again on the next connection before anything is sent. */
function onDisconnected(sink: SinkState): void {
  sink.counters.connected.set(0);
  sink.counters.disconnects.inc();
  sink.check.ready = false;
  sink.check.cancel();
}

/**
 * A `-ERR` from the server: counted by kind, kept as the refusal that makes the sink not ready (until a message
 * is stored again), and logged as an error (each distinct text at most every 10 s) with a hint for permissions.
 */
function onServerError(sink: SinkState, text: string): void {
  const { options, partitions, subjects, nats } = sink;
  const kind = natsErrorKind(text);
  sink.counters.serverErrors.inc({ kind });
  const now = Date.now();
  sink.refusal = { text, at: now };
  const last = sink.refusalLogged.get(text);
  if (last === undefined || now - last >= 10_000) {
    if (sink.refusalLogged.size > 100) sink.refusalLogged.clear();
    sink.refusalLogged.set(text, now);
    sink.logger.error("events: NATS refused", {
      error: text,
      kind,
      nats: describeNats(nats),
      pending: pendingEvents(sink),
      hint: kind === "permissions"
        ? `the NATS user may publish to ${
          partitions === 1 ? subjects[0] : `${requestEventSubject(options.service)}.>`
        }, read $JS.API.STREAM.INFO.${REQUEST_EVENTS_STREAM} ` +
          `and subscribe to ${nats.inboxPrefix}.> (deploy/nats/auth.conf)`
        : undefined,
    });
  }
}

// --- Readiness ---

/**
 * Ready while events reach JetStream: not closed, connected, no refusal since the last stored message, the
 * stream checked and fit, and, while events are pending, one acknowledged within max(2 × timeout, 10 s).
 */
function readiness(sink: SinkState): EventsReadiness {
  if (sink.closed) return { ready: false, reason: "events: closed" };
  if (!sink.wire.connected) {
    return {
      ready: false,
      reason: `events: not connected to NATS${sink.lastConnectError ? ` (${sink.lastConnectError})` : ""}`,
    };
  }
  if (sink.refusal) return { ready: false, reason: `events: NATS refused: ${sink.refusal.text}` };
  if (!sink.check.ready) {
    return { ready: false, reason: `events: ${sink.check.problem ?? "checking the stream"}` };
  }
  const waited = Date.now() - sink.lastProgressAt;
  if (pendingEvents(sink) > 0 && waited >= Math.max(2 * sink.timeoutMs, 10_000)) {
    return {
      ready: false,
      reason: `events: ${pendingEvents(sink)} events pending, none acknowledged by JetStream for ${
        Math.round(waited / 1000)
      } s`,
    };
  }
  return { ready: true, reason: "events: publishing" };
}

/** The longest backoff between two publishes of a message (see `retry`). */
const MAX_RETRY_BACKOFF_MS = 1_000;

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

const textDecoder = new TextDecoder();
