export { DEFAULT_PORTS, loadServiceConfig, type ServiceConfig } from "./config.ts";
export { type Faults, parseFaults, sampleDelayMs, validateFaults } from "./faults.ts";
export { bindService, type CallContext, type ServiceBinding, type ServiceHandlers } from "./pipeline.ts";
export { type RunningService, runServiceMain, type ServiceSetup, startService } from "./runtime.ts";
export { bytesToLatin1, latin1ToBytes, PackedMessages } from "./packed_messages.ts";
export {
  decodePageToken,
  encodePageToken,
  pageSize,
  requireCurrency,
  requireId,
  requireRange,
  requireText,
} from "./validate.ts";
