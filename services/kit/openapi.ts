/** An OpenAPI 3.0 document generated from the same descriptors and routes the REST shim serves. */
import { type DescEnum, type DescField, type DescMessage, ScalarType } from "@bufbuild/protobuf";
import { Code, codeName, httpStatusFromCode } from "@tailwatch/grpc";
import type { Route } from "./routes.ts";

type Schema = Record<string, unknown>;

function scalarSchema(type: ScalarType): Schema {
  switch (type) {
    case ScalarType.BOOL:
      return { type: "boolean" };
    case ScalarType.STRING:
      return { type: "string" };
    case ScalarType.BYTES:
      return { type: "string", format: "byte" };
    case ScalarType.DOUBLE:
      return { type: "number", format: "double" };
    case ScalarType.FLOAT:
      return { type: "number", format: "float" };
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return { type: "integer", format: "int32" };
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return { type: "integer", format: "int64", minimum: 0 };
    default:
      // 64-bit integers are JSON strings in the protobuf JSON mapping (numbers are accepted on input).
      return { type: "string", format: "int64", pattern: "^-?[0-9]+$" };
  }
}

export function buildOpenApi(title: string, version: string, routes: readonly Route[]): Schema {
  const schemas: Record<string, Schema> = {
    Error: {
      type: "object",
      required: ["code", "status", "message"],
      properties: {
        code: { type: "integer", description: "gRPC status code" },
        status: { type: "string", description: "gRPC status name, e.g. NOT_FOUND" },
        message: { type: "string" },
      },
    },
  };
  const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
  const enumSchema = (desc: DescEnum): Schema => {
    if (!schemas[desc.typeName]) {
      schemas[desc.typeName] = {
        type: "string",
        enum: desc.values.map((v) => v.name),
      };
    }
    return ref(desc.typeName);
  };
  const fieldSchema = (field: DescField): Schema => {
    switch (field.fieldKind) {
      case "scalar":
        return scalarSchema(field.scalar);
      case "enum":
        return enumSchema(field.enum);
      case "message":
        return messageSchema(field.message);
      case "list":
        return {
          type: "array",
          items: field.listKind === "scalar"
            ? scalarSchema(field.scalar)
            : field.listKind === "enum"
            ? enumSchema(field.enum)
            : messageSchema(field.message),
        };
      case "map":
        return {
          type: "object",
          additionalProperties: field.mapKind === "scalar"
            ? scalarSchema(field.scalar)
            : field.mapKind === "enum"
            ? enumSchema(field.enum)
            : messageSchema(field.message),
        };
    }
  };
  function messageSchema(desc: DescMessage): Schema {
    if (!schemas[desc.typeName]) {
      const properties: Record<string, Schema> = {};
      schemas[desc.typeName] = { type: "object", additionalProperties: false, properties };
      for (const field of desc.fields) properties[field.jsonName] = fieldSchema(field);
    }
    return ref(desc.typeName);
  }

  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const path = route.template.replace(/\{([a-z0-9_]+)\}/g, "{$1}");
    const parameters: Schema[] = route.pathFields.map((field) => ({
      name: field.name,
      in: "path",
      required: true,
      schema: fieldSchema(field),
    }));
    if (route.body === "") {
      for (const field of route.method.input.fields) {
        if (route.pathFields.includes(field) || field.fieldKind === "message" || field.fieldKind === "map") {
          continue;
        }
        parameters.push({ name: field.jsonName, in: "query", required: false, schema: fieldSchema(field) });
      }
    }
    const errorCodes = [Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE];
    const responses: Record<string, unknown> = {
      "200": {
        description: "OK",
        content: { "application/json": { schema: messageSchema(route.method.output) } },
      },
      "default": { description: "Error", content: { "application/json": { schema: ref("Error") } } },
    };
    for (const code of errorCodes) {
      responses[String(httpStatusFromCode(code))] = {
        description: codeName(code),
        content: { "application/json": { schema: ref("Error") } },
      };
    }
    (paths[path] ??= {})[route.httpMethod.toLowerCase()] = {
      operationId: `${route.method.parent.name}_${route.method.name}`,
      summary: `${route.method.parent.typeName}.${route.method.name}`,
      tags: [route.method.parent.typeName],
      parameters,
      ...(route.body === "*"
        ? {
          requestBody: {
            required: true,
            content: { "application/json": { schema: messageSchema(route.method.input) } },
          },
        }
        : {}),
      responses,
    };
  }
  return { openapi: "3.0.3", info: { title, version }, paths, components: { schemas } };
}
