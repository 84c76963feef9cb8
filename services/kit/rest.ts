/**
 * The REST shim: JSON over HTTP with the protobuf JSON mapping, running the very same handlers through the
 * same pipeline as gRPC. Errors are `{"code": <gRPC code>, "status": "<NAME>", "message": "..."}` with the
 * HTTP status from `httpStatusFromCode`; the few statuses that are HTTP's own (405, 413) say so.
 */
import { create, type DescField, fromJson, type JsonValue, ScalarType, toJson } from "@bufbuild/protobuf";
import { Code, codeName, httpStatusFromCode, ServiceError } from "@tailwatch/grpc";
import type { CallOutcome, IncomingCall, Pipeline } from "./pipeline.ts";
import { matchRoute, type Route } from "./routes.ts";

export interface RestOptions {
  pipeline: Pipeline;
  routes: readonly Route[];
  maxBodyBytes: number;
  /** Answers for operational paths (/metrics, /healthz, ...); undefined when the path is not one. */
  operational(request: Request, path: string): Response | Promise<Response> | undefined;
}

const JSON_HEADERS = { "content-type": "application/json; charset=utf-8" };
const encoder = new TextEncoder();

/** An HTTP-level failure: its own status, and the gRPC code recorded in the event. */
class HttpError extends ServiceError {
  constructor(
    code: Code,
    readonly httpStatus: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(code, message);
  }
}

function errorBody(error: ServiceError): Uint8Array<ArrayBuffer> {
  return encoder.encode(
    JSON.stringify({ code: error.code, status: codeName(error.code), message: error.message }),
  );
}

async function readBody(request: Request, limit: number): Promise<Uint8Array> {
  const tooLarge = () =>
    new HttpError(
      Code.RESOURCE_EXHAUSTED,
      413,
      `request body is larger than the limit of ${limit} bytes (MAX_BODY_BYTES)`,
    );
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > limit) throw tooLarge();
  if (!request.body) return new Uint8Array();
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = request.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  const body = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return body;
}

/** A path or query string value as the JSON value the field's JSON mapping accepts. */
function scalarFromText(field: DescField, text: string): JsonValue {
  if (field.fieldKind === "scalar" || (field.fieldKind === "list" && field.listKind === "scalar")) {
    if (field.scalar === ScalarType.BOOL) {
      if (text === "true" || text === "false") return text === "true";
      throw new ServiceError(
        Code.INVALID_ARGUMENT,
        `${field.name} must be true or false, got ${JSON.stringify(text)}`,
      );
    }
    // Numbers stay strings: the protobuf JSON mapping accepts numeric strings and checks their range.
    return text;
  }
  if (field.fieldKind === "enum" || (field.fieldKind === "list" && field.listKind === "enum")) return text;
  throw new ServiceError(Code.INVALID_ARGUMENT, `${field.name} cannot be given in the query string`);
}

async function decodeRequest(
  route: Route,
  params: Map<DescField, string>,
  url: URL,
  request: Request,
  limit: number,
) {
  const bytes = await readBody(request, limit);
  let json: Record<string, JsonValue> = {};
  if (route.body === "*") {
    // Any content type is read as JSON (curl -d sends a form type); a body that is not JSON is a 400.
    if (bytes.byteLength > 0) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
      } catch (error) {
        throw new ServiceError(Code.INVALID_ARGUMENT, `malformed JSON body: ${(error as Error).message}`);
      }
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw new ServiceError(Code.INVALID_ARGUMENT, "the JSON body must be an object");
      }
      json = parsed as Record<string, JsonValue>;
    }
  }
  const input = route.method.input;
  for (const [key, value] of url.searchParams) {
    if (route.body === "*") {
      throw new ServiceError(
        Code.INVALID_ARGUMENT,
        `unknown query parameter ${JSON.stringify(key)}: send fields in the body`,
      );
    }
    const field = input.fields.find((f) => f.name === key || f.jsonName === key);
    if (!field || route.pathFields.includes(field)) {
      throw new ServiceError(Code.INVALID_ARGUMENT, `unknown query parameter ${JSON.stringify(key)}`);
    }
    const converted = scalarFromText(field, value);
    if (field.fieldKind === "list") {
      const list = (json[field.name] as JsonValue[] | undefined) ?? [];
      list.push(converted);
      json[field.name] = list;
    } else {
      json[field.name] = converted;
    }
  }
  for (const [field, value] of params) {
    // The path is authoritative for its fields, whatever the body says.
    delete json[field.jsonName];
    json[field.name] = scalarFromText(field, decodeURIComponent(value));
  }
  let message;
  try {
    message = fromJson(input, json, { ignoreUnknownFields: false });
  } catch (error) {
    throw new ServiceError(Code.INVALID_ARGUMENT, (error as Error).message);
  }
  return { message, requestBytes: bytes.byteLength };
}

export function createRestHandler(options: RestOptions): (request: Request) => Promise<Response> {
  const { pipeline, routes } = options;
  const errorResponse = (error: ServiceError): { response: Response; outcome: CallOutcome } => {
    const status = error instanceof HttpError ? error.httpStatus : httpStatusFromCode(error.code);
    const headers: Record<string, string> = {
      ...JSON_HEADERS,
      ...(error instanceof HttpError ? error.headers : {}),
    };
    if (error.retryAfterSeconds !== undefined) headers["retry-after"] = String(error.retryAfterSeconds);
    const body = errorBody(error);
    return {
      response: new Response(body, { status, headers }),
      outcome: {
        code: error.code,
        httpStatus: status,
        responseBytes: body.byteLength,
        errorMessage: error.message,
      },
    };
  };

  return async (request) => {
    const arrivedMono = performance.now();
    const arrivedMs = Date.now();
    const url = new URL(request.url);
    const operational = options.operational(request, url.pathname);
    if (operational) return operational;

    const found = matchRoute(routes, request.method, url.pathname);
    const baseCall = (route: string, requestBytes: number): IncomingCall => ({
      arrivedMs,
      arrivedMono,
      protocol: "http",
      route,
      requestBytes,
      traceparent: request.headers.get("traceparent") ?? undefined,
      signal: request.signal,
      header: (name) => request.headers.get(name) ?? undefined,
    });
    if (found.kind !== "match") {
      await request.body?.cancel().catch(() => {});
      const error = found.kind === "none"
        ? new ServiceError(Code.NOT_FOUND, `no route for ${request.method} ${url.pathname}`)
        : new HttpError(
          Code.UNIMPLEMENTED,
          405,
          `${request.method} is not allowed on ${url.pathname}; allowed: ${found.allowed.join(", ")}`,
          { allow: found.allowed.join(", ") },
        );
      const { response, outcome } = errorResponse(error);
      pipeline.unmatched(baseCall("", Number(request.headers.get("content-length") ?? 0) || 0), outcome);
      return response;
    }

    const { route, params } = found;
    let decoded: Awaited<ReturnType<typeof decodeRequest>> | undefined;
    let decodeError: unknown;
    try {
      decoded = await decodeRequest(route, params, url, request, options.maxBodyBytes);
    } catch (error) {
      decodeError = error instanceof URIError
        ? new ServiceError(Code.INVALID_ARGUMENT, `malformed percent-encoding in ${url.pathname}`)
        : error;
    }
    const running = pipeline.run(
      route.binding,
      route.method,
      baseCall(
        route.label,
        decoded?.requestBytes ?? (Number(request.headers.get("content-length") ?? 0) || 0),
      ),
      () => {
        if (decodeError !== undefined) throw decodeError;
        return decoded!.message;
      },
    );
    try {
      const init = await running.result;
      // deno-lint-ignore no-explicit-any -- the handler's return type is checked by ServiceHandlers
      const message = create(route.method.output, init as any);
      const body = encoder.encode(
        JSON.stringify(toJson(route.method.output, message, { alwaysEmitImplicit: true })),
      );
      running.finish({ code: Code.OK, httpStatus: 200, responseBytes: body.byteLength, errorMessage: "" });
      return new Response(body, { status: 200, headers: JSON_HEADERS });
    } catch (reason) {
      const { response, outcome } = errorResponse(ServiceError.from(reason));
      running.finish(outcome);
      return response;
    }
  };
}
