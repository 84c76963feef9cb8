/**
 * The connection's control frames: the peer's SETTINGS (applied to what we send, then acknowledged), PING
 * (answered; and ours, to learn whether the peer is still there), and PRIORITY (checked, then ignored, as
 * RFC 9113 allows). Every answer we owe counts against the control frame flood limit; SETTINGS and PRIORITY
 * count as overhead frames (defences.ts).
 */
import { checkOverhead, controlFrameQueued, countOverhead } from "./defences.ts";
import { changePeerInitialWindow, pump } from "./flow.ts";
import {
  DEFAULT_MAX_FRAME_SIZE,
  ErrorCode,
  Flag,
  FrameType,
  MAX_FRAME_SIZE_LIMIT,
  Setting,
} from "./frames.ts";
import { frameHeader, writePing, writePingAck } from "./outbound.ts";
import { read31, read32 } from "./reader.ts";
import { ConnectionError, type ConnectionState } from "./state.ts";
import { streamError } from "./streams.ts";

/** SETTINGS: an ACK of ours ends our half of the handshake; the peer's are applied, then acknowledged. */
export function onSettings(
  c: ConnectionState,
  flags: number,
  streamId: number,
  buf: Uint8Array,
  start: number,
  length: number,
): void {
  if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream");
  if (flags & Flag.ACK) {
    if (length !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload");
    c.settingsAcked = true;
    return;
  }
  if (length % 6 !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of a bad size");
  countOverhead(c, "SETTINGS");
  controlFrameQueued(c);
  let windowGrew = false;
  for (let at = start; at < start + length; at += 6) {
    if (applySetting(c, (buf[at] << 8) | buf[at + 1], read32(buf, at + 2))) windowGrew = true;
  }
  frameHeader(c, 0, FrameType.SETTINGS, Flag.ACK, 0);
  if (windowGrew) {
    for (const stream of [...c.streams.values()]) pump(c, stream);
    checkOverhead(c, "DATA frames under 1 KiB, as far as the peer's windows let them");
  }
}

/** One of the peer's settings; returns whether the streams' send windows grew. */
function applySetting(c: ConnectionState, id: number, value: number): boolean {
  switch (id) {
    case Setting.HEADER_TABLE_SIZE:
      c.encoder.setMaxTableSize(value);
      return false;
    case Setting.ENABLE_PUSH:
      if (value > 1 || (!c.isServer && value === 1)) {
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `bad SETTINGS_ENABLE_PUSH ${value}`);
      }
      return false;
    case Setting.MAX_CONCURRENT_STREAMS:
      c.peerMaxConcurrentStreams = value;
      return false;
    case Setting.INITIAL_WINDOW_SIZE:
      return changePeerInitialWindow(c, value);
    case Setting.MAX_FRAME_SIZE:
      if (value < DEFAULT_MAX_FRAME_SIZE || value > MAX_FRAME_SIZE_LIMIT) {
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `bad SETTINGS_MAX_FRAME_SIZE ${value}`);
      }
      c.peerMaxFrameSize = value;
      return false;
    default:
      return false; // SETTINGS_MAX_HEADER_LIST_SIZE is advisory; unknown settings are ignored
  }
}

/** PING: answered with its payload (an ACK, to ours, needs nothing: any frame counts for `ping`). */
export function onPing(
  c: ConnectionState,
  flags: number,
  streamId: number,
  buf: Uint8Array,
  start: number,
  length: number,
): void {
  if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "PING on a stream");
  if (length !== 8) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PING of a bad size");
  if (!(flags & Flag.ACK)) {
    controlFrameQueued(c);
    writePingAck(c, buf, start);
  }
}

/** PRIORITY: parsed for its errors, otherwise ignored; an overhead frame. */
export function onPriority(
  c: ConnectionState,
  streamId: number,
  buf: Uint8Array,
  start: number,
  length: number,
): void {
  countOverhead(c, "PRIORITY");
  if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0");
  if (length !== 5) return streamError(c, streamId, ErrorCode.FRAME_SIZE_ERROR, "PRIORITY of a bad size");
  if (read31(buf, start) === streamId) {
    return streamError(c, streamId, ErrorCode.PROTOCOL_ERROR, "a stream depends on itself");
  }
}

/**
 * Whether the peer still answers: our PING, then true if its ACK (or any frame) arrives within `timeoutMs`.
 * A connection whose peer vanished without closing it (host gone, network cut) only learns so this way.
 */
export async function ping(c: ConnectionState, timeoutMs: number): Promise<boolean> {
  if (c.isClosed) return false;
  const before = c.framesReceived;
  writePing(c);
  const deadline = Date.now() + timeoutMs;
  while (c.framesReceived === before && !c.isClosed && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, Math.min(20, timeoutMs)));
  }
  return c.framesReceived !== before && !c.isClosed;
}
