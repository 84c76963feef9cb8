/**
 * NATS nkeys and `.creds` files, as far as a client needs them: decoding a user's seed, signing the server's
 * nonce with it (Ed25519 through WebCrypto), and the public key it belongs to.
 *
 * An nkey is base32 (RFC 4648 alphabet, no padding) of a prefix, the 32 key bytes and a CRC-16 (XMODEM:
 * polynomial 0x1021, initial 0) of what precedes it, little-endian. A public key's prefix is one byte, the
 * key's type shifted left by 3 (`U` user 20, `A` account 0, `O` operator 14, ...), which makes its first base32
 * character that letter. A seed's prefix is two bytes: `S` (18 << 3) in the top five bits of the first, the
 * type in the next five, so a user's seed starts with `SU`. The 32 bytes of a seed are the Ed25519 private
 * seed (RFC 8032), which WebCrypto takes as PKCS #8. This is what github.com/nats-io/nkeys and @nats-io/nkeys
 * do; the tests check it against nats-server (which verifies the JWTs and the signature) and nats.js.
 *
 * A `.creds` file holds a user JWT and its seed between `-----BEGIN ...-----` and `------END ...------` lines,
 * as `nsc` writes it; the JWT is sent in CONNECT as is, with the nonce signed by the seed.
 */

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const encoder = new TextEncoder();

/** The types of nkeys, by their prefix byte (the first base32 character of a public key). */
export const NKEY_PREFIX = Object.freeze({
  seed: 18 << 3,
  operator: 14 << 3,
  account: 0,
  user: 20 << 3,
  server: 13 << 3,
  cluster: 2 << 3,
});

/** Base32 without padding (RFC 4648 alphabet). */
export function base32Encode(bytes: Uint8Array): string {
  let out = "";
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

/** Base32 without padding; throws on a character outside the alphabet. */
export function base32Decode(text: string): Uint8Array {
  const out = new Uint8Array(Math.floor((text.length * 5) / 8));
  let bits = 0;
  let value = 0;
  let at = 0;
  for (const char of text) {
    const digit = ALPHABET.indexOf(char);
    if (digit < 0) throw new Error("nkey: not base32");
    value = ((value << 5) | digit) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out[at++] = (value >>> (bits - 8)) & 0xff;
      bits -= 8;
    }
  }
  return out;
}

/** CRC-16/XMODEM (polynomial 0x1021, initial 0), as nkeys computes it. */
export function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const byte of bytes) {
    crc ^= byte << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

/** `prefix` bytes, the key and their CRC-16 (little-endian), in base32. */
function encodeWithCrc(prefix: number[], key: Uint8Array): string {
  const raw = new Uint8Array(prefix.length + key.length + 2);
  raw.set(prefix);
  raw.set(key, prefix.length);
  const crc = crc16(raw.subarray(0, raw.length - 2));
  raw[raw.length - 2] = crc & 0xff;
  raw[raw.length - 1] = crc >>> 8;
  return base32Encode(raw);
}

/** Decodes base32 and checks the trailing CRC-16; returns what precedes it. */
function decodeWithCrc(text: string): Uint8Array {
  const raw = base32Decode(text.trim());
  if (raw.length < 4) throw new Error("nkey: too short");
  const body = raw.subarray(0, raw.length - 2);
  const crc = raw[raw.length - 2] | (raw[raw.length - 1] << 8);
  if (crc16(body) !== crc) throw new Error("nkey: bad checksum");
  return body;
}

/** The public nkey of type `prefix` (NKEY_PREFIX) for 32 Ed25519 public key bytes. */
export function encodePublicKey(prefix: number, key: Uint8Array): string {
  if (key.length !== 32) throw new Error("nkey: a public key has 32 bytes");
  return encodeWithCrc([prefix], key);
}

/** The 32 key bytes of a public nkey, checking its type. */
export function decodePublicKey(text: string, prefix: number): Uint8Array {
  const body = decodeWithCrc(text);
  if (body.length !== 33 || body[0] !== prefix) throw new Error("nkey: not a public key of that type");
  return body.slice(1);
}

/** The seed nkey of type `prefix` for a 32-byte Ed25519 seed. */
export function encodeSeed(prefix: number, seed: Uint8Array): string {
  if (seed.length !== 32) throw new Error("nkey: a seed has 32 bytes");
  return encodeWithCrc([NKEY_PREFIX.seed | (prefix >>> 5), (prefix & 31) << 3], seed);
}

/** A seed's type (NKEY_PREFIX) and its 32 bytes; throws for anything that is not a valid seed. */
export function decodeSeed(text: string): { prefix: number; seed: Uint8Array } {
  const body = decodeWithCrc(text);
  if (body.length !== 34 || (body[0] & 0xf8) !== NKEY_PREFIX.seed) throw new Error("nkey: not a seed");
  const prefix = ((body[0] & 0x07) << 5) | ((body[1] & 0xf8) >>> 3);
  return { prefix, seed: body.slice(2) };
}

/** PKCS #8 of an Ed25519 private key: this fixed header, then the 32-byte seed (RFC 8410). */
const PKCS8_ED25519 = [
  0x30,
  0x2e,
  0x02,
  0x01,
  0x00,
  0x30,
  0x05,
  0x06,
  0x03,
  0x2b,
  0x65,
  0x70,
  0x04,
  0x22,
  0x04,
  0x20,
];

/** An Ed25519 key pair from a seed nkey: its public nkey, and signing. */
export interface NkeyPair {
  /** The public nkey (`U...` for a user). */
  readonly publicKey: string;
  /** An Ed25519 signature of `data` (64 bytes). */
  sign(data: Uint8Array<ArrayBuffer>): Promise<Uint8Array>;
}

/** The key pair of a seed nkey (WebCrypto Ed25519). */
export async function nkeyPairFromSeed(seedText: string): Promise<NkeyPair> {
  const { prefix, seed } = decodeSeed(seedText);
  const pkcs8 = new Uint8Array(PKCS8_ED25519.length + 32);
  pkcs8.set(PKCS8_ED25519);
  pkcs8.set(seed, PKCS8_ED25519.length);
  const key = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, true, ["sign"]);
  const jwk = await crypto.subtle.exportKey("jwk", key);
  const publicKey = encodePublicKey(prefix, base64UrlDecode(jwk.x ?? ""));
  return {
    publicKey,
    sign: async (data) => new Uint8Array(await crypto.subtle.sign("Ed25519", key, data)),
  };
}

/** Base64url without padding (how nats.go sends a nonce signature; nats-server also takes standard base64). */
export function base64UrlEncode(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

export function base64UrlDecode(text: string): Uint8Array {
  const binary = atob(text.replaceAll("-", "+").replaceAll("_", "/") + "=".repeat((4 - text.length % 4) % 4));
  return Uint8Array.from(binary, (char) => char.charCodeAt(0));
}

/** What a `.creds` file holds. */
export interface NatsCredentials {
  /** The user JWT, sent in CONNECT. */
  jwt: string;
  /** The user's seed nkey (`SU...`), which signs the server's nonce. */
  seed: string;
  /** The JWT's `name` claim (the user's name as nsc gave it), if any. */
  name?: string;
  /** The JWT's `sub` claim: the user's public nkey. */
  subject: string;
  /** When the JWT expires (epoch s; its `exp` claim), if it does. */
  expiresAt?: number;
}

/**
 * Parses the text of a `.creds` file: the first block is the user JWT, the second the seed (nsc's layout; the
 * same pattern nats.js and nats.go read). Throws, saying what is wrong (never quoting the seed), when the file
 * is not one, the seed is not a user's valid seed, or the JWT is not a user JWT.
 */
export function parseCredentials(text: string): NatsCredentials {
  const blocks = [...text.matchAll(/\s*-{3,}[^\n]*-{3,}\r?\n([\s\S]+?)\r?\n\s*-{3,}[^\n]*-{3,}/g)].map((m) =>
    m[1].trim()
  );
  if (blocks.length < 2) throw new Error("not a .creds file (a JWT and a seed between BEGIN/END lines)");
  const [jwt, seed] = blocks;
  let decoded: { prefix: number };
  try {
    decoded = decodeSeed(seed);
  } catch (error) {
    throw new Error(`its seed is not a valid nkey seed (${error instanceof Error ? error.message : error})`);
  }
  if (decoded.prefix !== NKEY_PREFIX.user) throw new Error("its seed is not a user's (SU...)");
  const parts = jwt.split(".");
  let claims: { sub?: unknown; name?: unknown; exp?: unknown; nats?: { type?: unknown } };
  try {
    if (parts.length !== 3) throw new Error("not three parts");
    claims = JSON.parse(new TextDecoder().decode(base64UrlDecode(parts[1])));
  } catch {
    throw new Error("its JWT is not a JWT");
  }
  if (typeof claims.sub !== "string" || !claims.sub.startsWith("U")) {
    throw new Error("its JWT is not a user JWT (subject U...)");
  }
  if (claims.nats?.type !== undefined && claims.nats.type !== "user") {
    throw new Error("its JWT is not a user JWT");
  }
  return {
    jwt,
    seed,
    subject: claims.sub,
    ...(typeof claims.name === "string" && claims.name !== "" ? { name: claims.name } : {}),
    ...(typeof claims.exp === "number" && claims.exp > 0 ? { expiresAt: claims.exp } : {}),
  };
}

/** A `.creds` file (NATS_CREDS) and what it held when the configuration was read. */
export interface NatsCredsFile {
  path: string;
  /** The file's content at start: used when a later read fails. */
  initial: NatsCredentials;
}

/** The credentials of `file` now: read again (a renewed JWT is picked up), else what it held at start. */
export function currentCredentials(file: NatsCredsFile): NatsCredentials {
  try {
    return parseCredentials(Deno.readTextFileSync(file.path));
  } catch {
    return file.initial;
  }
}

/** The CONNECT fields for `credentials` given the server's nonce: jwt, nkey and sig (the nonce signed). */
export async function credentialsConnectFields(
  credentials: NatsCredentials,
  nonce: string | undefined,
): Promise<{ jwt: string; nkey: string; sig?: string }> {
  const pair = await nkeyPairFromSeed(credentials.seed);
  return {
    jwt: credentials.jwt,
    nkey: pair.publicKey,
    ...(nonce ? { sig: base64UrlEncode(await pair.sign(encoder.encode(nonce))) } : {}),
  };
}
