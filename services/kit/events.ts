/**
 * Request events: a bounded in-process buffer drained by a background publisher with async JetStream
 * publishes. `emit` never blocks and never throws; when the buffer is full the event is dropped and counted.
 * Publishes that fail (NATS down, timeouts) are retried with the same Nats-Msg-Id, so the stream's
 * duplicate window turns a retry of an event that did arrive into a no-op.
 */
import { connect, createInbox, headers, type Msg, type NatsConnection } from "@nats-io/transport-node";
import type { RequestEvent } from "@tailwatch/proto/events/v1";
import { encodeRequestEvent, type RequestEventFields } from "./event_codec.ts";
import type { Logger } from "./log.ts";
import type { Registry } from "./metrics.ts";
import { ensureRequestEventsStream, requestEventSubject } from "./stream.ts";

export type { RequestEvent };
export type RequestEventInit = RequestEventFields;

/** An event as it waits for JetStream: encoded once when emitted. */
interface QueuedEvent {
  eventId: string;
  bytes: Uint8Array;
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
 * Publishing is pipelined rather than request/reply per event: each event is a plain publish whose reply
 * subject names it on one inbox subscription, so JetStream's ack comes back there. That costs one
 * subscription and one sweep timer in all instead of a request object and a timer per event. An event
 * whose ack does not come within the timeout, or comes back as an error, is published again with the same
 * Nats-Msg-Id, which the stream's duplicate window turns into a no-op if the first copy was stored.
 */
export function createEventSink(options: EventSinkOptions): EventSink {
  const { logger, metrics } = options;
  const subject = requestEventSubject(options.service);
  const timeoutMs = options.publishTimeoutMs ?? 5000;
  const publishIntervalMs = options.publishIntervalMs ?? 0;
  let batchTimer: ReturnType<typeof setTimeout> | undefined;
  const queue = new Ring<QueuedEvent>(options.capacity);
  /** Published and awaiting their ack, by reply token. */
  const awaiting = new Map<number, { event: QueuedEvent; sentAt: number }>();
  let nextToken = 0;
  let retryAt = 0;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let backoffMs = 0;
  let closed = false;
  const idleWaiters = new Set<() => void>();

  const published = metrics.counter("events_published_total", "Events acknowledged by JetStream.");
  const duplicates = metrics.counter(
    "events_duplicate_acks_total",
    "Publishes JetStream acknowledged as duplicates (a retry of an event that had arrived).",
  );
  const dropped = metrics.counter("events_dropped_total", "Events dropped because the buffer was full.");
  const retries = metrics.counter(
    "events_publish_retries_total",
    "Publishes retried after an error or timeout.",
  );
  metrics.gaugeFn(
    "events_buffer_depth",
    "Events accepted and not yet acknowledged.",
    () => queue.size + awaiting.size,
  );
  metrics.gaugeFn("events_buffer_capacity", "Events the buffer holds at most.", () => options.capacity);
  const connectedGauge = metrics.gauge("events_nats_connected", "1 while connected to NATS.");

  let nc: NatsConnection | undefined;
  let connecting: NatsConnection | undefined;
  let inbox = "";
  let sweeper: ReturnType<typeof setInterval> | undefined;
  const ready = (async () => {
    for (let attempt = 0; !closed; attempt++) {
      try {
        // Published to only once the inbox is subscribed: `nc` stays unset until then.
        const conn = await connect({
          servers: options.natsUrl.split(","),
          name: `${options.service}-events`,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 250,
          timeout: 2000,
        });
        connecting = conn;
        await ensureRequestEventsStream(conn);
        inbox = createInbox();
        conn.subscribe(`${inbox}.*`, { callback: (_error, msg) => onAck(msg) });
        nc = conn;
        sweeper = setInterval(sweep, Math.min(1000, timeoutMs / 2));
        connectedGauge.set(1);
        logger.info("events: connected to NATS", { url: options.natsUrl });
        (async () => {
          for await (const status of conn.status()) {
            if (status.type === "disconnect") connectedGauge.set(0);
            if (status.type === "reconnect") {
              connectedGauge.set(1);
              republishUnacknowledged();
            }
          }
        })().catch(() => {});
        pump();
        return;
      } catch (error) {
        await connecting?.close().catch(() => {});
        connecting = undefined;
        if (attempt % 20 === 0) logger.warn("events: NATS not reachable yet, buffering", { error });
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  })();

  const notifyIfIdle = () => {
    if (queue.size === 0 && awaiting.size === 0) {
      for (const wake of idleWaiters) wake();
    }
  };

  let lastWarning = 0;
  const retry = (event: QueuedEvent, reason: string) => {
    retries.inc();
    // Back to the front of the line; the ring has room because the event held a place while awaited.
    queue.pushFront(event);
    const now = Date.now();
    // A failed round (many publishes failing together) raises the backoff once.
    if (now >= retryAt) {
      backoffMs = Math.min(1000, backoffMs === 0 ? 50 : backoffMs * 2);
      retryAt = now + backoffMs;
    }
    if (now - lastWarning > 5000) {
      lastWarning = now;
      logger.warn("events: publish not acknowledged, retrying", {
        reason,
        pending: queue.size + awaiting.size,
      });
    }
    schedulePump();
  };

  const textDecoder = new TextDecoder();
  function onAck(msg: Msg) {
    const token = Number(msg.subject.slice(inbox.length + 1));
    const entry = awaiting.get(token);
    if (!entry) return; // already retried after a timeout; the retry's own ack will count it
    awaiting.delete(token);
    // A JetStream ack is {"stream":..,"seq":..[,"duplicate":true]}; anything else (an error, a 503
    // "no responders" status with an empty body) means the event is not stored.
    const body = textDecoder.decode(msg.data);
    if (body.includes('"seq"') && !body.includes('"error"')) {
      backoffMs = 0;
      published.inc();
      if (body.includes('"duplicate":true')) duplicates.inc();
      pump();
      notifyIfIdle();
    } else {
      retry(entry.event, body || `status ${msg.headers?.code ?? "unknown"}`);
    }
  }

  /**
   * After a reconnect, acks for publishes sent before the disconnect may never come (the server may have
   * restarted); publish them again now rather than after their timeout. Same Nats-Msg-Id: a copy that had
   * been stored is dropped as a duplicate.
   */
  function republishUnacknowledged() {
    const entries = [...awaiting.values()];
    awaiting.clear();
    for (let i = entries.length - 1; i >= 0; i--) {
      retries.inc();
      queue.pushFront(entries[i].event);
    }
    backoffMs = 0;
    retryAt = 0;
    pump();
  }

  function sweep() {
    const cutoff = Date.now() - timeoutMs;
    for (const [token, entry] of awaiting) {
      // Map order is publish order: stop at the first entry still within its timeout.
      if (entry.sentAt > cutoff) break;
      awaiting.delete(token);
      retry(entry.event, "ack timeout");
    }
  }

  const schedulePump = () => {
    if (retryTimer !== undefined) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      pump();
    }, Math.max(0, retryAt - Date.now()));
  };

  function pump() {
    if (!nc || nc.isClosed()) return;
    if (Date.now() < retryAt) {
      schedulePump();
      return;
    }
    const now = Date.now();
    while (awaiting.size < options.concurrency && queue.size > 0) {
      const event = queue.popFront()!;
      const token = nextToken++;
      const msgHeaders = headers();
      msgHeaders.set("Nats-Msg-Id", event.eventId);
      try {
        nc.publish(subject, event.bytes, {
          headers: msgHeaders,
          reply: `${inbox}.${token}`,
        });
        awaiting.set(token, { event, sentAt: now });
      } catch (error) {
        retry(event, String(error));
        return;
      }
    }
  }

  return {
    emit(init) {
      if (queue.size + awaiting.size >= options.capacity || closed) {
        dropped.inc();
        return false;
      }
      queue.pushBack({ eventId: init.eventId, bytes: encodeRequestEvent(init) });
      if (publishIntervalMs === 0) {
        if (queue.size === 1 || awaiting.size < options.concurrency) pump();
      } else if (batchTimer === undefined) {
        batchTimer = setTimeout(() => {
          batchTimer = undefined;
          pump();
        }, publishIntervalMs);
      }
      return true;
    },
    pending: () => queue.size + awaiting.size,
    async flush(timeoutMs) {
      if (queue.size === 0 && awaiting.size === 0) return true;
      let wake!: () => void;
      const idle = new Promise<void>((resolve) => wake = resolve);
      idleWaiters.add(wake);
      const timer = setTimeout(wake, timeoutMs);
      await idle;
      clearTimeout(timer);
      idleWaiters.delete(wake);
      return queue.size === 0 && awaiting.size === 0;
    },
    async close(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      const flushed = await this.flush(timeoutMs);
      if (!flushed) {
        logger.error("events: shutting down with unpublished events", {
          pending: queue.size + awaiting.size,
        });
      }
      closed = true;
      clearTimeout(retryTimer);
      clearTimeout(batchTimer);
      clearInterval(sweeper);
      await Promise.race([
        ready,
        new Promise((resolve) => setTimeout(resolve, Math.max(0, deadline - Date.now()))),
      ]);
      await (nc ?? connecting)?.drain().catch(() => {});
    },
  };
}
