/**
 * The input of a connection: the socket is read into a chunk, every whole frame in it is parsed and handed to
 * its handler at once (`parseFrames`, `dispatchFrame`), and the owner hears `afterRead` once per read: what
 * arrived together is seen together. Frame handlers throw a ConnectionError for a connection error; it ends
 * here, as GOAWAY (`fail`).
 *
 * What it promises: DATA handed to the owner is a view of a chunk nobody writes over again (a chunk with
 * an unparsed tail is replaced, not reused); reading pauses while the output is over limits.maxOutputBytes;
 * once the connection closes, what the peer still sends is read and dropped, so that closing the socket
 * does not reset it and drop our GOAWAY.
 */
import { onPing, onPriority, onSettings } from "./control.ts";
import { onData, onWindowUpdate } from "./flow.ts";
import {
  CLIENT_PREFACE,
  DEFAULT_MAX_FRAME_SIZE,
  ErrorCode,
  Flag,
  FRAME_HEADER_BYTES,
  FrameType,
} from "./frames.ts";
import { onContinuation, onHeadersFrame } from "./headers.ts";
import { putRaw, scheduleFlush, writeSettings } from "./outbound.ts";
import { closeGracefullyNow, closeSocket, fail, lost, onGoaway } from "./shutdown.ts";
import { ConnectionError, type ConnectionState } from "./state.ts";
import { onRst } from "./streams.ts";

/** The size of a read chunk: room for several frames, and always for one more of the largest we accept. */
const CHUNK_BYTES = 64 * 1024;
const HTTP1_ANSWER = new TextEncoder().encode(
  "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: text/plain\r\nconnection: close\r\n" +
    "content-length: 63\r\n\r\nthis port speaks gRPC: HTTP/2 without TLS, with prior knowledge\n",
);

/** A stream id (or window increment): 31 bits, the reserved bit ignored. */
export function read31(buf: Uint8Array, at: number): number {
  return ((buf[at] & 0x7f) << 24 | buf[at + 1] << 16 | buf[at + 2] << 8 | buf[at + 3]) >>> 0;
}

/** A 32-bit number (an error code, a setting's value). */
export function read32(buf: Uint8Array, at: number): number {
  return (buf[at] << 24 | buf[at + 1] << 16 | buf[at + 2] << 8 | buf[at + 3]) >>> 0;
}

/** Reads until the connection closes, then drains what the peer still sends (see the file's comment). */
export async function readLoop(c: ConnectionState): Promise<void> {
  await readFrames(c);
  if (c.isClosed) return;
  // Our last frames are leaving: what the peer still sends is read and dropped until it closes too (or
  // CLOSE_GRACE_MS). Closing a socket with unread input resets it, and the reset drops what we had not yet
  // sent: the GOAWAY that says why (nginx's lingering close).
  const sink = new Uint8Array(16 * 1024);
  try {
    while (!c.isClosed && (await c.io.read(sink)) !== null) {
      // dropped
    }
  } catch {
    // reset, or closed by the timer
  }
  c.readDone = true;
  if (!c.writing && !c.flushScheduled) closeSocket(c); // otherwise once the write loop is done
}

/** Reads and handles frames until the connection stops reading: closed, failed, or the peer gone. */
async function readFrames(c: ConnectionState): Promise<void> {
  let chunk = new Uint8Array(CHUNK_BYTES);
  let filled = 0;
  let pos = 0;
  try {
    for (;;) {
      if (c.outLen + c.writingBytes > c.limits.maxOutputBytes) await outputDrained(c);
      if (c.readingStopped || c.isClosed) return;
      if (chunk.length - filled < DEFAULT_MAX_FRAME_SIZE + FRAME_HEADER_BYTES) {
        // A new chunk for the unparsed tail: DATA handed out as views stays as it was.
        const next = new Uint8Array(CHUNK_BYTES);
        next.set(chunk.subarray(pos, filled));
        filled -= pos;
        pos = 0;
        chunk = next;
      }
      const n = await c.io.read(chunk.subarray(filled));
      if (c.readingStopped) return;
      if (n === null) {
        lost(c, "closed by the peer");
        return;
      }
      filled += n;
      if (!c.prefaceSeen) {
        if (!startsLikePreface(chunk, filled)) {
          notHttp2(c, chunk.subarray(0, filled));
          return;
        }
        if (filled < CLIENT_PREFACE.length) continue;
        c.prefaceSeen = true;
        pos = CLIENT_PREFACE.length;
        writeSettings(c);
      }
      try {
        pos = parseFrames(c, chunk, pos, filled);
      } finally {
        c.handler.afterRead?.();
      }
      if (c.isClosed) return;
      if (pos === filled && chunk.length - filled < DEFAULT_MAX_FRAME_SIZE + FRAME_HEADER_BYTES) {
        filled = pos = 0;
        chunk = new Uint8Array(CHUNK_BYTES);
      }
    }
  } catch (error) {
    if (error instanceof ConnectionError) {
      c.logger.debug("http2: connection error", {
        connection: c.label,
        code: error.code,
        reason: error.message,
      });
      fail(c, error.code, error.message, error.limit);
    } else if (!c.isClosed) {
      lost(c, `read failed: ${error}`);
    }
  }
}

/**
 * A slow reader: no new work from a peer that does not take its answers, until they drain (the write loop
 * calls stopWaitingForOutput below half the limit; closing calls it too).
 */
function outputDrained(c: ConnectionState): Promise<void> {
  c.observer?.readingPaused();
  return new Promise<void>((resolve) => c.resumeReading = resolve);
}

/** Reading goes on, if it waited for the output to drain. */
export function stopWaitingForOutput(c: ConnectionState): void {
  const resume = c.resumeReading;
  c.resumeReading = undefined;
  resume?.();
}

/** Whether chunk[0, filled) is (so far) the client preface. */
function startsLikePreface(chunk: Uint8Array, filled: number): boolean {
  const seen = Math.min(filled, CLIENT_PREFACE.length);
  for (let i = 0; i < seen; i++) {
    if (chunk[i] !== CLIENT_PREFACE[i]) return false;
  }
  return true;
}

/** A peer that does not speak HTTP/2: an HTTP/1 request gets a 505 that says what this port speaks. */
function notHttp2(c: ConnectionState, received: Uint8Array): void {
  if (/^[A-Z]+ \S+ HTTP\/1\.[01]\r?\n/.test(new TextDecoder().decode(received.subarray(0, 1024)))) {
    putRaw(c, HTTP1_ANSWER);
    scheduleFlush(c);
  }
  c.logger.debug("http2: not an HTTP/2 client", { connection: c.label });
  closeGracefullyNow(c);
}

/** Parses every whole frame in buf[pos, end) and handles it; returns where the first incomplete one starts. */
export function parseFrames(c: ConnectionState, buf: Uint8Array, pos: number, end: number): number {
  while (end - pos >= FRAME_HEADER_BYTES && !c.isClosed) {
    c.framesReceived++;
    const length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2];
    if (length > DEFAULT_MAX_FRAME_SIZE) {
      throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `a frame of ${length} bytes is over 16384`);
    }
    if (end - pos < FRAME_HEADER_BYTES + length) break;
    const type = buf[pos + 3];
    const flags = buf[pos + 4];
    const streamId = read31(buf, pos + 5);
    const start = pos + FRAME_HEADER_BYTES;
    pos = start + length;
    dispatchFrame(c, type, flags, streamId, buf, start, length);
  }
  return pos;
}

/**
 * One frame, payload buf[start, start + length), to its handler, after the two rules of order: nothing may
 * come between a header block's frames, and the peer's first frame is its SETTINGS.
 */
function dispatchFrame(
  c: ConnectionState,
  type: number,
  flags: number,
  streamId: number,
  buf: Uint8Array,
  start: number,
  length: number,
): void {
  if (c.continuation && type !== FrameType.CONTINUATION) {
    throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted by another frame");
  }
  if (!c.peerSettingsSeen) {
    if (type !== FrameType.SETTINGS || (flags & Flag.ACK)) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "the connection must start with SETTINGS");
    }
    c.peerSettingsSeen = true;
  }
  switch (type) {
    case FrameType.DATA:
      return onData(c, flags, streamId, buf, start, length);
    case FrameType.HEADERS:
      return onHeadersFrame(c, flags, streamId, buf, start, length);
    case FrameType.PRIORITY:
      return onPriority(c, streamId, buf, start, length);
    case FrameType.RST_STREAM:
      return onRst(c, streamId, buf, start, length);
    case FrameType.SETTINGS:
      return onSettings(c, flags, streamId, buf, start, length);
    case FrameType.PUSH_PROMISE:
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE is not allowed here");
    case FrameType.PING:
      return onPing(c, flags, streamId, buf, start, length);
    case FrameType.GOAWAY:
      return onGoaway(c, streamId, buf, start, length);
    case FrameType.WINDOW_UPDATE:
      return onWindowUpdate(c, streamId, buf, start, length);
    case FrameType.CONTINUATION:
      return onContinuation(c, flags, streamId, buf, start, length);
    default:
      return; // unknown frame types are ignored (RFC 9113 4.1)
  }
}
