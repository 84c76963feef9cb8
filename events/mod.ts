export { buildFrame, eventIdOf, splitFrame } from "./batch.ts";
export { encodeRequestEventView, type RequestEventFields } from "./codec.ts";
export { LOAD_RUN_HEADER, loadRunIdOf } from "./load_run.ts";
export {
  decodeEvent,
  type DecodeResult,
  INSERT_COLUMNS,
  type PoisonReason,
  REQUEST_EVENT_COLUMNS,
  type RequestEventRow,
  ROW_FORMAT,
} from "./row.ts";
export {
  BatchRanges,
  EventScanner,
  SCANNED_FIELDS,
  type ScannedField,
  SLOT_ERROR_MESSAGE,
  SLOT_LOAD_RUN_ID,
  SLOT_METHOD,
  SLOT_ROUTE,
  SLOT_SERVICE,
  SLOT_TRACE_ID,
  splitBatch,
  STRING_FIELDS,
  UUID_BYTE_OF_PAIR,
  writeUuid,
} from "./scanner.ts";
export {
  BATCH_EVENT_TAG,
  DEAD_LETTER_SUBJECT_PREFIX,
  DEFAULT_REQUEST_EVENTS_STREAM,
  EVENT_COUNT_HEADER,
  eventsOfMessage,
  MAX_EVENT_PARTITIONS,
  partitionFilterSubjects,
  REQUEST_EVENTS_STREAM,
  REQUEST_EVENTS_SUBJECTS,
  requestEventsStreamConfig,
  type RequestEventsStreamNeeds,
  requestEventsStreamProblems,
  type RequestEventsStreamSettings,
  requestEventSubject,
  type StreamConfigLike,
  subjectCovers,
  subjectMatches,
  subjectsOverlap,
  UNPARTITIONED_EVENT_SUBJECTS,
} from "./stream.ts";
