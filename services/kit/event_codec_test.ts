/** The hand-written RequestEvent encoding is byte for byte protobuf-es's, and covers every field. */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Protocol, RequestEventSchema } from "@tailwatch/proto/events/v1";
import { assertEquals, seededRandom } from "@tailwatch/testing";
import { ENCODED_FIELD_NUMBERS, encodeRequestEvent, type RequestEventFields } from "./event_codec.ts";

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

Deno.test("the encoder writes every field of events.v1.RequestEvent", () => {
  assertEquals(
    [...ENCODED_FIELD_NUMBERS],
    RequestEventSchema.fields.map((field) => field.number).sort((a, b) => a - b),
  );
});
