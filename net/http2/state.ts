/**
 * The state of one HTTP/2 connection, in one record every step of connection.ts works on (the steps are
 * module-level functions that take it as `c`). One flat class so that every connection has the same shape and
 * a field costs what a variable of the closure it replaces cost: one load, no object per frame.
 *
 * The fields are grouped by the step that owns them; a field is written by its owner and read by the others.
 */
import type { Logger } from "@tailwatch/runtime";
import type { ByteStream, Http2ConnectionOptions, Http2Handler, Http2Observer } from "./connection.ts";
import { DEFAULT_MAX_FRAME_SIZE, DEFAULT_WINDOW } from "./frames.ts";
import { createHpackDecoder, createHpackEncoder, type HpackDecoder, type HpackEncoder } from "./hpack.ts";
import { DEFAULT_HTTP2_LIMITS, type Http2LimitReason, type Http2Limits, NO_HTTP2_LIMITS } from "./limits.ts";
import type { Stream } from "./streams.ts";

/** The close code a stream gets when its connection is gone (not an HTTP/2 error code). */
export const CONNECTION_LOST = -1;

/** Bytes each of the two output buffers starts with (outbound.ts). */
export const OUTPUT_BUFFER_BYTES = 16 * 1024;

/**
 * A protocol violation of the whole connection (or a limit it went over): GOAWAY with `code`, then close.
 * Thrown from a frame's handler, caught by the read loop (reader.ts), which fails the connection.
 */
export class ConnectionError extends Error {
  constructor(readonly code: number, message: string, readonly limit?: Http2LimitReason) {
    super(message);
  }
}

/** A header block whose HEADERS frame came without END_HEADERS: CONTINUATION frames add to it (headers.ts). */
export interface PartialHeaderBlock {
  streamId: number;
  /** The HEADERS frame's flags (END_STREAM applies to the whole block). */
  flags: number;
  selfDependent: boolean;
  /** The fragments so far, in block[0, bytes); grown by doubling. */
  block: Uint8Array;
  bytes: number;
}

/** Everything one connection knows; created by createHttp2Connection, shared by every step. */
export class ConnectionState {
  // --- what the owner chose (options, resolved once) -----------------------------------------------------

  readonly io: ByteStream;
  readonly handler: Http2Handler;
  readonly logger: Logger;
  /** Names the connection in logs. */
  readonly label: string;
  readonly isServer: boolean;
  /** Whether the defences of limits.ts apply (a server's connections; not the kit's client). */
  readonly limited: boolean;
  readonly limits: Readonly<Http2Limits>;
  readonly observer: Http2Observer | undefined;
  /** Our SETTINGS: what the peer may do. */
  readonly maxConcurrentStreams: number;
  readonly streamWindow: number;
  readonly connectionWindow: number;
  readonly maxHeaderListSize: number;
  /**
   * A header block being assembled from CONTINUATION frames may not grow past this: its encoding is never
   * larger than the list it decodes to, so past twice the list's limit it can only be refused anyway.
   */
  readonly maxHeaderBlockBytes: number;
  /** HPACK's tables are the connection's: blocks are decoded, and encoded, in the order they travel. */
  readonly decoder: HpackDecoder;
  readonly encoder: HpackEncoder;

  // --- the stream table (streams.ts) ---------------------------------------------------------------------

  readonly streams = new Map<number, Stream>();
  /** Streams with DATA waiting for the connection's send window, or for room in the output buffer. */
  readonly blocked = new Set<Stream>();
  /** Streams we reset lately: frames the peer sent before it saw the reset are not errors. */
  readonly recentlyReset = new Set<number>();
  readonly recentlyResetOrder: number[] = [];
  /** Highest stream id the peer opened (server). */
  lastPeerStreamId = 0;
  /** The id of the next stream we open (client). */
  nextStreamId = 1;

  // --- the peer's settings, as they apply to what we send (control.ts) ------------------------------------

  peerInitialWindow = DEFAULT_WINDOW;
  peerMaxFrameSize = DEFAULT_MAX_FRAME_SIZE;
  peerMaxConcurrentStreams = Infinity;
  peerSettingsSeen = false;

  // --- the handshake (reader.ts, control.ts) --------------------------------------------------------------

  /** The client's preface has arrived (a client has nothing to wait for). */
  prefaceSeen: boolean;
  /** The peer acknowledged our SETTINGS. */
  settingsAcked = false;

  // --- the connection's flow-control windows (flow.ts; the streams' are in each Stream) --------------------

  connSendWindow = DEFAULT_WINDOW;
  connRecvWindow: number;

  // --- a header block in assembly (headers.ts) ------------------------------------------------------------

  continuation: PartialHeaderBlock | undefined = undefined;

  // --- what the defences count (defences.ts, timeouts.ts; limits.ts says why) -----------------------------

  readonly createdAt: number;
  /** When the current window of `abuseWindowMs` began, and what it counted so far. */
  windowStart: number;
  resetsInWindow = 0;
  overheadInWindow = 0;
  /** Answers owed to the peer in `out`, and in the write under way. */
  queuedControl = 0;
  writingControl = 0;
  /** DATA bytes queued in streams, waiting for the peer's windows (or room in the output). */
  pendingTotal = 0;
  /** Bytes handed to the socket so far, and DATA bytes moved from streams into the output so far. */
  bytesWritten = 0;
  dataBytesSent = 0;
  outputStallSince: number;
  outputStallBase = 0;
  pendingStallSince: number;
  pendingStallBase = 0;
  idleSince: number;
  idleSeenStreamId = 0;
  /** Bumped by every frame received: what `ping` waits to see move. */
  framesReceived = 0;

  // --- output: frames are appended to `out` and leave in one write per turn (outbound.ts) ------------------

  out = new Uint8Array(OUTPUT_BUFFER_BYTES);
  /** The other buffer: written from while `out` fills, then they swap. */
  spare = new Uint8Array(OUTPUT_BUFFER_BYTES);
  outLen = 0;
  /** What is left to write of the write under way. */
  writingBytes = 0;
  flushScheduled = false;
  writing = false;
  /** Once the output is written, FIN (or close): the connection is closing. */
  closeAfterWrite = false;

  // --- life and death (shutdown.ts, reader.ts) ------------------------------------------------------------

  goawaySent = false;
  goawayReceived = false;
  /** The socket is closed: nothing more happens. */
  isClosed = false;
  /** No new streams; the connection closes once the streams in flight have ended. */
  closing = false;
  /** Set while reading waits for the output to drain. */
  resumeReading: (() => void) | undefined = undefined;
  /** No more input is processed: the connection is being closed. */
  readingStopped = false;
  /** The peer closed its side (or the socket failed): nothing more to read. */
  readDone = false;
  /** Our FIN is on its way. */
  writeShut = false;
  hardCloseTimer: ReturnType<typeof setTimeout> | undefined = undefined;
  readonly closed: Promise<void>;
  resolveClosed!: () => void;

  constructor(io: ByteStream, options: Http2ConnectionOptions) {
    this.io = io;
    this.handler = options.handler;
    this.logger = options.logger;
    this.label = options.label;
    this.isServer = options.role === "server";
    this.limited = options.limits !== undefined;
    this.limits = this.limited ? { ...DEFAULT_HTTP2_LIMITS, ...options.limits } : NO_HTTP2_LIMITS;
    this.observer = options.observer;
    this.maxConcurrentStreams = options.maxConcurrentStreams ??
      (this.isServer ? this.limits.maxConcurrentStreams : 0);
    this.streamWindow = options.streamWindow ?? 1024 * 1024;
    this.connectionWindow = options.connectionWindow ?? 16 * 1024 * 1024;
    this.maxHeaderListSize = options.maxHeaderListSize ?? 64 * 1024;
    this.maxHeaderBlockBytes = Math.max(2 * this.maxHeaderListSize, DEFAULT_MAX_FRAME_SIZE);
    this.decoder = createHpackDecoder();
    this.encoder = createHpackEncoder();
    this.prefaceSeen = !this.isServer;
    this.connRecvWindow = this.connectionWindow;
    const now = performance.now();
    this.createdAt = now;
    this.windowStart = now;
    this.outputStallSince = now;
    this.pendingStallSince = now;
    this.idleSince = now;
    this.closed = new Promise<void>((resolve) => this.resolveClosed = resolve);
  }
}
