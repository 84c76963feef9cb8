/**
 * What the defences of limits.ts count as frames arrive: resets (rapid reset), overhead frames (empty frames,
 * dribbles, floods of SETTINGS or PRIORITY) and the answers owed to a peer that does not read (control frame
 * floods). Each count is a field of the connection, bumped where the frame is handled; going over a limit
 * throws a ConnectionError (ENHANCE_YOUR_CALM) that the read loop turns into GOAWAY. The windows they are
 * counted in roll over, and the timeouts are checked, in timeouts.ts.
 *
 * Without limits (the kit's client) every limit is Infinity: the counts go on, nothing is ever over.
 */
import type { Logger } from "@tailwatch/runtime";
import { ErrorCode } from "./frames.ts";
import type { Http2LimitReason } from "./limits.ts";
import { ConnectionError, type ConnectionState } from "./state.ts";

/** A frame that carries less than this without ending its part (a fragment, a window) is an overhead frame. */
export const SMALL_FRAME_BYTES = 1024;

/** A reset the peer caused (its RST_STREAM, or our RST_STREAM for its error); too many in a window: error. */
export function countReset(c: ConnectionState): void {
  if (++c.resetsInWindow > c.limits.maxResetsPerWindow) {
    throw new ConnectionError(
      ErrorCode.ENHANCE_YOUR_CALM,
      `more than ${c.limits.maxResetsPerWindow} streams reset in ${c.limits.abuseWindowMs} ms`,
      "resets",
    );
  }
}

/** A frame that costs work but carries no request (limits.ts lists them). */
export function countOverhead(c: ConnectionState, what: string): void {
  c.overheadInWindow++;
  checkOverhead(c, what);
}

/** Whether the overhead frames of the window went over the limit (also those `pump` counted). */
export function checkOverhead(c: ConnectionState, what: string): void {
  if (c.overheadInWindow > c.limits.maxOverheadFramesPerWindow) {
    throw new ConnectionError(
      ErrorCode.ENHANCE_YOUR_CALM,
      `more than ${c.limits.maxOverheadFramesPerWindow} frames without a request (${what}) in ${c.limits.abuseWindowMs} ms`,
      "overhead_frames",
    );
  }
}

/** An answer the peer's frame asks for (ACK, RST_STREAM) is about to be queued. */
export function controlFrameQueued(c: ConnectionState): void {
  if (++c.queuedControl + c.writingControl > c.limits.maxQueuedControlFrames) {
    throw new ConnectionError(
      ErrorCode.ENHANCE_YOUR_CALM,
      `more than ${c.limits.maxQueuedControlFrames} control frames queued for a peer that does not read them`,
      "control_frame_flood",
    );
  }
}

/** When each limit was last logged as a warning: at most once per 10 s each, the rest at debug level. */
const limitLoggedAt = new Map<Http2LimitReason, number>();

/** Logs a connection closed for a limit: a warning, unless the same limit was logged in the last 10 s. */
export function logLimit(logger: Logger, limit: Http2LimitReason, fields: Record<string, unknown>): void {
  const now = performance.now();
  if (now - (limitLoggedAt.get(limit) ?? -Infinity) < 10_000) {
    logger.debug("http2: closing a connection over a limit", fields);
    return;
  }
  limitLoggedAt.set(limit, now);
  logger.warn("http2: closing a connection over a limit (each counted in /metrics)", fields);
}
