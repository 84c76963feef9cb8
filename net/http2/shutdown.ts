/**
 * How a connection ends, in every way it can: GOAWAY(NO_ERROR) and a drain of the streams in flight (`goAway`,
 * the owner's close, the idle timeout, the peer's GOAWAY), a connection error or a limit (`fail`), the owner's
 * `destroy`, or the socket gone (`lost`).
 *
 * What it promises: every stream still open hears of its close once; our last frames (the GOAWAY that says
 * why) are written before FIN, and the socket is closed once the peer closes its side or CLOSE_GRACE_MS
 * later, whichever comes first; `c.closed` resolves once the socket is closed.
 */
import { logLimit } from "./defences.ts";
import { ErrorCode, errorCodeName } from "./frames.ts";
import type { Http2LimitReason } from "./limits.ts";
import { writeGoaway } from "./outbound.ts";
import { read31, read32, stopWaitingForOutput } from "./reader.ts";
import { CONNECTION_LOST, ConnectionError, type ConnectionState } from "./state.ts";
import { closeAllStreams, closeStream } from "./streams.ts";
import { unwatch } from "./timeouts.ts";

/** How long a connection closed with GOAWAY waits for it to be written before the socket is closed anyway. */
const CLOSE_GRACE_MS = 5000;

/** GOAWAY(NO_ERROR): no new streams; the connection closes once the streams in flight have ended. */
export function goAway(c: ConnectionState): void {
  if (c.isClosed || c.closing) return;
  c.closing = true;
  writeGoaway(c, ErrorCode.NO_ERROR, "");
  if (c.streams.size === 0) finishClose(c);
}

/** The peer's GOAWAY: no new streams; a client's streams the server did not take are closed, REFUSED_STREAM. */
export function onGoaway(
  c: ConnectionState,
  streamId: number,
  buf: Uint8Array,
  start: number,
  length: number,
): void {
  if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream");
  if (length < 8) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY of a bad size");
  const lastStreamId = read31(buf, start);
  const code = read32(buf, start + 4);
  c.goawayReceived = true;
  c.closing = true;
  if (code !== ErrorCode.NO_ERROR) {
    const debug = new TextDecoder().decode(buf.subarray(start + 8, start + length));
    c.logger.warn("http2: the peer went away", {
      connection: c.label,
      code: errorCodeName(code),
      debug,
    });
  }
  if (!c.isServer) {
    for (const stream of [...c.streams.values()]) {
      if (stream.id > lastStreamId) {
        closeStream(c, stream, ErrorCode.REFUSED_STREAM, "the server went away before processing the stream");
      }
    }
  }
  c.handler.onGoaway?.(lastStreamId, code);
  if (c.streams.size === 0) finishClose(c);
}

/** The last stream of a connection going away has ended: GOAWAY if not sent yet, then close. */
export function finishClose(c: ConnectionState): void {
  if (c.isClosed) return;
  c.closing = true;
  if (!c.goawaySent) writeGoaway(c, ErrorCode.NO_ERROR, "");
  closeGracefullyNow(c);
}

/**
 * A connection error: GOAWAY with the code, every stream closed, no more input, the socket closed once
 * written. For a limit, what was queued and not yet handed to the socket is dropped first: the peer asked
 * for it and may never read it.
 */
export function fail(c: ConnectionState, code: number, reason: string, limit?: Http2LimitReason): void {
  if (c.isClosed || c.readingStopped) return;
  if (limit) {
    logLimit(c.logger, limit, { connection: c.label, limit, reason });
    c.observer?.closed(limit, reason);
    c.outLen = 0;
    c.queuedControl = 0;
  }
  if (!c.goawaySent || code !== ErrorCode.NO_ERROR) writeGoaway(c, code, reason);
  closeAllStreams(c, code, reason);
  closeGracefullyNow(c);
}

/** The owner's destroy: GOAWAY(CANCEL), every open stream closed with CONNECTION_LOST, then close. */
export function destroy(c: ConnectionState, reason: string): void {
  if (c.isClosed) return;
  writeGoaway(c, ErrorCode.CANCEL, reason);
  closeAllStreams(c, CONNECTION_LOST, reason);
  closeGracefullyNow(c);
}

/** The socket is gone (or unusable): every stream is closed with CONNECTION_LOST. */
export function lost(c: ConnectionState, reason: string): void {
  if (c.isClosed) return;
  closeAllStreams(c, CONNECTION_LOST, `connection lost: ${reason}`);
  closeSocket(c);
}

/**
 * No more input; what is queued leaves, then FIN, and the socket is closed once the peer closes its side
 * too, or after CLOSE_GRACE_MS whatever the peer does.
 */
export function closeGracefullyNow(c: ConnectionState): void {
  c.closeAfterWrite = true;
  c.readingStopped = true;
  stopWaitingForOutput(c);
  if (c.hardCloseTimer === undefined) {
    const timer = setTimeout(() => closeSocket(c), CLOSE_GRACE_MS);
    Deno.unrefTimer(timer);
    c.hardCloseTimer = timer;
  }
  if (!c.writing && !c.flushScheduled) finishWriting(c);
}

/** Everything queued has been written: FIN, or the socket closed when there is nothing to wait for. */
export function finishWriting(c: ConnectionState): void {
  if (c.readDone || !c.io.closeWrite) return closeSocket(c);
  if (c.writeShut) return;
  c.writeShut = true;
  c.io.closeWrite().catch(() => closeSocket(c));
}

/** The end: the socket closed, streams still open closed with CONNECTION_LOST, `closed` resolved. */
export function closeSocket(c: ConnectionState): void {
  if (c.isClosed) return;
  c.isClosed = true;
  c.closing = true;
  if (c.hardCloseTimer !== undefined) clearTimeout(c.hardCloseTimer);
  if (c.limited) unwatch(c);
  stopWaitingForOutput(c);
  try {
    c.io.close();
  } catch {
    // already closed
  }
  closeAllStreams(c, CONNECTION_LOST, "connection closed");
  c.resolveClosed();
}
