/**
 * The gRPC wire format both sides of the kit's transport share (grpc_server.ts, client.ts): length-prefixed
 * messages, the percent-encoded grpc-message, and header values.
 */
import { Buffer } from "node:buffer";
import type http2 from "node:http2";
import { Code, ServiceError } from "./errors.ts";

export const GRPC_CONTENT_TYPE = "application/grpc";

/** grpc-message is percent-encoded (the gRPC spec: every byte outside 0x20-0x7E, and %). */
export function encodeGrpcMessage(message: string): string {
  return /[^\x20-\x24\x26-\x7e]/.test(message) ? encodeURIComponent(message) : message;
}

/** A 5-byte prefix (uncompressed, big-endian length) and the message. */
export function frameMessage(message: Uint8Array): Buffer {
  const framed = Buffer.allocUnsafe(5 + message.byteLength);
  framed[0] = 0;
  framed.writeUInt32BE(message.byteLength, 1);
  framed.set(message, 5);
  return framed;
}

/**
 * Splits a byte stream into gRPC messages. Throws a ServiceError for a compressed message or one larger
 * than `maxBytes`.
 */
export class MessageReader {
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  constructor(private readonly maxBytes: number) {}

  /** Adds a chunk; returns the messages it completed. */
  push(chunk: Buffer): Uint8Array[] {
    this.#pending.push(chunk);
    this.#pendingBytes += chunk.length;
    const messages: Uint8Array[] = [];
    while (this.#pendingBytes >= 5) {
      let buffer = this.#pending[0].length >= 5 ? this.#pending[0] : this.#merge();
      if (buffer[0] !== 0) {
        throw new ServiceError(Code.UNIMPLEMENTED, "compressed messages are not supported (identity only)");
      }
      const length = buffer.readUInt32BE(1);
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

  #merge(): Buffer {
    const merged = Buffer.concat(this.#pending, this.#pendingBytes);
    this.#pending = [merged];
    return merged;
  }
}

/** A header's first value, as a string. */
export function firstHeader(headers: http2.IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  if (value === undefined) return undefined;
  return Array.isArray(value) ? value[0] : String(value);
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
