export {
  type ByteStream,
  CONNECTION_LOST,
  createHttp2Connection,
  type Http2Connection,
  type Http2Handler,
  type Http2Observer,
  type Http2Stream,
  refuseConnection,
} from "./connection.ts";
export { CLIENT_PREFACE, ErrorCode, errorCodeName, Flag, FrameType, Setting } from "./frames.ts";
export { createHpackDecoder, createHpackEncoder, HpackError, huffmanDecode, huffmanEncode } from "./hpack.ts";
export { DEFAULT_HTTP2_LIMITS, type Http2Limits, readHttp2Limits } from "./limits.ts";
