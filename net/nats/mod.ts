export {
  connectNats,
  defaultInboxPrefix,
  describeNats,
  guardNatsSocketErrors,
  type NatsAuth,
  type NatsConfig,
  natsConfig,
  natsJsOptions,
  readNatsConfig,
  wireServers,
} from "./config.ts";
export { type NatsCredentials, type NatsCredsFile, parseCredentials } from "./nkeys.ts";
export {
  createDisabledEventSink,
  createEventSink,
  type EventSink,
  type EventSinkOptions,
  type EventsReadiness,
  minDuplicateWindowMs,
  type RequestEvent,
  type RequestEventInit,
} from "./publisher.ts";
export { createPullReceiver, Delivery, parseAckReply, type PullReceiver, type PullTrouble } from "./pull.ts";
export { applyRequestEventsStream, checkRequestEventsStream } from "./stream_setup.ts";
export { createNatsWire, type NatsWire, type NatsWireOptions } from "./wire.ts";
export {
  DEFAULT_MAX_PAYLOAD,
  MAX_WIRE_PAYLOAD,
  type NatsErrorKind,
  natsErrorKind,
  natsErrorText,
  type NatsServerAddress,
  type NatsServerInfo,
  parseConnectUrl,
  parseNatsUrl,
  type ProtocolHandlers,
  ProtocolReader,
  serverKey,
  type WireMessage,
} from "./protocol.ts";
