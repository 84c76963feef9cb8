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
import {
  CLIENT_PREFACE,
  DEFAULT_MAX_FRAME_SIZE,
  DEFAULT_WINDOW,
  ErrorCode,
  errorCodeName,
  Flag,
  FRAME_HEADER_BYTES,
  FrameType,
  MAX_FRAME_SIZE_LIMIT,
  MAX_WINDOW,
  Setting,
} from "./frames.ts";
import { createHpackDecoder, createHpackEncoder, HpackError } from "./hpack.ts";
import { DEFAULT_HTTP2_LIMITS, type Http2LimitReason, type Http2Limits, NO_HTTP2_LIMITS } from "./limits.ts";

/** What the connection needs of a socket (Deno.Conn has it). */
export interface ByteStream {
  read(into: Uint8Array): Promise<number | null>;
  write(bytes: Uint8Array): Promise<number>;
  close(): void;
  /** Sends FIN once what was written has left (shutdown(SHUT_WR)); the reading side stays open. */
  closeWrite?(): Promise<void>;
}

/** The close code a stream gets when its connection is gone (not an HTTP/2 error code). */
export const CONNECTION_LOST = -1;

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

/** A protocol violation of the whole connection (or a limit it went over): GOAWAY with `code`, then close. */
class ConnectionError extends Error {
  constructor(readonly code: number, message: string, readonly limit?: Http2LimitReason) {
    super(message);
  }
}

const CHUNK_BYTES = 64 * 1024;
const RECENTLY_RESET_KEPT = 128;
/** A frame that carries less than this without ending its part (a fragment, a window) is an overhead frame. */
const SMALL_FRAME_BYTES = 1024;
/** What must move in writeStallTimeoutMs for buffered output or pending DATA not to count as stalled. */
const STALL_PROGRESS_BYTES = 16 * 1024;
/** How long a connection closed with GOAWAY waits for it to be written before the socket is closed anyway. */
const CLOSE_GRACE_MS = 5000;
/** An output buffer larger than this is not kept once written (a burst should not pin its memory). */
const KEPT_BUFFER_BYTES = 256 * 1024;
const OUTPUT_BUFFER_BYTES = 16 * 1024;

/** When each limit was last logged as a warning: at most once per 10 s each, the rest at debug level. */
const limitLoggedAt = new Map<Http2LimitReason, number>();

function logLimit(logger: Logger, limit: Http2LimitReason, fields: Record<string, unknown>): void {
  const now = performance.now();
  if (now - (limitLoggedAt.get(limit) ?? -Infinity) < 10_000) {
    logger.debug("http2: closing a connection over a limit", fields);
    return;
  }
  limitLoggedAt.set(limit, now);
  logger.warn("http2: closing a connection over a limit (each counted in /metrics)", fields);
}

// --- housekeeping: one timer for every connection with limits ------------------------------------------------

/** How often the timeouts and windows of connections are checked (their resolution). */
const TICK_MS = 250;
const tickers = new Set<(now: number) => void>();
let tickTimer: ReturnType<typeof setInterval> | undefined;

function runTicks(): void {
  const now = performance.now();
  for (const tick of tickers) tick(now);
}

function addTicker(tick: (now: number) => void): void {
  tickers.add(tick);
  if (tickTimer === undefined) {
    const timer = setInterval(runTicks, TICK_MS);
    Deno.unrefTimer(timer);
    tickTimer = timer;
  }
}

function removeTicker(tick: (now: number) => void): void {
  tickers.delete(tick);
  if (tickers.size === 0 && tickTimer !== undefined) {
    clearInterval(tickTimer);
    tickTimer = undefined;
  }
}
const CONNECTION_SPECIFIC = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);
const REQUEST_PSEUDO = new Set([":method", ":scheme", ":authority", ":path"]);
const HTTP1_ANSWER = new TextEncoder().encode(
  "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: text/plain\r\nconnection: close\r\n" +
    "content-length: 63\r\n\r\nthis port speaks gRPC: HTTP/2 without TLS, with prior knowledge\n",
);

function hasUpperCase(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c >= 65 && c <= 90) return true;
  }
  return false;
}

/** Why a request's header list is malformed (RFC 9113 8.2, 8.3.1), or undefined when it is fine. */
function requestProblem(fields: string[]): string | undefined {
  let regularSeen = false;
  let method: string | undefined;
  let scheme: string | undefined;
  let path: string | undefined;
  let authority: string | undefined;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i];
    const value = fields[i + 1];
    if (hasUpperCase(name)) return `upper-case header name ${name}`;
    if (name.charCodeAt(0) === 58 /* : */) {
      if (regularSeen) return `pseudo-header ${name} after a regular header`;
      if (!REQUEST_PSEUDO.has(name)) return `pseudo-header ${name} is not a request's`;
      if (name === ":method") {
        if (method !== undefined) return "two :method";
        method = value;
      } else if (name === ":scheme") {
        if (scheme !== undefined) return "two :scheme";
        scheme = value;
      } else if (name === ":path") {
        if (path !== undefined) return "two :path";
        path = value;
      } else {
        if (authority !== undefined) return "two :authority";
        authority = value;
      }
    } else {
      regularSeen = true;
      if (CONNECTION_SPECIFIC.has(name)) return `connection-specific header ${name}`;
      if (name === "te" && value !== "trailers") return `te: ${value}`;
    }
  }
  if (method === undefined || method === "") return "no :method";
  if (method === "CONNECT") return authority ? undefined : "CONNECT without :authority";
  if (scheme === undefined || scheme === "") return "no :scheme";
  if (path === undefined || path === "") return "no :path";
  return undefined;
}

/** Why a response's header list (or any trailers) is malformed, or undefined when it is fine. */
function responseProblem(fields: string[], trailers: boolean): string | undefined {
  let regularSeen = false;
  let status: string | undefined;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i];
    if (hasUpperCase(name)) return `upper-case header name ${name}`;
    if (name.charCodeAt(0) === 58) {
      if (trailers) return `pseudo-header ${name} in trailers`;
      if (regularSeen) return `pseudo-header ${name} after a regular header`;
      if (name !== ":status" || status !== undefined) return `unexpected pseudo-header ${name}`;
      status = fields[i + 1];
    } else {
      regularSeen = true;
      if (CONNECTION_SPECIFIC.has(name)) return `connection-specific header ${name}`;
    }
  }
  if (!trailers && !/^\d{3}$/.test(status ?? "")) return `bad :status ${status}`;
  return undefined;
}

/** A request's content-length, -1 when it has none; NaN when it is not a number. */
function contentLength(fields: string[]): number {
  for (let i = 0; i < fields.length; i += 2) {
    if (fields[i] === "content-length") return /^\d{1,15}$/.test(fields[i + 1]) ? Number(fields[i + 1]) : NaN;
  }
  return -1;
}

export function createHttp2Connection(io: ByteStream, options: Http2ConnectionOptions): Http2Connection {
  const { handler, logger, role } = options;
  const isServer = role === "server";
  const limited = options.limits !== undefined;
  const limits: Readonly<Http2Limits> = limited
    ? { ...DEFAULT_HTTP2_LIMITS, ...options.limits }
    : NO_HTTP2_LIMITS;
  const observer = options.observer;
  const maxConcurrentStreams = options.maxConcurrentStreams ?? (isServer ? limits.maxConcurrentStreams : 0);
  const streamWindow = options.streamWindow ?? 1024 * 1024;
  const connectionWindow = options.connectionWindow ?? 16 * 1024 * 1024;
  const maxHeaderListSize = options.maxHeaderListSize ?? 64 * 1024;
  /**
   * A header block being assembled from CONTINUATION frames may not grow past this: its encoding is never
   * larger than the list it decodes to, so past twice the list's limit it can only be refused anyway.
   */
  const maxHeaderBlockBytes = Math.max(2 * maxHeaderListSize, DEFAULT_MAX_FRAME_SIZE);
  const decoder = createHpackDecoder();
  const encoder = createHpackEncoder();

  const streams = new Map<number, Stream>();
  /** Streams with DATA waiting for the connection's send window, or for room in the output buffer. */
  const blocked = new Set<Stream>();
  const recentlyReset = new Set<number>();
  const recentlyResetOrder: number[] = [];

  // The peer's settings, as they apply to what we send.
  let peerInitialWindow = DEFAULT_WINDOW;
  let peerMaxFrameSize = DEFAULT_MAX_FRAME_SIZE;
  let peerMaxConcurrentStreams = Infinity;
  let peerSettingsSeen = false;

  let connSendWindow = DEFAULT_WINDOW;
  let connRecvWindow = connectionWindow;
  /** Highest stream id the peer opened (server), or our next id (client). */
  let lastPeerStreamId = 0;
  let nextStreamId = 1;
  let goawaySent = false;
  let goawayReceived = false;
  let isClosed = false;
  let closing = false;
  let continuation:
    | { streamId: number; flags: number; selfDependent: boolean; block: Uint8Array; bytes: number }
    | undefined;
  /** The client's preface has arrived (a client has nothing to wait for). */
  let prefaceSeen = !isServer;
  /** The peer acknowledged our SETTINGS. */
  let settingsAcked = false;

  // What the limits count (limits.ts).
  const createdAt = performance.now();
  let windowStart = createdAt;
  let resetsInWindow = 0;
  let overheadInWindow = 0;
  /** Answers owed to the peer in `out`, and in the write under way. */
  let queuedControl = 0;
  let writingControl = 0;
  /** DATA bytes queued in streams, waiting for the peer's windows (or room in the output). */
  let pendingTotal = 0;
  /** Bytes handed to the socket so far, and DATA bytes moved from streams into the output so far. */
  let bytesWritten = 0;
  let dataBytesSent = 0;
  let outputStallSince = createdAt;
  let outputStallBase = 0;
  let pendingStallSince = createdAt;
  let pendingStallBase = 0;
  let idleSince = createdAt;
  let idleSeenStreamId = 0;
  /** Set while reading waits for the output to drain. */
  let resumeReading: (() => void) | undefined;
  /** No more input is processed: the connection is being closed. */
  let readingStopped = false;
  /** The peer closed its side (or the socket failed): nothing more to read. */
  let readDone = false;
  /** Our FIN is on its way. */
  let writeShut = false;
  let hardCloseTimer: ReturnType<typeof setTimeout> | undefined;

  let resolveClosed!: () => void;
  const closed = new Promise<void>((resolve) => resolveClosed = resolve);

  // --- output: frames are appended here and leave in one write per turn ----------------------------------

  let out = new Uint8Array(OUTPUT_BUFFER_BYTES);
  let spare = new Uint8Array(OUTPUT_BUFFER_BYTES);
  let outLen = 0;
  /** What is left to write of the write under way. */
  let writingBytes = 0;
  let flushScheduled = false;
  let writing = false;
  let closeAfterWrite = false;

  /** Bytes not yet taken by the socket. */
  function outputBytes(): number {
    return outLen + writingBytes;
  }

  function reserve(bytes: number): void {
    if (outLen + bytes <= out.length) return;
    const grown = new Uint8Array(Math.max(out.length * 2, outLen + bytes));
    grown.set(out.subarray(0, outLen));
    out = grown;
  }

  function frameHeader(length: number, type: number, flags: number, streamId: number): void {
    reserve(FRAME_HEADER_BYTES + length);
    const o = out;
    let at = outLen;
    o[at++] = length >>> 16;
    o[at++] = (length >>> 8) & 0xff;
    o[at++] = length & 0xff;
    o[at++] = type;
    o[at++] = flags;
    o[at++] = (streamId >>> 24) & 0x7f;
    o[at++] = (streamId >>> 16) & 0xff;
    o[at++] = (streamId >>> 8) & 0xff;
    o[at++] = streamId & 0xff;
    outLen = at;
    scheduleFlush();
  }

  function put32(value: number): void {
    out[outLen++] = (value >>> 24) & 0xff;
    out[outLen++] = (value >>> 16) & 0xff;
    out[outLen++] = (value >>> 8) & 0xff;
    out[outLen++] = value & 0xff;
  }

  function scheduleFlush(): void {
    if (flushScheduled || writing) return;
    flushScheduled = true;
    queueMicrotask(() => void writeLoop());
  }

  async function writeLoop(): Promise<void> {
    flushScheduled = false;
    if (writing) return;
    writing = true;
    try {
      while (outLen > 0 && !isClosed) {
        const data = out.subarray(0, outLen);
        const written = out;
        out = spare;
        spare = written;
        outLen = 0;
        writingControl = queuedControl;
        queuedControl = 0;
        writingBytes = data.length;
        let sent = 0;
        while (sent < data.length) {
          const n = await io.write(data.subarray(sent));
          sent += n;
          writingBytes -= n;
          bytesWritten += n;
        }
        writingControl = 0;
        if (spare.length > KEPT_BUFFER_BYTES) spare = new Uint8Array(OUTPUT_BUFFER_BYTES);
        if (limited) afterWrite();
      }
    } catch (error) {
      writing = false;
      writingBytes = 0;
      lost(`write failed: ${error}`);
      return;
    }
    writing = false;
    if (closeAfterWrite) finishWriting();
  }

  /** Once a write is done: reading resumes below half the output limit, and queued DATA moves on. */
  function afterWrite(): void {
    if (resumeReading !== undefined && outLen <= limits.maxOutputBytes / 2) {
      const resume = resumeReading;
      resumeReading = undefined;
      resume();
    }
    if (blocked.size > 0 && connSendWindow > 0 && outLen < limits.maxOutputBytes) {
      const waiting = [...blocked];
      blocked.clear();
      for (const stream of waiting) pump(stream);
    }
  }

  /** The connection goes over a limit of the window: a connection error (thrown from the frame's handler). */
  function countReset(): void {
    if (++resetsInWindow > limits.maxResetsPerWindow) {
      throw new ConnectionError(
        ErrorCode.ENHANCE_YOUR_CALM,
        `more than ${limits.maxResetsPerWindow} streams reset in ${limits.abuseWindowMs} ms`,
        "resets",
      );
    }
  }

  function countOverhead(what: string): void {
    overheadInWindow++;
    checkOverhead(what);
  }

  function checkOverhead(what: string): void {
    if (overheadInWindow > limits.maxOverheadFramesPerWindow) {
      throw new ConnectionError(
        ErrorCode.ENHANCE_YOUR_CALM,
        `more than ${limits.maxOverheadFramesPerWindow} frames without a request (${what}) in ${limits.abuseWindowMs} ms`,
        "overhead_frames",
      );
    }
  }

  /** An answer the peer's frame asks for (ACK, RST_STREAM) is about to be queued. */
  function controlFrameQueued(): void {
    if (++queuedControl + writingControl > limits.maxQueuedControlFrames) {
      throw new ConnectionError(
        ErrorCode.ENHANCE_YOUR_CALM,
        `more than ${limits.maxQueuedControlFrames} control frames queued for a peer that does not read them`,
        "control_frame_flood",
      );
    }
  }

  function writeSettings(): void {
    const settings: Array<[number, number]> = [
      [Setting.ENABLE_PUSH, 0],
      [Setting.MAX_CONCURRENT_STREAMS, maxConcurrentStreams],
      [Setting.INITIAL_WINDOW_SIZE, streamWindow],
      [Setting.MAX_HEADER_LIST_SIZE, maxHeaderListSize],
    ];
    frameHeader(settings.length * 6, FrameType.SETTINGS, 0, 0);
    for (const [id, value] of settings) {
      out[outLen++] = id >>> 8;
      out[outLen++] = id & 0xff;
      put32(value);
    }
    if (connectionWindow > DEFAULT_WINDOW) writeWindowUpdate(0, connectionWindow - DEFAULT_WINDOW);
  }

  function writeWindowUpdate(streamId: number, increment: number): void {
    frameHeader(4, FrameType.WINDOW_UPDATE, 0, streamId);
    put32(increment);
  }

  function writeRst(streamId: number, code: number): void {
    frameHeader(4, FrameType.RST_STREAM, 0, streamId);
    put32(code);
  }

  function writeGoaway(code: number, debug: string): void {
    const text = new TextEncoder().encode(debug.slice(0, 200));
    frameHeader(8 + text.length, FrameType.GOAWAY, 0, 0);
    put32(isServer ? lastPeerStreamId : 0);
    put32(code);
    out.set(text, outLen);
    outLen += text.length;
    goawaySent = true;
  }

  /**
   * A header list as HEADERS (+ CONTINUATION past the peer's frame size). Encoded here, as it is written:
   * HPACK's table is shared by the connection, so blocks must leave in the order they were encoded.
   */
  function writeHeaderBlock(streamId: number, fields: readonly string[], endStream: boolean): void {
    const block = encoder.encode(fields);
    let length = Math.min(block.length, peerMaxFrameSize);
    let flags = (endStream ? Flag.END_STREAM : 0) | (length === block.length ? Flag.END_HEADERS : 0);
    frameHeader(length, FrameType.HEADERS, flags, streamId);
    out.set(block.subarray(0, length), outLen);
    outLen += length;
    let from = length;
    while (from < block.length) {
      length = Math.min(block.length - from, peerMaxFrameSize);
      flags = from + length === block.length ? Flag.END_HEADERS : 0;
      frameHeader(length, FrameType.CONTINUATION, flags, streamId);
      out.set(block.subarray(from, from + length), outLen);
      outLen += length;
      from += length;
    }
  }

  // --- streams -------------------------------------------------------------------------------------------

  class Stream implements Http2Stream {
    context: unknown = undefined;
    remoteEnded = false;
    localEnded = false;
    /** Our END_STREAM (or RST) has been written. */
    endWritten = false;
    headerBlocks = 0;
    sendWindow = peerInitialWindow;
    recvWindow = streamWindow;
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

    constructor(readonly id: number) {}

    sendHeaders(fields: readonly string[], endStream: boolean): void {
      if (this.localEnded || this.isClosed || isClosed) return;
      writeHeaderBlock(this.id, fields, endStream);
      if (endStream) {
        this.localEnded = true;
        this.endWritten = true;
        localEndWritten(this);
      }
    }

    sendData(data: Uint8Array, endStream: boolean): void {
      if (this.localEnded || this.isClosed || isClosed) return;
      if (data.length > 0) {
        if (this.pendingBytes > 0 && pendingTotal > limits.maxPendingBytes) {
          // More on top of what this stream could not send yet, with the connection over its limit: the peer
          // keeps its windows shut (or does not read) while asking for more.
          observer?.streamRefused("pending_data");
          logger.debug("http2: stream reset, too much DATA waiting for the peer's windows", {
            connection: options.label,
            streamId: this.id,
            pendingBytes: pendingTotal,
          });
          this.reset(ErrorCode.ENHANCE_YOUR_CALM);
          return;
        }
        this.pending.push(data);
        this.pendingBytes += data.length;
        pendingTotal += data.length;
      }
      if (endStream) {
        this.localEnded = true;
        this.endWithData = true;
      }
      pump(this);
    }

    sendTrailers(fields: readonly string[]): void {
      if (this.localEnded || this.isClosed || isClosed) return;
      this.localEnded = true;
      this.trailers = fields;
      pump(this);
    }

    reset(code: number): void {
      if (this.isClosed || isClosed) return;
      writeRst(this.id, code);
      rememberReset(this.id);
      closeStream(this, code, `reset: ${errorCodeName(code)}`);
    }

    discardRest(): void {
      this.discard = true;
      if (this.endWritten) localEndWritten(this);
    }
  }

  function rememberReset(id: number): void {
    recentlyReset.add(id);
    recentlyResetOrder.push(id);
    if (recentlyResetOrder.length > RECENTLY_RESET_KEPT) recentlyReset.delete(recentlyResetOrder.shift()!);
  }

  /** Writes what the windows allow of the stream's queue, then its end once the queue is empty. */
  function pump(stream: Stream): void {
    while (stream.pendingBytes > 0) {
      if (outLen + writingBytes >= limits.maxOutputBytes) {
        // The peer does not take what it was sent: the rest waits here, not in the output buffer.
        blocked.add(stream);
        return;
      }
      const allowed = Math.min(stream.sendWindow, connSendWindow, peerMaxFrameSize);
      if (allowed <= 0) {
        if (connSendWindow <= 0) blocked.add(stream);
        return;
      }
      const length = Math.min(allowed, stream.pendingBytes);
      // A window that lets out only a few bytes of more (the data dribble, CVE-2019-9511): an overhead frame,
      // checked by the frame handler that opened the window (checkOverhead), or by the next tick.
      if (length < SMALL_FRAME_BYTES && length < stream.pendingBytes) overheadInWindow++;
      const last = length === stream.pendingBytes;
      const flags = last && stream.endWithData ? Flag.END_STREAM : 0;
      frameHeader(length, FrameType.DATA, flags, stream.id);
      let left = length;
      while (left > 0) {
        const part = stream.pending[0];
        const available = part.length - stream.pendingOffset;
        const take = Math.min(available, left);
        out.set(
          take === part.length ? part : part.subarray(stream.pendingOffset, stream.pendingOffset + take),
          outLen,
        );
        outLen += take;
        left -= take;
        if (take === available) {
          stream.pending.shift();
          stream.pendingOffset = 0;
        } else {
          stream.pendingOffset += take;
        }
      }
      stream.pendingBytes -= length;
      pendingTotal -= length;
      dataBytesSent += length;
      stream.sendWindow -= length;
      connSendWindow -= length;
      if (flags) {
        stream.endWritten = true;
        localEndWritten(stream);
        return;
      }
    }
    if (stream.endWritten || !stream.localEnded) return;
    if (stream.endWithData) {
      frameHeader(0, FrameType.DATA, Flag.END_STREAM, stream.id);
    } else if (stream.trailers) {
      writeHeaderBlock(stream.id, stream.trailers, true);
      stream.trailers = undefined;
    }
    stream.endWritten = true;
    localEndWritten(stream);
  }

  function localEndWritten(stream: Stream): void {
    if (stream.isClosed) return;
    if (stream.remoteEnded) {
      closeStream(stream, undefined, "ended");
    } else if (stream.discard) {
      writeRst(stream.id, ErrorCode.NO_ERROR);
      rememberReset(stream.id);
      closeStream(stream, undefined, "answered before the request ended");
    }
  }

  function closeStream(stream: Stream, code: number | undefined, reason: string): void {
    if (stream.isClosed) return;
    stream.isClosed = true;
    streams.delete(stream.id);
    blocked.delete(stream);
    stream.pending = [];
    pendingTotal -= stream.pendingBytes;
    stream.pendingBytes = 0;
    if (stream.announced) {
      try {
        handler.onClose(stream, code, reason);
      } catch (error) {
        logger.error("http2: stream close handler threw", { connection: options.label, error });
      }
    }
    if ((goawaySent || goawayReceived) && streams.size === 0 && closing) finishClose();
  }

  /**
   * A stream error (RFC 9113 5.4.2): RST_STREAM, the stream is closed, the connection goes on. Counted as a
   * reset the peer caused unless `ours` (we refuse it for our own reasons).
   */
  function streamError(streamId: number, code: number, reason: string, ours = false): void {
    if (!ours) countReset();
    controlFrameQueued();
    logger.debug("http2: stream error", { connection: options.label, streamId, code, reason });
    writeRst(streamId, code);
    rememberReset(streamId);
    const stream = streams.get(streamId);
    if (stream) closeStream(stream, code, reason);
  }

  function isIdle(streamId: number): boolean {
    const ours = isServer ? streamId % 2 === 0 : streamId % 2 === 1;
    if (ours) return isServer || streamId >= nextStreamId;
    return streamId > lastPeerStreamId;
  }

  // --- input ---------------------------------------------------------------------------------------------

  function onFrame(
    type: number,
    flags: number,
    streamId: number,
    buf: Uint8Array,
    start: number,
    length: number,
  ) {
    if (continuation && type !== FrameType.CONTINUATION) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted by another frame");
    }
    if (!peerSettingsSeen) {
      if (type !== FrameType.SETTINGS || (flags & Flag.ACK)) {
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "the connection must start with SETTINGS");
      }
      peerSettingsSeen = true;
    }
    switch (type) {
      case FrameType.DATA:
        return onData(flags, streamId, buf, start, length);
      case FrameType.HEADERS:
        return onHeadersFrame(flags, streamId, buf, start, length);
      case FrameType.PRIORITY:
        countOverhead("PRIORITY");
        if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0");
        if (length !== 5) return streamError(streamId, ErrorCode.FRAME_SIZE_ERROR, "PRIORITY of a bad size");
        if (read31(buf, start) === streamId) {
          return streamError(streamId, ErrorCode.PROTOCOL_ERROR, "a stream depends on itself");
        }
        return;
      case FrameType.RST_STREAM:
        return onRst(streamId, buf, start, length);
      case FrameType.SETTINGS:
        return onSettings(flags, streamId, buf, start, length);
      case FrameType.PUSH_PROMISE:
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE is not allowed here");
      case FrameType.PING:
        if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "PING on a stream");
        if (length !== 8) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PING of a bad size");
        if (!(flags & Flag.ACK)) {
          controlFrameQueued();
          frameHeader(8, FrameType.PING, Flag.ACK, 0);
          out.set(buf.subarray(start, start + 8), outLen);
          outLen += 8;
        }
        return;
      case FrameType.GOAWAY:
        return onGoaway(streamId, buf, start, length);
      case FrameType.WINDOW_UPDATE:
        return onWindowUpdate(streamId, buf, start, length);
      case FrameType.CONTINUATION:
        return onContinuation(flags, streamId, buf, start, length);
      default:
        return; // unknown frame types are ignored (RFC 9113 4.1)
    }
  }

  function read31(buf: Uint8Array, at: number): number {
    return ((buf[at] & 0x7f) << 24 | buf[at + 1] << 16 | buf[at + 2] << 8 | buf[at + 3]) >>> 0;
  }

  function read32(buf: Uint8Array, at: number): number {
    return (buf[at] << 24 | buf[at + 1] << 16 | buf[at + 2] << 8 | buf[at + 3]) >>> 0;
  }

  function onData(flags: number, streamId: number, buf: Uint8Array, start: number, length: number): void {
    if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0");
    connRecvWindow -= length;
    if (connRecvWindow < 0) {
      throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection's window");
    }
    if (connRecvWindow < connectionWindow / 2) {
      writeWindowUpdate(0, connectionWindow - connRecvWindow);
      connRecvWindow = connectionWindow;
    }
    let dataStart = start;
    let dataEnd = start + length;
    if (flags & Flag.PADDED) {
      if (length < 1 || buf[start] >= length) {
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame");
      }
      dataStart++;
      dataEnd -= buf[start];
    }
    if (dataEnd === dataStart && !(flags & Flag.END_STREAM)) countOverhead("empty DATA");
    const stream = streams.get(streamId);
    if (!stream) {
      if (isIdle(streamId)) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream");
      if (!recentlyReset.has(streamId)) {
        streamError(streamId, ErrorCode.STREAM_CLOSED, "DATA on a closed stream");
      }
      return;
    }
    if (stream.remoteEnded) return streamError(streamId, ErrorCode.STREAM_CLOSED, "DATA after END_STREAM");
    if (!isServer && stream.headerBlocks === 0) {
      return streamError(streamId, ErrorCode.PROTOCOL_ERROR, "DATA before the response headers");
    }
    stream.recvWindow -= length;
    if (stream.recvWindow < 0) {
      return streamError(streamId, ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the stream's window");
    }
    const endStream = (flags & Flag.END_STREAM) !== 0;
    stream.receivedLength += dataEnd - dataStart;
    if (
      stream.expectedLength >= 0 &&
      (stream.receivedLength > stream.expectedLength ||
        (endStream && stream.receivedLength !== stream.expectedLength))
    ) {
      return streamError(streamId, ErrorCode.PROTOCOL_ERROR, "DATA does not match content-length");
    }
    if (endStream) {
      stream.remoteEnded = true;
    } else if (stream.recvWindow < streamWindow / 2) {
      writeWindowUpdate(streamId, streamWindow - stream.recvWindow);
      stream.recvWindow = streamWindow;
    }
    if (dataEnd > dataStart || endStream) {
      try {
        handler.onData(stream, buf.subarray(dataStart, dataEnd), endStream);
      } catch (error) {
        handlerThrew(stream, error);
      }
    }
    if (endStream && stream.endWritten) closeStream(stream, undefined, "ended");
  }

  /** What the owner throws resets its stream rather than breaking the connection. */
  function handlerThrew(stream: Stream, error: unknown): void {
    logger.error("http2: stream handler threw", { connection: options.label, streamId: stream.id, error });
    if (!stream.isClosed) stream.reset(ErrorCode.INTERNAL_ERROR);
  }

  function deliverHeaders(stream: Stream, fields: string[], endStream: boolean): void {
    try {
      handler.onHeaders(stream, fields, endStream);
    } catch (error) {
      handlerThrew(stream, error);
    }
    if (endStream && stream.endWritten) closeStream(stream, undefined, "ended");
  }

  function onHeadersFrame(flags: number, streamId: number, buf: Uint8Array, start: number, length: number) {
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
      onHeaderBlock(streamId, flags, fragment, selfDependent);
    } else {
      if (fragment.length < SMALL_FRAME_BYTES) countOverhead("a HEADERS fragment under 1 KiB");
      continuation = { streamId, flags, selfDependent, block: fragment.slice(), bytes: fragment.length };
    }
  }

  function onContinuation(flags: number, streamId: number, buf: Uint8Array, start: number, length: number) {
    if (!continuation || continuation.streamId !== streamId) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without a header block to continue");
    }
    const ended = (flags & Flag.END_HEADERS) !== 0;
    if (!ended && length < SMALL_FRAME_BYTES) countOverhead("a CONTINUATION under 1 KiB");
    const bytes = continuation.bytes + length;
    if (bytes > maxHeaderBlockBytes) {
      throw new ConnectionError(
        ErrorCode.ENHANCE_YOUR_CALM,
        `header block over ${maxHeaderBlockBytes} bytes`,
      );
    }
    // One buffer that grows, not a part per frame: a block of many tiny fragments costs only its bytes.
    if (bytes > continuation.block.length) {
      const grown = new Uint8Array(
        Math.min(maxHeaderBlockBytes, Math.max(bytes, 2 * continuation.block.length)),
      );
      grown.set(continuation.block.subarray(0, continuation.bytes));
      continuation.block = grown;
    }
    continuation.block.set(buf.subarray(start, start + length), continuation.bytes);
    continuation.bytes = bytes;
    if (!ended) return;
    const first = continuation;
    continuation = undefined;
    onHeaderBlock(streamId, first.flags, first.block.subarray(0, first.bytes), first.selfDependent);
  }

  function onHeaderBlock(streamId: number, flags: number, block: Uint8Array, selfDependent: boolean): void {
    const fields: string[] = [];
    let listSize: number;
    try {
      listSize = decoder.decode(block, fields);
    } catch (error) {
      if (error instanceof HpackError) throw new ConnectionError(ErrorCode.COMPRESSION_ERROR, error.message);
      throw error;
    }
    const endStream = (flags & Flag.END_STREAM) !== 0;
    let stream = streams.get(streamId);
    if (!stream) {
      if (!isServer) {
        if (recentlyReset.has(streamId)) return;
        throw new ConnectionError(
          isIdle(streamId) ? ErrorCode.PROTOCOL_ERROR : ErrorCode.STREAM_CLOSED,
          "HEADERS on a stream this client did not open or already closed",
        );
      }
      if (streamId % 2 === 0) {
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "a client stream id must be odd");
      }
      if (streamId <= lastPeerStreamId) {
        if (recentlyReset.has(streamId)) return;
        throw new ConnectionError(ErrorCode.STREAM_CLOSED, "HEADERS on a closed stream");
      }
      lastPeerStreamId = streamId;
      if (selfDependent) return streamError(streamId, ErrorCode.PROTOCOL_ERROR, "a stream depends on itself");
      if (goawaySent || closing) {
        return streamError(streamId, ErrorCode.REFUSED_STREAM, "the server is going away", true);
      }
      if (streams.size >= maxConcurrentStreams) {
        observer?.streamRefused("max_concurrent_streams");
        return streamError(streamId, ErrorCode.REFUSED_STREAM, "too many concurrent streams");
      }
      if (pendingTotal > limits.maxPendingBytes) {
        observer?.streamRefused("pending_data");
        return streamError(
          streamId,
          ErrorCode.REFUSED_STREAM,
          "too much DATA waiting for the peer's windows",
          true,
        );
      }
      const problem = requestProblem(fields);
      if (problem) return streamError(streamId, ErrorCode.PROTOCOL_ERROR, `malformed request: ${problem}`);
      stream = new Stream(streamId);
      streams.set(streamId, stream);
      if (listSize > maxHeaderListSize) {
        stream.localEnded = true;
        writeHeaderBlock(streamId, HEADER_LIST_TOO_LARGE, true);
        stream.endWritten = true;
        stream.remoteEnded = endStream;
        stream.discard = true;
        localEndWritten(stream);
        return;
      }
      stream.expectedLength = contentLength(fields);
      if (Number.isNaN(stream.expectedLength) || (endStream && stream.expectedLength > 0)) {
        return streamError(streamId, ErrorCode.PROTOCOL_ERROR, "bad content-length");
      }
      stream.headerBlocks = 1;
      stream.remoteEnded = endStream;
      stream.announced = true;
      deliverHeaders(stream, fields, endStream);
      return;
    }
    if (selfDependent) return streamError(streamId, ErrorCode.PROTOCOL_ERROR, "a stream depends on itself");
    if (stream.remoteEnded) return streamError(streamId, ErrorCode.STREAM_CLOSED, "HEADERS after END_STREAM");
    const trailers = isServer || stream.headerBlocks > 0;
    if (trailers && !endStream) {
      return streamError(streamId, ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM");
    }
    const problem = responseProblem(fields, trailers);
    if (problem) return streamError(streamId, ErrorCode.PROTOCOL_ERROR, `malformed header block: ${problem}`);
    if (!trailers && fields[1].charCodeAt(0) === 49 /* 1xx: informational, another block follows */) {
      if (endStream) return streamError(streamId, ErrorCode.PROTOCOL_ERROR, "1xx response with END_STREAM");
      return;
    }
    if (isServer && stream.expectedLength >= 0 && stream.receivedLength !== stream.expectedLength) {
      return streamError(streamId, ErrorCode.PROTOCOL_ERROR, "DATA does not match content-length");
    }
    stream.headerBlocks++;
    stream.remoteEnded = endStream;
    deliverHeaders(stream, fields, endStream);
  }

  function onRst(streamId: number, buf: Uint8Array, start: number, length: number): void {
    if (length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of a bad size");
    if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0");
    const stream = streams.get(streamId);
    if (!stream) {
      if (isIdle(streamId)) {
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream");
      }
      return;
    }
    countReset();
    const code = read32(buf, start);
    closeStream(stream, code, `reset by the peer: ${errorCodeName(code)}`);
  }

  function onSettings(flags: number, streamId: number, buf: Uint8Array, start: number, length: number): void {
    if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream");
    if (flags & Flag.ACK) {
      if (length !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload");
      settingsAcked = true;
      return;
    }
    if (length % 6 !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of a bad size");
    countOverhead("SETTINGS");
    controlFrameQueued();
    let windowGrew = false;
    for (let at = start; at < start + length; at += 6) {
      const id = (buf[at] << 8) | buf[at + 1];
      const value = read32(buf, at + 2);
      switch (id) {
        case Setting.HEADER_TABLE_SIZE:
          encoder.setMaxTableSize(value);
          break;
        case Setting.ENABLE_PUSH:
          if (value > 1 || (!isServer && value === 1)) {
            throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `bad SETTINGS_ENABLE_PUSH ${value}`);
          }
          break;
        case Setting.MAX_CONCURRENT_STREAMS:
          peerMaxConcurrentStreams = value;
          break;
        case Setting.INITIAL_WINDOW_SIZE: {
          if (value > MAX_WINDOW) {
            throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, `SETTINGS_INITIAL_WINDOW_SIZE ${value}`);
          }
          const delta = value - peerInitialWindow;
          if (delta === 0) break;
          peerInitialWindow = value;
          for (const stream of streams.values()) {
            stream.sendWindow += delta;
            if (stream.sendWindow > MAX_WINDOW) {
              throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "a stream's window overflowed");
            }
          }
          windowGrew ||= delta > 0;
          break;
        }
        case Setting.MAX_FRAME_SIZE:
          if (value < DEFAULT_MAX_FRAME_SIZE || value > MAX_FRAME_SIZE_LIMIT) {
            throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `bad SETTINGS_MAX_FRAME_SIZE ${value}`);
          }
          peerMaxFrameSize = value;
          break;
        default:
          break; // SETTINGS_MAX_HEADER_LIST_SIZE is advisory; unknown settings are ignored
      }
    }
    frameHeader(0, FrameType.SETTINGS, Flag.ACK, 0);
    if (windowGrew) {
      for (const stream of [...streams.values()]) pump(stream);
      checkOverhead("DATA frames under 1 KiB, as far as the peer's windows let them");
    }
  }

  function onGoaway(streamId: number, buf: Uint8Array, start: number, length: number): void {
    if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream");
    if (length < 8) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY of a bad size");
    const lastStreamId = read31(buf, start);
    const code = read32(buf, start + 4);
    goawayReceived = true;
    closing = true;
    if (code !== ErrorCode.NO_ERROR) {
      const debug = new TextDecoder().decode(buf.subarray(start + 8, start + length));
      logger.warn("http2: the peer went away", {
        connection: options.label,
        code: errorCodeName(code),
        debug,
      });
    }
    if (!isServer) {
      for (const stream of [...streams.values()]) {
        if (stream.id > lastStreamId) {
          closeStream(stream, ErrorCode.REFUSED_STREAM, "the server went away before processing the stream");
        }
      }
    }
    handler.onGoaway?.(lastStreamId, code);
    if (streams.size === 0) finishClose();
  }

  function onWindowUpdate(streamId: number, buf: Uint8Array, start: number, length: number): void {
    if (length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of a bad size");
    const increment = read31(buf, start);
    // Not counted by themselves: grpc-go sends one of a few bytes before each of its BDP PINGs, that is with
    // most answers. What costs is a window that lets DATA out in frames of a few bytes (pump counts those).
    if (streamId === 0) {
      if (increment === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
      connSendWindow += increment;
      if (connSendWindow > MAX_WINDOW) {
        throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "the connection's window overflowed");
      }
      const waiting = [...blocked];
      blocked.clear();
      for (const stream of waiting) pump(stream);
      return checkOverhead("DATA frames under 1 KiB, as far as the peer's windows let them");
    }
    const stream = streams.get(streamId);
    if (!stream) {
      if (isIdle(streamId)) {
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream");
      }
      return;
    }
    if (increment === 0) return streamError(streamId, ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
    stream.sendWindow += increment;
    if (stream.sendWindow > MAX_WINDOW) {
      return streamError(streamId, ErrorCode.FLOW_CONTROL_ERROR, "the stream's window overflowed");
    }
    pump(stream);
    checkOverhead("DATA frames under 1 KiB, as far as the peer's windows let them");
  }

  /** Bumped by every frame received: what `ping` waits to see move. */
  let framesReceived = 0;

  /** Parses every whole frame in buf[pos, end); returns where the first incomplete one starts. */
  function parse(buf: Uint8Array, pos: number, end: number): number {
    while (end - pos >= FRAME_HEADER_BYTES && !isClosed) {
      framesReceived++;
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
      onFrame(type, flags, streamId, buf, start, length);
    }
    return pos;
  }

  async function readLoop(): Promise<void> {
    await readFrames();
    if (isClosed) return;
    // Our last frames are leaving: what the peer still sends is read and dropped until it closes too (or
    // CLOSE_GRACE_MS). Closing a socket with unread input resets it, and the reset drops what we had not yet
    // sent: the GOAWAY that says why (nginx's lingering close).
    const sink = new Uint8Array(16 * 1024);
    try {
      while (!isClosed && (await io.read(sink)) !== null) {
        // dropped
      }
    } catch {
      // reset, or closed by the timer
    }
    readDone = true;
    if (!writing && !flushScheduled) closeSocket(); // otherwise once the write loop is done
  }

  async function readFrames(): Promise<void> {
    let chunk = new Uint8Array(CHUNK_BYTES);
    let filled = 0;
    let pos = 0;
    try {
      for (;;) {
        if (outLen + writingBytes > limits.maxOutputBytes) {
          // A slow reader: no new work from a peer that does not take its answers, until they drain.
          observer?.readingPaused();
          await new Promise<void>((resolve) => resumeReading = resolve);
        }
        if (readingStopped || isClosed) return;
        if (chunk.length - filled < DEFAULT_MAX_FRAME_SIZE + FRAME_HEADER_BYTES) {
          // A new chunk for the unparsed tail: DATA handed out as views stays as it was.
          const next = new Uint8Array(CHUNK_BYTES);
          next.set(chunk.subarray(pos, filled));
          filled -= pos;
          pos = 0;
          chunk = next;
        }
        const n = await io.read(chunk.subarray(filled));
        if (readingStopped) return;
        if (n === null) {
          lost("closed by the peer");
          return;
        }
        filled += n;
        if (!prefaceSeen) {
          const seen = Math.min(filled, CLIENT_PREFACE.length);
          for (let i = 0; i < seen; i++) {
            if (chunk[i] !== CLIENT_PREFACE[i]) {
              notHttp2(chunk.subarray(0, filled));
              return;
            }
          }
          if (filled < CLIENT_PREFACE.length) continue;
          prefaceSeen = true;
          pos = CLIENT_PREFACE.length;
          writeSettings();
        }
        try {
          pos = parse(chunk, pos, filled);
        } finally {
          handler.afterRead?.();
        }
        if (isClosed) return;
        if (pos === filled && chunk.length - filled < DEFAULT_MAX_FRAME_SIZE + FRAME_HEADER_BYTES) {
          filled = pos = 0;
          chunk = new Uint8Array(CHUNK_BYTES);
        }
      }
    } catch (error) {
      if (error instanceof ConnectionError) {
        logger.debug("http2: connection error", {
          connection: options.label,
          code: error.code,
          reason: error.message,
        });
        fail(error.code, error.message, error.limit);
      } else if (!isClosed) {
        lost(`read failed: ${error}`);
      }
    }
  }

  /** A peer that does not speak HTTP/2: an HTTP/1 request gets a 505 that says what this port speaks. */
  function notHttp2(received: Uint8Array): void {
    if (/^[A-Z]+ \S+ HTTP\/1\.[01]\r?\n/.test(new TextDecoder().decode(received.subarray(0, 1024)))) {
      reserve(HTTP1_ANSWER.length);
      out.set(HTTP1_ANSWER, outLen);
      outLen += HTTP1_ANSWER.length;
      scheduleFlush();
    }
    logger.debug("http2: not an HTTP/2 client", { connection: options.label });
    closeGracefullyNow();
  }

  // --- closing -------------------------------------------------------------------------------------------

  /**
   * A connection error: GOAWAY with the code, every stream closed, no more input, the socket closed once
   * written. For a limit, what was queued and not yet handed to the socket is dropped first: the peer asked
   * for it and may never read it.
   */
  function fail(code: number, reason: string, limit?: Http2LimitReason): void {
    if (isClosed || readingStopped) return;
    if (limit) {
      logLimit(logger, limit, { connection: options.label, limit, reason });
      observer?.closed(limit, reason);
      outLen = 0;
      queuedControl = 0;
    }
    if (!goawaySent || code !== ErrorCode.NO_ERROR) writeGoaway(code, reason);
    closeAllStreams(code, reason);
    closeGracefullyNow();
  }

  function stopWaitingForOutput(): void {
    const resume = resumeReading;
    resumeReading = undefined;
    resume?.();
  }

  /** GOAWAY(NO_ERROR): no new streams; the connection closes once the streams in flight have ended. */
  function goAway(): void {
    if (isClosed || closing) return;
    closing = true;
    writeGoaway(ErrorCode.NO_ERROR, "");
    if (streams.size === 0) finishClose();
  }

  /** The timeouts and windows of limits.ts, checked every TICK_MS. */
  function tick(now: number): void {
    if (isClosed || readingStopped) return;
    if (overheadInWindow > limits.maxOverheadFramesPerWindow) {
      return fail(
        ErrorCode.ENHANCE_YOUR_CALM,
        `more than ${limits.maxOverheadFramesPerWindow} frames without a request in ${limits.abuseWindowMs} ms`,
        "overhead_frames",
      );
    }
    if (now - windowStart >= limits.abuseWindowMs) {
      windowStart = now;
      resetsInWindow = 0;
      overheadInWindow = 0;
    }
    if (!prefaceSeen || !peerSettingsSeen || !settingsAcked) {
      if (limits.handshakeTimeoutMs > 0 && now - createdAt >= limits.handshakeTimeoutMs) {
        if (!prefaceSeen) writeSettings(); // a server's first frame is its SETTINGS
        fail(
          ErrorCode.SETTINGS_TIMEOUT,
          `no HTTP/2 handshake (preface, SETTINGS and the acknowledgement of ours) in ${limits.handshakeTimeoutMs} ms`,
          "handshake_timeout",
        );
      }
      return;
    }
    if (limits.writeStallTimeoutMs > 0) {
      if (outputBytes() === 0 || bytesWritten - outputStallBase >= STALL_PROGRESS_BYTES) {
        outputStallSince = now;
        outputStallBase = bytesWritten;
      } else if (now - outputStallSince >= limits.writeStallTimeoutMs) {
        return fail(
          ErrorCode.ENHANCE_YOUR_CALM,
          `the peer took less than ${STALL_PROGRESS_BYTES} bytes of its ${outputBytes()} in ${limits.writeStallTimeoutMs} ms`,
          "slow_reader",
        );
      }
      if (pendingTotal === 0 || dataBytesSent - pendingStallBase >= STALL_PROGRESS_BYTES) {
        pendingStallSince = now;
        pendingStallBase = dataBytesSent;
      } else if (now - pendingStallSince >= limits.writeStallTimeoutMs) {
        return fail(
          ErrorCode.ENHANCE_YOUR_CALM,
          `flow-control windows let less than ${STALL_PROGRESS_BYTES} bytes of ${pendingTotal} leave in ${limits.writeStallTimeoutMs} ms`,
          "flow_control_stall",
        );
      }
    }
    if (limits.idleTimeoutMs > 0 && isServer && !closing) {
      if (streams.size > 0 || lastPeerStreamId !== idleSeenStreamId) {
        idleSince = now;
        idleSeenStreamId = lastPeerStreamId;
      } else if (now - idleSince >= limits.idleTimeoutMs) {
        logger.debug("http2: closing an idle connection", { connection: options.label });
        observer?.closed("idle_timeout", `no stream for ${limits.idleTimeoutMs} ms`);
        goAway();
      }
    }
  }

  /** The socket is gone (or unusable): every stream is closed with CONNECTION_LOST. */
  function lost(reason: string): void {
    if (isClosed) return;
    closeAllStreams(CONNECTION_LOST, `connection lost: ${reason}`);
    closeSocket();
  }

  function closeAllStreams(code: number, reason: string): void {
    for (const stream of [...streams.values()]) closeStream(stream, code, reason);
  }

  /**
   * No more input; what is queued leaves, then FIN, and the socket is closed once the peer closes its side
   * too, or after CLOSE_GRACE_MS whatever the peer does.
   */
  function closeGracefullyNow(): void {
    closeAfterWrite = true;
    readingStopped = true;
    stopWaitingForOutput();
    if (hardCloseTimer === undefined) {
      const timer = setTimeout(closeSocket, CLOSE_GRACE_MS);
      Deno.unrefTimer(timer);
      hardCloseTimer = timer;
    }
    if (!writing && !flushScheduled) finishWriting();
  }

  /** Everything queued has been written: FIN, or the socket closed when there is nothing to wait for. */
  function finishWriting(): void {
    if (readDone || !io.closeWrite) return closeSocket();
    if (writeShut) return;
    writeShut = true;
    io.closeWrite().catch(() => closeSocket());
  }

  function closeSocket(): void {
    if (isClosed) return;
    isClosed = true;
    closing = true;
    if (hardCloseTimer !== undefined) clearTimeout(hardCloseTimer);
    if (limited) removeTicker(tick);
    stopWaitingForOutput();
    try {
      io.close();
    } catch {
      // already closed
    }
    closeAllStreams(CONNECTION_LOST, "connection closed");
    resolveClosed();
  }

  function finishClose(): void {
    if (isClosed) return;
    closing = true;
    if (!goawaySent) writeGoaway(ErrorCode.NO_ERROR, "");
    closeGracefullyNow();
  }

  if (!isServer) {
    reserve(CLIENT_PREFACE.length);
    out.set(CLIENT_PREFACE, outLen);
    outLen += CLIENT_PREFACE.length;
    writeSettings();
  }
  if (limited) addTicker(tick);
  void readLoop();

  const canOpen = () =>
    !isServer && !isClosed && !closing && !goawayReceived && !goawaySent &&
    streams.size < peerMaxConcurrentStreams && nextStreamId < MAX_WINDOW;

  return {
    request(fields, endStream) {
      if (!canOpen()) throw new Error("this connection cannot open a stream now");
      const stream = new Stream(nextStreamId);
      nextStreamId += 2;
      stream.announced = true;
      stream.localEnded = endStream;
      streams.set(stream.id, stream);
      writeHeaderBlock(stream.id, fields, endStream);
      if (endStream) stream.endWritten = true;
      return stream;
    },
    get canOpen() {
      return canOpen();
    },
    get goingAway() {
      return isClosed || closing || goawayReceived || goawaySent;
    },
    get activeStreams() {
      return streams.size;
    },
    get outputBytes() {
      return outputBytes();
    },
    get pendingBytes() {
      return pendingTotal;
    },
    get queuedControlFrames() {
      return queuedControl + writingControl;
    },
    get readingPaused() {
      return resumeReading !== undefined;
    },
    close() {
      goAway();
      return closed;
    },
    async ping(timeoutMs) {
      if (isClosed) return false;
      const before = framesReceived;
      frameHeader(8, FrameType.PING, 0, 0);
      out.fill(0, outLen, outLen + 8);
      outLen += 8;
      const deadline = Date.now() + timeoutMs;
      while (framesReceived === before && !isClosed && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, Math.min(20, timeoutMs)));
      }
      return framesReceived !== before && !isClosed;
    },
    destroy(reason) {
      if (isClosed) return;
      writeGoaway(ErrorCode.CANCEL, reason);
      closeAllStreams(CONNECTION_LOST, reason);
      closeGracefullyNow();
    },
    closed,
  };
}

/** The answer to a header list over the limit. */
const HEADER_LIST_TOO_LARGE = [":status", "431"];

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
