/**
 * The output of a connection: every frame is appended to one buffer (`c.out`), and what was appended within
 * one turn of the event loop leaves in one write (a microtask starts it). While a write is under way the next
 * frames fill the other buffer; the two swap. Also the writers of each frame we send.
 *
 * What it promises the rest: appending never waits and never fails (the buffer grows); frames leave in the
 * order they were appended (HPACK needs it); `outputBytes` is what the socket has not taken yet, which the
 * defences bound (reading pauses past limits.maxOutputBytes, DATA stays in its stream: flow.ts).
 */
import { CLIENT_PREFACE, DEFAULT_WINDOW, Flag, FRAME_HEADER_BYTES, FrameType, Setting } from "./frames.ts";
import { pumpBlocked } from "./flow.ts";
import { stopWaitingForOutput } from "./reader.ts";
import { finishWriting, lost } from "./shutdown.ts";
import { type ConnectionState, OUTPUT_BUFFER_BYTES } from "./state.ts";

/** An output buffer larger than this is not kept once written (a burst should not pin its memory). */
const KEPT_BUFFER_BYTES = 256 * 1024;

/** Bytes not yet taken by the socket. */
export function outputBytes(c: ConnectionState): number {
  return c.outLen + c.writingBytes;
}

/** Room for `bytes` more in `c.out`, which grows (doubling) if it must. */
export function reserve(c: ConnectionState, bytes: number): void {
  if (c.outLen + bytes <= c.out.length) return;
  const grown = new Uint8Array(Math.max(c.out.length * 2, c.outLen + bytes));
  grown.set(c.out.subarray(0, c.outLen));
  c.out = grown;
}

/** Appends a frame header, with room reserved for its `length` bytes of payload (the caller appends them). */
export function frameHeader(
  c: ConnectionState,
  length: number,
  type: number,
  flags: number,
  streamId: number,
): void {
  reserve(c, FRAME_HEADER_BYTES + length);
  const o = c.out;
  let at = c.outLen;
  o[at++] = length >>> 16;
  o[at++] = (length >>> 8) & 0xff;
  o[at++] = length & 0xff;
  o[at++] = type;
  o[at++] = flags;
  o[at++] = (streamId >>> 24) & 0x7f;
  o[at++] = (streamId >>> 16) & 0xff;
  o[at++] = (streamId >>> 8) & 0xff;
  o[at++] = streamId & 0xff;
  c.outLen = at;
  scheduleFlush(c);
}

/** Appends a 32-bit number (room reserved by frameHeader). */
export function put32(c: ConnectionState, value: number): void {
  const o = c.out;
  o[c.outLen++] = (value >>> 24) & 0xff;
  o[c.outLen++] = (value >>> 16) & 0xff;
  o[c.outLen++] = (value >>> 8) & 0xff;
  o[c.outLen++] = value & 0xff;
}

/** Appends bytes that are not a frame (the client preface, the answer to an HTTP/1 request). */
export function putRaw(c: ConnectionState, bytes: Uint8Array): void {
  reserve(c, bytes.length);
  c.out.set(bytes, c.outLen);
  c.outLen += bytes.length;
}

/** Starts a write at the end of this turn, unless one is scheduled or under way (it takes what is added). */
export function scheduleFlush(c: ConnectionState): void {
  if (c.flushScheduled || c.writing) return;
  c.flushScheduled = true;
  queueMicrotask(() => void writeLoop(c));
}

/** Writes until the output is empty, swapping buffers so that frames appended meanwhile wait in the other. */
async function writeLoop(c: ConnectionState): Promise<void> {
  c.flushScheduled = false;
  if (c.writing) return;
  c.writing = true;
  try {
    while (c.outLen > 0 && !c.isClosed) {
      const data = c.out.subarray(0, c.outLen);
      const written = c.out;
      c.out = c.spare;
      c.spare = written;
      c.outLen = 0;
      c.writingControl = c.queuedControl;
      c.queuedControl = 0;
      c.writingBytes = data.length;
      let sent = 0;
      while (sent < data.length) {
        const n = await c.io.write(data.subarray(sent));
        sent += n;
        c.writingBytes -= n;
        c.bytesWritten += n;
      }
      c.writingControl = 0;
      if (c.spare.length > KEPT_BUFFER_BYTES) c.spare = new Uint8Array(OUTPUT_BUFFER_BYTES);
      if (c.limited) afterWrite(c);
    }
  } catch (error) {
    c.writing = false;
    c.writingBytes = 0;
    lost(c, `write failed: ${error}`);
    return;
  }
  c.writing = false;
  if (c.closeAfterWrite) finishWriting(c);
}

/** Once a write is done: reading resumes below half the output limit, and queued DATA moves on. */
function afterWrite(c: ConnectionState): void {
  if (c.resumeReading !== undefined && c.outLen <= c.limits.maxOutputBytes / 2) stopWaitingForOutput(c);
  if (c.blocked.size > 0 && c.connSendWindow > 0 && c.outLen < c.limits.maxOutputBytes) pumpBlocked(c);
}

// --- the frames we send ------------------------------------------------------------------------------------

/** A client's first bytes: the preface, then its SETTINGS. */
export function writeClientPreface(c: ConnectionState): void {
  putRaw(c, CLIENT_PREFACE);
  writeSettings(c);
}

/** Our SETTINGS (what the peer may do), and the connection's window opened to what we chose. */
export function writeSettings(c: ConnectionState): void {
  const settings: Array<[number, number]> = [
    [Setting.ENABLE_PUSH, 0],
    [Setting.MAX_CONCURRENT_STREAMS, c.maxConcurrentStreams],
    [Setting.INITIAL_WINDOW_SIZE, c.streamWindow],
    [Setting.MAX_HEADER_LIST_SIZE, c.maxHeaderListSize],
  ];
  frameHeader(c, settings.length * 6, FrameType.SETTINGS, 0, 0);
  for (const [id, value] of settings) {
    c.out[c.outLen++] = id >>> 8;
    c.out[c.outLen++] = id & 0xff;
    put32(c, value);
  }
  if (c.connectionWindow > DEFAULT_WINDOW) writeWindowUpdate(c, 0, c.connectionWindow - DEFAULT_WINDOW);
}

/** WINDOW_UPDATE: the peer may send `increment` more bytes on the stream (or the connection, stream 0). */
export function writeWindowUpdate(c: ConnectionState, streamId: number, increment: number): void {
  frameHeader(c, 4, FrameType.WINDOW_UPDATE, 0, streamId);
  put32(c, increment);
}

/** RST_STREAM: the stream ends now, with `code` (the caller remembers the reset: rememberReset). */
export function writeRst(c: ConnectionState, streamId: number, code: number): void {
  frameHeader(c, 4, FrameType.RST_STREAM, 0, streamId);
  put32(c, code);
}

/** GOAWAY: a server names the last stream it took; `debug` (at most 200 characters) says why. */
export function writeGoaway(c: ConnectionState, code: number, debug: string): void {
  const text = new TextEncoder().encode(debug.slice(0, 200));
  frameHeader(c, 8 + text.length, FrameType.GOAWAY, 0, 0);
  put32(c, c.isServer ? c.lastPeerStreamId : 0);
  put32(c, code);
  c.out.set(text, c.outLen);
  c.outLen += text.length;
  c.goawaySent = true;
}

/** Our PING, with 8 zero bytes (connection.ts's `ping` waits for any frame). */
export function writePing(c: ConnectionState): void {
  frameHeader(c, 8, FrameType.PING, 0, 0);
  c.out.fill(0, c.outLen, c.outLen + 8);
  c.outLen += 8;
}

/** The acknowledgement of the peer's PING: its 8 bytes, at buf[start]. */
export function writePingAck(c: ConnectionState, buf: Uint8Array, start: number): void {
  frameHeader(c, 8, FrameType.PING, Flag.ACK, 0);
  c.out.set(buf.subarray(start, start + 8), c.outLen);
  c.outLen += 8;
}

/**
 * A header list as HEADERS (+ CONTINUATION past the peer's frame size). Encoded here, as it is written:
 * HPACK's table is shared by the connection, so blocks must leave in the order they were encoded.
 */
export function writeHeaderBlock(
  c: ConnectionState,
  streamId: number,
  fields: readonly string[],
  endStream: boolean,
): void {
  const block = c.encoder.encode(fields);
  let length = Math.min(block.length, c.peerMaxFrameSize);
  let flags = (endStream ? Flag.END_STREAM : 0) | (length === block.length ? Flag.END_HEADERS : 0);
  frameHeader(c, length, FrameType.HEADERS, flags, streamId);
  c.out.set(block.subarray(0, length), c.outLen);
  c.outLen += length;
  let from = length;
  while (from < block.length) {
    length = Math.min(block.length - from, c.peerMaxFrameSize);
    flags = from + length === block.length ? Flag.END_HEADERS : 0;
    frameHeader(c, length, FrameType.CONTINUATION, flags, streamId);
    c.out.set(block.subarray(from, from + length), c.outLen);
    c.outLen += length;
    from += length;
  }
}
