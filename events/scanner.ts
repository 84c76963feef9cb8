/**
 * The decoder of the event contract's hot path: `EventScanner` reads one RequestEvent payload in its canonical
 * wire format into reused fields (offsets of its strings, its numbers) and applies the checks of `decodeEvent`;
 * whatever it does not accept is left to `decodeEvent` (row.ts), which gives the row or the poison reason.
 * `splitBatch` cuts a RequestEventBatch message into its events' byte ranges. The slot constants say where
 * each string field's offsets are kept, for writers that copy bytes straight from the payload (ingest's
 * RowWriter).
 */
import { BATCH_EVENT_TAG, EVENT_COUNT_HEADER } from "./stream.ts";
import type { RequestEventRow } from "./row.ts";
/** Bounds of `decodeEvent`: start time in [1971, 2100), see event_row.ts. */
const MIN_MS = Date.UTC(1971, 0, 1);
const MAX_MS = Date.UTC(2100, 0, 1);
/**
 * What the fast path reads of each RequestEvent field: its number and proto name, the proto type it reads it
 * as (string: length-delimited ASCII, else decodeEvent's; int64, uint32, enum and bool: a varint of at most
 * 56 bits, else decodeEvent's) and the `request_events` column (REQUEST_EVENT_COLUMNS) it writes it to, as
 * decodeEvent's row does. A field number not here makes `scan` leave the payload to decodeEvent. Only the tests
 * read it: contract_test.ts fails when proto/events/v1's RequestEvent has a field this table lacks or one that
 * differs in number or type, and checks each field's way through the scanner, `appendScanned` and decodeEvent
 * to its column.
 */
export const SCANNED_FIELDS = [
  { number: 1, name: "event_id", type: "string", column: "event_id" },
  { number: 2, name: "start_time_ms", type: "int64", column: "ts_ms" },
  { number: 3, name: "duration_us", type: "int64", column: "duration_us" },
  { number: 4, name: "service", type: "string", column: "service" },
  { number: 5, name: "method", type: "string", column: "method" },
  { number: 6, name: "protocol", type: "enum", column: "protocol" },
  { number: 7, name: "route", type: "string", column: "route" },
  { number: 8, name: "grpc_code", type: "uint32", column: "grpc_code" },
  { number: 9, name: "http_status", type: "uint32", column: "http_status" },
  { number: 10, name: "request_bytes", type: "int64", column: "request_bytes" },
  { number: 11, name: "response_bytes", type: "int64", column: "response_bytes" },
  { number: 12, name: "trace_id", type: "string", column: "trace_id" },
  { number: 13, name: "span_id", type: "string", column: "span_id" },
  { number: 14, name: "parent_span_id", type: "string", column: "parent_span_id" },
  { number: 15, name: "instance", type: "string", column: "instance" },
  { number: 16, name: "error_message", type: "string", column: "error_message" },
  { number: 17, name: "fault_injected", type: "bool", column: "fault_injected" },
  { number: 18, name: "start_time_us", type: "int64", column: "ts_us" },
  { number: 19, name: "load_run_id", type: "string", column: "load_run_id" },
] as const satisfies readonly ScannedField[];

/** One field the fast path reads (see SCANNED_FIELDS). */
export interface ScannedField {
  readonly number: number;
  readonly name: string;
  readonly type: "string" | "int64" | "uint32" | "bool" | "enum";
  readonly column: keyof RequestEventRow;
}

/** Field numbers of RequestEvent's string fields, in the order their offsets are kept. */
export const STRING_FIELDS = [1, 4, 5, 7, 12, 13, 14, 15, 16, 19] as const;
const SLOT_OF_FIELD: number[] = [];
STRING_FIELDS.forEach((field, slot) => SLOT_OF_FIELD[field] = slot);
/** Slots (indexes into `starts`/`ends`) of the string fields a row writer copies. */
export const SLOT_EVENT_ID = 0;
export const SLOT_SERVICE = 1;
export const SLOT_METHOD = 2;
export const SLOT_ROUTE = 3;
export const SLOT_TRACE_ID = 4;
export const SLOT_ERROR_MESSAGE = 8;
export const SLOT_LOAD_RUN_ID = 9;
const DASH = 0x2d;
/** Each byte's value as a hex digit (0-9, a-f, A-F), -1 for any other byte. */
const HEX_VALUE = new Int8Array(256).fill(-1);
for (let c = 0; c < 256; c++) {
  if (c >= 0x30 && c <= 0x39) HEX_VALUE[c] = c - 0x30;
  else if ((c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46)) HEX_VALUE[c] = (c | 0x20) - 0x57;
}
/** Where the k-th pair of hex digits of an 8-4-4-4-12 UUID starts. */
const UUID_PAIR_AT = Uint8Array.of(0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34);
/**
 * Where the k-th pair's byte goes among ClickHouse's 16: the first 16 digits are a little-endian UInt64, then
 * the last 16 likewise.
 */
export const UUID_BYTE_OF_PAIR: Uint8Array = Uint8Array.from(
  { length: 16 },
  (_, k) => k < 8 ? 7 - k : 23 - k,
);

/** Reads one payload at a time into reused fields; `scan` is true when the fast path accepts it. */
export class EventScanner {
  /** The buffer the payload was read from, and the payload's length in bytes. */
  payload: Uint8Array = new Uint8Array(0);
  payloadLength = 0;
  /** Start and end offsets of each string field in `payload` (slots in STRING_FIELDS order). */
  readonly starts: Int32Array = new Int32Array(STRING_FIELDS.length);
  readonly ends: Int32Array = new Int32Array(STRING_FIELDS.length);
  startTimeMs = 0;
  /** start_time_us (field 18): the start to the microsecond, 0 when absent. */
  startTimeUs = 0;
  durationUs = 0;
  protocol = 0;
  grpcCode = 0;
  httpStatus = 0;
  requestBytes = 0;
  responseBytes = 0;
  faultInjected = 0;
  /** Unix seconds of the start time (the row's ts). */
  ts = 0;
  /** event_id as the 16 bytes of a ClickHouse UUID (see writeUuid), once `scan` accepted the payload. */
  readonly uuidBytes: Uint8Array = new Uint8Array(16);

  /**
   * Reads the payload at `buf[start, end)` (the whole of `buf` by default: a payload can be read where it
   * was received, without a view of its own). Offsets kept in `starts`/`ends` are into `buf`.
   */
  scan(buf: Uint8Array, start = 0, end = buf.length): boolean {
    this.payload = buf;
    this.payloadLength = end - start;
    this.starts.fill(0);
    this.ends.fill(0);
    this.startTimeMs =
      this.startTimeUs =
      this.durationUs =
      this.protocol =
      this.grpcCode =
      this.httpStatus =
        0;
    this.requestBytes = this.responseBytes = this.faultInjected = 0;
    let pos = start;
    while (pos < end) {
      let tag = buf[pos++];
      if (tag > 0x7f) {
        if (pos >= end) return false;
        const next = buf[pos++];
        if (next > 0x7f) return false;
        tag = (tag & 0x7f) | (next << 7);
      }
      const field = tag >>> 3;
      const wireType = tag & 7;
      let value = 0;
      let multiplier = 1;
      let byte = 0x80;
      // Up to 8 bytes (56 bits: a time in µs needs 51), exact below 2^53; anything larger is decodeEvent's.
      for (let n = 0; byte > 0x7f; n++) {
        if (pos >= end || n === 8) return false;
        byte = buf[pos++];
        value += (byte & 0x7f) * multiplier;
        multiplier *= 128;
      }
      if (value > Number.MAX_SAFE_INTEGER) return false;
      if (wireType === 0) {
        switch (field) {
          case 2:
            this.startTimeMs = value;
            break;
          case 3:
            this.durationUs = value;
            break;
          case 10:
            this.requestBytes = value;
            break;
          case 11:
            this.responseBytes = value;
            break;
          case 6:
            this.protocol = value;
            break;
          case 8:
            this.grpcCode = value;
            break;
          case 9:
            this.httpStatus = value;
            break;
          case 17:
            if (value > 1) return false;
            this.faultInjected = value;
            break;
          case 18:
            this.startTimeUs = value;
            break;
          default:
            return false;
        }
      } else if (wireType === 2) {
        const slot = SLOT_OF_FIELD[field];
        const stop = pos + value;
        if (slot === undefined || stop > end) return false;
        let bits = 0;
        for (let i = pos; i < stop; i++) bits |= buf[i];
        if (bits > 0x7f) return false; // non-ASCII: decodeEvent's
        this.starts[slot] = pos;
        this.ends[slot] = stop;
        pos = stop;
      } else {
        return false;
      }
    }
    // decodeEvent's checks; a refusal there is decodeEvent's to report.
    if (!this.uuid()) return false;
    if (this.startTimeMs < MIN_MS || this.startTimeMs >= MAX_MS) return false;
    if (this.protocol !== 1 && this.protocol !== 2) return false;
    if (this.ends[SLOT_SERVICE] === this.starts[SLOT_SERVICE]) return false;
    if (this.grpcCode > 255 || this.httpStatus > 65_535) return false;
    this.ts = Math.floor(this.startTimeMs / 1000);
    return true;
  }

  /** event_id is 8-4-4-4-12 hex digits; keeps its 16 bytes in `uuidBytes`. */
  private uuid(): boolean {
    const start = this.starts[SLOT_EVENT_ID];
    if (this.ends[SLOT_EVENT_ID] - start !== 36) return false;
    return writeUuid(this.uuidBytes, 0, this.payload, start);
  }

  /** The service name (cached: a few distinct names in practice). */
  service(): string {
    const start = this.starts[SLOT_SERVICE];
    const length = this.ends[SLOT_SERVICE] - start;
    const buf = this.payload;
    search: for (const entry of serviceCache) {
      if (entry.bytes.length !== length) continue;
      for (let i = 0; i < length; i++) if (entry.bytes[i] !== buf[start + i]) continue search;
      return entry.text;
    }
    // ASCII (the scanner checked it): UTF-8 decoding gives the same characters, at any length. (Spreading the
    // bytes into String.fromCharCode overflowed the stack for a service of about 130 kB.)
    const text = asciiDecoder.decode(buf.subarray(start, start + length));
    if (length <= 256) {
      if (serviceCache.length >= 64) serviceCache.shift();
      serviceCache.push({ bytes: buf.slice(start, start + length), text });
    }
    return text;
  }
}

const serviceCache: { bytes: Uint8Array; text: string }[] = [];
const asciiDecoder = new TextDecoder();

/** Where each event of a RequestEventBatch lies in the chunk it was received in; reused across messages. */
export class BatchRanges {
  starts: Int32Array = new Int32Array(256);
  ends: Int32Array = new Int32Array(256);
  count = 0;
}

/**
 * Splits the RequestEventBatch at `buf[start, end)`, which its Tailwatch-Events header says holds `expected`
 * events, into `into` (the events' byte ranges, in order). Returns undefined when it does, else why not (the
 * whole message is then undecodable): a field other than `events` (1, length-delimited), a length past the
 * end, another number of events than the header's.
 */
export function splitBatch(
  buf: Uint8Array,
  start: number,
  end: number,
  expected: number,
  into: BatchRanges,
): string | undefined {
  if (!Number.isSafeInteger(expected) || expected < 1) {
    return `the ${EVENT_COUNT_HEADER} header is not a positive count`;
  }
  // Every event takes at least two bytes (its tag and its length): a count above that is refused before
  // anything is allocated for it (a header of 9999999999 on a one-byte message once failed an allocation).
  if (expected > (end - start) / 2) {
    return `the ${EVENT_COUNT_HEADER} header says ${expected} events, more than ${
      end - start
    } bytes can hold`;
  }
  let count = 0;
  let pos = start;
  while (pos < end) {
    if (buf[pos++] !== BATCH_EVENT_TAG) {
      return `a field other than events (tag byte ${buf[pos - 1]}) at byte ${pos - 1 - start}`;
    }
    let length = 0;
    let multiplier = 1;
    let byte = 0x80;
    for (let n = 0; byte > 0x7f; n++) {
      if (pos >= end || n === 5) return `a truncated or overlong event length at byte ${pos - start}`;
      byte = buf[pos++];
      length += (byte & 0x7f) * multiplier;
      multiplier *= 128;
    }
    if (pos + length > end) return `event ${count} runs ${pos + length - end} bytes past the message's end`;
    if (count === expected) return `more events than the ${EVENT_COUNT_HEADER} header's ${expected}`;
    if (count === into.starts.length) {
      // Grown as events are found, never beyond what the payload holds.
      const starts = new Int32Array(Math.min(expected, 2 * count));
      const ends = new Int32Array(starts.length);
      starts.set(into.starts);
      ends.set(into.ends);
      into.starts = starts;
      into.ends = ends;
    }
    into.starts[count] = pos;
    into.ends[count] = pos + length;
    count++;
    pos += length;
  }
  if (count !== expected) return `${count} events, but the ${EVENT_COUNT_HEADER} header says ${expected}`;
  into.count = count;
  return undefined;
}

/**
 * Checks that `text` holds 8-4-4-4-12 hex digits at `start` and writes them at `out[at]` as ClickHouse's 16
 * bytes: the first 16 hex digits as a little-endian UInt64, then the last 16 likewise (what a UUID column holds
 * in RowBinary on 18.16 and on current releases alike), in one pass. False (and `out` partly written) when they
 * are not a UUID.
 */
export function writeUuid(out: Uint8Array, at: number, text: Uint8Array, start: number): boolean {
  if (
    text[start + 8] !== DASH || text[start + 13] !== DASH || text[start + 18] !== DASH ||
    text[start + 23] !== DASH
  ) {
    return false;
  }
  for (let k = 0; k < 16; k++) {
    const pair = start + UUID_PAIR_AT[k];
    const high = HEX_VALUE[text[pair]];
    const low = HEX_VALUE[text[pair + 1]];
    if ((high | low) < 0) return false;
    out[at + UUID_BYTE_OF_PAIR[k]] = (high << 4) | low;
  }
  return true;
}
