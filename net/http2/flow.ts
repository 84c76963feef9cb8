/**
 * Flow control (RFC 9113 5.2), both directions, and the DATA that it governs.
 *
 * In: DATA counts against the connection's window and the stream's; each is topped up with a WINDOW_UPDATE
 * once half of it is used, so a peer that keeps to the windows never waits on us. DATA past a window is an
 * error; a stream's DATA must add up to its content-length.
 *
 * Out: each stream's DATA waits in the stream until the peer's windows (the stream's and the connection's)
 * let it out, in frames no larger than the peer's frame size (`pump`). A stream that waits for the
 * connection's window, or for room in the output (a peer that does not read), is in `c.blocked` and moves on
 * when that changes: a WINDOW_UPDATE, a larger SETTINGS_INITIAL_WINDOW_SIZE, a write done.
 */
import { checkOverhead, countOverhead, SMALL_FRAME_BYTES } from "./defences.ts";
import { ErrorCode, Flag, FrameType, MAX_WINDOW } from "./frames.ts";
import { frameHeader, writeHeaderBlock, writeWindowUpdate } from "./outbound.ts";
import { read31 } from "./reader.ts";
import { ConnectionError, type ConnectionState } from "./state.ts";
import { closeStream, handlerThrew, isIdle, localEndWritten, type Stream, streamError } from "./streams.ts";

// --- in ----------------------------------------------------------------------------------------------------

/** A DATA frame: the connection's window, padding, then the stream it belongs to (`receiveData`). */
export function onData(
  c: ConnectionState,
  flags: number,
  streamId: number,
  buf: Uint8Array,
  start: number,
  length: number,
): void {
  if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0");
  consumeConnectionWindow(c, length);
  let dataStart = start;
  let dataEnd = start + length;
  if (flags & Flag.PADDED) {
    if (length < 1 || buf[start] >= length) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame");
    }
    dataStart++;
    dataEnd -= buf[start];
  }
  const endStream = (flags & Flag.END_STREAM) !== 0;
  if (dataEnd === dataStart && !endStream) countOverhead(c, "empty DATA");
  const stream = c.streams.get(streamId);
  if (!stream) {
    if (isIdle(c, streamId)) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream");
    if (!c.recentlyReset.has(streamId)) {
      streamError(c, streamId, ErrorCode.STREAM_CLOSED, "DATA on a closed stream");
    }
    return;
  }
  receiveData(c, stream, buf, dataStart, dataEnd, length, endStream);
}

/**
 * Padding and all counts against the connection's window (RFC 9113 6.9.1), even on a stream that is gone;
 * past half of it used, a WINDOW_UPDATE gives it back whole.
 */
function consumeConnectionWindow(c: ConnectionState, length: number): void {
  c.connRecvWindow -= length;
  if (c.connRecvWindow < 0) {
    throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection's window");
  }
  if (c.connRecvWindow < c.connectionWindow / 2) {
    writeWindowUpdate(c, 0, c.connectionWindow - c.connRecvWindow);
    c.connRecvWindow = c.connectionWindow;
  }
}

/**
 * DATA of an open stream, buf[dataStart, dataEnd) (`frameLength` with padding): the stream's state, its
 * window and its content-length are checked, then the owner gets the bytes (a view of the read buffer).
 */
function receiveData(
  c: ConnectionState,
  stream: Stream,
  buf: Uint8Array,
  dataStart: number,
  dataEnd: number,
  frameLength: number,
  endStream: boolean,
): void {
  const streamId = stream.id;
  if (stream.remoteEnded) return streamError(c, streamId, ErrorCode.STREAM_CLOSED, "DATA after END_STREAM");
  if (!c.isServer && stream.headerBlocks === 0) {
    return streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, "DATA before the response headers");
  }
  stream.recvWindow -= frameLength;
  if (stream.recvWindow < 0) {
    return streamError(c, streamId, ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the stream's window");
  }
  stream.receivedLength += dataEnd - dataStart;
  if (
    stream.expectedLength >= 0 &&
    (stream.receivedLength > stream.expectedLength ||
      (endStream && stream.receivedLength !== stream.expectedLength))
  ) {
    return streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, "DATA does not match content-length");
  }
  if (endStream) {
    stream.remoteEnded = true;
  } else if (stream.recvWindow < c.streamWindow / 2) {
    writeWindowUpdate(c, streamId, c.streamWindow - stream.recvWindow);
    stream.recvWindow = c.streamWindow;
  }
  if (dataEnd > dataStart || endStream) {
    try {
      c.handler.onData(stream, buf.subarray(dataStart, dataEnd), endStream);
    } catch (error) {
      handlerThrew(c, stream, error);
    }
  }
  if (endStream && stream.endWritten) closeStream(c, stream, undefined, "ended");
}

// --- out ---------------------------------------------------------------------------------------------------

/** A WINDOW_UPDATE: the peer lets more of our DATA out, on the connection (stream 0) or one stream. */
export function onWindowUpdate(
  c: ConnectionState,
  streamId: number,
  buf: Uint8Array,
  start: number,
  length: number,
): void {
  if (length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of a bad size");
  const increment = read31(buf, start);
  // Not counted by themselves: grpc-go sends one of a few bytes before each of its BDP PINGs, that is with
  // most answers. What costs is a window that lets DATA out in frames of a few bytes (pump counts those).
  if (streamId === 0) {
    if (increment === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
    c.connSendWindow += increment;
    if (c.connSendWindow > MAX_WINDOW) {
      throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "the connection's window overflowed");
    }
    pumpBlocked(c);
    return checkOverhead(c, "DATA frames under 1 KiB, as far as the peer's windows let them");
  }
  const stream = c.streams.get(streamId);
  if (!stream) {
    if (isIdle(c, streamId)) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream");
    }
    return;
  }
  if (increment === 0) return streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
  stream.sendWindow += increment;
  if (stream.sendWindow > MAX_WINDOW) {
    return streamError(c, streamId, ErrorCode.FLOW_CONTROL_ERROR, "the stream's window overflowed");
  }
  pump(c, stream);
  checkOverhead(c, "DATA frames under 1 KiB, as far as the peer's windows let them");
}

/**
 * The peer's SETTINGS_INITIAL_WINDOW_SIZE: every stream's send window moves by the difference (RFC 9113
 * 6.9.2). Returns whether the windows grew (the caller then lets the streams' DATA out).
 */
export function changePeerInitialWindow(c: ConnectionState, value: number): boolean {
  if (value > MAX_WINDOW) {
    throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, `SETTINGS_INITIAL_WINDOW_SIZE ${value}`);
  }
  const delta = value - c.peerInitialWindow;
  if (delta === 0) return false;
  c.peerInitialWindow = value;
  for (const stream of c.streams.values()) {
    stream.sendWindow += delta;
    if (stream.sendWindow > MAX_WINDOW) {
      throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "a stream's window overflowed");
    }
  }
  return delta > 0;
}

/** Every blocked stream tries again (the connection's window opened, or the output drained). */
export function pumpBlocked(c: ConnectionState): void {
  const waiting = [...c.blocked];
  c.blocked.clear();
  for (const stream of waiting) pump(c, stream);
}

/** Writes what the windows allow of the stream's queue, then its end once the queue is empty. */
export function pump(c: ConnectionState, stream: Stream): void {
  while (stream.pendingBytes > 0) {
    if (c.outLen + c.writingBytes >= c.limits.maxOutputBytes) {
      // The peer does not take what it was sent: the rest waits here, not in the output buffer.
      c.blocked.add(stream);
      return;
    }
    const allowed = Math.min(stream.sendWindow, c.connSendWindow, c.peerMaxFrameSize);
    if (allowed <= 0) {
      if (c.connSendWindow <= 0) c.blocked.add(stream);
      return;
    }
    const length = Math.min(allowed, stream.pendingBytes);
    // A window that lets out only a few bytes of more (the data dribble, CVE-2019-9511): an overhead frame,
    // checked by the frame handler that opened the window (checkOverhead), or by the next tick.
    if (length < SMALL_FRAME_BYTES && length < stream.pendingBytes) c.overheadInWindow++;
    const last = length === stream.pendingBytes;
    const flags = last && stream.endWithData ? Flag.END_STREAM : 0;
    frameHeader(c, length, FrameType.DATA, flags, stream.id);
    let left = length;
    while (left > 0) {
      const part = stream.pending[0];
      const available = part.length - stream.pendingOffset;
      const take = Math.min(available, left);
      c.out.set(
        take === part.length ? part : part.subarray(stream.pendingOffset, stream.pendingOffset + take),
        c.outLen,
      );
      c.outLen += take;
      left -= take;
      if (take === available) {
        stream.pending.shift();
        stream.pendingOffset = 0;
      } else {
        stream.pendingOffset += take;
      }
    }
    stream.pendingBytes -= length;
    c.pendingTotal -= length;
    c.dataBytesSent += length;
    stream.sendWindow -= length;
    c.connSendWindow -= length;
    if (flags) {
      stream.endWritten = true;
      localEndWritten(c, stream);
      return;
    }
  }
  if (stream.endWritten || !stream.localEnded) return;
  if (stream.endWithData) {
    frameHeader(c, 0, FrameType.DATA, Flag.END_STREAM, stream.id);
  } else if (stream.trailers) {
    writeHeaderBlock(c, stream.id, stream.trailers, true);
    stream.trailers = undefined;
  }
  stream.endWritten = true;
  localEndWritten(c, stream);
}
