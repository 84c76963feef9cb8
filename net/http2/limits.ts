/**
 * What one HTTP/2 server connection (and one process's listener) lets a peer do before it is cut off: the
 * defences grpc-go's, Go's x/net and nginx's HTTP/2 servers carry against the known floods (CVE-2019-9511 to
 * -9518, CVE-2023-44487 "rapid reset"). Every limit is configurable from the environment (`H2_*`, read with
 * the service's other settings in config.ts) and every limit hit is counted in `/metrics`
 * (`http2_connections_closed_total{reason}`, grpc_server.ts).
 *
 * How each is enforced (connection.ts):
 * - resets (rapid reset, CVE-2023-44487; reset flood, -9514): streams the peer resets while they are open, and
 *   streams the server resets for the peer's own errors, are counted per connection in a window of
 *   `abuseWindowMs`; past `maxResetsPerWindow` the connection gets GOAWAY(ENHANCE_YOUR_CALM). (nghttp2 lets a
 *   burst of 1000 and 33 a second through; Netty 200 in 30 s; nginx 2 x the stream limit per read.) Before
 *   that, the gRPC server starts a call only once the whole read that brought it has been handled
 *   (Http2Handler.afterRead), so a call reset in the same read never runs (grpc_server.ts, CallStarts).
 * - overhead frames (empty frames flood, -9518; data dribble, -9511; settings flood, -9515): frames that cost
 *   work but carry no request: DATA without payload or END_STREAM, HEADERS/CONTINUATION fragments under
 *   1 KiB without END_HEADERS, PRIORITY, SETTINGS, and the DATA frames of under 1 KiB we send because the
 *   peer's windows let no more out (small WINDOW_UPDATEs alone are not counted: grpc-go sends one of a few
 *   bytes before each of its BDP PINGs). Past `maxOverheadFramesPerWindow` in a window:
 *   GOAWAY(ENHANCE_YOUR_CALM).
 * - queued control frames (ping and settings floods from a peer that does not read, -9512, -9515): the
 *   answers we owe the peer (PING and SETTINGS acknowledgements, RST_STREAM) not yet taken by the socket;
 *   past `maxQueuedControlFrames` (x/net's number): GOAWAY(ENHANCE_YOUR_CALM).
 * - output buffer (a slow reader): past `maxOutputBytes` not yet taken by the socket, the connection stops
 *   reading (no new work from a peer that does not take its answers) and stops moving DATA into the buffer;
 *   it resumes below half. If nothing leaves for `writeStallTimeoutMs` the connection is closed.
 * - flow control held shut (zero window with many streams, -9517; dribble, -9511): DATA waiting for the
 *   peer's windows is bounded by `maxPendingBytes` (past it new streams are refused, and a stream that queues
 *   more on top of its own unsent data is reset); when less than 16 KiB of it moves in `writeStallTimeoutMs`,
 *   GOAWAY(ENHANCE_YOUR_CALM).
 * - connections: `handshakeTimeoutMs` for the preface, the peer's SETTINGS and its acknowledgement of ours
 *   (else GOAWAY(SETTINGS_TIMEOUT)); `idleTimeoutMs` without an open stream (GOAWAY(NO_ERROR), as grpc-go's
 *   MaxConnectionIdle); `maxConnections` per listener (past it a new connection gets SETTINGS and
 *   GOAWAY(ENHANCE_YOUR_CALM) and is closed).
 *
 * A connection closed for a limit drops what it had queued and not yet handed to the socket (its peer asked
 * for it and may never read it), sends GOAWAY, and is closed once that is written or after 5 s.
 */
import type { EnvReader } from "@tailwatch/runtime";

export interface Http2Limits {
  /** SETTINGS_MAX_CONCURRENT_STREAMS: streams a peer may have open at once. */
  maxConcurrentStreams: number;
  /** Connections a listener serves at once; past it a new one is told GOAWAY and closed. */
  maxConnections: number;
  /** Time a new connection gets for the preface, its SETTINGS and its acknowledgement of ours (ms). */
  handshakeTimeoutMs: number;
  /** A connection without an open stream for this long is closed with GOAWAY(NO_ERROR) (ms; 0: never). */
  idleTimeoutMs: number;
  /** The window over which resets and overhead frames are counted (ms). */
  abuseWindowMs: number;
  /** Streams reset by the peer while open, or by us for its errors, per window. */
  maxResetsPerWindow: number;
  /** Frames that carry no request (see above) per window. */
  maxOverheadFramesPerWindow: number;
  /** Answers owed to the peer (PING/SETTINGS ACK, RST_STREAM) not yet taken by the socket. */
  maxQueuedControlFrames: number;
  /** Bytes not yet taken by the socket past which the connection stops reading and queueing DATA. */
  maxOutputBytes: number;
  /** Bytes of DATA waiting for the peer's flow-control windows past which new streams are refused. */
  maxPendingBytes: number;
  /** Buffered output or pending DATA that does not move for this long closes the connection (ms). */
  writeStallTimeoutMs: number;
}

/** The defaults: what a service gets when nothing is set (services/README.md, "HTTP/2 defences"). */
export const DEFAULT_HTTP2_LIMITS: Readonly<Http2Limits> = {
  maxConcurrentStreams: 1000,
  maxConnections: 1024,
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: 300_000,
  abuseWindowMs: 10_000,
  maxResetsPerWindow: 1000,
  maxOverheadFramesPerWindow: 1000,
  maxQueuedControlFrames: 10_000,
  maxOutputBytes: 1024 * 1024,
  maxPendingBytes: 16 * 1024 * 1024,
  writeStallTimeoutMs: 30_000,
};

/** No limits at all: what a client connection (the kit's own client, to the services it trusts) runs with. */
export const NO_HTTP2_LIMITS: Readonly<Http2Limits> = {
  maxConcurrentStreams: 1000,
  maxConnections: Infinity,
  handshakeTimeoutMs: 0,
  idleTimeoutMs: 0,
  abuseWindowMs: 0,
  maxResetsPerWindow: Infinity,
  maxOverheadFramesPerWindow: Infinity,
  maxQueuedControlFrames: Infinity,
  maxOutputBytes: Infinity,
  maxPendingBytes: Infinity,
  writeStallTimeoutMs: 0,
};

/** Why a connection was closed by a limit: the `reason` label of `http2_connections_closed_total`. */
export type Http2LimitReason =
  | "resets"
  | "overhead_frames"
  | "control_frame_flood"
  | "slow_reader"
  | "flow_control_stall"
  | "pending_data"
  | "handshake_timeout"
  | "idle_timeout"
  | "max_connections";

/** Reads the `H2_*` variables (defaults above); problems are collected by the reader like any other. */
export function readHttp2Limits(read: EnvReader): Http2Limits {
  const d = DEFAULT_HTTP2_LIMITS;
  return {
    maxConcurrentStreams: read.integer("H2_MAX_CONCURRENT_STREAMS", d.maxConcurrentStreams, 1, 100_000),
    maxConnections: read.integer("H2_MAX_CONNECTIONS", d.maxConnections, 1, 1_000_000),
    handshakeTimeoutMs: read.integer("H2_HANDSHAKE_TIMEOUT_MS", d.handshakeTimeoutMs, 100, 600_000),
    idleTimeoutMs: read.integer("H2_IDLE_TIMEOUT_MS", d.idleTimeoutMs, 0, 86_400_000),
    abuseWindowMs: read.integer("H2_ABUSE_WINDOW_MS", d.abuseWindowMs, 100, 3_600_000),
    maxResetsPerWindow: read.integer("H2_MAX_RESETS", d.maxResetsPerWindow, 1, 100_000_000),
    maxOverheadFramesPerWindow: read.integer(
      "H2_MAX_OVERHEAD_FRAMES",
      d.maxOverheadFramesPerWindow,
      1,
      100_000_000,
    ),
    maxQueuedControlFrames: read.integer(
      "H2_MAX_QUEUED_CONTROL_FRAMES",
      d.maxQueuedControlFrames,
      16,
      10_000_000,
    ),
    maxOutputBytes: read.integer("H2_MAX_OUTPUT_BYTES", d.maxOutputBytes, 64 * 1024, 1024 * 1024 * 1024),
    maxPendingBytes: read.integer("H2_MAX_PENDING_BYTES", d.maxPendingBytes, 64 * 1024, 1024 * 1024 * 1024),
    writeStallTimeoutMs: read.integer("H2_WRITE_STALL_TIMEOUT_MS", d.writeStallTimeoutMs, 100, 3_600_000),
  };
}
