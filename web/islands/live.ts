/**
 * Live state shared by every island of a page (one bundle, one module instance): whether the page is
 * paused, the state of its connection, and the hook that keeps a view's data current through server-sent
 * events (EventSource reconnects by itself; a closed stream is reopened after 2 s).
 */
import { effect, type Signal, signal, useSignal } from "@preact/signals";
import { useEffect } from "preact/hooks";

export const paused = signal(false);
export type ConnectionState = "connecting" | "live" | "reconnecting" | "paused" | "static";
export const connection = signal<ConnectionState>("connecting");
export const lastUpdateMs = signal(0);

/** Keeps `initial` current from /api/stream?<stream>; `stream` null: a static page (custom range). */
export function useLiveData<T>(initial: T, stream: string | null): Signal<T> {
  const data = useSignal(initial);
  useEffect(() => {
    if (stream === null) {
      connection.value = "static";
      return;
    }
    let source: EventSource | undefined;
    let retry: ReturnType<typeof setTimeout> | undefined;
    const open = () => {
      source?.close();
      connection.value = "connecting";
      source = new EventSource(`/api/stream?${stream}`);
      source.addEventListener("update", (event) => {
        try {
          data.value = JSON.parse((event as MessageEvent).data) as T;
          lastUpdateMs.value = Date.now();
          connection.value = "live";
        } catch {
          // a broken message: the next one replaces it
        }
      });
      source.onerror = () => {
        if (paused.value) return;
        connection.value = "reconnecting";
        if (source?.readyState === EventSource.CLOSED) {
          clearTimeout(retry);
          retry = setTimeout(open, 2000);
        }
      };
    };
    const stop = effect(() => {
      if (paused.value) {
        source?.close();
        source = undefined;
        clearTimeout(retry);
        connection.value = "paused";
      } else open();
    });
    return () => {
      stop();
      clearTimeout(retry);
      source?.close();
    };
  }, [stream]);
  // Tests and curious users read the current data here.
  useEffect(() => {
    return effect(() => {
      (globalThis as unknown as { __tailwatch?: unknown }).__tailwatch = { data: data.value };
    });
  }, []);
  return data;
}
