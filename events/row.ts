/**
 * From a JetStream message's payload to a `request_events` row, or to the reason it cannot be one (then the
 * message is dead-lettered). Every check here protects the batch: one value the table would refuse (a bad
 * UUID, a time outside DateTime, a negative size) would otherwise fail the whole INSERT forever.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { Protocol, type RequestEvent, RequestEventSchema } from "@tailwatch/proto/events/v1";

/** The columns ingest writes, in the order of ingest/migrations/0001_request_events.sql. */
export const REQUEST_EVENT_COLUMNS = [
  "event_id",
  "ts",
  "ts_ms",
  "service",
  "method",
  "protocol",
  "route",
  "grpc_code",
  "http_status",
  "duration_us",
  "request_bytes",
  "response_bytes",
  "trace_id",
  "span_id",
  "parent_span_id",
  "instance",
  "error_message",
  "fault_injected",
  "stream_seq",
  "ts_us",
  "load_run_id",
] as const;

/** One row of `request_events` as sent in JSONEachRow (ts is unix seconds, which DateTime reads in any zone). */
export interface RequestEventRow {
  event_id: string;
  ts: number;
  ts_ms: number;
  service: string;
  method: string;
  protocol: "grpc" | "http";
  route: string;
  grpc_code: number;
  http_status: number;
  duration_us: number;
  request_bytes: number;
  response_bytes: number;
  trace_id: string;
  span_id: string;
  parent_span_id: string;
  instance: string;
  error_message: string;
  fault_injected: 0 | 1;
  stream_seq: number;
  /** The start in epoch µs (start_time_us; 0 when the event has none): 0011. */
  ts_us: number;
  /** The load run that sent the request, or "": 0012. */
  load_run_id: string;
}

/** Why a message was dead-lettered; the last token of its dead-letter subject. */
export type PoisonReason =
  | "undecodable"
  | "invalid_event_id"
  | "invalid_start_time"
  | "invalid_protocol"
  | "invalid_number"
  | "missing_service";

export type DecodeResult =
  | { ok: true; row: RequestEventRow }
  | { ok: false; reason: PoisonReason; detail: string };

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
/** DateTime holds 1970-01-01 .. 2105; we accept 1971 .. 2100 to stay clear of both ends in any time zone. */
const MIN_MS = Date.UTC(1971, 0, 1);
const MAX_MS = Date.UTC(2100, 0, 1);

function toNumber(value: bigint | number): number {
  return typeof value === "bigint" ? Number(value) : value;
}

function nonNegative(value: bigint | number, field: string): number | string {
  const n = toNumber(value);
  if (!Number.isSafeInteger(n) || n < 0) return `${field}=${value} is not a non-negative safe integer`;
  return n;
}

/**
 * Decodes one payload carried by stream sequence `streamSeq` with protobuf-es. Never throws. The reference
 * decoder: the worker's fast path (row_writer.ts) must agree with it on every payload.
 */
export function decodeEvent(payload: Uint8Array, streamSeq: number): DecodeResult {
  let event: RequestEvent;
  try {
    event = fromBinary(RequestEventSchema, payload);
  } catch (error) {
    return {
      ok: false,
      reason: "undecodable",
      detail: error instanceof Error ? error.message : String(error),
    };
  }
  return toRow(event, streamSeq);
}

function toRow(event: RequestEvent, streamSeq: number): DecodeResult {
  if (!UUID.test(event.eventId)) {
    return {
      ok: false,
      reason: "invalid_event_id",
      detail: `event_id ${JSON.stringify(event.eventId)} is not a UUID`,
    };
  }
  const startMs = toNumber(event.startTimeMs);
  if (!Number.isSafeInteger(startMs) || startMs < MIN_MS || startMs >= MAX_MS) {
    return {
      ok: false,
      reason: "invalid_start_time",
      detail: `start_time_ms=${event.startTimeMs} out of range`,
    };
  }
  let protocol: "grpc" | "http";
  if (event.protocol === Protocol.GRPC) protocol = "grpc";
  else if (event.protocol === Protocol.HTTP) protocol = "http";
  else return { ok: false, reason: "invalid_protocol", detail: `protocol=${event.protocol}` };
  if (event.service === "") return { ok: false, reason: "missing_service", detail: "service is empty" };
  const duration = nonNegative(event.durationUs, "duration_us");
  const requestBytes = nonNegative(event.requestBytes, "request_bytes");
  const responseBytes = nonNegative(event.responseBytes, "response_bytes");
  const startUs = nonNegative(event.startTimeUs, "start_time_us");
  for (const checked of [duration, requestBytes, responseBytes, startUs]) {
    if (typeof checked === "string") return { ok: false, reason: "invalid_number", detail: checked };
  }
  if (event.grpcCode > 255) {
    return { ok: false, reason: "invalid_number", detail: `grpc_code=${event.grpcCode}` };
  }
  if (event.httpStatus > 65_535) {
    return { ok: false, reason: "invalid_number", detail: `http_status=${event.httpStatus}` };
  }
  return {
    ok: true,
    row: {
      event_id: event.eventId.toLowerCase(),
      ts: Math.floor(startMs / 1000),
      ts_ms: startMs,
      service: event.service,
      method: event.method,
      protocol,
      route: event.route,
      grpc_code: event.grpcCode,
      http_status: event.httpStatus,
      duration_us: duration as number,
      request_bytes: requestBytes as number,
      response_bytes: responseBytes as number,
      trace_id: event.traceId,
      span_id: event.spanId,
      parent_span_id: event.parentSpanId,
      instance: event.instance,
      error_message: event.errorMessage,
      fault_injected: event.faultInjected ? 1 : 0,
      stream_seq: streamSeq,
      ts_us: startUs as number,
      load_run_id: event.loadRunId,
    },
  };
}

/**
 * The format of the worker's INSERT bodies (row_writer.ts): RowBinary, the columns of REQUEST_EVENT_COLUMNS
 * and then STAMPED_COLUMNS.
 */
export const ROW_FORMAT = "RowBinary";

/**
 * The UInt64 columns the worker writes into every row when it sends the INSERT (RowWriter.stamp), after
 * REQUEST_EVENT_COLUMNS: `ingested_at_ms` (its clock then, 0004), `ingest_batch_seq` (the stream sequence
 * the row's batch is acked with, the same on every retry) and `ingest_floor_seq` (every message at or
 * below it was committed before this INSERT was sent): 0009 and ingest/README.md.
 */
export const STAMPED_COLUMNS = ["ingested_at_ms", "ingest_batch_seq", "ingest_floor_seq"] as const;

/** Every column of the worker's INSERT bodies, in order. */
export const INSERT_COLUMNS = [...REQUEST_EVENT_COLUMNS, ...STAMPED_COLUMNS] as const;
