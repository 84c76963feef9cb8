/**
 * What limits.ts asks to be checked over time rather than as frames arrive: the window in which resets and
 * overhead frames are counted rolls over, and a connection is closed when its handshake takes too long, when
 * what it has to send does not move (a slow reader, flow control held shut), or when it has been idle.
 *
 * One timer for every connection with limits (a connection without them is never watched), at TICK_MS: the
 * resolution of every timeout. The timer does not keep the process alive.
 */
import { ErrorCode } from "./frames.ts";
import { outputBytes, writeSettings } from "./outbound.ts";
import { fail, goAway } from "./shutdown.ts";
import type { ConnectionState } from "./state.ts";

/** How often the timeouts and windows of connections are checked (their resolution). */
const TICK_MS = 250;
/** What must move in writeStallTimeoutMs for buffered output or pending DATA not to count as stalled. */
const STALL_PROGRESS_BYTES = 16 * 1024;

const watched = new Set<ConnectionState>();
let tickTimer: ReturnType<typeof setInterval> | undefined;

function runTicks(): void {
  const now = performance.now();
  for (const c of watched) tick(c, now);
}

/** The connection's limits are checked every TICK_MS from now on, until `unwatch`. */
export function watch(c: ConnectionState): void {
  watched.add(c);
  if (tickTimer === undefined) {
    const timer = setInterval(runTicks, TICK_MS);
    Deno.unrefTimer(timer);
    tickTimer = timer;
  }
}

/** The connection is closed: no more checks (and no timer once no connection is left). */
export function unwatch(c: ConnectionState): void {
  watched.delete(c);
  if (watched.size === 0 && tickTimer !== undefined) {
    clearInterval(tickTimer);
    tickTimer = undefined;
  }
}

/** The checks of one connection, in order; each that closes the connection ends the tick. */
function tick(c: ConnectionState, now: number): void {
  if (c.isClosed || c.readingStopped) return;
  if (closedForOverhead(c)) return;
  if (now - c.windowStart >= c.limits.abuseWindowMs) {
    c.windowStart = now;
    c.resetsInWindow = 0;
    c.overheadInWindow = 0;
  }
  if (!c.prefaceSeen || !c.peerSettingsSeen || !c.settingsAcked) return checkHandshakeTimeout(c, now);
  if (c.limits.writeStallTimeoutMs > 0 && (closedForStalledOutput(c, now) || closedForStalledData(c, now))) {
    return;
  }
  checkIdleTimeout(c, now);
}

/**
 * Overhead frames counted outside a frame's handler (DATA frames of a few bytes that `pump` sent when a write
 * freed room) are checked here. Returns true when it closed the connection.
 */
function closedForOverhead(c: ConnectionState): boolean {
  if (c.overheadInWindow > c.limits.maxOverheadFramesPerWindow) {
    fail(
      c,
      ErrorCode.ENHANCE_YOUR_CALM,
      `more than ${c.limits.maxOverheadFramesPerWindow} frames without a request in ${c.limits.abuseWindowMs} ms`,
      "overhead_frames",
    );
    return true;
  }
  return false;
}

/** The preface, the peer's SETTINGS and its acknowledgement of ours must come within handshakeTimeoutMs. */
function checkHandshakeTimeout(c: ConnectionState, now: number): void {
  if (c.limits.handshakeTimeoutMs > 0 && now - c.createdAt >= c.limits.handshakeTimeoutMs) {
    if (!c.prefaceSeen) writeSettings(c); // a server's first frame is its SETTINGS
    fail(
      c,
      ErrorCode.SETTINGS_TIMEOUT,
      `no HTTP/2 handshake (preface, SETTINGS and the acknowledgement of ours) in ${c.limits.handshakeTimeoutMs} ms`,
      "handshake_timeout",
    );
  }
}

/** A slow reader: output the socket does not take. Returns true when it closed the connection. */
function closedForStalledOutput(c: ConnectionState, now: number): boolean {
  if (outputBytes(c) === 0 || c.bytesWritten - c.outputStallBase >= STALL_PROGRESS_BYTES) {
    c.outputStallSince = now;
    c.outputStallBase = c.bytesWritten;
  } else if (now - c.outputStallSince >= c.limits.writeStallTimeoutMs) {
    fail(
      c,
      ErrorCode.ENHANCE_YOUR_CALM,
      `the peer took less than ${STALL_PROGRESS_BYTES} bytes of its ${
        outputBytes(c)
      } in ${c.limits.writeStallTimeoutMs} ms`,
      "slow_reader",
    );
    return true;
  }
  return false;
}

/** Flow control held shut: DATA the peer's windows do not let out. Returns true when it closed the connection. */
function closedForStalledData(c: ConnectionState, now: number): boolean {
  if (c.pendingTotal === 0 || c.dataBytesSent - c.pendingStallBase >= STALL_PROGRESS_BYTES) {
    c.pendingStallSince = now;
    c.pendingStallBase = c.dataBytesSent;
  } else if (now - c.pendingStallSince >= c.limits.writeStallTimeoutMs) {
    fail(
      c,
      ErrorCode.ENHANCE_YOUR_CALM,
      `flow-control windows let less than ${STALL_PROGRESS_BYTES} bytes of ${c.pendingTotal} leave in ${c.limits.writeStallTimeoutMs} ms`,
      "flow_control_stall",
    );
    return true;
  }
  return false;
}

/** A server connection without a stream (open, or opened since the last tick) for idleTimeoutMs: GOAWAY. */
function checkIdleTimeout(c: ConnectionState, now: number): void {
  if (!(c.limits.idleTimeoutMs > 0 && c.isServer && !c.closing)) return;
  if (c.streams.size > 0 || c.lastPeerStreamId !== c.idleSeenStreamId) {
    c.idleSince = now;
    c.idleSeenStreamId = c.lastPeerStreamId;
  } else if (now - c.idleSince >= c.limits.idleTimeoutMs) {
    c.logger.debug("http2: closing an idle connection", { connection: c.label });
    c.observer?.closed("idle_timeout", `no stream for ${c.limits.idleTimeoutMs} ms`);
    goAway(c);
  }
}
