/**
 * The live hub: server-sent events. Pages open on the same view share one subscription entry; every second
 * the hub computes each view that has subscribers once and writes the same bytes to all of them. A view with
 * no subscriber left is forgotten at once, the number of connections and of distinct views is capped, and a
 * client that does not read (its queue past 1 MiB) is dropped: memory stays bounded however long pages stay
 * open or however often they come and go.
 */
import type { Logger, Registry } from "@tailwatch/runtime";
import { viewKey, type ViewSpec } from "./params.ts";
import type { Views } from "./views.ts";

interface Subscriber {
  controller: ReadableStreamDefaultController<Uint8Array>;
  closed: boolean;
}

interface LiveView {
  spec: ViewSpec;
  subscribers: Set<Subscriber>;
  computing: boolean;
  lastSentMs: number;
  last?: Uint8Array;
}

export interface HubStats {
  subscribers: number;
  views: number;
  bytesSent: number;
  messagesSent: number;
  dropped: number;
}

export interface Hub extends AsyncDisposable {
  /** An SSE response for the view, or undefined when the caps are reached (the caller answers 503). */
  subscribe(spec: ViewSpec, signal: AbortSignal): Response | undefined;
  stats(): HubStats;
  close(): Promise<void>;
}

const encoder = new TextEncoder();
const MAX_QUEUED_BYTES = 1 << 20;

export function createHub(options: {
  views: Views;
  maxSubscribers: number;
  maxViews: number;
  logger: Logger;
  registry?: Registry;
  /** Tick period; default 1000 ms. */
  intervalMs?: number;
}): Hub {
  const { views, logger } = options;
  const live = new Map<string, LiveView>();
  let subscriberCount = 0;
  let bytesSent = 0;
  let messagesSent = 0;
  let dropped = 0;
  const registry = options.registry;
  registry?.gaugeFn("web_sse_subscribers", "Live (SSE) connections open now.", () => subscriberCount);
  registry?.gaugeFn("web_live_views", "Distinct live views computed every second now.", () => live.size);
  registry?.counterFn("web_sse_bytes_total", "Bytes written to live connections.", () => bytesSent);
  registry?.counterFn("web_sse_messages_total", "Messages written to live connections.", () => messagesSent);
  registry?.counterFn(
    "web_sse_dropped_total",
    "Live connections closed because the client did not read.",
    () => dropped,
  );

  const remove = (key: string, view: LiveView, subscriber: Subscriber) => {
    if (subscriber.closed) return;
    subscriber.closed = true;
    subscriberCount--;
    view.subscribers.delete(subscriber);
    if (view.subscribers.size === 0 && live.get(key) === view) live.delete(key);
    try {
      subscriber.controller.close();
    } catch {
      // already closed or errored by the client's going away
    }
  };

  const send = (key: string, view: LiveView, bytes: Uint8Array) => {
    for (const subscriber of [...view.subscribers]) {
      const queued = -(subscriber.controller.desiredSize ?? 0) + MAX_QUEUED_BYTES;
      if (queued > MAX_QUEUED_BYTES) {
        dropped++;
        remove(key, view, subscriber);
        continue;
      }
      try {
        subscriber.controller.enqueue(bytes);
        bytesSent += bytes.byteLength;
        messagesSent++;
      } catch {
        remove(key, view, subscriber);
      }
    }
  };

  const refresh = async (key: string, view: LiveView) => {
    if (view.computing) return;
    view.computing = true;
    try {
      const data = await views.get(view.spec);
      if (live.get(key) !== view) return;
      const bytes = encoder.encode(`event: update\ndata: ${JSON.stringify(data)}\n\n`);
      view.last = bytes;
      view.lastSentMs = Date.now();
      send(key, view, bytes);
    } catch (error) {
      logger.warn("live view failed", { view: key, error: String(error) });
    } finally {
      view.computing = false;
    }
  };

  const intervalMs = options.intervalMs ?? 1000;
  const timer = setInterval(() => {
    const now = Date.now();
    for (const [key, view] of live) {
      const period = view.spec.page === "traces" ? 5000 : intervalMs;
      if (now - view.lastSentMs >= period - 100) void refresh(key, view);
    }
    views.prune();
  }, intervalMs);

  const close = () => {
    clearInterval(timer);
    for (const [key, view] of live) for (const s of [...view.subscribers]) remove(key, view, s);
    return Promise.resolve();
  };

  return {
    subscribe(spec, signal) {
      const key = viewKey(spec);
      let view = live.get(key);
      if (subscriberCount >= options.maxSubscribers || (!view && live.size >= options.maxViews)) {
        return undefined;
      }
      if (!view) {
        view = { spec, subscribers: new Set(), computing: false, lastSentMs: 0 };
        live.set(key, view);
      }
      const entry = view;
      let subscriber!: Subscriber;
      const stream = new ReadableStream<Uint8Array>({
        start(controller) {
          subscriber = { controller, closed: false };
          entry.subscribers.add(subscriber);
          subscriberCount++;
          controller.enqueue(encoder.encode("retry: 2000\n\n"));
          if (entry.last) controller.enqueue(entry.last);
          else void refresh(key, entry);
        },
        cancel() {
          remove(key, entry, subscriber);
        },
      }, new ByteLengthQueuingStrategy({ highWaterMark: MAX_QUEUED_BYTES }));
      signal.addEventListener("abort", () => remove(key, entry, subscriber), { once: true });
      return new Response(stream, {
        headers: {
          "content-type": "text/event-stream; charset=utf-8",
          "cache-control": "no-store",
          "x-accel-buffering": "no",
        },
      });
    },
    stats: () => ({ subscribers: subscriberCount, views: live.size, bytesSent, messagesSent, dropped }),
    close,
    [Symbol.asyncDispose]: close,
  };
}
