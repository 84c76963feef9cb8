/**
 * Configuration from the environment, validated once at start into a typed object. Every problem is
 * reported at once, with the variable's name, so a bad deployment fails with one clear message.
 */
import { type Faults, parseFaults } from "./faults.ts";
import { createEnvReader, type Env, type EnvReader, type LogLevel } from "@tailwatch/runtime";
import { type Http2Limits, readHttp2Limits } from "@tailwatch/http2";
import { type NatsConfig, readNatsConfig } from "@tailwatch/nats";
import { MAX_EVENT_PARTITIONS } from "@tailwatch/events";

/** What every service process is configured with. */
export interface ServiceConfig {
  /** Service name, also the event subject suffix: "catalog", "orders" or "payments". */
  service: string;
  /** HOST: interface to listen on. Default "0.0.0.0". */
  host: string;
  /** GRPC_PORT: gRPC port; 0 picks a free one. Default per service (50051, 50052, 50053). */
  grpcPort: number;
  /** HTTP_PORT: REST shim, /metrics, /healthz, /readyz, /openapi.json; 0 picks a free one. Default 8081-8083. */
  httpPort: number;
  /**
   * NATS_URL (comma-separated `nats://` or `tls://` URLs; default "nats://127.0.0.1:4222"), NATS_USER and
   * NATS_PASSWORD or NATS_TOKEN (or credentials in the URL, once), NATS_INBOX_PREFIX (default `_INBOX_<user>`):
   * see nats_config.ts.
   */
  nats: NatsConfig;
  /** EVENTS_ENABLED: publish one event per request. Default true. */
  eventsEnabled: boolean;
  /** EVENT_BUFFER_CAPACITY: events held in memory while NATS is slow or down; past it they are dropped. Default 100000. */
  eventBufferCapacity: number;
  /** EVENT_PUBLISH_CONCURRENCY: events published and awaiting JetStream's ack at once. Default 4096. */
  eventPublishConcurrency: number;
  /**
   * EVENTS_PER_MESSAGE: events one JetStream message holds at most (1 to 4096). Default 256; 1 publishes every
   * event as a message of its own. Why: nats-server's CPU is per message (about 5 us each here, whatever the
   * storage), and one per event cost more of this machine than the 5 % events may take.
   */
  eventsPerMessage: number;
  /**
   * EVENT_PUBLISH_INTERVAL_MS: events emitted within this many milliseconds go to NATS in one socket write,
   * acknowledged by one ack (0: each at once). Default 20: nats-server's CPU per event falls as batches grow
   * (measured: about 17 us at 5 events a write, 10 at 50, 9 at 200), and 20 ms is nothing next to ingest's
   * batch wait.
   */
  eventPublishIntervalMs: number;
  /**
   * EVENT_PARTITIONS: partitions the events are spread over, one ingest worker each (1 to 1024). Default 1:
   * `events.requests.<service>`, read by one worker. N > 1: each message goes to `events.requests.<service>.<p>`,
   * p in 0..N-1, to the partition this process has given the fewest events (events.ts); keep it at most
   * ingest's INGEST_PARTITIONS (a partition no worker reads is never ingested: services/README.md).
   */
  eventPartitions: number;
  /** MAX_IN_FLIGHT: requests handled at once; past it requests are refused at once. Default 512. */
  maxInFlight: number;
  /** MAX_BODY_BYTES: largest request body or gRPC message accepted. Default 1048576 (1 MiB). */
  maxBodyBytes: number;
  /** ADMIN_TOKEN: bearer token for the admin service; empty disables it (every admin call is refused). */
  adminToken: string;
  /** SHUTDOWN_GRACE_MS: how long in-flight requests and the event flush get after SIGTERM. Default 10000. */
  shutdownGraceMs: number;
  /** FAULT_LATENCY, FAULT_ERROR_RATE, FAULT_ERROR_CODE: faults injected from the start (see faults.ts). */
  faults: Faults;
  /** INSTANCE_ID: names this process in events. Default "<service>-<hostname>-<pid>". */
  instanceId: string;
  /** LOG_LEVEL: debug, info, warn or error. Default info. */
  logLevel: LogLevel;
  /**
   * V8_WORKER_NICE: nice value (0-19) a service process gives at start to V8's background threads (JIT
   * compiler, GC helpers), so that request handling runs first when the CPUs are busy (thread_priority.ts
   * says why, with the measurement). 0 leaves them as they are. Default 19.
   */
  v8WorkerNice: number;
  /** H2_*: the gRPC port's HTTP/2 defences (http2/limits.ts has each variable, its default and why). */
  http2: Http2Limits;
}

export const DEFAULT_PORTS: Record<string, { grpc: number; http: number }> = {
  catalog: { grpc: 50051, http: 8081 },
  orders: { grpc: 50052, http: 8082 },
  payments: { grpc: 50053, http: 8083 },
};

/** Reads the common settings; `extend` reads a service's own with the same reader. */
export function loadServiceConfig<T extends object = Record<never, never>>(
  service: string,
  env: Env,
  extend?: (reader: EnvReader) => T,
): ServiceConfig & T {
  const read = createEnvReader(env);
  const ports = DEFAULT_PORTS[service] ?? { grpc: 50050, http: 8080 };
  let faults: Faults | undefined;
  try {
    faults = parseFaults(
      read.string("FAULT_LATENCY", "none"),
      read.string("FAULT_ERROR_RATE", "0"),
      read.string("FAULT_ERROR_CODE", "0"),
    );
  } catch (error) {
    read.problems.push((error as Error).message.replace(/^invalid faults: /, "FAULT_*: "));
  }
  let hostname = "localhost";
  try {
    hostname = Deno.hostname();
  } catch {
    // no permission to read the hostname: keep the default
  }
  const config = {
    service,
    host: read.string("HOST", "0.0.0.0"),
    grpcPort: read.integer("GRPC_PORT", ports.grpc, 0, 65535),
    httpPort: read.integer("HTTP_PORT", ports.http, 0, 65535),
    nats: readNatsConfig(read),
    eventsEnabled: read.boolean("EVENTS_ENABLED", true),
    eventBufferCapacity: read.integer("EVENT_BUFFER_CAPACITY", 100_000, 1, 10_000_000),
    eventPublishConcurrency: read.integer("EVENT_PUBLISH_CONCURRENCY", 4096, 1, 65_536),
    eventPublishIntervalMs: read.integer("EVENT_PUBLISH_INTERVAL_MS", 20, 0, 1000),
    eventsPerMessage: read.integer("EVENTS_PER_MESSAGE", 256, 1, 4096),
    eventPartitions: read.integer("EVENT_PARTITIONS", 1, 1, MAX_EVENT_PARTITIONS),
    maxInFlight: read.integer("MAX_IN_FLIGHT", 512, 1, 1_000_000),
    maxBodyBytes: read.integer("MAX_BODY_BYTES", 1024 * 1024, 1024, 64 * 1024 * 1024),
    adminToken: read.string("ADMIN_TOKEN", ""),
    shutdownGraceMs: read.integer("SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
    faults: faults as Faults,
    instanceId: read.string("INSTANCE_ID", `${service}-${hostname}-${Deno.pid}`),
    logLevel: read.oneOf("LOG_LEVEL", "info", ["debug", "info", "warn", "error"] as const),
    v8WorkerNice: read.integer("V8_WORKER_NICE", 19, 0, 19),
    http2: readHttp2Limits(read),
    ...(extend ? extend(read) : {} as T),
  };
  read.done();
  return config;
}
