export { Code, codeName, httpStatusFromCode, ServiceError } from "./errors.ts";
export {
  ConfigError,
  createEnvReader,
  DEFAULT_PORTS,
  type Env,
  type EnvReader,
  loadServiceConfig,
  type ServiceConfig,
} from "./config.ts";
export { type CallOptions, type ClientOptions, createClient, type ServiceClient } from "./client.ts";
export {
  createDisabledEventSink,
  createEventSink,
  type EventSink,
  type EventSinkOptions,
  type EventsReadiness,
  minDuplicateWindowMs,
  type RequestEvent,
  type RequestEventInit,
} from "./events.ts";
export { type Faults, parseFaults, sampleDelayMs, validateFaults } from "./faults.ts";
export {
  newSpanId,
  newTraceId,
  type SpanContext,
  spanFromTraceparent,
  traceparentOf,
  uuidv7,
} from "./ids.ts";
export { createLogger, type Logger } from "./log.ts";
export {
  createRegistry,
  type ProcessSample,
  registerProcessMetrics,
  type Registry,
  sampleProcess,
} from "./metrics.ts";
export {
  connectNats,
  defaultInboxPrefix,
  describeNats,
  guardNatsSocketErrors,
  type NatsAuth,
  type NatsConfig,
  natsConfig,
  natsJsOptions,
  readNatsConfig,
  wireServers,
} from "./nats_config.ts";
export {
  createNatsWire,
  MAX_WIRE_PAYLOAD,
  type NatsErrorKind,
  natsErrorKind,
  natsErrorText,
  type NatsServerAddress,
  type NatsWire,
  type NatsWireOptions,
  parseNatsUrl,
  type ProtocolHandlers,
  ProtocolReader,
  type WireMessage,
} from "./nats_wire.ts";
// NATS client completeness (issue 28, point 4): INFO, discovered servers, .creds.
export { DEFAULT_MAX_PAYLOAD, type NatsServerInfo, parseConnectUrl, serverKey } from "./nats_wire.ts";
export { type NatsCredentials, type NatsCredsFile, parseCredentials } from "./nkeys.ts";
export {
  bindService,
  type CallContext,
  LOAD_RUN_HEADER,
  loadRunIdOf,
  methodPath,
  type ServiceBinding,
  type ServiceHandlers,
} from "./pipeline.ts";
export {
  type RunningService,
  runServiceMain,
  SERVICE_DENO_FLAGS,
  type ServiceSetup,
  startService,
} from "./runtime.ts";
export { BoundedMap } from "./bounded_map.ts";
export { listProcessThreads, type ProcessThread, procStatFields } from "./thread_priority.ts";
export { bytesToLatin1, latin1ToBytes, PackedMessages } from "./packed_messages.ts";
export {
  applyRequestEventsStream,
  BATCH_EVENT_TAG,
  checkRequestEventsStream,
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
export {
  decodePageToken,
  encodePageToken,
  pageSize,
  requireCurrency,
  requireId,
  requireRange,
  requireText,
} from "./validate.ts";
