/**
 * Header blocks in: a HEADERS frame, and the CONTINUATION frames that complete it, are assembled into one
 * block (bounded by maxHeaderBlockBytes), decoded by HPACK, and then either open a stream (a server's new
 * request: admitted or refused, checked, then announced to the owner) or belong to one (a response's headers,
 * trailers).
 *
 * What it promises the owner: a header list it sees is well-formed (messages.ts) and within
 * maxHeaderListSize (a request over it is answered 431 here and never seen); a new stream it sees has been
 * admitted under every limit.
 */
import { countOverhead, SMALL_FRAME_BYTES } from "./defences.ts";
import { ErrorCode, Flag } from "./frames.ts";
import { HpackError } from "./hpack.ts";
import { contentLength, HEADER_LIST_TOO_LARGE, requestProblem, responseProblem } from "./messages.ts";
import { writeHeaderBlock } from "./outbound.ts";
import { read31 } from "./reader.ts";
import { ConnectionError, type ConnectionState } from "./state.ts";
import { closeStream, handlerThrew, isIdle, localEndWritten, Stream, streamError } from "./streams.ts";

// --- assembly ----------------------------------------------------------------------------------------------

/** HEADERS: padding and priority taken off; the fragment is the whole block, or the start of one. */
export function onHeadersFrame(
  c: ConnectionState,
  flags: number,
  streamId: number,
  buf: Uint8Array,
  start: number,
  length: number,
): void {
  if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0");
  let blockStart = start;
  let blockEnd = start + length;
  if (flags & Flag.PADDED) {
    const padding = length > 0 ? buf[start] : 0;
    blockStart++;
    blockEnd -= padding;
  }
  let selfDependent = false;
  if (flags & Flag.PRIORITY) {
    selfDependent = blockStart + 4 <= blockEnd && read31(buf, blockStart) === streamId;
    blockStart += 5;
  }
  if (blockStart > blockEnd) {
    throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame");
  }
  const fragment = buf.subarray(blockStart, blockEnd);
  if (flags & Flag.END_HEADERS) {
    onHeaderBlock(c, streamId, flags, fragment, selfDependent);
  } else {
    if (fragment.length < SMALL_FRAME_BYTES) countOverhead(c, "a HEADERS fragment under 1 KiB");
    c.continuation = { streamId, flags, selfDependent, block: fragment.slice(), bytes: fragment.length };
  }
}

/** CONTINUATION: appended to the block in assembly; with END_HEADERS the block is complete. */
export function onContinuation(
  c: ConnectionState,
  flags: number,
  streamId: number,
  buf: Uint8Array,
  start: number,
  length: number,
): void {
  const continuation = c.continuation;
  if (!continuation || continuation.streamId !== streamId) {
    throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without a header block to continue");
  }
  const ended = (flags & Flag.END_HEADERS) !== 0;
  if (!ended && length < SMALL_FRAME_BYTES) countOverhead(c, "a CONTINUATION under 1 KiB");
  const bytes = continuation.bytes + length;
  if (bytes > c.maxHeaderBlockBytes) {
    throw new ConnectionError(
      ErrorCode.ENHANCE_YOUR_CALM,
      `header block over ${c.maxHeaderBlockBytes} bytes`,
    );
  }
  // One buffer that grows, not a part per frame: a block of many tiny fragments costs only its bytes.
  if (bytes > continuation.block.length) {
    const grown = new Uint8Array(
      Math.min(c.maxHeaderBlockBytes, Math.max(bytes, 2 * continuation.block.length)),
    );
    grown.set(continuation.block.subarray(0, continuation.bytes));
    continuation.block = grown;
  }
  continuation.block.set(buf.subarray(start, start + length), continuation.bytes);
  continuation.bytes = bytes;
  if (!ended) return;
  c.continuation = undefined;
  onHeaderBlock(
    c,
    streamId,
    continuation.flags,
    continuation.block.subarray(0, continuation.bytes),
    continuation.selfDependent,
  );
}

// --- a complete block --------------------------------------------------------------------------------------

/** A complete header block, decoded: a new stream's request, or a block of a stream we know. */
function onHeaderBlock(
  c: ConnectionState,
  streamId: number,
  flags: number,
  block: Uint8Array,
  selfDependent: boolean,
): void {
  const fields: string[] = [];
  let listSize: number;
  try {
    listSize = c.decoder.decode(block, fields);
  } catch (error) {
    if (error instanceof HpackError) throw new ConnectionError(ErrorCode.COMPRESSION_ERROR, error.message);
    throw error;
  }
  const endStream = (flags & Flag.END_STREAM) !== 0;
  const stream = c.streams.get(streamId);
  if (stream) return onStreamHeaderBlock(c, stream, fields, endStream, selfDependent);
  if (!c.isServer) {
    if (c.recentlyReset.has(streamId)) return;
    throw new ConnectionError(
      isIdle(c, streamId) ? ErrorCode.PROTOCOL_ERROR : ErrorCode.STREAM_CLOSED,
      "HEADERS on a stream this client did not open or already closed",
    );
  }
  openPeerStream(c, streamId, fields, listSize, endStream, selfDependent);
}

/**
 * A server's new stream: its id must be new (odd, above every earlier one); it is admitted under the limits
 * (`admitPeerStream`), then the owner sees its request, or it is answered 431 if its list is too large.
 */
function openPeerStream(
  c: ConnectionState,
  streamId: number,
  fields: string[],
  listSize: number,
  endStream: boolean,
  selfDependent: boolean,
): void {
  if (streamId % 2 === 0) {
    throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "a client stream id must be odd");
  }
  if (streamId <= c.lastPeerStreamId) {
    if (c.recentlyReset.has(streamId)) return;
    throw new ConnectionError(ErrorCode.STREAM_CLOSED, "HEADERS on a closed stream");
  }
  c.lastPeerStreamId = streamId;
  if (!admitPeerStream(c, streamId, fields, selfDependent)) return;
  const stream = new Stream(c, streamId);
  c.streams.set(streamId, stream);
  if (listSize > c.maxHeaderListSize) return answerHeaderListTooLarge(c, stream, endStream);
  stream.expectedLength = contentLength(fields);
  if (Number.isNaN(stream.expectedLength) || (endStream && stream.expectedLength > 0)) {
    return streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, "bad content-length");
  }
  stream.headerBlocks = 1;
  stream.remoteEnded = endStream;
  stream.announced = true;
  deliverHeaders(c, stream, fields, endStream);
}

/**
 * Whether a new stream may open: not while going away, not past our stream limit, not while the peer's
 * windows hold too much of our DATA, and not with a malformed request. A refused stream gets RST_STREAM.
 */
function admitPeerStream(
  c: ConnectionState,
  streamId: number,
  fields: string[],
  selfDependent: boolean,
): boolean {
  if (selfDependent) {
    streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, "a stream depends on itself");
    return false;
  }
  if (c.goawaySent || c.closing) {
    streamError(c, streamId, ErrorCode.REFUSED_STREAM, "the server is going away", true);
    return false;
  }
  if (c.streams.size >= c.maxConcurrentStreams) {
    c.observer?.streamRefused("max_concurrent_streams");
    streamError(c, streamId, ErrorCode.REFUSED_STREAM, "too many concurrent streams");
    return false;
  }
  if (c.pendingTotal > c.limits.maxPendingBytes) {
    c.observer?.streamRefused("pending_data");
    streamError(c, streamId, ErrorCode.REFUSED_STREAM, "too much DATA waiting for the peer's windows", true);
    return false;
  }
  const problem = requestProblem(fields);
  if (problem) {
    streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, `malformed request: ${problem}`);
    return false;
  }
  return true;
}

/** A request over maxHeaderListSize: answered 431 at once; what else the peer sends on it is discarded. */
function answerHeaderListTooLarge(c: ConnectionState, stream: Stream, endStream: boolean): void {
  stream.localEnded = true;
  writeHeaderBlock(c, stream.id, HEADER_LIST_TOO_LARGE, true);
  stream.endWritten = true;
  stream.remoteEnded = endStream;
  stream.discard = true;
  localEndWritten(c, stream);
}

/**
 * A block on a stream we know: a client's response headers (after any 1xx), or trailers (either side),
 * which must end the stream.
 */
function onStreamHeaderBlock(
  c: ConnectionState,
  stream: Stream,
  fields: string[],
  endStream: boolean,
  selfDependent: boolean,
): void {
  const streamId = stream.id;
  if (selfDependent) return streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, "a stream depends on itself");
  if (stream.remoteEnded) {
    return streamError(c, streamId, ErrorCode.STREAM_CLOSED, "HEADERS after END_STREAM");
  }
  const trailers = c.isServer || stream.headerBlocks > 0;
  if (trailers && !endStream) {
    return streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM");
  }
  const problem = responseProblem(fields, trailers);
  if (problem) {
    return streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, `malformed header block: ${problem}`);
  }
  if (!trailers && fields[1].charCodeAt(0) === 49 /* 1xx: informational, another block follows */) {
    if (endStream) return streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, "1xx response with END_STREAM");
    return;
  }
  if (c.isServer && stream.expectedLength >= 0 && stream.receivedLength !== stream.expectedLength) {
    return streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, "DATA does not match content-length");
  }
  stream.headerBlocks++;
  stream.remoteEnded = endStream;
  deliverHeaders(c, stream, fields, endStream);
}

/** The owner sees the list; if it ended the stream and our side has ended too, the stream closes. */
function deliverHeaders(c: ConnectionState, stream: Stream, fields: string[], endStream: boolean): void {
  try {
    c.handler.onHeaders(stream, fields, endStream);
  } catch (error) {
    handlerThrew(c, stream, error);
  }
  if (endStream && stream.endWritten) closeStream(c, stream, undefined, "ended");
}
