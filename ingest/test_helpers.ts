/**
 * Helpers for ingest's tests and benchmark: RequestEvent builders, a JetStream publisher that sets
 * Nats-Msg-Id, a test configuration and `eventually`. Assertions and the seeded PRNG are @tailwatch/testing's.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { Protocol, type RequestEvent, RequestEventSchema } from "@tailwatch/proto/events/v1";
import { requestEventSubject } from "@tailwatch/kit";
import { AssertionError } from "@tailwatch/testing";
import { type IngestConfig, loadConfig } from "./config.ts";

const SERVICES = ["catalog", "orders", "payments"] as const;

/** A plausible RequestEvent; `i` varies the fields, `startTimeMs` defaults to now. */
export function makeEvent(i: number, startTimeMs = Date.now()): RequestEvent {
  const service = SERVICES[i % SERVICES.length];
  const grpc = i % 4 !== 0;
  return create(RequestEventSchema, {
    eventId: crypto.randomUUID(),
    startTimeMs: BigInt(startTimeMs),
    durationUs: BigInt(50 + (i * 7919) % 200_000),
    service,
    method: `/${service}.v1.Service/Method${i % 5}`,
    protocol: grpc ? Protocol.GRPC : Protocol.HTTP,
    route: grpc ? "" : `GET /v1/${service}/{id}`,
    grpcCode: i % 17 === 0 ? 14 : 0,
    httpStatus: i % 17 === 0 ? 503 : 200,
    requestBytes: BigInt(i % 1000),
    responseBytes: BigInt((i * 3) % 5000),
    traceId: "0af7651916cd43dd8448eb211c80319c",
    spanId: "b7ad6b7169203331",
    parentSpanId: i % 3 === 0 ? "" : "00f067aa0ba902b7",
    instance: "test-instance-1",
    errorMessage: i % 17 === 0 ? "unavailable: injected 'fault'\n\tline two" : "",
    faultInjected: i % 17 === 0,
  });
}

/** Publishes events to JetStream with Nats-Msg-Id = event id, `window` publishes in flight at a time. */
export async function publishEvents(nc: NatsConnection, events: RequestEvent[], window = 256): Promise<void> {
  const js = jetstream(nc);
  const inFlight = new Set<Promise<unknown>>();
  for (const event of events) {
    const p = js.publish(requestEventSubject(event.service), toBinary(RequestEventSchema, event), {
      msgID: event.eventId,
      timeout: 30_000,
    });
    const tracked = p.finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
    if (inFlight.size >= window) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
}

/** A unique, valid ClickHouse database name for one test. */
export function uniqueDatabase(prefix = "t"): string {
  return `${prefix}_${crypto.randomUUID().replaceAll("-", "").slice(0, 16)}`;
}

/** The environment a test worker runs with (small batches, short ack wait, no metrics port clash). */
export function testEnv(
  natsUrl: string,
  clickhouseUrl: string,
  password: string,
  database: string,
  overrides: Record<string, string> = {},
): Record<string, string> {
  return {
    NATS_URL: natsUrl,
    CLICKHOUSE_URL: clickhouseUrl,
    CLICKHOUSE_USER: "tailwatch_admin",
    CLICKHOUSE_PASSWORD: password,
    CLICKHOUSE_DATABASE: database,
    INGEST_BATCH_MAX: "2000",
    INGEST_BATCH_WAIT_MS: "100",
    INGEST_ACK_WAIT_MS: "4000",
    INGEST_INSERT_TIMEOUT_MS: "2000",
    INGEST_RETRY_BASE_MS: "100",
    INGEST_RETRY_MAX_MS: "1000",
    INGEST_METRICS_PORT: "0",
    INGEST_RETENTION_INTERVAL_S: "0",
    INGEST_LOG_LEVEL: "info",
    ...overrides,
  };
}

export function testConfig(...args: Parameters<typeof testEnv>): IngestConfig {
  return loadConfig(testEnv(...args));
}

/** Polls until `probe` returns true; throws with `what` after `timeoutMs`. */
export async function eventually(
  what: string,
  probe: () => Promise<boolean> | boolean,
  timeoutMs = 60_000,
  intervalMs = 200,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      if (await probe()) return;
      last = undefined;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new AssertionError(`timed out waiting for ${what}${last ? `: ${last}` : ""}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
