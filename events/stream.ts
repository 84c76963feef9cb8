/**
 * The event stream's contract: stream REQUEST_EVENTS, subjects events.requests.<service> (one ingest worker) or
 * events.requests.<service>.<partition> (one ingest worker per partition), its configuration and the check of it.
 *
 * The stream is configuration applied by one explicit step (`applyRequestEventsStream`: deploy/setup.ts, which
 * compose's one-shot and the k8s Job run, `./dev up`, and the tests), never by the processes that use it: a
 * service or ingest that (re)applied its own idea of the stream on start would undo what the operator set
 * (three replicas, partitioned subjects, limits). The processes only check it (`requestEventsStreamProblems`)
 * and wait, not ready, while it is missing or does not fit what they do.
 */
import { DiscardPolicy, RetentionPolicy, StorageType, type StreamConfig } from "@nats-io/jetstream";
import { fromBinary } from "@bufbuild/protobuf";
import { type RequestEvent, RequestEventBatchSchema, RequestEventSchema } from "@tailwatch/proto/events/v1";

export const REQUEST_EVENTS_STREAM = "REQUEST_EVENTS";
/**
 * The stream's subjects: every service's events, unpartitioned (`events.requests.<service>`) or partitioned
 * (`events.requests.<service>.<partition>`). Until 2026-12 the stream took `events.requests.*` only; the setup
 * step widens an existing stream to this (a superset: nothing it holds changes).
 */
export const REQUEST_EVENTS_SUBJECTS = "events.requests.>";
/** The unpartitioned subjects, `events.requests.<service>` (EVENT_PARTITIONS=1, and every message before 2026-12). */
export const UNPARTITIONED_EVENT_SUBJECTS = "events.requests.*";
/** The most partitions a deployment may split its events into (EVENT_PARTITIONS, INGEST_PARTITIONS). */
export const MAX_EVENT_PARTITIONS = 1024;
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

/**
 * The subject a service's events are published on: `events.requests.<service>`, or with a partition (0, 1, ...)
 * `events.requests.<service>.<partition>`, which ingest worker `<partition>` reads (`partitionFilterSubjects`).
 */
export function requestEventSubject(service: string, partition?: number): string {
  return partition === undefined ? `events.requests.${service}` : `events.requests.${service}.${partition}`;
}

/**
 * The subjects ingest worker `partition` of `partitions` consumes (its durable's filters): with one partition,
 * every event (`events.requests.>`); otherwise `events.requests.*.<partition>`, and partition 0 also the
 * unpartitioned `events.requests.*`: messages stored before the stream was partitioned, and those of a publisher
 * left at EVENT_PARTITIONS=1, are read too. Every event subject a publisher with at most `partitions`
 * partitions uses is read by exactly one worker, so every stream sequence has exactly one writer.
 */
export function partitionFilterSubjects(partition: number, partitions: number): string[] {
  if (partitions <= 1) return [REQUEST_EVENTS_SUBJECTS];
  const own = `events.requests.*.${partition}`;
  return partition === 0 ? [UNPARTITIONED_EVENT_SUBJECTS, own] : [own];
}

/** The stream's settings: what the setup step applies (deploy/setup.ts reads them from STREAM_*). */
export interface RequestEventsStreamSettings {
  /** Replicas (1 on one node; 3 on a 3-node cluster). */
  replicas: number;
  /** Subjects the stream stores. */
  subjects: string[];
  /** How long events are kept, in seconds. */
  maxAgeS: number;
  /** How many bytes are kept; the oldest events go first. */
  maxBytes: number;
  /** Window in which a repeated Nats-Msg-Id is dropped as a duplicate, in seconds. */
  duplicateWindowS: number;
}

/** One replica, `events.requests.>`, 7 days or 10 GiB, a 10-minute duplicate window. */
export const DEFAULT_REQUEST_EVENTS_STREAM: Readonly<RequestEventsStreamSettings> = Object.freeze({
  replicas: 1,
  subjects: [REQUEST_EVENTS_SUBJECTS],
  maxAgeS: 7 * 24 * 3600,
  maxBytes: 10 * 1024 ** 3,
  duplicateWindowS: 600,
});

const NANOS_PER_SECOND = 1_000_000_000;

/** The stream's configuration: file storage, limits retention, oldest discarded first, dedup by Nats-Msg-Id. */
export function requestEventsStreamConfig(
  settings: RequestEventsStreamSettings,
): Partial<StreamConfig> & { name: string } {
  return {
    name: REQUEST_EVENTS_STREAM,
    subjects: settings.subjects,
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_age: settings.maxAgeS * NANOS_PER_SECOND,
    max_bytes: settings.maxBytes,
    duplicate_window: settings.duplicateWindowS * NANOS_PER_SECOND,
    num_replicas: settings.replicas,
  };
}

/** What a process needs of the stream, for `requestEventsStreamProblems`. */
export interface RequestEventsStreamNeeds {
  /** A subject this process publishes to: some stream subject must match it. */
  publishSubject?: string;
  /** Subjects this process publishes to (its partitions): some stream subject must match each. */
  publishSubjects?: readonly string[];
  /** A consumer filter this process reads: every subject it matches must be stored. */
  consumeSubject?: string;
  /** Consumer filters this process reads (a partition's): every subject each matches must be stored. */
  consumeSubjects?: readonly string[];
  /**
   * The shortest duplicate window that covers this process's retries, in ms: a publisher's retry of a message
   * that was stored after all is dropped by the stream only within the window.
   */
  minDuplicateWindowMs?: number;
  /**
   * True when the stream must keep messages after they are acked (limits retention): ingest's rebuild replays
   * the stream from its start, and several durables read it.
   */
  keepsAcked?: boolean;
}

/** The part of a stream's configuration the check reads (a StreamInfo's `config`, or the JSON of one). */
export type StreamConfigLike = Partial<
  Pick<StreamConfig, "subjects" | "storage" | "retention" | "duplicate_window" | "no_ack" | "sealed">
>;

/**
 * Why the stream does not fit `needs` (empty when it does): each problem says what is wrong and what the setup
 * step must change. `config` undefined: the stream does not exist.
 */
export function requestEventsStreamProblems(
  config: StreamConfigLike | undefined,
  needs: RequestEventsStreamNeeds,
): string[] {
  if (config === undefined) {
    return [
      `stream ${REQUEST_EVENTS_STREAM} does not exist: the setup step creates it (deploy/setup.ts; ./dev up runs it)`,
    ];
  }
  const problems: string[] = [];
  const subjects = config.subjects ?? [];
  const shown = JSON.stringify(subjects);
  const published = [
    ...(needs.publishSubject === undefined ? [] : [needs.publishSubject]),
    ...(needs.publishSubjects ?? []),
  ].filter((subject) => !subjects.some((s) => subjectMatches(s, subject)));
  if (published.length > 0) {
    const named = published.length > 4 ? `${published.slice(0, 3).join(", ")}, ...` : published.join(", ");
    problems.push(`its subjects ${shown} do not take ${named}, where this service publishes`);
  }
  const consumed = [
    ...(needs.consumeSubject === undefined ? [] : [needs.consumeSubject]),
    ...(needs.consumeSubjects ?? []),
  ].filter((filter) => !subjects.some((s) => subjectCovers(s, filter)));
  if (consumed.length > 0) {
    problems.push(`its subjects ${shown} do not cover ${consumed.join(", ")}, which this worker consumes`);
  }
  if (config.storage !== undefined && config.storage !== StorageType.File) {
    problems.push(`storage is ${config.storage}: events must survive a NATS restart (file storage)`);
  }
  if (config.no_ack === true) problems.push("no_ack is set: publishes would never be acknowledged");
  if (config.sealed === true) problems.push("it is sealed: nothing more can be stored");
  if (needs.keepsAcked && config.retention !== undefined && config.retention !== RetentionPolicy.Limits) {
    problems.push(`retention is ${config.retention}: the stream must keep acked events (limits retention)`);
  }
  if (needs.minDuplicateWindowMs !== undefined) {
    const windowMs = (config.duplicate_window ?? 0) / 1_000_000;
    if (windowMs < needs.minDuplicateWindowMs) {
      problems.push(
        `its duplicate window is ${windowMs / 1000} s, shorter than the ${
          needs.minDuplicateWindowMs / 1000
        } s a retried publish needs to be dropped as a duplicate`,
      );
    }
  }
  return problems.map((problem) => `stream ${REQUEST_EVENTS_STREAM}: ${problem}`);
}

/** Whether some subject matches both patterns (`events.requests.*.1` and `events.requests.orders.>` do). */
export function subjectsOverlap(a: string, b: string): boolean {
  const x = a.split(".");
  const y = b.split(".");
  for (let i = 0;; i++) {
    if (i >= x.length || i >= y.length) return x.length === y.length;
    if (x[i] === ">" || y[i] === ">") return true;
    if (x[i] !== "*" && y[i] !== "*" && x[i] !== y[i]) return false;
  }
}

/** Whether NATS subject pattern `pattern` (with `*` and `>`) matches the literal subject `subject`. */
export function subjectMatches(pattern: string, subject: string): boolean {
  return subjectCovers(pattern, subject);
}

/**
 * Whether every subject that `filter` (a pattern) matches is matched by `pattern`: `events.requests.*` covers
 * `events.requests.catalog` and itself; `events.requests.>` covers `events.requests.*`; not the other way round.
 */
export function subjectCovers(pattern: string, filter: string): boolean {
  const p = pattern.split(".");
  const f = filter.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return i < f.length;
    if (i >= f.length) return false;
    if (f[i] === ">") return false;
    if (p[i] === "*") continue;
    if (f[i] === "*" || p[i] !== f[i]) return false;
  }
  return p.length === f.length;
}
