/**
 * The gRPC wire format both sides of the kit's transport share (grpc_server.ts, client.ts): length-prefixed
 * messages, the percent-encoded grpc-message, and header lists as the HTTP/2 connection hands them over.
 */
import { Code, ServiceError } from "./errors.ts";

export const GRPC_CONTENT_TYPE = "application/grpc";

/** grpc-message is percent-encoded (the gRPC spec: every byte outside 0x20-0x7E, and %). */
export function encodeGrpcMessage(message: string): string {
  return /[^\x20-\x24\x26-\x7e]/.test(message) ? encodeURIComponent(message) : message;
}

/** A 5-byte prefix (uncompressed, big-endian length) and the message. */
export function frameMessage(message: Uint8Array): Uint8Array {
  const length = message.byteLength;
  const framed = new Uint8Array(5 + length);
  framed[1] = length >>> 24;
  framed[2] = (length >>> 16) & 0xff;
  framed[3] = (length >>> 8) & 0xff;
  framed[4] = length & 0xff;
  framed.set(message, 5);
  return framed;
}

const readLength = (bytes: Uint8Array, at: number) =>
  ((bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3]) >>> 0;

/**
 * Splits a byte stream into gRPC messages. Throws a ServiceError for a compressed message or one larger
 * than `maxBytes`.
 */
export class MessageReader {
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  constructor(private readonly maxBytes: number) {}

  /** Adds a chunk; returns the messages it completed. */
  push(chunk: Uint8Array): Uint8Array[] {
    this.#pending.push(chunk);
    this.#pendingBytes += chunk.length;
    const messages: Uint8Array[] = [];
    while (this.#pendingBytes >= 5) {
      let buffer = this.#pending[0].length >= 5 ? this.#pending[0] : this.#merge();
      if (buffer[0] !== 0) {
        throw new ServiceError(Code.UNIMPLEMENTED, "compressed messages are not supported (identity only)");
      }
      const length = readLength(buffer, 1);
      if (length > this.maxBytes) {
        throw new ServiceError(
          Code.RESOURCE_EXHAUSTED,
          `request message of ${length} bytes is larger than the limit of ${this.maxBytes}`,
        );
      }
      if (this.#pendingBytes < 5 + length) break;
      if (buffer.length < 5 + length) buffer = this.#merge();
      messages.push(buffer.subarray(5, 5 + length));
      const rest = buffer.subarray(5 + length);
      if (rest.length > 0) this.#pending[0] = rest;
      else this.#pending.shift();
      this.#pendingBytes -= 5 + length;
    }
    return messages;
  }

  /** Bytes received that are not yet a whole message. */
  get partialBytes(): number {
    return this.#pendingBytes;
  }

  #merge(): Uint8Array {
    const merged = new Uint8Array(this.#pendingBytes);
    let at = 0;
    for (const part of this.#pending) {
      merged.set(part, at);
      at += part.length;
    }
    this.#pending = [merged];
    return merged;
  }
}

/** A field's first value in a header list (name, value, name, value...; names are lower-case). */
export function fieldValue(fields: readonly string[], name: string): string | undefined {
  for (let i = 0; i < fields.length; i += 2) {
    if (fields[i] === name) return fields[i + 1];
  }
  return undefined;
}

/** The grpc-message header decoded; a malformed encoding is returned as it came. */
export function decodeGrpcMessage(value: string | undefined): string {
  if (!value) return "";
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** Header values must be visible ASCII (gRPC's ASCII metadata); anything else is refused, not mangled. */
export function checkHeaderValue(name: string, value: string): void {
  if (!/^[\x20-\x7e]*$/.test(value)) {
    throw new ServiceError(Code.INTERNAL, `metadata ${name} holds characters outside printable ASCII`);
  }
}

/** The status fields that end a call: extra metadata, grpc-status and grpc-message (name, value...). */
export function statusFields(error: ServiceError | undefined, extra: Record<string, string> = {}): string[] {
  const fields: string[] = [];
  for (const [name, value] of Object.entries(extra)) fields.push(name.toLowerCase(), value);
  fields.push("grpc-status", String(error?.code ?? Code.OK));
  if (error && error.message) fields.push("grpc-message", encodeGrpcMessage(error.message));
  return fields;
}
