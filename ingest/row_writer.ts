/**
 * The worker's hot path: RequestEvent payloads straight to the bytes of a RowBinary INSERT body, without
 * building JS strings or objects per event. `EventScanner` reads the canonical wire format of RequestEvent
 * and applies the checks of `decodeEvent`; whatever it does not accept (non-ASCII text, unknown fields,
 * wrong wire types, long varints, any value `decodeEvent` would refuse) is left to `decodeEvent`, which
 * then gives the row or the poison reason. So a payload always becomes the same row (the same bytes as
 * `appendRow(decodeEvent(...).row)`, and the same values as decodeEvent's row when the body is read back) or
 * the same reason either way; unit_test.ts fuzzes that, ingest_test.ts checks it against the server.
 */
import {
  decodeEvent,
  type DecodeResult,
  type EventScanner,
  type RequestEventRow,
  SLOT_ERROR_MESSAGE,
  SLOT_LOAD_RUN_ID,
  SLOT_METHOD,
  SLOT_ROUTE,
  SLOT_SERVICE,
  SLOT_TRACE_ID,
  STRING_FIELDS,
  UUID_BYTE_OF_PAIR,
  writeUuid,
} from "@tailwatch/events";

const encoder = new TextEncoder();

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
    at = writeAscii(out, at, buf, scanner.starts[SLOT_SERVICE], scanner.ends[SLOT_SERVICE]);
    at = writeAscii(out, at, buf, scanner.starts[SLOT_METHOD], scanner.ends[SLOT_METHOD]);
    at = writeProtocol(out, at, scanner.protocol === 1 ? GRPC : HTTP);
    at = writeAscii(out, at, buf, scanner.starts[SLOT_ROUTE], scanner.ends[SLOT_ROUTE]);
    out[at++] = scanner.grpcCode;
    out[at++] = scanner.httpStatus & 0xff;
    out[at++] = scanner.httpStatus >>> 8;
    at = writeUInt64(out, at, scanner.durationUs);
    at = writeUInt64(out, at, scanner.requestBytes);
    at = writeUInt64(out, at, scanner.responseBytes);
    // trace_id, span_id, parent_span_id, instance, error_message: consecutive slots
    for (let slot = SLOT_TRACE_ID; slot <= SLOT_ERROR_MESSAGE; slot++) {
      at = writeAscii(out, at, buf, scanner.starts[slot], scanner.ends[slot]);
    }
    out[at++] = scanner.faultInjected;
    at = writeUInt64(out, at, seq);
    at = writeUInt64(out, at, scanner.startTimeUs);
    at = writeAscii(out, at, buf, scanner.starts[SLOT_LOAD_RUN_ID], scanner.ends[SLOT_LOAD_RUN_ID]);
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
