/** Identifiers: time-ordered event ids (UUIDv7) and W3C trace context. */

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

function hex(bytes: Uint8Array): string {
  let out = "";
  for (const byte of bytes) out += HEX[byte];
  return out;
}

/**
 * Random bytes from crypto.getRandomValues, drawn 4 KiB at a time: every request takes 16 to 32 random
 * bytes for its ids, and one call into the runtime per id cost more than the id itself.
 */
const randomPool = new Uint8Array(4096);
let randomPoolUsed = randomPool.length;

function randomBytes(target: Uint8Array, offset: number, count: number): void {
  if (randomPoolUsed + count > randomPool.length) {
    crypto.getRandomValues(randomPool);
    randomPoolUsed = 0;
  }
  target.set(randomPool.subarray(randomPoolUsed, randomPoolUsed + count), offset);
  // Used bytes are zeroed so that no byte is ever handed out twice, even by mistake.
  randomPool.fill(0, randomPoolUsed, randomPoolUsed + count);
  randomPoolUsed += count;
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
  const bytes = new Uint8Array(16);
  randomBytes(bytes, 8, 8);
  let ms = lastMs;
  for (let i = 5; i >= 0; i--) {
    bytes[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  bytes[6] = 0x70 | (sequence >> 8);
  bytes[7] = sequence & 0xff;
  bytes[8] = 0x80 | (bytes[8] & 0x3f);
  const h = hex(bytes);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function randomHex(byteCount: number): string {
  const bytes = new Uint8Array(byteCount);
  do randomBytes(bytes, 0, byteCount); while (bytes.every((b) => b === 0));
  return hex(bytes);
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

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/**
 * Starts the server span for an incoming request: a child of a valid `traceparent` header, else a new root.
 * An invalid header is ignored, as the W3C spec asks.
 */
export function spanFromTraceparent(header: string | null | undefined): SpanContext {
  const match = header ? TRACEPARENT.exec(header.trim().toLowerCase()) : null;
  if (
    match && match[1] !== "ff" && !/^0+$/.test(match[2]) && !/^0+$/.test(match[3]) &&
    (match[1] !== "00" || match[5] === undefined)
  ) {
    return {
      traceId: match[2],
      spanId: newSpanId(),
      parentSpanId: match[3],
      sampled: (parseInt(match[4], 16) & 1) === 1,
    };
  }
  return { traceId: newTraceId(), spanId: newSpanId(), parentSpanId: "", sampled: true };
}

/** The `traceparent` value that makes the callee's span a child of `span`. */
export function traceparentOf(span: SpanContext): string {
  return `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`;
}
