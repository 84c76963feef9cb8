import { assertEquals } from "@tailwatch/testing";
import { Code, httpStatusFromCode, ServiceError } from "./mod.ts";

Deno.test("gRPC codes map to one HTTP status each, and anything thrown becomes a ServiceError", () => {
  assertEquals(httpStatusFromCode(Code.INVALID_ARGUMENT), 400);
  assertEquals(httpStatusFromCode(Code.NOT_FOUND), 404);
  assertEquals(httpStatusFromCode(Code.RESOURCE_EXHAUSTED), 429);
  assertEquals(httpStatusFromCode(Code.UNAVAILABLE), 503);
  assertEquals(ServiceError.from(new Error("boom")).code, Code.INTERNAL);
  assertEquals(ServiceError.from("text").message, "text");
  const grpcError = Object.assign(new Error("5 NOT_FOUND: x"), { code: 5, details: "x" });
  const normalized = ServiceError.from(grpcError);
  assertEquals([normalized.code, normalized.message], [Code.NOT_FOUND, "x"]);
});
