/**
 * Test code only (exported as `@tailwatch/events/testing`, never from mod.ts): a valid sample event, and for
 * tests of hand-written code that follows proto/events/v1 (the encoder here, ingest's decoders), how a
 * descriptor's field is named in failures and drifted copies of RequestEvent's descriptor on which such a
 * check must fail.
 */
import {
  clone,
  create,
  createFileRegistry,
  type DescField,
  type DescMessage,
  ScalarType,
} from "@bufbuild/protobuf";
import {
  type FieldDescriptorProto,
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FieldDescriptorProtoSchema,
  FileDescriptorProtoSchema,
} from "@bufbuild/protobuf/wkt";
import { file_events_v1_events, Protocol } from "@tailwatch/proto/events/v1";
import { uuidv7 } from "@tailwatch/runtime";
import type { RequestEventFields } from "./codec.ts";

/**
 * A valid catalog.GetProduct gRPC event, OK, started now, with a fresh UUIDv7 id; `fields` replace any of its
 * values.
 */
export function sampleEvent(fields: Partial<RequestEventFields> = {}): RequestEventFields {
  return {
    eventId: uuidv7(),
    startTimeMs: BigInt(Date.now()),
    durationUs: 100n,
    service: "catalog",
    method: "GetProduct",
    protocol: Protocol.GRPC,
    route: "",
    grpcCode: 0,
    httpStatus: 200,
    requestBytes: 20n,
    responseBytes: 80n,
    traceId: "0af7651916cd43dd8448eb211c80319c",
    spanId: "b7ad6b7169203331",
    parentSpanId: "",
    instance: "catalog-test",
    errorMessage: "",
    faultInjected: false,
    startTimeUs: 0n,
    loadRunId: "",
    ...fields,
  };
}

/** A field's proto type as the field tables name it: the scalar's name, "enum", or the kind ("message", ...). */
export function protoType(field: DescField): string {
  if (field.fieldKind === "scalar") return ScalarType[field.scalar].toLowerCase();
  return field.fieldKind;
}

/** "field <name> = <number> (<type>)", how the checks name a field in their failures. */
export function describeField(field: DescField): string {
  return `field ${field.name} = ${field.number} (${protoType(field)})`;
}

/**
 * events.v1.RequestEvent as generated, changed by `edit` (its fields as FieldDescriptorProtos): what the proto
 * would be after a change the hand-written code has not followed.
 */
export function driftedRequestEvent(edit: (fields: FieldDescriptorProto[]) => void): DescMessage {
  const file = clone(FileDescriptorProtoSchema, file_events_v1_events.proto);
  edit(file.messageType.find((message) => message.name === "RequestEvent")!.field);
  return createFileRegistry(file, () => undefined).getMessage("events.v1.RequestEvent")!;
}

const byName = (fields: FieldDescriptorProto[], name: string) => fields.find((f) => f.name === name)!;

/** The drifts every contract check must catch: what changed, the change, and how the failure names the field. */
const DRIFTS: [string, (fields: FieldDescriptorProto[]) => void, RegExp][] = [
  [
    "a new field",
    (fields) =>
      fields.push(create(FieldDescriptorProtoSchema, {
        name: "region",
        jsonName: "region",
        number: 20,
        label: FieldDescriptorProto_Label.OPTIONAL,
        type: FieldDescriptorProto_Type.STRING,
      })),
    /field region = 20 \(string\)/,
  ],
  ["a field renumbered", (fields) => byName(fields, "load_run_id").number = 21, /load_run_id = 21/],
  [
    "a field of another type",
    (fields) => byName(fields, "grpc_code").type = FieldDescriptorProto_Type.INT32,
    /grpc_code = 8 \(int32\)/,
  ],
  [
    "a string become bytes",
    (fields) => byName(fields, "error_message").type = FieldDescriptorProto_Type.BYTES,
    /error_message = 16 \(bytes\)/,
  ],
];

/**
 * Runs each check on each drifted copy of RequestEvent's descriptor; throws unless every one fails with a
 * message that names the drifted field.
 */
export function assertChecksCatchDrift(checks: ReadonlyArray<(schema: DescMessage) => void>): void {
  for (const [what, edit, names] of DRIFTS) {
    const schema = driftedRequestEvent(edit);
    for (const check of checks) {
      let failure = "";
      try {
        check(schema);
      } catch (error) {
        failure = String(error);
      }
      if (!names.test(failure)) {
        throw new Error(`${what}: ${check.name} must fail naming the field, got: ${failure || "no failure"}`);
      }
    }
  }
}
