export { type CallOptions, type ClientOptions, createClient, type ServiceClient } from "./client.ts";
export { Code, codeName, httpStatusFromCode, ServiceError } from "./errors.ts";
export { methodPath } from "./method_path.ts";
export {
  createGrpcServer,
  type GrpcCallInfo,
  type GrpcServer,
  type GrpcStream,
  type UnaryResponder,
} from "./server.ts";
