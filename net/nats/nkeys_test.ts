/**
 * The pure parts of NATS client completeness: nkeys (against nats.js's own implementation), `.creds` files and
 * NATS_CREDS, `connect_urls` entries, -ERR kinds, and splitting a message that is larger than max_payload.
 * The real-server tests are nats_cluster_test.ts (here) and ingest/cluster_test.ts.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { nkeys } from "@nats-io/transport-node";
import { RequestEventBatchSchema, RequestEventSchema } from "@tailwatch/proto/events/v1";
import { assert, assertEquals, natsOperatorSetup } from "@tailwatch/testing";
import { ConfigError } from "@tailwatch/runtime";
import { buildFrame, encodeRequestEventView, eventIdOf, splitFrame } from "@tailwatch/events";
import { describeNats, natsConfig, natsJsOptions, wireServers } from "./config.ts";
import { natsErrorKind, parseConnectUrl, serverKey } from "./protocol.ts";
import {
  base32Decode,
  base32Encode,
  crc16,
  credentialsConnectFields,
  decodePublicKey,
  decodeSeed,
  encodePublicKey,
  encodeSeed,
  NKEY_PREFIX,
  nkeyPairFromSeed,
  parseCredentials,
} from "./nkeys.ts";
import { sampleEvent } from "@tailwatch/events/testing";

const decoder = new TextDecoder();

function assertThrows(fn: () => unknown, message: string): Error {
  try {
    fn();
  } catch (error) {
    return error as Error;
  }
  throw new Error(`expected a throw: ${message}`);
}

Deno.test("nkeys: seeds and public keys as nats.js's nkeys make them; signatures it verifies", async () => {
  // CRC-16/XMODEM's check value.
  assertEquals(crc16(new TextEncoder().encode("123456789")), 0x31c3);
  for (let i = 0; i < 20; i++) {
    const bytes = crypto.getRandomValues(new Uint8Array(i * 3 + 1));
    assertEquals(base32Decode(base32Encode(bytes)), bytes);
  }
  for (
    const [make, prefix] of [[nkeys.createUser, NKEY_PREFIX.user], [
      nkeys.createAccount,
      NKEY_PREFIX.account,
    ]] as const
  ) {
    for (let i = 0; i < 10; i++) {
      const theirs = make();
      const seedText = decoder.decode(theirs.getSeed());
      const decoded = decodeSeed(seedText);
      assertEquals(decoded.prefix, prefix);
      assertEquals(encodeSeed(prefix, decoded.seed), seedText, "the seed encodes back to the same text");
      const ours = await nkeyPairFromSeed(seedText);
      assertEquals(ours.publicKey, theirs.getPublicKey(), "the same public key from the seed");
      assertEquals(encodePublicKey(prefix, decodePublicKey(ours.publicKey, prefix)), ours.publicKey);
      const nonce = new TextEncoder().encode(`nonce-${i}-${crypto.randomUUID()}`);
      const signature = await ours.sign(nonce);
      assert(theirs.verify(nonce, signature), "nats.js verifies the WebCrypto signature");
      assertEquals(signature, theirs.sign(nonce), "Ed25519 is deterministic: the same signature");
    }
  }
  // A changed character breaks the checksum; a public key is not a seed.
  const seed = decoder.decode(nkeys.createUser().getSeed());
  const flipped = seed.slice(0, 10) + (seed[10] === "A" ? "B" : "A") + seed.slice(11);
  assert(/checksum|seed/.test(assertThrows(() => decodeSeed(flipped), "bad crc").message));
  assertThrows(() => decodeSeed(nkeys.createUser().getPublicKey()), "a public key");
});

Deno.test("creds: a .creds file is parsed, CONNECT carries the JWT and the nonce signed; NATS_CREDS validated", async () => {
  const setup = natsOperatorSetup([{ name: "catalog" }]);
  const text = setup.creds("catalog");
  const creds = parseCredentials(text);
  assertEquals(creds.name, "catalog");
  assert(creds.subject.startsWith("U") && creds.seed.startsWith("SU"));
  const fields = await credentialsConnectFields(creds, "a-nonce");
  assertEquals(fields.jwt, creds.jwt);
  assertEquals(fields.nkey, creds.subject, "the seed's public key is the JWT's subject");
  const user = nkeys.fromPublic(creds.subject);
  const signature = Uint8Array.from(
    atob(fields.sig!.replaceAll("-", "+").replaceAll("_", "/") + "=="),
    (c) => c.charCodeAt(0),
  );
  assert(user.verify(new TextEncoder().encode("a-nonce"), signature), "the nonce's signature verifies");

  for (
    const [bad, words] of [
      ["hello", "not a .creds file"],
      [text.replace(creds.seed, "SUAAAA"), "seed"],
      [text.replace(creds.seed, decoder.decode(nkeys.createAccount().getSeed())), "user's"],
      [text.replace(creds.jwt, "x.y"), "JWT"],
    ]
  ) {
    const error = assertThrows(() => parseCredentials(bad), words);
    assert(error.message.includes(words), `${words} in ${error.message}`);
    assert(!error.message.includes(creds.seed), "never the seed in a message");
  }

  const dir = await Deno.makeTempDir({ prefix: "tailwatch-creds-" });
  try {
    const path = await setup.writeCreds(dir, "catalog");
    const config = natsConfig({ NATS_URL: "nats://n1:4222,nats://n2:4222", NATS_CREDS: path });
    assertEquals(config.inboxPrefix, "_INBOX_catalog", "the JWT's name gives the default inbox prefix");
    assertEquals(config.creds?.path, path);
    assertEquals(wireServers(config).map((server) => server.creds?.path), [path, path]);
    assert(typeof natsJsOptions(config).authenticator === "function", "nats.js gets credsAuthenticator");
    assertEquals(describeNats(config), `nats://n1:4222,nats://n2:4222 with ${path} (catalog)`);
    assert(!describeNats(config).includes(creds.seed));
    await Deno.writeTextFile(`${dir}/bad.creds`, "not creds");
    for (
      const [env, words] of [
        [{ NATS_CREDS: `${dir}/missing.creds` }, "cannot read"],
        [{ NATS_CREDS: `${dir}/bad.creds` }, "not a .creds file"],
        [{ NATS_CREDS: path, NATS_USER: "u", NATS_PASSWORD: "p" }, "excludes"],
        [{ NATS_CREDS: path, NATS_URL: "nats://tok@n1" }, "excludes"],
      ] as const
    ) {
      const error = assertThrows(() => natsConfig(env), JSON.stringify(env));
      assert(error instanceof ConfigError && error.message.includes(words), `${words} in ${error.message}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("connect_urls entries and -ERR kinds", () => {
  assertEquals(parseConnectUrl("127.0.0.1:4223"), { hostname: "127.0.0.1", port: 4223 });
  assertEquals(parseConnectUrl("[::1]:4224"), { hostname: "::1", port: 4224 });
  assertEquals(parseConnectUrl("nats://n3:4225"), { hostname: "n3", port: 4225 });
  assertEquals(parseConnectUrl("n4"), { hostname: "n4", port: 4222 });
  assertEquals(parseConnectUrl("n4:99999"), undefined);
  assertEquals(parseConnectUrl("bad host:1"), undefined);
  assertEquals(serverKey({ hostname: "::1", port: 4224 }), "[::1]:4224");
  assertEquals(natsErrorKind("User Authentication Expired"), "expired");
  assertEquals(natsErrorKind("Account Authentication Expired"), "expired");
  assertEquals(natsErrorKind("Authentication Timeout"), "authorization");
  assertEquals(natsErrorKind("Stale Connection"), "stale_connection");
  assertEquals(natsErrorKind("maximum connections exceeded"), "limits");
  assertEquals(natsErrorKind("Maximum Subscriptions Exceeded"), "limits");
});

function encodedEvent(i: number, errorBytes = 0): Uint8Array {
  return encodeRequestEventView(
    sampleEvent({ durationUs: BigInt(100 + i), errorMessage: "e".repeat(errorBytes) }),
  )
    .slice();
}

/** The events of a frame (`HPUB <subject> <h> <t>\r\n` headers body CRLF), its Nats-Msg-Id and count header. */
function readFrame(frame: Uint8Array) {
  const text = decoder.decode(frame);
  const [line] = text.split("\r\n", 1);
  const [, subject, h, t] = line.split(" ");
  const start = line.length + 2;
  const headers = decoder.decode(frame.subarray(start, start + Number(h)));
  const body = frame.subarray(start + Number(h), start + Number(t));
  const msgId = /Nats-Msg-Id: ([^\r]*)/.exec(headers)?.[1];
  const count = /Tailwatch-Events: (\d+)/.exec(headers)?.[1];
  const events = count === undefined
    ? [fromBinary(RequestEventSchema, body)]
    : fromBinary(RequestEventBatchSchema, body).events;
  assertEquals(frame.subarray(frame.length - 2), new Uint8Array([13, 10]));
  return { subject, msgId, count: count === undefined ? 1 : Number(count), events, payload: Number(t) };
}

Deno.test("a message larger than max_payload is split into messages that fit, in order, each under its first event's id", () => {
  const events = Array.from({ length: 300 }, (_, i) => encodedEvent(i, i % 10 === 0 ? 3000 : 0));
  const ids = events.map(eventIdOf);
  const whole = buildFrame("events.requests.catalog", events);
  assertEquals(readFrame(whole.frame).events.map((e) => e.eventId), ids);
  for (const maxPayload of [4096, 8192, 20_000]) {
    const pieces = splitFrame(whole.frame, whole.count, maxPayload);
    assert(pieces.length > 1);
    const seen: string[] = [];
    for (const piece of pieces) {
      const read = readFrame(piece.frame);
      assert(piece.payloadBytes <= maxPayload, `${piece.payloadBytes} <= ${maxPayload}`);
      assertEquals(read.payload, piece.payloadBytes);
      assertEquals(read.subject, "events.requests.catalog");
      assertEquals(read.msgId, read.events[0].eventId, "Nats-Msg-Id = the first event's id");
      assertEquals(read.count, read.events.length);
      seen.push(...read.events.map((e) => e.eventId));
    }
    assertEquals(seen, ids, "every event once, in order");
    assertEquals(readFrame(pieces[0].frame).msgId, ids[0], "the first piece keeps the message's id");
  }
  // An event larger than max_payload on its own comes back alone, for the caller to drop.
  const big = buildFrame("events.requests.catalog", [
    encodedEvent(1),
    encodedEvent(2, 9000),
    encodedEvent(3),
  ]);
  const pieces = splitFrame(big.frame, big.count, 4096);
  assertEquals(pieces.map((piece) => piece.count), [1, 1, 1]);
  assertEquals(pieces.map((piece) => piece.payloadBytes > 4096), [false, true, false]);
});
