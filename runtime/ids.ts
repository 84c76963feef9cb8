/** Identifiers: time-ordered event ids (UUIDv7) and W3C trace context. */

/**
 * Random bytes from crypto.getRandomValues, drawn 4 KiB at a time: every request takes 16 to 32 random
 * bytes for its ids, and one call into the runtime per id cost more than the id itself. Each byte of the pool
 * is handed out once.
 */
const randomPool = new Uint8Array(4096);
let randomPoolUsed = randomPool.length;

function takeRandom(count: number): number {
  if (randomPoolUsed + count > randomPool.length) {
    crypto.getRandomValues(randomPool);
    randomPoolUsed = 0;
  }
  const at = randomPoolUsed;
  randomPoolUsed += count;
  return at;
}

/** Hex digits' char codes, and a scratch line of chars that ids are written into and read out of at once. */
const HEX_DIGITS = Array.from("0123456789abcdef", (c) => c.charCodeAt(0));
const chars = new Uint16Array(36);
const DASH = 0x2d;

function writeHex(byte: number, at: number): void {
  chars[at] = HEX_DIGITS[byte >> 4];
  chars[at + 1] = HEX_DIGITS[byte & 15];
}

function charsToString(length: number): string {
  return String.fromCharCode.apply(null, chars.subarray(0, length) as unknown as number[]);
}

let lastMs = 0;
let sequence = 0;

/**
 * A UUIDv7 (RFC 9562): 48-bit Unix ms, then a 12-bit counter that keeps ids from one process strictly
 * increasing within a millisecond, then 62 random bits.
 */
export function uuidv7(nowMs: number = Date.now()): string {
  if (nowMs > lastMs) {
    lastMs = nowMs;
    sequence = 0;
  } else if (++sequence > 0xfff) {
    // More than 4096 ids in one ms: borrow the next millisecond so the order still holds.
    lastMs++;
    sequence = 0;
  }
  // 48 bits of ms: the high 16 and the low 32, each exact in a double's integer range.
  const high = Math.floor(lastMs / 0x1_0000_0000);
  const low = lastMs % 0x1_0000_0000;
  writeHex((high >>> 8) & 0xff, 0);
  writeHex(high & 0xff, 2);
  writeHex((low >>> 24) & 0xff, 4);
  writeHex((low >>> 16) & 0xff, 6);
  chars[8] = DASH;
  writeHex((low >>> 8) & 0xff, 9);
  writeHex(low & 0xff, 11);
  chars[13] = DASH;
  writeHex(0x70 | (sequence >> 8), 14);
  writeHex(sequence & 0xff, 16);
  chars[18] = DASH;
  const r = takeRandom(8);
  writeHex(0x80 | (randomPool[r] & 0x3f), 19);
  writeHex(randomPool[r + 1], 21);
  chars[23] = DASH;
  for (let i = 2; i < 8; i++) writeHex(randomPool[r + i], 24 + 2 * (i - 2));
  return charsToString(36);
}

/** `byteCount` random bytes as hex, never all zero (W3C trace context forbids all-zero ids). */
function randomHex(byteCount: number): string {
  for (;;) {
    const r = takeRandom(byteCount);
    let any = 0;
    for (let i = 0; i < byteCount; i++) {
      any |= randomPool[r + i];
      writeHex(randomPool[r + i], 2 * i);
    }
    if (any !== 0) return charsToString(2 * byteCount);
  }
}

export const newTraceId = (): string => randomHex(16);
export const newSpanId = (): string => randomHex(8);

/** The span a request runs in: its own id, its trace, and the caller's span (empty for a root). */
export interface SpanContext {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  sampled: boolean;
}

/** Whether text[start, end) is lower-case hex, and not all zeros when `nonZero`. */
function isHex(text: string, start: number, end: number, nonZero: boolean): boolean {
  let sawNonZero = false;
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i);
    if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return false;
    if (c !== 48) sawNonZero = true;
  }
  return sawNonZero || !nonZero;
}

/**
 * Starts the server span for an incoming request: a child of a valid `traceparent` header, else a new root.
 * An invalid header is ignored, as the W3C spec asks: version 2 hex digits (not ff), trace id 32 and parent
 * id 16 hex digits (not all zero), flags 2 hex digits, and for version 00 nothing after them.
 */
export function spanFromTraceparent(header: string | null | undefined): SpanContext {
  if (header) {
    const value = header.trim().toLowerCase();
    const valid = value.length >= 55 && value.charCodeAt(2) === DASH && value.charCodeAt(35) === DASH &&
      value.charCodeAt(52) === DASH && isHex(value, 0, 2, false) && !value.startsWith("ff") &&
      isHex(value, 3, 35, true) && isHex(value, 36, 52, true) && isHex(value, 53, 55, false) &&
      (value.length === 55 || (!value.startsWith("00") && value.charCodeAt(55) === DASH));
    if (valid) {
      return {
        traceId: value.slice(3, 35),
        spanId: newSpanId(),
        parentSpanId: value.slice(36, 52),
        sampled: (parseInt(value.slice(53, 55), 16) & 1) === 1,
      };
    }
  }
  return { traceId: newTraceId(), spanId: newSpanId(), parentSpanId: "", sampled: true };
}

/** The `traceparent` value that makes the callee's span a child of `span`. */
export function traceparentOf(span: SpanContext): string {
  return `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`;
}
