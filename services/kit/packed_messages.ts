/**
 * Protobuf messages kept in a BoundedMap as their binary encoding, one Latin-1 string each.
 *
 * Why: the services remember up to hundreds of thousands of orders, reservations and payments. As protobuf-es
 * objects each was a dozen heap objects (the message, its arrays, nested messages, BigInts, strings), and every
 * one of them is traced by every major GC and copied by the scavenges that promote it: at 1000 orders/s the
 * pauses of that work were the services' latency tail. A string holding the encoded bytes is one object the GC
 * never looks inside. A read decodes a fresh message (a few microseconds); a change is written back with `set`.
 */
import { type DescMessage, fromBinary, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { BoundedMap } from "@tailwatch/runtime";

/** Bytes as a string of the same char codes (0-255). */
export function bytesToLatin1(bytes: Uint8Array): string {
  let text = "";
  for (let at = 0; at < bytes.length; at += 8192) {
    text += String.fromCharCode.apply(null, bytes.subarray(at, at + 8192) as unknown as number[]);
  }
  return text;
}

/** The bytes of a string made by bytesToLatin1, from char `start` on. */
export function latin1ToBytes(text: string, start = 0): Uint8Array {
  const bytes = new Uint8Array(text.length - start);
  for (let i = 0; i < bytes.length; i++) bytes[i] = text.charCodeAt(start + i);
  return bytes;
}

/**
 * At most `capacity` messages of one type by key (the oldest insertion goes first), each with an optional
 * label (up to 255 chars kept next to it, e.g. the customer an order belongs to) that `label` reads and scans
 * filter on without decoding.
 */
export class PackedMessages<Desc extends DescMessage> {
  readonly #entries: BoundedMap<string, string>;

  constructor(readonly schema: Desc, capacity: number) {
    this.#entries = new BoundedMap(capacity);
  }

  get size(): number {
    return this.#entries.size;
  }

  has(key: string): boolean {
    return this.#entries.has(key);
  }

  /** The label the message was set with; undefined when the key is unknown. */
  label(key: string): string | undefined {
    const packed = this.#entries.get(key);
    return packed === undefined ? undefined : packed.slice(1, 1 + packed.charCodeAt(0));
  }

  /** A decoded copy of the message: change it and `set` it to keep the change. */
  get(key: string): MessageShape<Desc> | undefined {
    const packed = this.#entries.get(key);
    return packed === undefined ? undefined : this.#decode(packed);
  }

  set(key: string, message: MessageShape<Desc>, label = ""): void {
    if (label.length > 255) throw new Error("a label is at most 255 characters");
    this.#entries.set(
      key,
      String.fromCharCode(label.length) + label + bytesToLatin1(toBinary(this.schema, message)),
    );
  }

  /** Entries from the newest to the oldest, decoded one at a time; only those with `label` when given. */
  *newestFirst(label?: string): IterableIterator<[string, MessageShape<Desc>]> {
    for (const [key, packed] of this.#entries.newestFirst()) {
      if (label !== undefined && (packed.charCodeAt(0) !== label.length || !packed.startsWith(label, 1))) {
        continue;
      }
      yield [key, this.#decode(packed)];
    }
  }

  #decode(packed: string): MessageShape<Desc> {
    return fromBinary(this.schema, latin1ToBytes(packed, 1 + packed.charCodeAt(0)));
  }
}
