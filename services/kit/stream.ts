/**
 * The event stream's contract: stream REQUEST_EVENTS, subjects events.requests.<service>, and its creation.
 * Services and ingest both call `ensureRequestEventsStream`, so whichever starts first creates the stream.
 */
import { DiscardPolicy, jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { fromBinary } from "@bufbuild/protobuf";
import { type RequestEvent, RequestEventBatchSchema, RequestEventSchema } from "@tailwatch/proto/events/v1";

export const REQUEST_EVENTS_STREAM = "REQUEST_EVENTS";
export const REQUEST_EVENTS_SUBJECTS = "events.requests.*";
/** Where ingest puts events it cannot decode (outside the stream's subjects, so never re-ingested). */
export const DEAD_LETTER_SUBJECT_PREFIX = "events.deadletter";

/**
 * The header of a message that holds several events (an `events.v1.RequestEventBatch`): their number, at least
 * 2. A message without it holds one `RequestEvent`, with Nats-Msg-Id = its event id.
 */
export const EVENT_COUNT_HEADER = "Tailwatch-Events";

/** The first byte of each event in a RequestEventBatch: field 1 (`events`), length-delimited. */
export const BATCH_EVENT_TAG = (1 << 3) | 2;

/**
 * The events of one stream message, given its payload and its Tailwatch-Events header (undefined when absent).
 * Throws when the payload is not what the header says (undecodable, or another number of events).
 */
export function eventsOfMessage(data: Uint8Array, eventCountHeader: string | undefined): RequestEvent[] {
  if (eventCountHeader === undefined) return [fromBinary(RequestEventSchema, data)];
  const expected = Number(eventCountHeader);
  const { events } = fromBinary(RequestEventBatchSchema, data);
  if (!Number.isSafeInteger(expected) || events.length !== expected) {
    throw new Error(
      `${EVENT_COUNT_HEADER}: ${eventCountHeader}, but the message holds ${events.length} events`,
    );
  }
  return events;
}

/** The subject a service's events are published on. */
export function requestEventSubject(service: string): string {
  return `events.requests.${service}`;
}

/** Limits of the stream; every field has a default fit for a laptop or a small cluster. */
export interface RequestEventsStreamOptions {
  /** How long events are kept, in seconds. Default 7 days. */
  maxAgeSeconds?: number;
  /** How many bytes are kept; the oldest events go first. Default 10 GiB. */
  maxBytes?: number;
  /** Window in which a repeated Nats-Msg-Id is dropped as a duplicate, in seconds. Default 10 minutes. */
  duplicateWindowSeconds?: number;
}

const NANOS_PER_SECOND = 1_000_000_000;

/** Creates the stream, or updates its limits when it exists; safe to call from every process at start. */
export async function ensureRequestEventsStream(
  nc: NatsConnection,
  options: RequestEventsStreamOptions = {},
): Promise<void> {
  const jsm = await jetstreamManager(nc);
  const config = {
    name: REQUEST_EVENTS_STREAM,
    subjects: [REQUEST_EVENTS_SUBJECTS],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_age: (options.maxAgeSeconds ?? 7 * 24 * 3600) * NANOS_PER_SECOND,
    max_bytes: options.maxBytes ?? 10 * 1024 ** 3,
    duplicate_window: (options.duplicateWindowSeconds ?? 600) * NANOS_PER_SECOND,
    num_replicas: 1,
  };
  try {
    await jsm.streams.info(REQUEST_EVENTS_STREAM);
  } catch {
    try {
      await jsm.streams.add(config);
      return;
    } catch (error) {
      // Another process created it between our info and add; fall through to the update.
      if (!String(error).includes("already in use")) throw error;
    }
  }
  await jsm.streams.update(REQUEST_EVENTS_STREAM, config);
}
