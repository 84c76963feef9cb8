/**
 * The worker's hot path: RequestEvent payloads straight to the bytes of a RowBinary INSERT body, without
 * building JS strings or objects per event. `EventScanner` reads the canonical wire format of RequestEvent
 * and applies the checks of `decodeEvent`; whatever it does not accept (non-ASCII text, unknown fields,
 * wrong wire types, long varints, any value `decodeEvent` would refuse) is left to `decodeEvent`, which
 * then gives the row or the poison reason. So a payload always becomes the same row (the same bytes as
 * `appendRow(decodeEvent(...).row)`, and the same values as decodeEvent's row when the body is read back) or
 * the same reason either way; unit_test.ts fuzzes that, ingest_test.ts checks it against the server.
 */
import { BATCH_EVENT_TAG, EVENT_COUNT_HEADER } from "@tailwatch/kit";
import { decodeEvent, type DecodeResult, type RequestEventRow } from "./event_row.ts";

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
const STRING_FIELDS = [1, 4, 5, 7, 12, 13, 14, 15, 16, 19] as const;
const SLOT_OF_FIELD: number[] = [];
STRING_FIELDS.forEach((field, slot) => SLOT_OF_FIELD[field] = slot);
const [EVENT_ID, SERVICE, METHOD, ROUTE, TRACE_ID, ERROR_MESSAGE, LOAD_RUN_ID] = [0, 1, 2, 3, 4, 8, 9];
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
const UUID_BYTE_OF_PAIR = Uint8Array.from({ length: 16 }, (_, k) => k < 8 ? 7 - k : 23 - k);

/** Reads one payload at a time into reused fields; `scan` is true when the fast path accepts it. */
export class EventScanner {
  /** The buffer the payload was read from, and the payload's length in bytes. */
  payload: Uint8Array = new Uint8Array(0);
  payloadLength = 0;
  /** Start and end offsets of each string field in `payload` (slots in STRING_FIELDS order). */
  readonly starts = new Int32Array(STRING_FIELDS.length);
  readonly ends = new Int32Array(STRING_FIELDS.length);
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
  readonly uuidBytes = new Uint8Array(16);

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
    if (this.ends[SERVICE] === this.starts[SERVICE]) return false;
    if (this.grpcCode > 255 || this.httpStatus > 65_535) return false;
    this.ts = Math.floor(this.startTimeMs / 1000);
    return true;
  }

  /** event_id is 8-4-4-4-12 hex digits; keeps its 16 bytes in `uuidBytes`. */
  private uuid(): boolean {
    const start = this.starts[EVENT_ID];
    if (this.ends[EVENT_ID] - start !== 36) return false;
    return writeUuid(this.uuidBytes, 0, this.payload, start);
  }

  /** The service name (cached: a few distinct names in practice). */
  service(): string {
    const start = this.starts[SERVICE];
    const length = this.ends[SERVICE] - start;
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
const encoder = new TextEncoder();
const asciiDecoder = new TextDecoder();

/**
 * Bytes of the UInt64 columns whose values are not known until the INSERT is sent: `ingested_at_ms`,
 * `ingest_batch_seq` and `ingest_floor_seq` (STAMPED_COLUMNS).
 */
const STAMP_BYTES = 24;
const TWO_TO_32 = 2 ** 32;

/**
 * The rows of one INSERT in ClickHouse's RowBinary format, in a growable buffer: the columns of
 * REQUEST_EVENT_COLUMNS and then STAMPED_COLUMNS, whose values `stamp()` writes into every row just before the
 * INSERT is sent. RowBinary rather than TabSeparated because the server parses it with a copy per value
 * instead of a text parser per value (no number or UUID parsing, no unescaping): measured in ingest/README.md.
 * Per column type (ingest/migrations/0001 and 0004): UUID as 16 bytes (its two halves, each a little-endian
 * UInt64 of 16 hex digits), DateTime as a little-endian UInt32 of unix seconds, UIntN as N/8 little-endian
 * bytes, String as a LEB128 length and the UTF-8 bytes.
 */
export class RowWriter {
  bytes: Uint8Array<ArrayBuffer>;
  length = 0;
  /** Per row: its first byte, its stream sequence, and where its stamped columns' bytes are. */
  readonly rowStarts: number[] = [];
  readonly seqs: number[] = [];
  private readonly stampAt: number[] = [];

  constructor(capacity = 1 << 16) {
    this.bytes = new Uint8Array(capacity);
  }

  get rows(): number {
    return this.seqs.length;
  }

  private reserve(extra: number): void {
    if (this.length + extra <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + extra) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
  }

  /** Appends the row of a payload `scanner.scan` accepted. */
  appendScanned(scanner: EventScanner, seq: number): void {
    const buf = scanner.payload;
    // At most: every payload byte as string bytes plus a 5-byte length per string, the fixed-size columns.
    this.reserve(scanner.payloadLength + STRING_FIELDS.length * 5 + FIXED_BYTES + STAMP_BYTES);
    this.rowStarts.push(this.length);
    this.seqs.push(seq);
    const out = this.bytes;
    out.set(scanner.uuidBytes, this.length);
    let at = writeUInt32(out, this.length + 16, scanner.ts);
    at = writeUInt64(out, at, scanner.startTimeMs);
    at = writeAscii(out, at, buf, scanner.starts[SERVICE], scanner.ends[SERVICE]);
    at = writeAscii(out, at, buf, scanner.starts[METHOD], scanner.ends[METHOD]);
    at = writeProtocol(out, at, scanner.protocol === 1 ? GRPC : HTTP);
    at = writeAscii(out, at, buf, scanner.starts[ROUTE], scanner.ends[ROUTE]);
    out[at++] = scanner.grpcCode;
    out[at++] = scanner.httpStatus & 0xff;
    out[at++] = scanner.httpStatus >>> 8;
    at = writeUInt64(out, at, scanner.durationUs);
    at = writeUInt64(out, at, scanner.requestBytes);
    at = writeUInt64(out, at, scanner.responseBytes);
    // trace_id, span_id, parent_span_id, instance, error_message: consecutive slots
    for (let slot = TRACE_ID; slot <= ERROR_MESSAGE; slot++) {
      at = writeAscii(out, at, buf, scanner.starts[slot], scanner.ends[slot]);
    }
    out[at++] = scanner.faultInjected;
    at = writeUInt64(out, at, seq);
    at = writeUInt64(out, at, scanner.startTimeUs);
    at = writeAscii(out, at, buf, scanner.starts[LOAD_RUN_ID], scanner.ends[LOAD_RUN_ID]);
    this.length = this.endRow(at);
  }

  /** Appends a row decoded by `decodeEvent`, for payloads the scanner left to it. */
  appendRow(row: RequestEventRow): void {
    const texts = [
      row.service,
      row.method,
      row.protocol,
      row.route,
      row.trace_id,
      row.span_id,
      row.parent_span_id,
      row.instance,
      row.error_message,
      row.load_run_id,
    ].map((text) => encoder.encode(text));
    this.reserve(texts.reduce((sum, text) => sum + text.length + 5, 0) + FIXED_BYTES + STAMP_BYTES);
    this.rowStarts.push(this.length);
    this.seqs.push(row.stream_seq);
    const out = this.bytes;
    // decodeEvent checked it: 36 ASCII characters, a UUID.
    if (!writeUuid(out, this.length, encoder.encode(row.event_id), 0)) {
      throw new Error(`event_id ${JSON.stringify(row.event_id)} is not a UUID`);
    }
    let at = writeUInt32(out, this.length + 16, row.ts);
    at = writeUInt64(out, at, row.ts_ms);
    const [
      service,
      method,
      protocol,
      route,
      traceId,
      spanId,
      parentSpanId,
      instance,
      errorMessage,
      loadRunId,
    ] = texts;
    at = writeBytes(out, at, service);
    at = writeBytes(out, at, method);
    at = writeBytes(out, at, protocol);
    at = writeBytes(out, at, route);
    out[at++] = row.grpc_code;
    out[at++] = row.http_status & 0xff;
    out[at++] = row.http_status >>> 8;
    at = writeUInt64(out, at, row.duration_us);
    at = writeUInt64(out, at, row.request_bytes);
    at = writeUInt64(out, at, row.response_bytes);
    for (const text of [traceId, spanId, parentSpanId, instance, errorMessage]) {
      at = writeBytes(out, at, text);
    }
    out[at++] = row.fault_injected;
    at = writeUInt64(out, at, row.stream_seq);
    at = writeUInt64(out, at, row.ts_us);
    at = writeBytes(out, at, loadRunId);
    this.length = this.endRow(at);
  }

  private endRow(at: number): number {
    this.stampAt.push(at);
    this.bytes.fill(0, at, at + STAMP_BYTES);
    return at + STAMP_BYTES;
  }

  /** Writes every row's stamped columns (STAMPED_COLUMNS): see ingest/README.md for what they mean. */
  stamp(values: { ingestedAtMs: number; batchSeq: number; floorSeq: number }): void {
    const value = new Uint8Array(STAMP_BYTES);
    let at = writeUInt64(value, 0, Math.trunc(values.ingestedAtMs));
    at = writeUInt64(value, at, values.batchSeq);
    writeUInt64(value, at, values.floorSeq);
    for (const at of this.stampAt) this.bytes.set(value, at);
  }

  /** The body to send (a view: valid until the next append). */
  body(): Uint8Array<ArrayBuffer> {
    return this.bytes.subarray(0, this.length);
  }

  /** A writer with the rows whose sequence is not in `skip`. */
  without(skip: Set<number>): RowWriter {
    return this.keeping((row) => !skip.has(this.seqs[row]));
  }

  /** A writer with the rows whose event id (eventId) is not in `skip`. */
  withoutEvents(skip: Set<string>): RowWriter {
    return this.keeping((row) => !skip.has(this.eventId(row)));
  }

  /** A writer without the rows whose indexes are in `skip`. */
  withoutRows(skip: Set<number>): RowWriter {
    return this.keeping((row) => !skip.has(row));
  }

  /** A writer with the rows `keep` says yes to, in order. */
  private keeping(keep: (row: number) => boolean): RowWriter {
    const kept = new RowWriter(Math.max(1024, this.length));
    for (let row = 0; row < this.seqs.length; row++) {
      if (!keep(row)) continue;
      const start = this.rowStarts[row];
      const end = row + 1 < this.seqs.length ? this.rowStarts[row + 1] : this.length;
      kept.rowStarts.push(kept.length);
      kept.seqs.push(this.seqs[row]);
      kept.bytes.set(this.bytes.subarray(start, end), kept.length);
      kept.stampAt.push(kept.length + (this.stampAt[row] - start));
      kept.length += end - start;
    }
    return kept;
  }

  /**
   * Row `row`'s event_id as ClickHouse writes a UUID as text (lower-case 8-4-4-4-12): its first 16 bytes read
   * back in the order writeUuid put them.
   */
  eventId(row: number): string {
    const at = this.rowStarts[row];
    let text = "";
    for (let k = 0; k < 16; k++) {
      if (k === 4 || k === 6 || k === 8 || k === 10) text += "-";
      text += HEX_PAIR[this.bytes[at + UUID_BYTE_OF_PAIR[k]]];
    }
    return text;
  }

  /** Removes the last rows while they carry stream sequence `seq` (undoes a message's rows). */
  dropTrailing(seq: number): void {
    while (this.seqs.length > 0 && this.seqs[this.seqs.length - 1] === seq) {
      this.seqs.pop();
      this.stampAt.pop();
      this.length = this.rowStarts.pop()!;
    }
  }
}

/** Each byte as two lower-case hex digits. */
const HEX_PAIR = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"));

/** Bytes of a row's fixed-size columns: UUID, DateTime, 7 UInt64 (stream_seq, ts_us), UInt8 twice, UInt16. */
const FIXED_BYTES = 16 + 4 + 7 * 8 + 1 + 1 + 2;
/** The protocol column's two values as RowBinary Strings (length, then bytes). */
const GRPC = Uint8Array.of(4, 0x67, 0x72, 0x70, 0x63);
const HTTP = Uint8Array.of(4, 0x68, 0x74, 0x74, 0x70);

function writeProtocol(out: Uint8Array, at: number, value: Uint8Array): number {
  for (let i = 0; i < value.length; i++) out[at++] = value[i];
  return at;
}

/**
 * Checks that `text` holds 8-4-4-4-12 hex digits at `start` and writes them at `out[at]` as ClickHouse's 16
 * bytes: the first 16 hex digits as a little-endian UInt64, then the last 16 likewise (what a UUID column holds
 * in RowBinary on 18.16 and on current releases alike), in one pass. False (and `out` partly written) when they
 * are not a UUID.
 */
function writeUuid(out: Uint8Array, at: number, text: Uint8Array, start: number): boolean {
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

function writeUInt32(out: Uint8Array, at: number, value: number): number {
  out[at] = value & 0xff;
  out[at + 1] = (value >>> 8) & 0xff;
  out[at + 2] = (value >>> 16) & 0xff;
  out[at + 3] = value >>> 24;
  return at + 4;
}

/** A non-negative integer below 2^53 as a little-endian UInt64. */
function writeUInt64(out: Uint8Array, at: number, value: number): number {
  const low = value % TWO_TO_32;
  writeUInt32(out, at, low);
  return writeUInt32(out, at + 4, (value - low) / TWO_TO_32);
}

/** A LEB128 length (what RowBinary puts before a String's bytes). */
function writeLength(out: Uint8Array, at: number, length: number): number {
  while (length > 0x7f) {
    out[at++] = (length & 0x7f) | 0x80;
    length >>>= 7;
  }
  out[at++] = length;
  return at;
}

/** `buf[start, end)` (ASCII, checked by the scanner) as a RowBinary String. */
function writeAscii(out: Uint8Array, at: number, buf: Uint8Array, start: number, end: number): number {
  at = writeLength(out, at, end - start);
  for (let i = start; i < end; i++) out[at++] = buf[i];
  return at;
}

function writeBytes(out: Uint8Array, at: number, bytes: Uint8Array): number {
  at = writeLength(out, at, bytes.length);
  out.set(bytes, at);
  return at + bytes.length;
}

/**
 * Appends the payload at `payload[start, end)` (all of it by default) to the writer `pick(ts)` returns (the
 * worker's writer for the row's partition): the fast path for what the scanner accepts, `decodeEvent` for the
 * rest. Returns decodeEvent's refusal for a poison payload, else undefined; `service` gets the row's service.
 */
export function appendEvent(
  scanner: EventScanner,
  payload: Uint8Array,
  seq: number,
  pick: (ts: number, service: string) => RowWriter,
  start = 0,
  end = payload.length,
): Extract<DecodeResult, { ok: false }> | undefined {
  if (scanner.scan(payload, start, end)) {
    pick(scanner.ts, scanner.service()).appendScanned(scanner, seq);
    return undefined;
  }
  const decoded = decodeEvent(
    start === 0 && end === payload.length ? payload : payload.subarray(start, end),
    seq,
  );
  if (!decoded.ok) return decoded;
  pick(decoded.row.ts, decoded.row.service).appendRow(decoded.row);
  return undefined;
}

/** Where each event of a RequestEventBatch lies in the chunk it was received in; reused across messages. */
export class BatchRanges {
  starts = new Int32Array(256);
  ends = new Int32Array(256);
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
