/**
 * One HTTP/2 connection (RFC 9113) over a byte stream, for either side: framing, SETTINGS, PING, GOAWAY,
 * both directions of flow control, stream states and the checks of a well-formed message. What the streams
 * carry is the owner's business (the gRPC server and client of the kit); it sees each stream's header blocks
 * (decoded) and DATA, and answers with pre-encoded header blocks and bytes.
 *
 * Why the kit has its own: under Deno, node:http2 cost a service about 430 us of CPU per unary call at
 * 1000 calls/s (three wakeups of the event loop per call, a send() per frame), where a read and a write on
 * the socket cost about 130 us. Here a call costs one read and one write: what arrives in one read is parsed
 * in one go, and what is answered within one turn of the event loop leaves in one write.
 *
 * Not supported, on purpose: TLS (the services sit behind the platform's mesh or ingress), server push (the
 * client disables it), priorities (parsed and ignored, as RFC 9113 allows), HTTP/1.1 upgrade (gRPC clients
 * use prior knowledge; an HTTP/1 request gets a 505 that says what the port speaks).
 */
import type { Logger } from "@tailwatch/runtime";
import { ping } from "./control.ts";
import { FRAME_HEADER_BYTES, FrameType } from "./frames.ts";
import type { Http2LimitReason, Http2Limits } from "./limits.ts";
import { outputBytes, writeClientPreface } from "./outbound.ts";
import { readLoop } from "./reader.ts";
import { destroy, goAway } from "./shutdown.ts";
import { ConnectionState } from "./state.ts";
import { canOpen, openClientStream } from "./streams.ts";
import { watch } from "./timeouts.ts";

/** What the connection needs of a socket (Deno.Conn has it). */
export interface ByteStream {
  read(into: Uint8Array): Promise<number | null>;
  write(bytes: Uint8Array): Promise<number>;
  close(): void;
  /** Sends FIN once what was written has left (shutdown(SHUT_WR)); the reading side stays open. */
  closeWrite?(): Promise<void>;
}

export { CONNECTION_LOST } from "./state.ts";

export interface Http2Stream {
  readonly id: number;
  /** The owner's state for this stream. */
  context: unknown;
  /** The peer sent END_STREAM. */
  readonly remoteEnded: boolean;
  /** We queued END_STREAM (or reset the stream). */
  readonly localEnded: boolean;
  /** Sends a header list (name, value, name, value...; lower-case names); `endStream` ends our side. */
  sendHeaders(fields: readonly string[], endStream: boolean): void;
  /** Queues bytes as DATA, sent as the peer's flow-control windows allow. */
  sendData(data: Uint8Array, endStream: boolean): void;
  /** Ends our side with trailers, once every queued DATA byte has left. */
  sendTrailers(fields: readonly string[]): void;
  /** RST_STREAM with `code`; the stream is closed at once. */
  reset(code: number): void;
  /**
   * Once our side has ended, resets the stream (NO_ERROR) if the peer is still sending: what it sends would
   * not be read (an answer given before the whole request arrived).
   */
  discardRest(): void;
}

export interface Http2Handler {
  /**
   * A header block: a server sees a request's headers (a new stream) and trailers; a client sees the
   * response headers and trailers. `fields` is name, value, name, value...
   */
  onHeaders(stream: Http2Stream, fields: string[], endStream: boolean): void;
  /** DATA bytes (a view the owner may keep: the connection never writes over it). */
  onData(stream: Http2Stream, data: Uint8Array, endStream: boolean): void;
  /**
   * Once per stream the owner saw, when it leaves the connection: `code` undefined when both sides ended,
   * otherwise the HTTP/2 error code it was reset with, or CONNECTION_LOST.
   */
  onClose(stream: Http2Stream, code: number | undefined, reason: string): void;
  /** The peer sent GOAWAY: streams above `lastStreamId` were closed with REFUSED_STREAM (not processed). */
  onGoaway?(lastStreamId: number, code: number): void;
  /** Every frame of one read has been handled (what arrived together has been seen together). */
  afterRead?(): void;
}

export interface Http2ConnectionOptions {
  role: "server" | "client";
  handler: Http2Handler;
  logger: Logger;
  /** Names the connection in logs, e.g. the peer's address. */
  label: string;
  /** Streams the peer may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). Default 1000 (server), 0 (client). */
  maxConcurrentStreams?: number;
  /** Bytes the peer may send on a stream ahead of our acknowledgement. Default 1 MiB. */
  streamWindow?: number;
  /** Bytes the peer may send on the connection ahead of our acknowledgement. Default 16 MiB. */
  connectionWindow?: number;
  /** Largest header list accepted (RFC 9113 6.5.2 size); a larger one is answered 431. Default 64 KiB. */
  maxHeaderListSize?: number;
  /**
   * The defences against an abusive peer (limits.ts), over DEFAULT_HTTP2_LIMITS. Without it (the kit's client,
   * which talks to services it trusts) there are none.
   */
  limits?: Partial<Http2Limits>;
  /** Told of every limit hit, for the metrics. */
  observer?: Http2Observer;
}

/** What a connection tells its owner about its limits (each call is rare: a limit was hit). */
export interface Http2Observer {
  /** The connection is being closed because of `reason`. */
  closed(reason: Http2LimitReason, detail: string): void;
  /** A stream was refused (REFUSED_STREAM) or reset because of `reason`. */
  streamRefused(reason: "max_concurrent_streams" | "pending_data"): void;
  /** The connection stopped reading: its peer does not take what it is sent. */
  readingPaused(): void;
}

export interface Http2Connection {
  /** A client opens a stream with its request's header list. Throws unless `canOpen`. */
  request(fields: readonly string[], endStream: boolean): Http2Stream;
  /** Whether `request` may open a stream now: up, no GOAWAY, below the peer's stream limit, ids left. */
  readonly canOpen: boolean;
  /** No new streams: we sent or received GOAWAY, or the connection is gone. */
  readonly goingAway: boolean;
  readonly activeStreams: number;
  /** GOAWAY (NO_ERROR), then waits for the streams in flight; resolves when the socket is closed. */
  close(): Promise<void>;
  /** Closes now; every open stream is closed with CONNECTION_LOST. */
  destroy(reason: string): void;
  /** Resolves when the socket is closed, for whatever reason. */
  readonly closed: Promise<void>;
  /** Bytes of output not yet taken by the socket. */
  readonly outputBytes: number;
  /** Bytes of DATA queued in streams, waiting for the peer's windows (or room in the output). */
  readonly pendingBytes: number;
  /** Answers owed to the peer (PING and SETTINGS acknowledgements, RST_STREAM) not yet taken by the socket. */
  readonly queuedControlFrames: number;
  /** Reading is paused until the peer takes what it was sent (limits.maxOutputBytes). */
  readonly readingPaused: boolean;
  /**
   * Whether the peer still answers: a PING, and true if its ACK (or any frame) arrives within `timeoutMs`.
   * A connection whose peer vanished without closing it (host gone, network cut) only learns so this way.
   */
  ping(timeoutMs: number): Promise<boolean>;
}

/**
 * A connection over `io`. Its parts, each in its own file, all working on one ConnectionState (state.ts):
 *
 * - reader.ts: the socket read loop, frames parsed and dispatched to their handlers;
 * - control.ts: SETTINGS, PING and PRIORITY; flow.ts: DATA and WINDOW_UPDATE, both directions of flow
 *   control; headers.ts (and messages.ts): HEADERS and CONTINUATION assembled, decoded, checked;
 * - streams.ts: the stream table, each stream's states, resets; outbound.ts: the output buffer, the frames we
 *   send and the write loop;
 * - defences.ts and timeouts.ts: the limits of limits.ts, as frames arrive and over time;
 * - shutdown.ts: GOAWAY both ways and every way a connection ends.
 */
export function createHttp2Connection(io: ByteStream, options: Http2ConnectionOptions): Http2Connection {
  const c = new ConnectionState(io, options);
  start(c);
  return handleFor(c);
}

/** A client speaks first (preface, SETTINGS); a server waits for the preface. Then the reading starts. */
function start(c: ConnectionState): void {
  if (!c.isServer) writeClientPreface(c);
  if (c.limited) watch(c);
  void readLoop(c);
}

/** The owner's handle on the connection. */
function handleFor(c: ConnectionState): Http2Connection {
  return {
    request(fields, endStream) {
      return openClientStream(c, fields, endStream);
    },
    get canOpen() {
      return canOpen(c);
    },
    get goingAway() {
      return c.isClosed || c.closing || c.goawayReceived || c.goawaySent;
    },
    get activeStreams() {
      return c.streams.size;
    },
    get outputBytes() {
      return outputBytes(c);
    },
    get pendingBytes() {
      return c.pendingTotal;
    },
    get queuedControlFrames() {
      return c.queuedControl + c.writingControl;
    },
    get readingPaused() {
      return c.resumeReading !== undefined;
    },
    close() {
      goAway(c);
      return c.closed;
    },
    ping(timeoutMs) {
      return ping(c, timeoutMs);
    },
    destroy(reason) {
      destroy(c, reason);
    },
    closed: c.closed,
  };
}

/**
 * A connection the server will not serve (over its connection limit): our SETTINGS (a server's first frame)
 * and GOAWAY with `code` and `debug`, then the socket is closed, within a second whatever the peer does.
 */
export function refuseConnection(io: ByteStream, code: number, debug: string): Promise<void> {
  const text = new TextEncoder().encode(debug.slice(0, 200));
  const bytes = new Uint8Array(2 * FRAME_HEADER_BYTES + 8 + text.length);
  bytes[3] = FrameType.SETTINGS; // an empty SETTINGS: the defaults
  const goaway = bytes.subarray(FRAME_HEADER_BYTES);
  const length = 8 + text.length;
  goaway[0] = length >>> 16;
  goaway[1] = (length >>> 8) & 0xff;
  goaway[2] = length & 0xff;
  goaway[3] = FrameType.GOAWAY;
  // flags 0, stream 0, last stream id 0
  new DataView(goaway.buffer, goaway.byteOffset + FRAME_HEADER_BYTES + 4, 4).setUint32(0, code);
  goaway.set(text, FRAME_HEADER_BYTES + 8);
  const close = () => {
    clearTimeout(timer);
    try {
      io.close();
    } catch {
      // already closed
    }
  };
  const timer = setTimeout(close, 1000);
  Deno.unrefTimer(timer);
  return (async () => {
    try {
      let sent = 0;
      while (sent < bytes.length) sent += await io.write(bytes.subarray(sent));
    } catch {
      // the peer is gone already
    } finally {
      close();
    }
  })();
}
