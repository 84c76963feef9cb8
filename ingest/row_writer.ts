/**
 * The worker's hot path: RequestEvent payloads straight to the bytes of a TabSeparated INSERT body, without
 * building JS strings or objects per event. `EventScanner` reads the canonical wire format of RequestEvent
 * and applies the checks of `decodeEvent`; whatever it does not accept (non-ASCII text, unknown fields,
 * wrong wire types, long varints, any value `decodeEvent` would refuse) is left to `decodeEvent`, which
 * then gives the row or the poison reason. So a payload always becomes the same row (the same bytes as
 * `rowLine(decodeEvent(...).row)`) or the same reason either way; unit_test.ts fuzzes that.
 */
import { decodeEvent, type DecodeResult, rowLine } from "./event_row.ts";

/** Bounds of `decodeEvent`: start time in [1971, 2100), see event_row.ts. */
const MIN_MS = Date.UTC(1971, 0, 1);
const MAX_MS = Date.UTC(2100, 0, 1);
/** Field numbers of RequestEvent's string fields, in the order their offsets are kept. */
const STRING_FIELDS = [1, 4, 5, 7, 12, 13, 14, 15, 16] as const;
const SLOT_OF_FIELD: number[] = [];
STRING_FIELDS.forEach((field, slot) => SLOT_OF_FIELD[field] = slot);
const [EVENT_ID, SERVICE, METHOD, ROUTE, TRACE_ID, ERROR_MESSAGE] = [0, 1, 2, 3, 4, 8];

const TAB = 0x09;
const LF = 0x0a;
const CR = 0x0d;
const BACKSLASH = 0x5c;
const ZERO = 0x30;
/** ingested_at_ms is written as 13 digits (epoch ms until the year 2286), patched in at INSERT time. */
const STAMP_DIGITS = 13;

/** Reads one payload at a time into reused fields; `scan` is true when the fast path accepts it. */
export class EventScanner {
  payload: Uint8Array = new Uint8Array(0);
  /** Start and end offsets of each string field in `payload` (slots in STRING_FIELDS order). */
  readonly starts = new Int32Array(STRING_FIELDS.length);
  readonly ends = new Int32Array(STRING_FIELDS.length);
  startTimeMs = 0;
  durationUs = 0;
  protocol = 0;
  grpcCode = 0;
  httpStatus = 0;
  requestBytes = 0;
  responseBytes = 0;
  faultInjected = 0;
  /** Unix seconds of the start time (the row's ts). */
  ts = 0;

  scan(buf: Uint8Array): boolean {
    this.payload = buf;
    this.starts.fill(0);
    this.ends.fill(0);
    this.startTimeMs =
      this.durationUs =
      this.protocol =
      this.grpcCode =
      this.httpStatus =
        0;
    this.requestBytes = this.responseBytes = this.faultInjected = 0;
    const end = buf.length;
    let pos = 0;
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
      for (let n = 0; byte > 0x7f; n++) {
        if (pos >= end || n === 7) return false;
        byte = buf[pos++];
        value += (byte & 0x7f) * multiplier;
        multiplier *= 128;
      }
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
          default:
            return false;
        }
      } else if (wireType === 2) {
        const slot = SLOT_OF_FIELD[field];
        const stop = pos + value;
        if (slot === undefined || stop > end) return false;
        for (let i = pos; i < stop; i++) if (buf[i] > 0x7f) return false; // non-ASCII: decodeEvent's
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

  /** event_id is 8-4-4-4-12 hex digits. */
  private uuid(): boolean {
    const start = this.starts[EVENT_ID];
    if (this.ends[EVENT_ID] - start !== 36) return false;
    const buf = this.payload;
    for (let i = 0; i < 36; i++) {
      const c = buf[start + i];
      if (i === 8 || i === 13 || i === 18 || i === 23) {
        if (c !== 0x2d) return false;
      } else if (!((c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46))) {
        return false;
      }
    }
    return true;
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
    const bytes = buf.slice(start, start + length);
    const text = String.fromCharCode(...bytes);
    if (serviceCache.length >= 64) serviceCache.shift();
    serviceCache.push({ bytes, text });
    return text;
  }
}

const serviceCache: { bytes: Uint8Array; text: string }[] = [];
const encoder = new TextEncoder();

/**
 * The rows of one INSERT, as TabSeparated bytes in a growable buffer: the columns of REQUEST_EVENT_COLUMNS
 * and then `ingested_at_ms`, whose value `stamp()` writes into every row just before the INSERT is sent.
 */
export class RowWriter {
  bytes: Uint8Array<ArrayBuffer>;
  length = 0;
  /** Per row: its first byte, its stream sequence, and where its ingested_at_ms digits are. */
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
    // At most: every string byte escaped (2x), 11 numbers of up to 16 digits, 20 separators.
    this.reserve(2 * buf.length + 11 * 16 + 20 + STAMP_DIGITS);
    this.rowStarts.push(this.length);
    this.seqs.push(seq);
    const out = this.bytes;
    let at = this.length;
    // event_id, lowercased
    const idStart = scanner.starts[EVENT_ID];
    for (let i = 0; i < 36; i++) {
      const c = buf[idStart + i];
      out[at++] = c >= 0x41 && c <= 0x46 ? c + 0x20 : c;
    }
    out[at++] = TAB;
    at = writeInt(out, at, scanner.ts);
    out[at++] = TAB;
    at = writeInt(out, at, scanner.startTimeMs);
    out[at++] = TAB;
    at = writeText(out, at, buf, scanner.starts[SERVICE], scanner.ends[SERVICE]);
    out[at++] = TAB;
    at = writeText(out, at, buf, scanner.starts[METHOD], scanner.ends[METHOD]);
    out[at++] = TAB;
    if (scanner.protocol === 1) {
      out[at++] = 0x67; // grpc
      out[at++] = 0x72;
      out[at++] = 0x70;
      out[at++] = 0x63;
    } else {
      out[at++] = 0x68; // http
      out[at++] = 0x74;
      out[at++] = 0x74;
      out[at++] = 0x70;
    }
    out[at++] = TAB;
    at = writeText(out, at, buf, scanner.starts[ROUTE], scanner.ends[ROUTE]);
    for (
      const value of [
        scanner.grpcCode,
        scanner.httpStatus,
        scanner.durationUs,
        scanner.requestBytes,
        scanner.responseBytes,
      ]
    ) {
      out[at++] = TAB;
      at = writeInt(out, at, value);
    }
    // trace_id, span_id, parent_span_id, instance, error_message: consecutive slots
    for (let slot = TRACE_ID; slot <= ERROR_MESSAGE; slot++) {
      out[at++] = TAB;
      at = writeText(out, at, buf, scanner.starts[slot], scanner.ends[slot]);
    }
    out[at++] = TAB;
    out[at++] = ZERO + scanner.faultInjected;
    out[at++] = TAB;
    at = writeInt(out, at, seq);
    this.length = this.endRow(at);
  }

  /** Appends a row given as a line (`rowLine`), for payloads the scanner left to `decodeEvent`. */
  appendLine(line: string, seq: number): void {
    this.reserve(3 * line.length + STAMP_DIGITS + 2);
    this.rowStarts.push(this.length);
    this.seqs.push(seq);
    const { written } = encoder.encodeInto(line, this.bytes.subarray(this.length));
    this.length = this.endRow(this.length + written);
  }

  private endRow(at: number): number {
    const out = this.bytes;
    out[at++] = TAB;
    this.stampAt.push(at);
    out.fill(ZERO, at, at + STAMP_DIGITS);
    at += STAMP_DIGITS;
    out[at++] = LF;
    return at;
  }

  /** Writes `ms` (epoch milliseconds, 13 digits) as every row's ingested_at_ms. */
  stamp(ms: number): void {
    const digits = new Uint8Array(STAMP_DIGITS).fill(ZERO);
    writeInt(digits, STAMP_DIGITS - String(Math.trunc(ms)).length, Math.trunc(ms));
    for (const at of this.stampAt) this.bytes.set(digits, at);
  }

  /** The body to send (a view: valid until the next append). */
  body(): Uint8Array<ArrayBuffer> {
    return this.bytes.subarray(0, this.length);
  }

  /** A writer with the rows whose sequence is not in `skip`. */
  without(skip: Set<number>): RowWriter {
    const kept = new RowWriter(Math.max(1024, this.length));
    for (let row = 0; row < this.seqs.length; row++) {
      if (skip.has(this.seqs[row])) continue;
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
}

/** Non-negative integer below 2^53 as decimal digits; returns the new offset. */
function writeInt(out: Uint8Array, at: number, value: number): number {
  if (value < 10) {
    out[at] = ZERO + value;
    return at + 1;
  }
  let digits = 0;
  for (let v = value; v >= 1; v = Math.floor(v / 10)) digits++;
  let v = value;
  for (let i = at + digits - 1; i >= at; i--) {
    const q = Math.floor(v / 10);
    out[i] = ZERO + (v - q * 10);
    v = q;
  }
  return at + digits;
}

/** ASCII bytes as a TabSeparated string: backslash, tab, line feed and carriage return escaped. */
function writeText(out: Uint8Array, at: number, buf: Uint8Array, start: number, end: number): number {
  for (let i = start; i < end; i++) {
    const c = buf[i];
    if (c === BACKSLASH || c === TAB || c === LF || c === CR) {
      out[at++] = BACKSLASH;
      out[at++] = c === BACKSLASH ? BACKSLASH : c === TAB ? 0x74 : c === LF ? 0x6e : 0x72;
    } else {
      out[at++] = c;
    }
  }
  return at;
}

/**
 * Appends a payload to the writer `pick(ts)` returns (the worker's writer for the row's partition): the fast
 * path for what the scanner accepts, `decodeEvent` and `rowLine` for the rest. Returns decodeEvent's
 * refusal for a poison payload, else undefined; `service` gets the row's service.
 */
export function appendEvent(
  scanner: EventScanner,
  payload: Uint8Array,
  seq: number,
  pick: (ts: number, service: string) => RowWriter,
): Extract<DecodeResult, { ok: false }> | undefined {
  if (scanner.scan(payload)) {
    pick(scanner.ts, scanner.service()).appendScanned(scanner, seq);
    return undefined;
  }
  const decoded = decodeEvent(payload, seq);
  if (!decoded.ok) return decoded;
  pick(decoded.row.ts, decoded.row.service).appendLine(rowLine(decoded.row), seq);
  return undefined;
}
