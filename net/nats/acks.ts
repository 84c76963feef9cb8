/**
 * The event sink's acks: which messages await JetStream's answer (by the token of their reply subject), and
 * what an answer says.
 */
import type { QueuedMessage } from "./outbox.ts";
import type { WireMessage } from "./protocol.ts";

/** A message written and awaiting its ack on `<inbox>.<token>`. */
interface Awaited {
  message: QueuedMessage;
  sentAt: number;
}

/**
 * Messages written and awaiting their acks, by token, in the order sent. Promises: tokens are never reused;
 * a message is taken once (by its ack, its timeout or a requeue), so a later answer to its token finds
 * nothing; `events` is the events of the messages awaited.
 */
export class AckTracker {
  readonly #awaiting = new Map<number, Awaited>();
  #nextToken = 0;
  /** Events in the messages awaited. */
  events = 0;

  /** Records a message about to be written at `sentAt`; returns the token its reply subject ends with. */
  track(message: QueuedMessage, sentAt: number): number {
    const token = this.#nextToken++;
    this.#awaiting.set(token, { message, sentAt });
    this.events += message.count;
    return token;
  }

  /** The message awaiting the ack of `token`, taken; undefined when none is (unknown, or taken already). */
  take(token: number): QueuedMessage | undefined {
    const entry = this.#awaiting.get(token);
    if (entry === undefined) return undefined;
    this.#awaiting.delete(token);
    this.events -= entry.message.count;
    return entry.message;
  }

  /** Takes the messages sent at or before `cutoff` (epoch ms), oldest first. */
  takeSentBy(cutoff: number): QueuedMessage[] {
    const expired: QueuedMessage[] = [];
    for (const [token, entry] of this.#awaiting) {
      // Map order is publish order: stop at the first message still within its timeout.
      if (entry.sentAt > cutoff) break;
      expired.push(this.take(token)!);
    }
    return expired;
  }

  /** Takes every message awaited, in the order sent. */
  takeAll(): QueuedMessage[] {
    const messages = [...this.#awaiting.values()].map((entry) => entry.message);
    this.#awaiting.clear();
    this.events = 0;
    return messages;
  }
}

/**
 * What JetStream's answer to a publish says: "stored" ({"stream":..,"seq":..}), "duplicate" (stored before:
 * `"duplicate": true`), "in_process" (the error "duplicate message id is in process": a copy sent again while
 * the server still stores the first), or "refused" (anything else: an error object such as a full stream, a
 * 503 "no responders" status as an HMSG with an empty body).
 */
export type AckOutcome = "stored" | "duplicate" | "in_process" | "refused";

/** Reads an answer in place (nothing decoded, nothing allocated): see `AckOutcome`. */
export function ackOutcome(message: WireMessage): AckOutcome {
  const { buf, headerEnd, end } = message;
  const isStatus = headerEnd > message.payloadStart;
  if (!isStatus && contains(buf, headerEnd, end, SEQ_KEY) && !contains(buf, headerEnd, end, ERROR_KEY)) {
    return isTrue(buf, headerEnd, end, DUPLICATE_KEY) ? "duplicate" : "stored";
  }
  return contains(buf, headerEnd, end, IN_PROCESS_CODE) ? "in_process" : "refused";
}

const SPACE = 0x20;
const COLON = 0x3a;
const textEncoder = new TextEncoder();
const SEQ_KEY = textEncoder.encode(`"seq"`);
const ERROR_KEY = textEncoder.encode(`"error"`);
const DUPLICATE_KEY = textEncoder.encode(`"duplicate"`);
/** JetStream's err_code for "duplicate message id is in process" (JSStreamDuplicateMessageConflict). */
const IN_PROCESS_CODE = textEncoder.encode(`"err_code":10158`);

/** Whether the JSON in buf[start, end) has `key` set to true (nats-server writes `"duplicate": true`). */
function isTrue(buf: Uint8Array, start: number, end: number, key: Uint8Array): boolean {
  const at = indexOf(buf, start, end, key);
  if (at < 0) return false;
  let i = at + key.length;
  while (i < end && (buf[i] === SPACE || buf[i] === COLON)) i++;
  return buf[i] === 0x74; // t
}

/** Whether buf[start, end) contains `pattern`. */
function contains(buf: Uint8Array, start: number, end: number, pattern: Uint8Array): boolean {
  return indexOf(buf, start, end, pattern) >= 0;
}

/** Where `pattern` first occurs in buf[start, end), or -1. */
function indexOf(buf: Uint8Array, start: number, end: number, pattern: Uint8Array): number {
  const first = pattern[0];
  outer: for (let i = start; i <= end - pattern.length; i++) {
    if (buf[i] !== first) continue;
    for (let j = 1; j < pattern.length; j++) if (buf[i + j] !== pattern[j]) continue outer;
    return i;
  }
  return -1;
}
