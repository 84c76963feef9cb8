/**
 * Request events: a bounded in-process buffer drained by a background publisher with async JetStream
 * publishes. `emit` never blocks and never throws; when the buffer is full the event is dropped and counted.
 * Publishes that fail (NATS down, timeouts) are retried with the same Nats-Msg-Id, so the stream's
 * duplicate window turns a retry of an event that did arrive into a no-op.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { jetstream } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { type RequestEvent, RequestEventSchema } from "@tailwatch/proto/events/v1";
import type { Logger } from "./log.ts";
import type { Registry } from "./metrics.ts";
import { ensureRequestEventsStream, requestEventSubject } from "./stream.ts";

export type { RequestEvent };
export type RequestEventInit = Omit<RequestEvent, "$typeName" | "$unknown">;

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

/** Connects to NATS in the background (requests never wait for it) and publishes every emitted event. */
export function createEventSink(options: EventSinkOptions): EventSink {
  const { logger, metrics } = options;
  const subject = requestEventSubject(options.service);
  const timeout = options.publishTimeoutMs ?? 5000;
  const queue = new Ring<RequestEvent>(options.capacity);
  let inFlight = 0;
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
    () => queue.size + inFlight,
  );
  metrics.gaugeFn("events_buffer_capacity", "Events the buffer holds at most.", () => options.capacity);
  const connectedGauge = metrics.gauge("events_nats_connected", "1 while connected to NATS.");

  let js: ReturnType<typeof jetstream> | undefined;
  let nc: NatsConnection | undefined;
  const ready = (async () => {
    for (let attempt = 0; !closed; attempt++) {
      try {
        nc = await connect({
          servers: options.natsUrl.split(","),
          name: `${options.service}-events`,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 250,
          timeout: 2000,
        });
        await ensureRequestEventsStream(nc);
        js = jetstream(nc, { timeout });
        connectedGauge.set(1);
        logger.info("events: connected to NATS", { url: options.natsUrl });
        (async () => {
          for await (const status of nc!.status()) {
            if (status.type === "disconnect") connectedGauge.set(0);
            if (status.type === "reconnect") connectedGauge.set(1);
          }
        })().catch(() => {});
        pump();
        return;
      } catch (error) {
        await nc?.close().catch(() => {});
        nc = undefined;
        if (attempt % 20 === 0) logger.warn("events: NATS not reachable yet, buffering", { error });
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  })();

  const notifyIfIdle = () => {
    if (queue.size === 0 && inFlight === 0) {
      for (const wake of idleWaiters) wake();
    }
  };

  let lastWarning = 0;
  const onFailure = (event: RequestEvent, error: unknown) => {
    inFlight--;
    retries.inc();
    // Put it back first in line; the ring cannot be full here because the event held a place while in flight.
    queue.pushFront(event);
    const now = Date.now();
    // One failed round (up to `concurrency` publishes failing together) raises the backoff once.
    if (now >= retryAt) {
      backoffMs = Math.min(1000, backoffMs === 0 ? 50 : backoffMs * 2);
      retryAt = now + backoffMs;
    }
    if (now - lastWarning > 5000) {
      lastWarning = now;
      logger.warn("events: publish failed, retrying", { error, pending: queue.size + inFlight, backoffMs });
    }
    schedulePump();
  };

  const schedulePump = () => {
    if (retryTimer !== undefined) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      pump();
    }, Math.max(0, retryAt - Date.now()));
  };

  function pump() {
    if (!js) return;
    if (Date.now() < retryAt) {
      schedulePump();
      return;
    }
    while (inFlight < options.concurrency && queue.size > 0) {
      const event = queue.popFront()!;
      inFlight++;
      js.publish(subject, toBinary(RequestEventSchema, event), { msgID: event.eventId, timeout }).then(
        (ack) => {
          inFlight--;
          backoffMs = 0;
          published.inc();
          if (ack.duplicate) duplicates.inc();
          pump();
          notifyIfIdle();
        },
        (error) => onFailure(event, error),
      );
    }
  }

  return {
    emit(init) {
      if (queue.size + inFlight >= options.capacity || closed) {
        dropped.inc();
        return false;
      }
      queue.pushBack(create(RequestEventSchema, init));
      pump();
      return true;
    },
    pending: () => queue.size + inFlight,
    async flush(timeoutMs) {
      if (queue.size === 0 && inFlight === 0) return true;
      let wake!: () => void;
      const idle = new Promise<void>((resolve) => wake = resolve);
      idleWaiters.add(wake);
      const timer = setTimeout(wake, timeoutMs);
      await idle;
      clearTimeout(timer);
      idleWaiters.delete(wake);
      return queue.size === 0 && inFlight === 0;
    },
    async close(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      const flushed = await this.flush(timeoutMs);
      if (!flushed) {
        logger.error("events: shutting down with unpublished events", { pending: queue.size + inFlight });
      }
      closed = true;
      clearTimeout(retryTimer);
      await Promise.race([
        ready,
        new Promise((resolve) => setTimeout(resolve, Math.max(0, deadline - Date.now()))),
      ]);
      await nc?.drain().catch(() => {});
    },
  };
}
