export { BoundedMap } from "./bounded_map.ts";
export { ConfigError, createEnvReader, type Env, type EnvReader } from "./env.ts";
export { SERVICE_DENO_FLAGS } from "./flags.ts";
export {
  newSpanId,
  newTraceId,
  type SpanContext,
  spanFromTraceparent,
  traceparentOf,
  uuidv7,
} from "./ids.ts";
export { createLogger, type Logger, type LogLevel } from "./log.ts";
export {
  createRegistry,
  type ProcessSample,
  PROMETHEUS_CONTENT_TYPE,
  registerProcessMetrics,
  type Registry,
  sampleProcess,
} from "./metrics.ts";
export {
  listProcessThreads,
  lowerV8WorkerPriority,
  type ProcessThread,
  procStatFields,
} from "./thread_priority.ts";
