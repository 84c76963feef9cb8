/**
 * The stream table: each stream (the owner's handle on it, `Stream`), how streams are opened, ended, reset and
 * closed, and RST_STREAM from the peer.
 *
 * What it promises the owner: `onClose` once for every stream it saw (onHeaders), whatever ends it; a stream
 * leaves the table when both sides ended, or at a reset, or with the connection. What it promises the peer:
 * a stream we reset is remembered for a while (`recentlyReset`), so that frames sent before the peer saw the
 * reset are dropped rather than taken for errors.
 */
import type { Http2Stream } from "./connection.ts";
import { controlFrameQueued, countReset } from "./defences.ts";
import { pump } from "./flow.ts";
import { ErrorCode, errorCodeName, MAX_WINDOW } from "./frames.ts";
import { writeHeaderBlock, writeRst } from "./outbound.ts";
import { read32 } from "./reader.ts";
import { finishClose } from "./shutdown.ts";
import { ConnectionError, type ConnectionState } from "./state.ts";

/** How many of the streams we reset are remembered (`recentlyReset`). */
const RECENTLY_RESET_KEPT = 128;

/** One stream: its state on both sides, its flow-control windows and the DATA waiting for them. */
export class Stream implements Http2Stream {
  readonly #c: ConnectionState;
  context: unknown = undefined;
  remoteEnded = false;
  localEnded = false;
  /** Our END_STREAM (or RST) has been written. */
  endWritten = false;
  headerBlocks = 0;
  sendWindow: number;
  recvWindow: number;
  pending: Uint8Array[] = [];
  pendingOffset = 0;
  pendingBytes = 0;
  /** How our side ends once the queue is empty: END_STREAM on the last DATA, or trailers. */
  endWithData = false;
  trailers: readonly string[] | undefined = undefined;
  discard = false;
  isClosed = false;
  expectedLength = -1;
  receivedLength = 0;
  /** The owner saw this stream (onHeaders was called), so it must hear of its close. */
  announced = false;

  constructor(c: ConnectionState, readonly id: number) {
    this.#c = c;
    this.sendWindow = c.peerInitialWindow;
    this.recvWindow = c.streamWindow;
  }

  sendHeaders(fields: readonly string[], endStream: boolean): void {
    const c = this.#c;
    if (this.localEnded || this.isClosed || c.isClosed) return;
    writeHeaderBlock(c, this.id, fields, endStream);
    if (endStream) {
      this.localEnded = true;
      this.endWritten = true;
      localEndWritten(c, this);
    }
  }

  sendData(data: Uint8Array, endStream: boolean): void {
    const c = this.#c;
    if (this.localEnded || this.isClosed || c.isClosed) return;
    if (data.length > 0) {
      if (this.pendingBytes > 0 && c.pendingTotal > c.limits.maxPendingBytes) {
        // More on top of what this stream could not send yet, with the connection over its limit: the peer
        // keeps its windows shut (or does not read) while asking for more.
        c.observer?.streamRefused("pending_data");
        c.logger.debug("http2: stream reset, too much DATA waiting for the peer's windows", {
          connection: c.label,
          streamId: this.id,
          pendingBytes: c.pendingTotal,
        });
        this.reset(ErrorCode.ENHANCE_YOUR_CALM);
        return;
      }
      this.pending.push(data);
      this.pendingBytes += data.length;
      c.pendingTotal += data.length;
    }
    if (endStream) {
      this.localEnded = true;
      this.endWithData = true;
    }
    pump(c, this);
  }

  sendTrailers(fields: readonly string[]): void {
    const c = this.#c;
    if (this.localEnded || this.isClosed || c.isClosed) return;
    this.localEnded = true;
    this.trailers = fields;
    pump(c, this);
  }

  reset(code: number): void {
    const c = this.#c;
    if (this.isClosed || c.isClosed) return;
    writeRst(c, this.id, code);
    rememberReset(c, this.id);
    closeStream(c, this, code, `reset: ${errorCodeName(code)}`);
  }

  discardRest(): void {
    this.discard = true;
    if (this.endWritten) localEndWritten(this.#c, this);
  }
}

/** Whether a client may open a stream now: up, no GOAWAY, below the peer's stream limit, ids left. */
export function canOpen(c: ConnectionState): boolean {
  return !c.isServer && !c.isClosed && !c.closing && !c.goawayReceived && !c.goawaySent &&
    c.streams.size < c.peerMaxConcurrentStreams && c.nextStreamId < MAX_WINDOW;
}

/** A client's request: a new stream under the next odd id, its header block written at once. */
export function openClientStream(c: ConnectionState, fields: readonly string[], endStream: boolean): Stream {
  if (!canOpen(c)) throw new Error("this connection cannot open a stream now");
  const stream = new Stream(c, c.nextStreamId);
  c.nextStreamId += 2;
  stream.announced = true;
  stream.localEnded = endStream;
  c.streams.set(stream.id, stream);
  writeHeaderBlock(c, stream.id, fields, endStream);
  if (endStream) stream.endWritten = true;
  return stream;
}

/** Whether `streamId` is one no frame has opened yet (RFC 9113 5.1: "idle"). */
export function isIdle(c: ConnectionState, streamId: number): boolean {
  const ours = c.isServer ? streamId % 2 === 0 : streamId % 2 === 1;
  if (ours) return c.isServer || streamId >= c.nextStreamId;
  return streamId > c.lastPeerStreamId;
}

/** Remembers a stream we reset (the last RECENTLY_RESET_KEPT of them): see the file's comment. */
export function rememberReset(c: ConnectionState, id: number): void {
  c.recentlyReset.add(id);
  c.recentlyResetOrder.push(id);
  if (c.recentlyResetOrder.length > RECENTLY_RESET_KEPT) {
    c.recentlyReset.delete(c.recentlyResetOrder.shift()!);
  }
}

/** Our END_STREAM has been written: the stream closes if the peer ended too, or is reset if `discard`. */
export function localEndWritten(c: ConnectionState, stream: Stream): void {
  if (stream.isClosed) return;
  if (stream.remoteEnded) {
    closeStream(c, stream, undefined, "ended");
  } else if (stream.discard) {
    writeRst(c, stream.id, ErrorCode.NO_ERROR);
    rememberReset(c, stream.id);
    closeStream(c, stream, undefined, "answered before the request ended");
  }
}

/**
 * The stream leaves the table (its waiting DATA dropped) and the owner hears of it; the last stream of a
 * connection going away closes it.
 */
export function closeStream(
  c: ConnectionState,
  stream: Stream,
  code: number | undefined,
  reason: string,
): void {
  if (stream.isClosed) return;
  stream.isClosed = true;
  c.streams.delete(stream.id);
  c.blocked.delete(stream);
  stream.pending = [];
  c.pendingTotal -= stream.pendingBytes;
  stream.pendingBytes = 0;
  if (stream.announced) {
    try {
      c.handler.onClose(stream, code, reason);
    } catch (error) {
      c.logger.error("http2: stream close handler threw", { connection: c.label, error });
    }
  }
  if ((c.goawaySent || c.goawayReceived) && c.streams.size === 0 && c.closing) finishClose(c);
}

/** Every stream still open is closed with `code` (the connection ends). */
export function closeAllStreams(c: ConnectionState, code: number, reason: string): void {
  for (const stream of [...c.streams.values()]) closeStream(c, stream, code, reason);
}

/**
 * A stream error (RFC 9113 5.4.2): RST_STREAM, the stream is closed, the connection goes on. Counted as a
 * reset the peer caused unless `ours` (we refuse it for our own reasons).
 */
export function streamError(
  c: ConnectionState,
  streamId: number,
  code: number,
  reason: string,
  ours = false,
): void {
  if (!ours) countReset(c);
  controlFrameQueued(c);
  c.logger.debug("http2: stream error", { connection: c.label, streamId, code, reason });
  writeRst(c, streamId, code);
  rememberReset(c, streamId);
  const stream = c.streams.get(streamId);
  if (stream) closeStream(c, stream, code, reason);
}

/** What the owner throws resets its stream rather than breaking the connection. */
export function handlerThrew(c: ConnectionState, stream: Stream, error: unknown): void {
  c.logger.error("http2: stream handler threw", { connection: c.label, streamId: stream.id, error });
  if (!stream.isClosed) stream.reset(ErrorCode.INTERNAL_ERROR);
}

/** RST_STREAM from the peer: the stream is closed with its code (counted: the rapid reset defence). */
export function onRst(
  c: ConnectionState,
  streamId: number,
  buf: Uint8Array,
  start: number,
  length: number,
): void {
  if (length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of a bad size");
  if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0");
  const stream = c.streams.get(streamId);
  if (!stream) {
    if (isIdle(c, streamId)) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream");
    }
    return;
  }
  countReset(c);
  const code = read32(buf, start);
  closeStream(c, stream, code, `reset by the peer: ${errorCodeName(code)}`);
}
