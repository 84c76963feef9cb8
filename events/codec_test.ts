/**
 * The hand-written RequestEvent encoding is byte for byte protobuf-es's, and covers every field: its table of
 * fields is checked against the generated descriptor of proto/events/v1 (number, name, type), each field alone
 * against protobuf-es's bytes, and random events too.
 */
import {
  create,
  type DescField,
  type DescMessage,
  fromBinary,
  ScalarType,
  toBinary,
} from "@bufbuild/protobuf";
import { FeatureSet_FieldPresence } from "@bufbuild/protobuf/wkt";
import { Protocol, RequestEventSchema } from "@tailwatch/proto/events/v1";
import { assert, assertEquals, AssertionError, seededRandom } from "@tailwatch/testing";
import { assertChecksCatchDrift, describeField, protoType } from "./testing.ts";
import { ENCODED_FIELDS, type EncodedField, encodeRequestEvent, type RequestEventFields } from "./codec.ts";

const SAMPLES = [
  "",
  "a",
  "catalog",
  "/catalog.v1.CatalogService/GetProduct",
  "ünïcødé ✓ 🐈",
  "tab\tnl\nnul\0",
  "x".repeat(300),
];
const INT64S = [
  0n,
  1n,
  127n,
  128n,
  16_383n,
  16_384n,
  1_763_900_000_123n,
  2n ** 53n - 1n,
  2n ** 53n,
  2n ** 63n - 1n,
  -1n,
  -(2n ** 63n),
];
const UINT32S = [0, 1, 127, 128, 200, 16_384, 2 ** 31, 2 ** 32 - 1];

function randomEvent(random: () => number): RequestEventFields {
  const pick = <T>(values: readonly T[]) => values[Math.floor(random() * values.length)];
  const text = () =>
    random() < 0.2
      ? String.fromCodePoint(
        ...Array.from({ length: 1 + Math.floor(random() * 20) }, () => Math.floor(random() * 0xd7ff)),
      )
      : pick(SAMPLES);
  return {
    eventId: text(),
    startTimeMs: pick(INT64S),
    durationUs: pick(INT64S),
    service: text(),
    method: text(),
    // Values outside the enum too: proto3 enums are open.
    protocol: pick([Protocol.UNSPECIFIED, Protocol.GRPC, Protocol.HTTP, 7 as Protocol, -3 as Protocol]),
    route: text(),
    grpcCode: pick(UINT32S),
    httpStatus: pick(UINT32S),
    requestBytes: pick(INT64S),
    responseBytes: pick(INT64S),
    traceId: text(),
    spanId: text(),
    parentSpanId: text(),
    instance: text(),
    errorMessage: text(),
    faultInjected: random() < 0.5,
    startTimeUs: pick(INT64S),
    loadRunId: random() < 0.5 ? "" : text(),
  };
}

Deno.test("encodeRequestEvent writes the bytes protobuf-es writes, for any field values", () => {
  const random = seededRandom(20261123);
  for (let i = 0; i < 5000; i++) {
    const event = randomEvent(random);
    const expected = toBinary(RequestEventSchema, create(RequestEventSchema, event));
    const actual = encodeRequestEvent(event);
    assertEquals(
      Array.from(actual),
      Array.from(expected),
      `event ${i}: ${JSON.stringify(event, (_, v) => typeof v === "bigint" ? String(v) : v)}`,
    );
  }
  const empty = encodeRequestEvent(create(RequestEventSchema));
  assertEquals(empty.length, 0, "an all-default event encodes to nothing, as in protobuf");
});

Deno.test("encodeRequestEvent returns its own copy and decodes back to the event", () => {
  const first = randomEvent(seededRandom(1));
  const bytes = encodeRequestEvent(first);
  const copy = Array.from(bytes);
  encodeRequestEvent(randomEvent(seededRandom(2)));
  assertEquals(Array.from(bytes), copy, "a later call does not overwrite an earlier result");
  const decoded = fromBinary(RequestEventSchema, bytes);
  assertEquals(decoded.eventId, first.eventId);
  assertEquals(decoded.faultInjected, first.faultInjected);
});

/**
 * Fails when `schema` (events.v1.RequestEvent as generated, or a drifted copy in the test below) has a field
 * ENCODED_FIELDS lacks, or one whose number, name or type differs, or one the encoder's assumptions do not
 * cover (implicit presence, no oneof, 64-bit integers as bigint).
 */
function checkEncodedFields(schema: DescMessage): void {
  const written = new Map<number, EncodedField>(ENCODED_FIELDS.map((field) => [field.number, field]));
  for (const field of schema.fields) {
    const encoded = written.get(field.number);
    assert(
      encoded !== undefined,
      `${describeField(field)} of events.v1.RequestEvent: the hand-written encoder (events/codec.ts) ` +
        "does not write it; add it to encodeRequestEventView and ENCODED_FIELDS",
    );
    assertEquals(
      { name: encoded.name, type: encoded.type },
      { name: field.localName, type: protoType(field) },
      `${describeField(field)}: the encoder writes field ${field.number} as another field or type`,
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
  for (const encoded of ENCODED_FIELDS) {
    assert(inProto.has(encoded.number), `the encoder writes field ${encoded.number}, which the proto lacks`);
  }
  const numbers = ENCODED_FIELDS.map((field) => field.number);
  assertEquals(numbers, [...numbers].sort((a, b) => a - b), "written in number order, as protobuf-es does");
}

/** Values of a field's type for the per-field check (ends of each range included), by the descriptor. */
function valuesOf(field: DescField): unknown[] {
  if (field.fieldKind === "enum") return field.enum.values.map((value) => value.number).concat([7, -3]);
  if (field.fieldKind !== "scalar") return [];
  switch (field.scalar) {
    case ScalarType.STRING:
      return ["x", "ünïcødé ✓ 🐈", "y".repeat(200)];
    case ScalarType.BOOL:
      return [true];
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return [1, 127, 128, 2 ** 32 - 1];
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return [1, -1, 2 ** 31 - 1, -(2 ** 31)];
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return [1n, 1_763_900_000_123n, 2n ** 53n, 2n ** 63n - 1n, -1n, -(2n ** 63n)];
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return [1n, 2n ** 64n - 1n];
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return [1.5, -0.25];
    case ScalarType.BYTES:
      return [Uint8Array.of(1, 2, 3)];
  }
}

/** Fails when some field of `schema`, set alone, encodes to other bytes than protobuf-es's. */
function checkEachFieldAlone(schema: DescMessage): void {
  for (const field of schema.fields) {
    const values = valuesOf(field);
    assert(values.length > 0, `${describeField(field)}: a kind the hand-written encoder has no writer for`);
    for (const value of values) {
      const init = { [field.localName]: value };
      const event = { ...create(RequestEventSchema), ...init } as RequestEventFields;
      const label = `${describeField(field)} = ${String(value).slice(0, 40)}`;
      let encoded: Uint8Array;
      try {
        encoded = encodeRequestEvent(event);
      } catch (error) {
        throw new AssertionError(`${label}: the hand-written encoder fails: ${error}`);
      }
      assertEquals(
        Array.from(encoded),
        Array.from(toBinary(schema, create(schema, init))),
        `${label}: the hand-written encoder writes other bytes`,
      );
    }
  }
}

Deno.test("the encoder's table of fields is events.v1.RequestEvent's, field for field (number, name, type)", () => {
  checkEncodedFields(RequestEventSchema);
});

Deno.test("each field of events.v1.RequestEvent alone encodes to protobuf-es's bytes", () => {
  checkEachFieldAlone(RequestEventSchema);
});

Deno.test("the contract checks fail on a proto the encoder has not followed", () => {
  assertChecksCatchDrift([checkEncodedFields, checkEachFieldAlone]);
});
