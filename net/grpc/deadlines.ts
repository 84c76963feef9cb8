/**
 * Many deadlines on one timer: a min-heap of deadlines and a single timeout armed for the earliest.
 *
 * Why: every gRPC call has a deadline, and under Deno a setTimeout/clearTimeout pair cost about 20 us of CPU
 * per call, a tenth of serving it. Here adding and removing a deadline is a heap operation; the timer is
 * re-armed only when a new deadline comes before the armed one, and a removed earliest deadline just lets
 * the timer fire early and re-arm. A deadline fires at its time or up to a few ms later (timer granularity).
 */

export interface Deadline {
  /** Epoch ms. */
  readonly atMs: number;
}

export interface DeadlineQueue {
  /** Calls `onExpired` once `atMs` (epoch ms) has passed, unless the deadline is removed first. */
  add(atMs: number, onExpired: () => void): Deadline;
  /** Removes a deadline (a no-op when it already fired or was removed). */
  remove(deadline: Deadline): void;
  /** Deadlines waiting. */
  readonly size: number;
}

interface Entry extends Deadline {
  atMs: number;
  onExpired: () => void;
  /** Position in the heap; -1 once fired or removed. */
  index: number;
}

export function createDeadlineQueue(): DeadlineQueue {
  const heap: Entry[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  let armedAt = Infinity;

  const swap = (i: number, j: number) => {
    const a = heap[i];
    heap[i] = heap[j];
    heap[j] = a;
    heap[i].index = i;
    heap[j].index = j;
  };
  const up = (i: number) => {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent].atMs <= heap[i].atMs) return;
      swap(i, parent);
      i = parent;
    }
  };
  const down = (i: number) => {
    for (;;) {
      const left = 2 * i + 1;
      if (left >= heap.length) return;
      const right = left + 1;
      const child = right < heap.length && heap[right].atMs < heap[left].atMs ? right : left;
      if (heap[i].atMs <= heap[child].atMs) return;
      swap(i, child);
      i = child;
    }
  };
  const removeAt = (i: number) => {
    const entry = heap[i];
    const last = heap.pop()!;
    entry.index = -1;
    if (last === entry) return;
    heap[i] = last;
    last.index = i;
    up(i);
    down(last.index);
  };

  const fire = () => {
    timer = undefined;
    armedAt = Infinity;
    const now = Date.now();
    while (heap.length > 0 && heap[0].atMs <= now) {
      const entry = heap[0];
      removeAt(0);
      try {
        entry.onExpired();
      } catch (error) {
        console.error("a deadline callback threw", error);
      }
    }
    arm();
  };
  const arm = () => {
    if (heap.length === 0) return;
    const earliest = heap[0].atMs;
    if (earliest >= armedAt) return;
    if (timer !== undefined) clearTimeout(timer);
    armedAt = earliest;
    timer = setTimeout(fire, Math.max(0, earliest - Date.now()));
    // The timer must not keep a process alive by itself: what waits on a deadline holds a socket open.
    // Deno.unrefTimer takes what setTimeout returns: a number on older Deno, a Timeout object since 2.x.
    Deno.unrefTimer(timer);
  };

  return {
    add(atMs, onExpired) {
      const entry: Entry = { atMs, onExpired, index: heap.length };
      heap.push(entry);
      up(entry.index);
      if (atMs < armedAt) arm();
      return entry;
    },
    remove(deadline) {
      const entry = deadline as Entry;
      if (entry.index >= 0 && heap[entry.index] === entry) removeAt(entry.index);
    },
    get size() {
      return heap.length;
    },
  };
}
