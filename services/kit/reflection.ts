/**
 * gRPC server reflection (v1 and v1alpha, same answers), so grpcurl and ghz work without .proto files. The
 * descriptors are the ones embedded in the generated code; a file is sent with all its dependencies.
 */
import { create, type DescFile, type DescService, fromBinary, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import * as v1 from "@tailwatch/proto/grpc/reflection/v1";
import * as v1alpha from "@tailwatch/proto/grpc/reflection/v1alpha";
import { Code, type GrpcServer, type GrpcStream, methodPath, ServiceError } from "@tailwatch/grpc";

type ReflectionModule = typeof v1 | typeof v1alpha;

interface Index {
  files: Map<string, DescFile>;
  symbols: Map<string, DescFile>;
  serviceNames: string[];
}

function buildIndex(services: readonly DescService[], extraServiceNames: readonly string[]): Index {
  const files = new Map<string, DescFile>();
  const symbols = new Map<string, DescFile>();
  const visit = (file: DescFile) => {
    if (files.has(file.proto.name)) return;
    files.set(file.proto.name, file);
    for (const message of file.messages) {
      const walk = (desc: typeof message) => {
        symbols.set(desc.typeName, file);
        desc.nestedMessages.forEach(walk);
        desc.nestedEnums.forEach((e) => symbols.set(e.typeName, file));
      };
      walk(message);
    }
    for (const e of file.enums) symbols.set(e.typeName, file);
    for (const service of file.services) {
      symbols.set(service.typeName, file);
      for (const method of service.methods) symbols.set(`${service.typeName}.${method.name}`, file);
    }
    file.dependencies.forEach(visit);
  };
  services.forEach((service) => visit(service.file));
  return { files, symbols, serviceNames: [...services.map((s) => s.typeName), ...extraServiceNames] };
}

/** The file first (clients read the first as the answer), then everything it imports, each once. */
function withDependencies(file: DescFile): Uint8Array[] {
  const seen = new Set<string>();
  const out: Uint8Array[] = [];
  const add = (f: DescFile) => {
    if (seen.has(f.name)) return;
    seen.add(f.name);
    out.push(toBinary(FileDescriptorProtoSchema, f.proto));
    f.dependencies.forEach(add);
  };
  add(file);
  return out;
}

function handlerFor(module: ReflectionModule, index: Index) {
  const m = module as typeof v1;
  return (call: GrpcStream) => {
    call.onMessage((bytes) => {
      let request: v1.ServerReflectionRequest;
      try {
        request = fromBinary(m.ServerReflectionRequestSchema, bytes);
      } catch (error) {
        call.end(
          new ServiceError(
            Code.INVALID_ARGUMENT,
            `malformed reflection request: ${(error as Error).message}`,
          ),
        );
        return;
      }
      const reply = (response: v1.ServerReflectionResponse["messageResponse"]) =>
        call.send(
          toBinary(
            m.ServerReflectionResponseSchema,
            create(m.ServerReflectionResponseSchema, {
              validHost: request.host,
              originalRequest: request,
              messageResponse: response,
            }),
          ),
        );
      const files = (file: DescFile | undefined, what: string) =>
        file
          ? reply({
            case: "fileDescriptorResponse",
            value: create(m.FileDescriptorResponseSchema, { fileDescriptorProto: withDependencies(file) }),
          })
          : reply({
            case: "errorResponse",
            value: create(m.ErrorResponseSchema, { errorCode: 5, errorMessage: `${what} not found` }),
          });
      const ask = request.messageRequest;
      switch (ask.case) {
        case "listServices":
          reply({
            case: "listServicesResponse",
            value: create(m.ListServiceResponseSchema, {
              service: index.serviceNames.map((name) => ({ name })),
            }),
          });
          break;
        case "fileByFilename":
          files(index.files.get(ask.value), `file ${ask.value}`);
          break;
        case "fileContainingSymbol":
          files(index.symbols.get(ask.value.replace(/^\./, "")), `symbol ${ask.value}`);
          break;
        case "allExtensionNumbersOfType":
          reply({
            case: "allExtensionNumbersResponse",
            value: create(m.ExtensionNumberResponseSchema, { baseTypeName: ask.value, extensionNumber: [] }),
          });
          break;
        default:
          reply({
            case: "errorResponse",
            value: create(m.ErrorResponseSchema, {
              errorCode: 12,
              errorMessage: "request kind not supported",
            }),
          });
      }
    });
    call.onEnd(() => call.end());
  };
}

/** Registers both reflection versions, describing `services` (plus the named protocol services). */
export function addReflection(
  server: GrpcServer,
  services: readonly DescService[],
  extraServices: readonly DescService[],
): void {
  const all = [...services, ...extraServices, v1.ServerReflection, v1alpha.ServerReflection];
  const index = buildIndex(all, []);
  for (const module of [v1, v1alpha] as const) {
    server.addStreaming(
      methodPath(module.ServerReflection.method.serverReflectionInfo),
      handlerFor(module, index),
    );
  }
}
