/** Health and reflection: what Kubernetes probes, grpcurl and ghz rely on. */
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import { create, createFileRegistry, fromBinary, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import {
  type ServerReflectionRequest,
  ServerReflectionRequestSchema,
  type ServerReflectionResponse,
  ServerReflectionResponseSchema,
} from "@tailwatch/proto/grpc/reflection/v1alpha";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus as Status,
  HealthCheckResponseSchema,
} from "@tailwatch/proto/grpc/health/v1";
import { assert, assertEquals, startNatsServer } from "@tailwatch/testing";
import { Code, createClient, ServiceError } from "@tailwatch/grpc";
import { startStack } from "@tailwatch/testing/stack";

const options = { sanitizeOps: false, sanitizeResources: false };

async function reflect(
  port: number,
  requests: ServerReflectionRequest[],
): Promise<ServerReflectionResponse[]> {
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const call = client.makeBidiStreamRequest(
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    (m: ServerReflectionRequest) => Buffer.from(toBinary(ServerReflectionRequestSchema, m)),
    (b: Buffer) => fromBinary(ServerReflectionResponseSchema, b),
  );
  const responses: ServerReflectionResponse[] = [];
  const done = new Promise<void>((resolve, reject) => {
    call.on("data", (r: ServerReflectionResponse) => responses.push(r));
    call.on("end", () => resolve());
    call.on("error", reject);
  });
  for (const request of requests) call.write(request);
  call.end();
  await done;
  client.close();
  return responses;
}

Deno.test("server reflection lists the services and returns complete descriptors", options, async () => {
  await using nats = await startNatsServer();
  await using stack = await startStack(nats.url);
  const [list, byService, missing] = await reflect(stack.orders.grpcPort, [
    create(ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } }),
    create(ServerReflectionRequestSchema, {
      messageRequest: { case: "fileContainingSymbol", value: "orders.v1.OrderService" },
    }),
    create(ServerReflectionRequestSchema, {
      messageRequest: { case: "fileContainingSymbol", value: "no.Such" },
    }),
  ]);
  assert(list.messageResponse.case === "listServicesResponse");
  const names = list.messageResponse.value.service.map((s) => s.name).sort();
  for (const name of ["admin.v1.AdminService", "grpc.health.v1.Health", "orders.v1.OrderService"]) {
    assert(names.includes(name), `${name} in ${names}`);
  }
  assert(byService.messageResponse.case === "fileDescriptorResponse");
  const files = byService.messageResponse.value.fileDescriptorProto.map((b) =>
    fromBinary(FileDescriptorProtoSchema, b)
  );
  assertEquals(files[0].name, "orders/v1/orders.proto", "the file asked for comes first");
  // The answer is self-contained: a registry builds from it and resolves the method's messages.
  // (createFileRegistry wants dependencies first; reflection sends the file asked for first.)
  const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: [...files].reverse() }));
  const service = registry.getService("orders.v1.OrderService");
  assertEquals(service?.method.createOrder.input.typeName, "orders.v1.CreateOrderRequest");
  assert(missing.messageResponse.case === "errorResponse");
  assertEquals(missing.messageResponse.value.errorCode, Code.NOT_FOUND);
});

Deno.test(
  "health says SERVING, then NOT_SERVING to watchers as soon as the service drains",
  options,
  async () => {
    await using nats = await startNatsServer();
    const stack = await startStack(nats.url);
    const health = createClient(Health, `127.0.0.1:${stack.catalog.grpcPort}`);
    assertEquals((await health.check({ service: "" })).status, Status.SERVING);
    assertEquals((await health.check({ service: "catalog.v1.CatalogService" })).status, Status.SERVING);
    try {
      await health.check({ service: "nope.v1.Nothing" });
      throw new Error("unknown service must fail");
    } catch (error) {
      assertEquals((error as ServiceError).code, Code.NOT_FOUND);
    }
    health.close();

    const client = new grpc.Client(`127.0.0.1:${stack.catalog.grpcPort}`, grpc.credentials.createInsecure());
    const watch = client.makeServerStreamRequest(
      "/grpc.health.v1.Health/Watch",
      (m: ReturnType<typeof create<typeof HealthCheckRequestSchema>>) =>
        Buffer.from(toBinary(HealthCheckRequestSchema, m)),
      (b: Buffer) => fromBinary(HealthCheckResponseSchema, b),
      create(HealthCheckRequestSchema, { service: "" }),
    );
    const seen: Status[] = [];
    const ended = new Promise<void>((resolve) => {
      watch.on("data", (r: { status: Status }) => seen.push(r.status));
      watch.on("end", () => resolve());
      watch.on("error", () => resolve());
    });
    while (seen.length === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    await stack[Symbol.asyncDispose]();
    await ended;
    client.close();
    assertEquals(seen, [Status.SERVING, Status.NOT_SERVING]);
  },
);
