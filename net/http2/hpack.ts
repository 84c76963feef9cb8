/**
 * HPACK (RFC 7541), the header compression of HTTP/2: a decoder with the dynamic table and Huffman strings,
 * and an encoder that indexes the fields that repeat.
 *
 * Strings are Latin-1 (one char per byte), as HTTP/2 field values are octets; gRPC's own headers are ASCII.
 */
import { HUFFMAN_CODE_LENGTHS, HUFFMAN_CODES } from "./huffman_table.ts";

/** A header block that is not valid HPACK: a COMPRESSION_ERROR of the whole connection (RFC 7540 4.3). */
export class HpackError extends Error {
  override name = "HpackError";
}

/** RFC 7541 Appendix A: the static table, index 1 first. */
const STATIC_TABLE: ReadonlyArray<readonly [string, string]> = [
  [":authority", ""],
  [":method", "GET"],
  [":method", "POST"],
  [":path", "/"],
  [":path", "/index.html"],
  [":scheme", "http"],
  [":scheme", "https"],
  [":status", "200"],
  [":status", "204"],
  [":status", "206"],
  [":status", "304"],
  [":status", "400"],
  [":status", "404"],
  [":status", "500"],
  ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"],
  ["accept-language", ""],
  ["accept-ranges", ""],
  ["accept", ""],
  ["access-control-allow-origin", ""],
  ["age", ""],
  ["allow", ""],
  ["authorization", ""],
  ["cache-control", ""],
  ["content-disposition", ""],
  ["content-encoding", ""],
  ["content-language", ""],
  ["content-length", ""],
  ["content-location", ""],
  ["content-range", ""],
  ["content-type", ""],
  ["cookie", ""],
  ["date", ""],
  ["etag", ""],
  ["expect", ""],
  ["expires", ""],
  ["from", ""],
  ["host", ""],
  ["if-match", ""],
  ["if-modified-since", ""],
  ["if-none-match", ""],
  ["if-range", ""],
  ["if-unmodified-since", ""],
  ["last-modified", ""],
  ["link", ""],
  ["location", ""],
  ["max-forwards", ""],
  ["proxy-authenticate", ""],
  ["proxy-authorization", ""],
  ["range", ""],
  ["referer", ""],
  ["refresh", ""],
  ["retry-after", ""],
  ["server", ""],
  ["set-cookie", ""],
  ["strict-transport-security", ""],
  ["transfer-encoding", ""],
  ["user-agent", ""],
  ["vary", ""],
  ["via", ""],
  ["www-authenticate", ""],
];
const STATIC_COUNT = STATIC_TABLE.length;
/** The first static index of each name, for literals with an indexed name. */
const STATIC_NAME_INDEX = new Map<string, number>();
STATIC_TABLE.forEach(([name], i) => {
  if (!STATIC_NAME_INDEX.has(name)) STATIC_NAME_INDEX.set(name, i + 1);
});

/** An entry's size in the dynamic table: its octets plus 32 (RFC 7541 4.1). */
const entrySize = (name: string, value: string) => name.length + value.length + 32;

// --- Huffman -------------------------------------------------------------------------------------------------

/**
 * Decoding tables: nodes of 256 entries, each read with the next 8 bits. An entry is 0 (no code starts so),
 * a leaf `1 + (bitsUsed << 9 | symbol)` (the symbol's code ends within these 8 bits, after `bitsUsed`), or a
 * child node `-index` (the code goes on for more than 8 bits).
 */
const HUFFMAN_NODES: Int32Array = (() => {
  const nodes: number[][] = [new Array(256).fill(0)];
  for (let symbol = 0; symbol <= 256; symbol++) {
    const code = HUFFMAN_CODES[symbol];
    let length = HUFFMAN_CODE_LENGTHS[symbol];
    let node = 0;
    while (length > 8) {
      length -= 8;
      const i = (code >>> length) & 0xff;
      let child = nodes[node][i];
      if (child >= 0) {
        child = -nodes.length;
        nodes[node][i] = child;
        nodes.push(new Array(256).fill(0));
      }
      node = -child;
    }
    const shift = 8 - length;
    const start = (code << shift) & 0xff;
    for (let j = 0; j < 1 << shift; j++) nodes[node][start + j] = 1 + ((length << 9) | symbol);
  }
  return Int32Array.from(nodes.flat());
})();

const EOS = 256;
let scratch = new Uint16Array(256);

function ensureScratch(length: number): Uint16Array {
  if (scratch.length < length) scratch = new Uint16Array(Math.max(length, scratch.length * 2));
  return scratch;
}

function charsToString(chars: Uint16Array | Uint8Array, length: number): string {
  let text = "";
  for (let at = 0; at < length; at += 4096) {
    text += String.fromCharCode.apply(null, chars.subarray(at, Math.min(length, at + 4096)) as never);
  }
  return text;
}

/** Decodes a Huffman-coded string (RFC 7541 5.2); throws HpackError on a bad code or bad padding. */
export function huffmanDecode(bytes: Uint8Array, start: number, end: number): string {
  // At most 8/5 symbols per byte: the shortest code is 5 bits.
  const out = ensureScratch(Math.ceil(((end - start) * 8) / 5));
  let length = 0;
  let bits = 0;
  let bitCount = 0;
  let node = 0;
  for (let i = start; i < end; i++) {
    bits = ((bits << 8) | bytes[i]) & 0xffff;
    bitCount += 8;
    while (bitCount >= 8) {
      const entry = HUFFMAN_NODES[node * 256 + ((bits >>> (bitCount - 8)) & 0xff)];
      if (entry > 0) {
        const symbol = (entry - 1) & 0x1ff;
        if (symbol === EOS) throw new HpackError("Huffman string contains EOS");
        out[length++] = symbol;
        bitCount -= (entry - 1) >>> 9;
        node = 0;
      } else if (entry < 0) {
        node = -entry;
        bitCount -= 8;
      } else {
        throw new HpackError("invalid Huffman code");
      }
    }
  }
  while (bitCount > 0) {
    const entry = HUFFMAN_NODES[node * 256 + ((bits << (8 - bitCount)) & 0xff)];
    if (entry <= 0 || (entry - 1) >>> 9 > bitCount) break;
    const symbol = (entry - 1) & 0x1ff;
    if (symbol === EOS) throw new HpackError("Huffman string contains EOS");
    out[length++] = symbol;
    bitCount -= (entry - 1) >>> 9;
    node = 0;
  }
  // Padding: fewer than 8 bits, all ones (a prefix of EOS), and not inside a longer code.
  const mask = (1 << bitCount) - 1;
  if (node !== 0 || bitCount > 7 || (bits & mask) !== mask) {
    throw new HpackError("invalid Huffman padding");
  }
  return charsToString(out, length);
}

/** Huffman-encodes Latin-1 `text` (used by tests; the encoder below writes raw strings). */
export function huffmanEncode(text: string): Uint8Array {
  const out: number[] = [];
  let bits = 0;
  let bitCount = 0;
  for (let i = 0; i < text.length; i++) {
    const symbol = text.charCodeAt(i) & 0xff;
    let length = HUFFMAN_CODE_LENGTHS[symbol];
    const code = HUFFMAN_CODES[symbol];
    while (length > 0) {
      const take = Math.min(length, 8);
      length -= take;
      bits = (bits << take) | ((code >>> length) & ((1 << take) - 1));
      bitCount += take;
      while (bitCount >= 8) {
        bitCount -= 8;
        out.push((bits >>> bitCount) & 0xff);
      }
      bits &= (1 << bitCount) - 1;
    }
  }
  if (bitCount > 0) out.push(((bits << (8 - bitCount)) | ((1 << (8 - bitCount)) - 1)) & 0xff);
  return Uint8Array.from(out);
}

// --- decoding ------------------------------------------------------------------------------------------------

export interface HpackDecoder {
  /**
   * Decodes one whole header block (all its CONTINUATION fragments joined), appending name, value, name,
   * value... to `out`. Returns the header list size (RFC 7540 6.5.2: octets plus 32 per field). Throws
   * HpackError for anything malformed; after that the connection must end, its table state is lost.
   */
  decode(block: Uint8Array, out: string[]): number;
}

/** A decoder whose dynamic table may grow to `maxTableSize` octets (our SETTINGS_HEADER_TABLE_SIZE). */
export function createHpackDecoder(maxTableSize = 4096): HpackDecoder {
  // The dynamic table as a ring, newest at `head - 1`: index 62 is the newest entry.
  let names: string[] = new Array(16);
  let values: string[] = new Array(16);
  let head = 0;
  let count = 0;
  let size = 0;
  let tableLimit = maxTableSize;

  const evictTo = (limit: number) => {
    while (size > limit && count > 0) {
      const oldest = (head - count + names.length) % names.length;
      size -= entrySize(names[oldest], values[oldest]);
      names[oldest] = values[oldest] = "";
      count--;
    }
  };
  const insert = (name: string, value: string) => {
    const added = entrySize(name, value);
    evictTo(tableLimit - added);
    if (added > tableLimit) return; // larger than the table: it empties the table and is not added
    if (count === names.length) {
      const grownNames = new Array<string>(names.length * 2);
      const grownValues = new Array<string>(names.length * 2);
      for (let i = 0; i < count; i++) {
        const from = (head - count + i + names.length) % names.length;
        grownNames[i] = names[from];
        grownValues[i] = values[from];
      }
      names = grownNames;
      values = grownValues;
      head = count;
    }
    names[head] = name;
    values[head] = value;
    head = (head + 1) % names.length;
    count++;
    size += added;
  };
  /** Entry `index` (1-based over the static then the dynamic table) into name/value. */
  const entry = (index: number): [string, string] => {
    if (index >= 1 && index <= STATIC_COUNT) return STATIC_TABLE[index - 1] as [string, string];
    const dynamic = index - STATIC_COUNT;
    if (index === 0 || dynamic > count) throw new HpackError(`header index ${index} is out of range`);
    const at = (head - dynamic + names.length) % names.length;
    return [names[at], values[at]];
  };

  // The block being decoded and the position in it (state of the decoder, not per call: no closures per block).
  let block: Uint8Array = EMPTY;
  let pos = 0;
  let end = 0;

  const integer = (prefixBits: number): number => {
    const max = (1 << prefixBits) - 1;
    let value = block[pos++] & max;
    if (value < max) return value;
    let shift = 0;
    for (;;) {
      if (pos >= end) throw new HpackError("truncated integer");
      const byte = block[pos++];
      value += (byte & 0x7f) * 2 ** shift;
      shift += 7;
      if ((byte & 0x80) === 0) break;
      if (shift > 28) throw new HpackError("integer too large");
    }
    if (value > 0x7fffffff) throw new HpackError("integer too large");
    return value;
  };
  const string = (): string => {
    if (pos >= end) throw new HpackError("truncated string");
    const huffman = (block[pos] & 0x80) !== 0;
    const length = integer(7);
    if (pos + length > end) throw new HpackError("string longer than its block");
    const start = pos;
    pos += length;
    return huffman ? huffmanDecode(block, start, pos) : charsToString(block.subarray(start, pos), length);
  };

  return {
    decode(input, out) {
      block = input;
      pos = 0;
      end = input.length;
      let listSize = 0;
      let fieldsSeen = false;
      while (pos < end) {
        const first = block[pos];
        let name: string;
        let value: string;
        if (first & 0x80) {
          const [n, v] = entry(integer(7));
          name = n;
          value = v;
        } else if ((first & 0xe0) === 0x20) {
          // Dynamic table size update: only before the block's first field (RFC 7541 4.2).
          if (fieldsSeen) throw new HpackError("table size update after a header field");
          const limit = integer(5);
          if (limit > maxTableSize) throw new HpackError(`table size ${limit} is over ${maxTableSize}`);
          tableLimit = limit;
          evictTo(limit);
          continue;
        } else {
          const indexing = (first & 0xc0) === 0x40;
          const index = integer(indexing ? 6 : 4);
          name = index === 0 ? string() : entry(index)[0];
          value = string();
          if (indexing) insert(name, value);
        }
        fieldsSeen = true;
        out.push(name, value);
        listSize += entrySize(name, value);
      }
      block = EMPTY;
      return listSize;
    },
  };
}

const EMPTY = new Uint8Array(0);

// --- encoding ------------------------------------------------------------------------------------------------

/** Fields whose values change from one message to the next: adding them to the table would only churn it. */
const VOLATILE = new Set([
  "grpc-timeout",
  "grpc-message",
  "grpc-status-details-bin",
  "traceparent",
  "tracestate",
  "retry-after",
  "content-length",
  "date",
]);
/** Fields never stored by any intermediary either (RFC 7541 7.1.3). */
const SENSITIVE = new Set(["authorization", "proxy-authorization", "cookie", "set-cookie"]);

/** The static table's whole entries, by name and value. */
const STATIC_ENTRY_INDEX = new Map<string, Map<string, number>>();
STATIC_TABLE.forEach(([name, value], i) => {
  let byValue = STATIC_ENTRY_INDEX.get(name);
  if (!byValue) STATIC_ENTRY_INDEX.set(name, byValue = new Map());
  if (!byValue.has(value)) byValue.set(value, i + 1);
});

export interface HpackEncoder {
  /**
   * Encodes a header list (name, value, name, value...; names lower-case, values Latin-1) as one block.
   * The result is a view into a buffer the next call reuses: copy it out before encoding again. Blocks must
   * reach the peer in the order they were encoded (the dynamic table is shared state).
   */
  encode(fields: readonly string[]): Uint8Array;
  /** The peer's SETTINGS_HEADER_TABLE_SIZE: the table shrinks to it, and the next block says so. */
  setMaxTableSize(size: number): void;
}

/**
 * An encoder that keeps the fields that repeat (:path, :authority, content-type, :status...) in the peer's
 * dynamic table, so that after the first message they cost a byte or two, and the peer decodes them without
 * allocating; fields that vary per message (VOLATILE) are sent as literals without indexing, sensitive ones
 * as never indexed. Strings are sent raw (no Huffman): on loopback, bytes are cheaper than the coding.
 */
export function createHpackEncoder(): HpackEncoder {
  const ourLimit = 4096;
  let maxSize = ourLimit;
  let pendingSizeUpdate = -1;
  // The table as a FIFO: entries[0] is the oldest; an entry's index is 62 + (newest position - its position).
  const entries: Array<{ name: string; value: string; size: number; seq: number }> = [];
  let inserted = 0;
  let size = 0;
  const byField = new Map<string, Map<string, { seq: number }>>();
  let out = new Uint8Array(1024);
  let pos = 0;

  const ensure = (more: number) => {
    if (pos + more <= out.length) return;
    const grown = new Uint8Array(Math.max(out.length * 2, pos + more));
    grown.set(out.subarray(0, pos));
    out = grown;
  };
  const integer = (flags: number, prefixBits: number, value: number) => {
    ensure(6);
    const max = (1 << prefixBits) - 1;
    if (value < max) {
      out[pos++] = flags | value;
      return;
    }
    out[pos++] = flags | max;
    value -= max;
    while (value >= 0x80) {
      out[pos++] = (value & 0x7f) | 0x80;
      value = Math.floor(value / 128);
    }
    out[pos++] = value;
  };
  const string = (text: string) => {
    integer(0, 7, text.length);
    ensure(text.length);
    for (let i = 0; i < text.length; i++) out[pos++] = text.charCodeAt(i);
  };
  const evictTo = (limit: number) => {
    while (size > limit && entries.length > 0) {
      const oldest = entries.shift()!;
      size -= oldest.size;
      const byValue = byField.get(oldest.name)!;
      if (byValue.get(oldest.value)?.seq === oldest.seq) byValue.delete(oldest.value);
    }
  };
  const insert = (name: string, value: string) => {
    const added = entrySize(name, value);
    evictTo(maxSize - added);
    if (added > maxSize) return;
    const seq = inserted++;
    entries.push({ name, value, size: added, seq });
    size += added;
    let byValue = byField.get(name);
    if (!byValue) byField.set(name, byValue = new Map());
    byValue.set(value, { seq });
  };

  return {
    encode(fields) {
      pos = 0;
      if (pendingSizeUpdate >= 0) {
        integer(0x20, 5, pendingSizeUpdate);
        pendingSizeUpdate = -1;
      }
      for (let i = 0; i < fields.length; i += 2) {
        const name = fields[i];
        const value = fields[i + 1];
        const staticIndex = STATIC_ENTRY_INDEX.get(name)?.get(value);
        if (staticIndex !== undefined) {
          integer(0x80, 7, staticIndex);
          continue;
        }
        const dynamic = byField.get(name)?.get(value);
        if (dynamic) {
          integer(0x80, 7, STATIC_COUNT + inserted - dynamic.seq);
          continue;
        }
        const nameIndex = STATIC_NAME_INDEX.get(name) ?? 0;
        if (SENSITIVE.has(name)) {
          integer(0x10, 4, nameIndex);
        } else if (VOLATILE.has(name) || maxSize === 0) {
          integer(0x00, 4, nameIndex);
        } else {
          integer(0x40, 6, nameIndex);
          insert(name, value);
        }
        if (nameIndex === 0) string(name);
        string(value);
      }
      return out.subarray(0, pos);
    },
    setMaxTableSize(limit) {
      const next = Math.min(limit, ourLimit);
      if (next === maxSize && pendingSizeUpdate < 0) return;
      maxSize = next;
      evictTo(maxSize);
      pendingSizeUpdate = maxSize;
    },
  };
}

/** One block from a fresh encoder: for tests and for constant answers. */
export function encodeFields(fields: ReadonlyArray<readonly [string, string]>): Uint8Array {
  return createHpackEncoder().encode(fields.flat()).slice();
}
