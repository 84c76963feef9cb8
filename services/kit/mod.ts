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
export { type EventSink, type RequestEvent, type RequestEventInit } from "./events.ts";
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
  createNatsWire,
  MAX_WIRE_PAYLOAD,
  type NatsServerAddress,
  type NatsWire,
  type NatsWireOptions,
  parseNatsUrl,
  type ProtocolHandlers,
  ProtocolReader,
  type WireMessage,
} from "./nats_wire.ts";
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
  BATCH_EVENT_TAG,
  DEAD_LETTER_SUBJECT_PREFIX,
  ensureRequestEventsStream,
  EVENT_COUNT_HEADER,
  eventsOfMessage,
  REQUEST_EVENTS_STREAM,
  REQUEST_EVENTS_SUBJECTS,
  requestEventSubject,
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
