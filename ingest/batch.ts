/**
 * From messages to rows (ingest/README.md, "Limits" and "Decoding"): the queue that gathers received messages
 * into batches (at most INGEST_BATCH_MAX events and INGEST_BATCH_MAX_BYTES bytes, or what came within
 * INGEST_BATCH_WAIT_MS), and the builder that decodes a batch into RowBinary bodies, one per day-partition and
 * at most INGEST_BATCH_MAX rows (each one INSERT, all or nothing), plus the poison to dead-letter. Decoding is
 * the hot path: per event, `pick` and appendEvent write into a RowWriter with the builder's reused scratch;
 * keep allocations out of them.
 */
import { BatchRanges, EventScanner, type PoisonReason, splitBatch } from "@tailwatch/events";
import type { Delivery } from "@tailwatch/nats";
import { appendEvent, RowWriter } from "./row_writer.ts";
import type { WorkerContext } from "./worker_state.ts";

/**
 * Rows of one day-partition of a batch, as a RowBinary body (at most INGEST_BATCH_MAX rows: an INSERT is one
 * part, all or nothing), with what the dedup query needs and the query_id every attempt of its INSERT uses.
 */
export interface RowGroup {
  writer: RowWriter;
  services: Set<string>;
  minTs: number;
  maxTs: number;
  queryId: string;
}

/**
 * A message that cannot be ingested, or (`event` set) one event of a RequestEventBatch message that cannot: it
 * is dead-lettered alone, with its place in the message, and the message's other events are ingested.
 */
export interface Poison {
  msg: Delivery;
  reason: PoisonReason;
  detail: string;
  event?: { index: number; start: number; end: number };
}

/** A batch decoded and ready to insert. */
export interface PreparedBatch {
  batch: Delivery[];
  /** The highest stream sequence of the batch's messages, and its message: the one acked (AckPolicy.All). */
  last: Delivery;
  groups: RowGroup[];
  poison: Poison[];
  /** Some event may be in the table already: ask the table (by event id) before inserting. */
  checkFirst: boolean;
  /** Payload bytes held by the batch's messages (released once it is acked). */
  bytes: number;
}

/** YYYYMMDD of a unix-seconds time in `timeZone`, i.e. the partition toYYYYMMDD(ts) puts it in. */
export function createPartitionOf(timeZone: string): (tsSeconds: number) => number {
  // Every time zone offset is a multiple of 15 minutes, so a 15-minute slot never straddles a day boundary.
  const cache = new Map<number, number>();
  let format: Intl.DateTimeFormat | undefined;
  try {
    format = new Intl.DateTimeFormat("en-CA", {
      timeZone,
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
    });
  } catch {
    format = undefined; // unknown zone: one group per 15-minute slot is still never split by a partition
  }
  return (tsSeconds) => {
    const slot = Math.floor(tsSeconds / 900);
    let day = cache.get(slot);
    if (day === undefined) {
      day = format ? Number(format.format(new Date(slot * 900_000)).replaceAll("-", "")) : slot;
      if (cache.size > 10_000) cache.clear();
      cache.set(slot, day);
    }
    return day;
  };
}

/**
 * The most rows a message can make: its Tailwatch-Events count, bounded by what its bytes can hold (two bytes an
 * event at least), or 1 for a message of one event (or one that will be dead-lettered whole).
 */
function eventsOf(msg: Delivery): number {
  const count = msg.eventCount();
  if (!(count > 0)) return 1;
  return Math.max(1, Math.min(count, Math.floor((msg.dataEnd - msg.dataStart) / 2)));
}

export interface BatchQueue {
  push(msg: Delivery): void;
  /**
   * Messages up to `maxEvents` events and `maxBytes` bytes (at least one message): when that much is there,
   * or `waitMs` after the first arrived, or at stop/idle, or at once when `hurry()` says so.
   */
  take(maxEvents: number, maxBytes: number, waitMs: number, idleMs: number, hurry: () => boolean): Promise<
    Delivery[]
  >;
  size(): number;
  oldestAt(): number;
  items(): readonly Delivery[];
  /** From now on take() returns at once with what is there (used at stop). */
  close(): void;
  /** Makes a waiting take() look again now. */
  wake(): void;
}

export function createBatchQueue(fullEvents: number, fullBytes: number): BatchQueue {
  let items: Delivery[] = [];
  let counts: number[] = [];
  let events = 0;
  let bytes = 0;
  let firstAt = 0;
  let waiter: (() => void) | undefined;
  const wake = () => {
    const w = waiter;
    waiter = undefined;
    w?.();
  };
  let closed = false;
  return {
    push(msg) {
      if (items.length === 0) firstAt = Date.now();
      const n = eventsOf(msg);
      items.push(msg);
      counts.push(n);
      events += n;
      bytes += msg.size;
      if (items.length === 1 || events >= fullEvents || bytes >= fullBytes) wake();
    },
    async take(maxEvents, maxBytes, waitMs, idleMs, hurry) {
      const idleUntil = Date.now() + idleMs;
      for (;;) {
        const now = Date.now();
        if (
          events >= maxEvents || bytes >= maxBytes || (items.length > 0 && now - firstAt >= waitMs) ||
          closed || now >= idleUntil || hurry()
        ) {
          // The longest prefix within both limits, and at least one message.
          let cut = 0;
          let takenEvents = 0;
          let takenBytes = 0;
          while (cut < items.length) {
            const e = counts[cut];
            const b = items[cut].size;
            if (cut > 0 && (takenEvents + e > maxEvents || takenBytes + b > maxBytes)) break;
            takenEvents += e;
            takenBytes += b;
            cut++;
          }
          const out = cut === items.length ? items : items.slice(0, cut);
          items = cut === items.length ? [] : items.slice(cut);
          counts = cut === counts.length ? [] : counts.slice(cut);
          events -= takenEvents;
          bytes -= takenBytes;
          firstAt = items.length > 0 ? now : 0;
          return out;
        }
        const delay = items.length === 0 ? idleUntil - now : Math.min(idleUntil, firstAt + waitMs) - now;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            waiter = undefined;
            resolve();
          }, Math.max(1, delay));
          waiter = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    },
    size: () => items.length,
    oldestAt: () => firstAt,
    items: () => items,
    close() {
      closed = true;
      wake();
    },
    wake,
  };
}

/** The scratch objects the builder reuses for every message of every batch. */
interface BatchScratch {
  readonly scanner: EventScanner;
  readonly batchRanges: BatchRanges;
}

/** Decodes batches (prepareBatch); one per worker, holding the scratch it reuses. */
export interface BatchBuilder {
  /**
   * `batch` as RowGroups and poison; `firstBatch`: the first batch of this process (always checked by id).
   * `partitionOf`: the day-partition of a unix-seconds time in the server's time zone (createPartitionOf).
   */
  prepare(batch: Delivery[], firstBatch: boolean, partitionOf: (ts: number) => number): PreparedBatch;
}

export function createBatchBuilder(ctx: WorkerContext): BatchBuilder {
  const scratch: BatchScratch = { scanner: new EventScanner(), batchRanges: new BatchRanges() };
  return {
    prepare: (batch, firstBatch, partitionOf) => prepareBatch(ctx, scratch, batch, firstBatch, partitionOf),
  };
}

/**
 * Decodes a batch into per-partition RowBinary bodies and poison messages (synchronous, CPU only). Whatever
 * a message holds, it becomes rows or poison: an unexpected failure while decoding one message undoes its
 * rows and dead-letters it whole. Raises highWater to the batch's highest sequence.
 */
function prepareBatch(
  ctx: WorkerContext,
  scratch: BatchScratch,
  batch: Delivery[],
  firstBatch: boolean,
  partitionOf: (ts: number) => number,
): PreparedBatch {
  const { config, metrics, logger, state, insertQueryPrefix } = ctx;
  const { scanner, batchRanges } = scratch;
  // Constant while the batch is decoded (set by consumer.ts, noteStream, between batches).
  const lateAfterMs = state.lateAfterMs;
  metrics.batchSize.observe(batch.length);
  /** The group being filled per partition day; full groups (INGEST_BATCH_MAX rows) are in `groups` too. */
  const filling = new Map<number, RowGroup>();
  const groups: RowGroup[] = [];
  const seen = new Set<number>();
  const poison: PreparedBatch["poison"] = [];
  let checkFirst = firstBatch;
  let lastSlot = -1;
  let last: RowGroup | undefined;
  let storedAt = 0;
  let late = false;
  let events = 0;
  const newGroup = (day: number, ts: number): RowGroup => {
    const group: RowGroup = {
      writer: new RowWriter(),
      services: new Set(),
      minTs: ts,
      maxTs: ts,
      queryId: insertQueryPrefix + crypto.randomUUID(),
    };
    filling.set(day, group);
    groups.push(group);
    return group;
  };
  const pick = (ts: number, service: string): RowWriter => {
    // Every time zone offset is a multiple of 15 minutes: a 15-minute slot is in one partition.
    const slot = Math.floor(ts / 900);
    let group = slot === lastSlot ? last : undefined;
    if (!group || group.writer.rows >= config.batchMax) {
      const day = partitionOf(ts);
      group = filling.get(day);
      if (!group || group.writer.rows >= config.batchMax) group = newGroup(day, ts);
      lastSlot = slot;
      last = group;
    }
    group.services.add(service);
    if (ts < group.minTs) group.minTs = ts;
    if (ts > group.maxTs) group.maxTs = ts;
    // Stored long after it started (or its store time unknown): maybe a retry after the duplicate window.
    if (!(storedAt - ts * 1000 < lateAfterMs)) late = true;
    events++;
    return group.writer;
  };
  // First deliveries come in increasing stream sequence. A message at or below the highest sequence
  // seen before it (in this process, or delivered to the consumer before this process started) has been
  // delivered before, whether or not the server says so: a NATS crash can lose the consumer's delivery
  // state and hand a message out again as a first delivery. Such a batch, or one with a redelivered
  // message, is checked against the table before its INSERT; only then can it hold the same sequence twice.
  // So is a batch with a message JetStream could not deduplicate (no Nats-Msg-Id), or one stored long after
  // its events (late, above).
  let high = state.highWater;
  let top = batch[0];
  let topSeq = 0;
  let bytes = 0;
  const seqs = new Float64Array(batch.length);
  for (let i = 0; i < batch.length; i++) {
    const msg = batch[i];
    const s = msg.seq;
    seqs[i] = s;
    bytes += msg.size;
    if (s <= high || msg.deliveries > 1 || !msg.hasMsgId()) checkFirst = true;
    if (s > high) high = s;
    if (s > topSeq) {
      topSeq = s;
      top = msg;
    }
  }
  state.highWater = high;
  for (let i = 0; i < batch.length; i++) {
    const msg = batch[i];
    const seq = seqs[i];
    if (checkFirst) {
      if (seen.has(seq)) continue;
      seen.add(seq);
    }
    storedAt = msg.timestampMs;
    const poisonBefore = poison.length;
    try {
      const eventCount = msg.eventCount();
      if (eventCount === 0) {
        const refused = appendEvent(scanner, msg.chunk, seq, pick, msg.dataStart, msg.dataEnd);
        if (refused) poison.push({ msg, reason: refused.reason, detail: refused.detail });
        continue;
      }
      // A RequestEventBatch: split (and so checked) whole before any of its rows is written, and then its
      // events, all under the message's stream sequence, go to their partitions' writers.
      const unsplit = splitBatch(msg.chunk, msg.dataStart, msg.dataEnd, eventCount, batchRanges);
      if (unsplit !== undefined) {
        poison.push({ msg, reason: "undecodable", detail: unsplit });
        continue;
      }
      for (let index = 0; index < batchRanges.count; index++) {
        const start = batchRanges.starts[index];
        const end = batchRanges.ends[index];
        const refused = appendEvent(scanner, msg.chunk, seq, pick, start, end);
        if (refused) {
          poison.push({
            msg,
            reason: refused.reason,
            detail: refused.detail,
            event: { index, start, end },
          });
        }
      }
    } catch (error) {
      // Not a refusal decodeEvent knows: whatever it was, the message's rows go and the message is poison.
      for (const group of groups) group.writer.dropTrailing(seq);
      poison.length = poisonBefore;
      poison.push({
        msg,
        reason: "undecodable",
        detail: `ingest could not process it: ${error instanceof Error ? error.message : String(error)}`,
      });
      logger.error("a message failed to decode unexpectedly; dead-lettering it", { seq, error });
    }
  }
  if (late) checkFirst = true;
  metrics.batchEvents.observe(events + poison.length);
  const kept = groups.filter((group) => group.writer.rows > 0);
  if (checkFirst) dropRepeatedEvents(ctx, kept);
  return { batch, last: top, groups: kept, poison, checkFirst, bytes };
}

/** Keeps the first row of each event id in a checked batch (the same event in two messages of it). */
function dropRepeatedEvents(ctx: WorkerContext, groups: RowGroup[]): void {
  const ids = new Set<string>();
  for (const group of groups) {
    const repeated = new Set<number>();
    for (let row = 0; row < group.writer.rows; row++) {
      const id = group.writer.eventId(row);
      if (ids.has(id)) repeated.add(row);
      else ids.add(id);
    }
    if (repeated.size === 0) continue;
    group.writer = group.writer.withoutRows(repeated);
    ctx.stats.duplicatesSkipped += repeated.size;
    ctx.metrics.duplicates.inc({}, repeated.size);
    ctx.logger.info("skipped events that came twice in one batch", { skipped: repeated.size });
  }
}
