/**
 * Ingest's hand-written decoding follows proto/events/v1, checked from the generated descriptor: the fast
 * path's table of fields (SCANNED_FIELDS, events/scanner.ts) is RequestEvent's, field for field (number, name,
 * type), and each field, set alone on a valid event, goes through the scanner (`EventScanner.scan` accepts it,
 * `appendScanned` writes it) and through `decodeEvent` to its column with its value. A field added to the
 * proto that the scanner or decodeEvent does not carry, or a field renumbered or retyped, fails here; the last
 * test proves it on drifted copies of the descriptor. The fuzz of the fast path against protobuf-es stays in
 * unit_test.ts.
 */
import { create, type DescField, type DescMessage, ScalarType, toBinary } from "@bufbuild/protobuf";
import { FeatureSet_FieldPresence } from "@bufbuild/protobuf/wkt";
import { Protocol, RequestEventSchema } from "@tailwatch/proto/events/v1";
import { assertChecksCatchDrift, describeField, protoType } from "@tailwatch/events/testing";
import { assert, assertEquals } from "@tailwatch/testing";
import {
  decodeEvent,
  EventScanner,
  REQUEST_EVENT_COLUMNS,
  type RequestEventRow,
  SCANNED_FIELDS,
  type ScannedField,
} from "@tailwatch/events";
import { RowWriter } from "./row_writer.ts";
import { readRowBinary } from "./test_helpers.ts";

/**
 * Fails when `schema` has a field SCANNED_FIELDS lacks, or one whose number, name or type differs, or one the
 * scanner's assumptions do not cover (implicit presence, no oneof, 64-bit integers as bigint), or when the
 * table names a column ingest does not write.
 */
function checkScannedFields(schema: DescMessage): void {
  const scanned = new Map<number, ScannedField>(SCANNED_FIELDS.map((field) => [field.number, field]));
  for (const field of schema.fields) {
    const entry = scanned.get(field.number);
    assert(
      entry !== undefined,
      `${
        describeField(field)
      } of events.v1.RequestEvent: ingest's fast path (events/scanner.ts) does not read it; ` +
        "add it to EventScanner.scan (events/scanner.ts), decodeEvent (events/row.ts), appendScanned " +
        "(ingest/row_writer.ts), a column and SCANNED_FIELDS",
    );
    assertEquals(
      { name: entry.name, type: entry.type },
      { name: field.name, type: protoType(field) },
      `${describeField(field)}: the fast path reads field ${field.number} as another field or type`,
    );
    assertEquals(
      field.presence,
      FeatureSet_FieldPresence.IMPLICIT,
      `${describeField(field)}: implicit presence`,
    );
    assertEquals(field.oneof, undefined, `${describeField(field)}: not in a oneof`);
    if (field.fieldKind === "scalar") {
      assertEquals(field.longAsString, false, `${describeField(field)}: no JS_STRING`);
    }
  }
  const inProto = new Set(schema.fields.map((field) => field.number));
  for (const entry of SCANNED_FIELDS) {
    assert(inProto.has(entry.number), `the fast path reads field ${entry.number}, which the proto lacks`);
    assert(
      (REQUEST_EVENT_COLUMNS as readonly string[]).includes(entry.column),
      `field ${entry.name}: column ${entry.column} is not one ingest writes`,
    );
  }
}

/** A valid event (decodeEvent and the scanner accept it) with some fields left at their defaults. */
const BASE: Record<string, unknown> = {
  eventId: "0190a5f2-7b3c-7def-8abc-0123456789ab",
  startTimeMs: 1_700_000_000_123n,
  durationUs: 1_500n,
  service: "catalog",
  method: "/catalog.v1.CatalogService/GetProduct",
  protocol: Protocol.GRPC,
  httpStatus: 200,
  requestBytes: 10n,
  responseBytes: 20n,
  traceId: "0af7651916cd43dd8448eb211c80319c",
  spanId: "b7ad6b7169203331",
  instance: "catalog-test-1",
  startTimeUs: 1_700_000_000_123_456n,
};

/**
 * Another valid value of `field` than the base event's, and the value its column must then hold; undefined
 * for a type the fast path has no reader for.
 */
function variantOf(field: DescField): { value: unknown; column: unknown } | undefined {
  const base = BASE[field.localName];
  if (field.fieldKind === "enum") {
    const other = field.enum.values.find((value) => value.number !== 0 && value.number !== base);
    return other && { value: other.number, column: other.localName.toLowerCase() };
  }
  if (field.fieldKind !== "scalar") return undefined;
  switch (field.scalar) {
    case ScalarType.STRING: {
      // event_id must stay a UUID (any other string is refused); any other string field takes any ASCII.
      const value = field.name === "event_id"
        ? "0190a5f2-7b3c-7def-8abc-fedcba987654"
        : `${field.name}-variant`;
      return { value, column: value };
    }
    case ScalarType.INT64:
      return { value: (base as bigint ?? 0n) + 1000n, column: Number((base as bigint ?? 0n) + 1000n) };
    case ScalarType.UINT32:
      return { value: (base as number ?? 0) + 1, column: (base as number ?? 0) + 1 };
    case ScalarType.BOOL:
      return { value: true, column: 1 };
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SINT64:
      // A negative value: what tells a signed field from the unsigned ones the scanner reads.
      return { value: field.scalar === ScalarType.SINT64 ? -5n : -5, column: -5 };
    default:
      return undefined;
  }
}

/**
 * Fails when some field of `schema`, set alone on a valid event, does not reach its column (SCANNED_FIELDS)
 * with its value through both ways ingest decodes: the scanner (`scan` accepts the payload, `appendScanned`
 * writes the row) and `decodeEvent`; the two rows must also be the same.
 */
function checkFieldsReachColumns(schema: DescMessage): void {
  const scanner = new EventScanner();
  const baseRow = decodeEvent(toBinary(schema, create(schema, BASE)), 7);
  assert(baseRow.ok, "the base event decodes");
  for (const field of schema.fields) {
    const variant = variantOf(field);
    assert(variant !== undefined, `${describeField(field)}: a type ingest's decoders have no reader for`);
    const payload = toBinary(schema, create(schema, { ...BASE, [field.localName]: variant.value }));
    const label = `${describeField(field)} = ${String(variant.value)}`;
    assert(scanner.scan(payload), `${label}: the fast path (EventScanner.scan) does not read it`);
    const decoded = decodeEvent(payload, 7);
    assert(decoded.ok, `${label}: decodeEvent refuses it: ${decoded.ok ? "" : decoded.detail}`);
    const column = SCANNED_FIELDS.find((entry) => entry.number === field.number)?.column;
    assert(column !== undefined, `${label}: no column in SCANNED_FIELDS`);
    assertEquals(decoded.row[column], variant.column, `${label}: decodeEvent does not carry it to ${column}`);
    assert(
      decoded.row[column] !== baseRow.row[column],
      `${label}: ${column} holds the same value as without the field`,
    );
    const writer = new RowWriter(16);
    writer.appendScanned(scanner, 7);
    writer.stamp({ ingestedAtMs: 1, batchSeq: 7, floorSeq: 6 });
    const [{ row }] = readRowBinary(writer.body());
    assertEquals(
      row[column],
      variant.column,
      `${label}: the fast path (appendScanned) does not write it to ${column}`,
    );
    assertEquals<RequestEventRow>(row, decoded.row, `${label}: the fast path's row is not decodeEvent's`);
  }
}

Deno.test("the fast path's table of fields is events.v1.RequestEvent's, field for field (number, name, type)", () => {
  checkScannedFields(RequestEventSchema);
});

Deno.test("each field of events.v1.RequestEvent reaches its column through the scanner and decodeEvent", () => {
  checkFieldsReachColumns(RequestEventSchema);
});

Deno.test("the contract checks fail on a proto ingest has not followed", () => {
  assertChecksCatchDrift([checkScannedFields, checkFieldsReachColumns]);
});
