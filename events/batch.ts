/**
 * Splitting a sealed event message that is larger than the server's max_payload (events.ts).
 *
 * The publisher seals messages to fit the max_payload of the server it knows (nats_wire.ts `maxPayload`), but a
 * message may have been sealed before the first INFO (events emitted while NATS was not reachable yet), or for
 * a server with a larger max_payload than the one it is connected to now. Such a message cannot be sent as it
 * is: nats-server answers `-ERR 'Maximum Payload Violation'` and closes the connection, and the publisher would
 * send it again after the reconnect, forever. So it is split here into messages that fit, each under the id of
 * its first event (the first piece keeps the message's own), as `seal` would have made them.
 *
 * A message that was never written cannot be in the stream, so its pieces are stored once each. One that was
 * written to a server that took it and was cut off before the ack came may have been stored: its first piece
 * is then dropped as a duplicate (same Nats-Msg-Id), the others are stored, and their events are in the stream
 * twice; ingest stores an event once by its id (ingest/README.md, "Exactly once"). This only happens when the
 * servers of one cluster differ in max_payload, or one is restarted with a smaller one.
 */
import { BATCH_EVENT_TAG, EVENT_COUNT_HEADER } from "./stream.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const LF = 0x0a;

/** A message as the publisher queues it: its whole HPUB frame (without a reply subject) and its events. */
export interface MessageFrame {
  frame: Uint8Array;
  count: number;
  /** Headers and body: what counts against max_payload. */
  payloadBytes: number;
}

/** Reads a varint at `at`; returns [value, next offset] or undefined past `end`. */
function readVarint(buf: Uint8Array, at: number, end: number): [number, number] | undefined {
  let value = 0;
  let shift = 0;
  while (at < end && shift < 35) {
    const byte = buf[at++];
    value += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) return [value, at];
    shift += 7;
  }
  return undefined;
}

/** The event id (field 1, a string) of an encoded RequestEvent, or "" when it has none. */
export function eventIdOf(event: Uint8Array): string {
  let at = 0;
  while (at < event.length) {
    const key = readVarint(event, at, event.length);
    if (key === undefined) return "";
    at = key[1];
    const field = Math.floor(key[0] / 8);
    const wire = key[0] & 7;
    if (wire === 0) {
      const skipped = readVarint(event, at, event.length);
      if (skipped === undefined) return "";
      at = skipped[1];
    } else if (wire === 2) {
      const length = readVarint(event, at, event.length);
      if (length === undefined) return "";
      if (field === 1) return decoder.decode(event.subarray(length[1], length[1] + length[0]));
      at = length[1] + length[0];
    } else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else return "";
  }
  return "";
}

/** The events (each as its encoded RequestEvent) of a RequestEventBatch body. */
function batchEvents(body: Uint8Array): Uint8Array[] {
  const events: Uint8Array[] = [];
  let at = 0;
  while (at < body.length) {
    if (body[at] !== BATCH_EVENT_TAG) throw new Error("events: a sealed message that is not a batch");
    const length = readVarint(body, at + 1, body.length);
    if (length === undefined || length[1] + length[0] > body.length) throw new Error("events: a cut message");
    events.push(body.subarray(length[1], length[1] + length[0]));
    at = length[1] + length[0];
  }
  return events;
}

/** The frame of a message of `events` (one: a plain RequestEvent; several: a batch with the count header). */
export function buildFrame(subject: string, events: Uint8Array[]): MessageFrame {
  const id = eventIdOf(events[0]);
  const headers = encoder.encode(
    `NATS/1.0\r\nNats-Msg-Id: ${id}\r\n${
      events.length > 1 ? `${EVENT_COUNT_HEADER}: ${events.length}\r\n` : ""
    }\r\n`,
  );
  let bodyBytes = 0;
  if (events.length === 1) bodyBytes = events[0].length;
  else for (const event of events) bodyBytes += 1 + varintLength(event.length) + event.length;
  const payloadBytes = headers.length + bodyBytes;
  const line = encoder.encode(`HPUB ${subject} ${headers.length} ${payloadBytes}\r\n`);
  const frame = new Uint8Array(line.length + payloadBytes + 2);
  frame.set(line);
  let at = line.length;
  frame.set(headers, at);
  at += headers.length;
  if (events.length === 1) {
    frame.set(events[0], at);
    at += events[0].length;
  } else {
    for (const event of events) {
      frame[at++] = BATCH_EVENT_TAG;
      for (let length = event.length;; length >>>= 7) {
        if (length < 0x80) {
          frame[at++] = length;
          break;
        }
        frame[at++] = (length & 0x7f) | 0x80;
      }
      frame.set(event, at);
      at += event.length;
    }
  }
  frame[at++] = 0x0d;
  frame[at] = LF;
  return { frame, count: events.length, payloadBytes };
}

function varintLength(n: number): number {
  let bytes = 1;
  while (n >= 0x80) {
    n >>>= 7;
    bytes++;
  }
  return bytes;
}

/**
 * Splits a sealed message (`frame`: `HPUB <subject> <header bytes> <total bytes>\r\n`, headers, body, CRLF)
 * into messages whose payload fits `maxPayload`, in order. A message of one event cannot be split: it comes
 * back as it is (the caller drops an event that does not fit any message). Pieces of one event that is too
 * large on its own are returned too, for the caller to drop and count.
 */
export function splitFrame(frame: Uint8Array, count: number, maxPayload: number): MessageFrame[] {
  const lineEnd = frame.indexOf(LF);
  const line = decoder.decode(frame.subarray(0, lineEnd)).trim().split(/\s+/);
  if (line[0] !== "HPUB" || line.length !== 4) throw new Error("events: not an HPUB frame");
  const [, subject, headerText, totalText] = line;
  const headerBytes = Number(headerText);
  const total = Number(totalText);
  const payloadStart = lineEnd + 1;
  const body = frame.subarray(payloadStart + headerBytes, payloadStart + total);
  const events = count === 1 ? [body] : batchEvents(body);
  if (events.length !== count) throw new Error("events: a sealed message with another number of events");
  if (count === 1) return [buildFrame(subject, events)];
  const pieces: MessageFrame[] = [];
  let group: Uint8Array[] = [];
  /** The room headers take at most (an id of up to 3 bytes a character, a 10-digit count). */
  const headerRoom = (first: Uint8Array) =>
    "NATS/1.0\r\nNats-Msg-Id: \r\n".length + 3 * eventIdOf(first).length + EVENT_COUNT_HEADER.length + 16 + 2;
  let groupBytes = 0;
  for (const event of events) {
    const need = 1 + varintLength(event.length) + event.length;
    if (group.length > 0 && headerRoom(group[0]) + groupBytes + need > maxPayload) {
      pieces.push(buildFrame(subject, group));
      group = [];
      groupBytes = 0;
    }
    group.push(event);
    groupBytes += need;
  }
  if (group.length > 0) pieces.push(buildFrame(subject, group));
  return pieces;
}
