/**
 * The pull receiver's parse of what nats-server sends, against nats.js's: random sequences of protocol frames
 * (MSG and HMSG deliveries with and without headers, status messages 100/404/408/409/503, PING, PONG, +OK,
 * INFO, -ERR), fed to the kit's ProtocolReader (what nats_wire.ts reads the socket with) whole, split at every
 * offset, and split at random offsets, and to nats.js's protocol Parser (@nats-io/nats-core) in one piece. The
 * messages must be the same (subject, sid, reply, header block, payload), and what pull.ts reads from each
 * (a delivery's stream sequence, delivery count, consumer sequence and store time; a status's code,
 * description and pending counts) the same as what nats.js reads (JetStreamStatus, MsgHdrsImpl, and
 * nats.js's parseInfo of the reply subject). Seeded: INGEST_FUZZ_SEED reproduces a run.
 */
import { Kind, MsgHdrsImpl, Parser, type ParserEvent } from "@nats-io/nats-core/internal";
import { JetStreamStatus } from "@nats-io/jetstream/internal";
import type { Msg } from "@nats-io/transport-node";
import { ProtocolReader } from "./protocol.ts";
import { assert, assertEquals, seededRandom } from "@tailwatch/testing";
import { type AckInfo, Delivery, readPullMessage } from "./pull.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface Frame {
  bytes: Uint8Array;
  /** For MSG/HMSG: what both parsers must report. */
  kind: "msg" | "ping" | "pong" | "other";
}

/** One parsed MSG/HMSG, copied out of the parser's buffers, and (kit side) what pull.ts reads from it. */
interface Parsed {
  subject: string;
  sid: number;
  reply: string;
  /** The header block and the payload, as Latin-1 text (one character a byte): quick to compare. */
  header: string;
  body: string;
}

const latin1 = new TextDecoder("latin1");
/** Bytes as a string of one character each (TextDecoder's "latin1" is windows-1252: one distinct character a byte). */
const bytesText = (bytes: Uint8Array) => latin1.decode(bytes);

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** A random frame as nats-server could send it to a pull consumer's inbox. */
function randomFrame(random: () => number): Frame {
  const pick = <T>(items: readonly T[]) => items[Math.floor(random() * items.length)];
  const int = (max: number) => Math.floor(random() * max);
  const space = () => pick([" ", " ", " ", "\t", "  ", " \t "]);
  const bytes = (n: number) => {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      out[i] = random() < 0.1 ? pick([0x0d, 0x0a, 0x20, 0x00]) : int(256);
    }
    return out;
  };
  const roll = random();
  if (roll < 0.08) return { bytes: encoder.encode("PING\r\n"), kind: "ping" };
  if (roll < 0.14) return { bytes: encoder.encode("PONG\r\n"), kind: "pong" };
  if (roll < 0.17) return { bytes: encoder.encode("+OK\r\n"), kind: "other" };
  if (roll < 0.2) {
    return {
      bytes: encoder.encode(`INFO {"server_id":"x","max_payload":1048576,"headers":true}\r\n`),
      kind: "other",
    };
  }
  if (roll < 0.22) return { bytes: encoder.encode(`-ERR 'Slow Consumer'\r\n`), kind: "other" };
  const sid = 1 + int(5000);
  if (roll < 0.5) {
    // A status message: to the request's inbox, no reply, a header block only.
    const inbox = `_INBOX.${int(1e9).toString(36)}.${sid}`;
    const pending = () =>
      random() < 0.7 ? `Nats-Pending-Messages: ${int(100_000)}\r\nNats-Pending-Bytes: ${int(1e9)}\r\n` : "";
    const status = pick([
      `NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: ${int(1e6)}\r\nNats-Last-Stream: ${int(1e6)}\r\n`,
      "NATS/1.0 404 No Messages\r\n",
      `NATS/1.0 408 Request Timeout\r\n${pending()}`,
      `NATS/1.0 408 Interest Expired\r\n${pending()}`,
      `NATS/1.0 409 Message Size Exceeds MaxBytes\r\n${pending()}`,
      "NATS/1.0 409 Consumer Deleted\r\n",
      "NATS/1.0 409 Leadership Change\r\n",
      `NATS/1.0 409 Exceeded MaxRequestBatch of ${1 + int(1000)}\r\n`,
      "NATS/1.0 409 Exceeded MaxRequestExpires of 5s\r\n",
      "NATS/1.0 409 Exceeded MaxWaiting\r\n",
      "NATS/1.0 409 Consumer is push based\r\n",
      "NATS/1.0 503\r\n",
      "NATS/1.0 400 Bad Request - invalid json\r\n",
    ]) + "\r\n";
    const header = encoder.encode(status);
    const line =
      `HMSG${space()}${inbox}${space()}${sid}${space()}${header.length}${space()}${header.length}\r\n`;
    return { bytes: concat([encoder.encode(line), header, encoder.encode("\r\n")]), kind: "msg" };
  }
  // A delivery: the stream's subject, the $JS.ACK reply, with or without headers (a message published with
  // none arrives as a MSG).
  const subject = `events.requests.${pick(["catalog", "orders", "payments", "x"])}`;
  const ts = `17${String(int(1e9)).padStart(9, "0")}${String(int(1e8)).padStart(8, "0")}`;
  const tokens = [1 + int(5), 1 + int(1e9), 1 + int(1e9), ts, int(1e6)];
  const reply = random() < 0.5
    ? `$JS.ACK.REQUEST_EVENTS.tailwatch-ingest.${tokens.join(".")}`
    : `$JS.ACK.${pick(["_", "hub"])}.ACCHASH.REQUEST_EVENTS.tailwatch-ingest.${tokens.join(".")}${
      random() < 0.5 ? `.${int(1e9).toString(36)}` : ""
    }`;
  const body = bytes(pick([0, 1, 5, 100, 2_000, 70_000]));
  if (random() < 0.3) {
    const line = `MSG${space()}${subject}${space()}${sid}${space()}${reply}${space()}${body.length}\r\n`;
    return { bytes: concat([encoder.encode(line), body, encoder.encode("\r\n")]), kind: "msg" };
  }
  const header = encoder.encode(
    `NATS/1.0\r\nNats-Msg-Id: ${crypto.randomUUID()}\r\n${
      random() < 0.5 ? `Tailwatch-Events: ${1 + int(256)}\r\n` : ""
    }\r\n`,
  );
  const line =
    `HMSG${space()}${subject}${space()}${sid}${space()}${reply}${space()}${header.length}${space()}${
      header.length + body.length
    }\r\n`;
  return { bytes: concat([encoder.encode(line), header, body, encoder.encode("\r\n")]), kind: "msg" };
}

/** What a message is to a pull consumer: a delivery's numbers, or a status, or neither (undefined). */
type Reading =
  | { seq: number; deliveries: number; consumerSeq: number; timestampMs: number }
  | { code: number; description: string; pendingMessages: number; pendingBytes: number }
  | undefined;

/**
 * The kit's reader over `input`, fed in the pieces `cuts` (offsets) make; each message also read by pull.ts
 * (readPullMessage, what the receiver does with every message) where it lies in the reader's chunk.
 */
function readWithKit(
  input: Uint8Array,
  cuts: number[],
): { messages: Parsed[]; readings: Reading[]; pings: number; pongs: number } {
  const messages: Parsed[] = [];
  const readings: Reading[] = [];
  let pings = 0;
  let pongs = 0;
  const ack: AckInfo = { seq: 0, deliveries: 0, consumerSeq: 0, timestampMs: NaN };
  const reader = new ProtocolReader({
    onMessage(m) {
      messages.push({
        subject: decoder.decode(m.buf.subarray(m.subjectStart, m.subjectEnd)),
        sid: m.sid,
        reply: m.replyStart < 0 ? "" : decoder.decode(m.buf.subarray(m.replyStart, m.replyEnd)),
        header: bytesText(m.buf.subarray(m.payloadStart, m.headerEnd)),
        body: bytesText(m.buf.subarray(m.headerEnd, m.end)),
      });
      const read = readPullMessage(m, ack);
      readings.push(
        read instanceof Delivery
          ? {
            seq: read.seq,
            deliveries: read.deliveries,
            consumerSeq: ack.consumerSeq,
            timestampMs: read.timestampMs,
          }
          : read && {
            code: read.code,
            // nats.js names a 503 without a description "no responders".
            description: read.description === "" && read.code === 503 ? "no responders" : read.description,
            pendingMessages: read.pendingMessages,
            pendingBytes: read.pendingBytes,
          },
      );
    },
    onPing: () => pings++,
    onPong: () => pongs++,
    onError: () => {},
  });
  const bounds = [0, ...cuts, input.length];
  for (let i = 0; i + 1 < bounds.length; i++) {
    let piece = input.subarray(bounds[i], bounds[i + 1]);
    while (piece.length > 0) {
      const space = reader.space();
      const n = Math.min(space.length, piece.length);
      space.set(piece.subarray(0, n));
      reader.commit(n);
      piece = piece.subarray(n);
    }
  }
  assertEquals(reader.buffered, 0, "nothing left unparsed");
  return { messages, readings, pings, pongs };
}

/** nats.js's parser over `input`. */
function readWithNatsJs(input: Uint8Array): { messages: Parsed[]; pings: number; pongs: number } {
  const messages: Parsed[] = [];
  let pings = 0;
  let pongs = 0;
  const parser = new Parser({
    push(event: ParserEvent) {
      if (event.kind === Kind.PING) pings++;
      else if (event.kind === Kind.PONG) pongs++;
      else if (event.kind === Kind.MSG) {
        const { msg, data } = event;
        const hdr = msg!.hdr > 0 ? msg!.hdr : 0;
        messages.push({
          subject: decoder.decode(msg!.subject),
          sid: msg!.sid,
          reply: msg!.reply ? decoder.decode(msg!.reply) : "",
          header: bytesText(data!.subarray(0, hdr)),
          body: bytesText(data!.subarray(hdr)),
        });
      }
    },
  });
  parser.parse(input);
  return { messages, pings, pongs };
}

/** nats.js's parseInfo (@nats-io/jetstream jsmsg.ts, not exported), with the timestamp as a BigInt. */
function natsJsDeliveryInfo(reply: string) {
  const tokens = reply.split(".");
  if (tokens.length === 9) tokens.splice(2, 0, "_", "");
  if (tokens.length < 11 || tokens[0] !== "$JS" || tokens[1] !== "ACK") return undefined;
  return {
    deliveries: parseInt(tokens[6], 10),
    seq: parseInt(tokens[7], 10),
    consumerSeq: parseInt(tokens[8], 10),
    timestampMs: Number(BigInt(tokens[9]) / 1_000_000n),
  };
}

/**
 * What nats.js makes of a message on a pull consumer's inbox: a delivery (its reply subject parsed as
 * nats.js's parseInfo does), or a status (JetStreamStatus over MsgHdrsImpl.decode of the header block).
 */
function natsJsReading(message: Parsed): Reading {
  const info = message.reply !== "" ? natsJsDeliveryInfo(message.reply) : undefined;
  if (info !== undefined) {
    return {
      seq: info.seq,
      deliveries: info.deliveries,
      consumerSeq: info.consumerSeq,
      timestampMs: info.timestampMs,
    };
  }
  const header = Uint8Array.from(message.header, (c) => c.charCodeAt(0)); // ASCII in these frames
  const headers = header.length > 0 ? MsgHdrsImpl.decode(header) : undefined;
  const status = new JetStreamStatus({ headers } as unknown as Msg);
  if (status.code === 0) return undefined;
  const discard = status.parseDiscard();
  return {
    code: status.code,
    description: status.description,
    pendingMessages: discard.msgsLeft,
    pendingBytes: discard.bytesLeft,
  };
}

Deno.test("the pull receiver parses random frame sequences as nats.js does, split at any offset", () => {
  const seed = Number(Deno.env.get("INGEST_FUZZ_SEED") ?? 20261206);
  const random = seededRandom(seed);
  let messagesCompared = 0;
  let splitsTried = 0;
  const kinds = new Map<string, number>();
  for (let round = 0; round < 80; round++) {
    const frames = Array.from({ length: 1 + Math.floor(random() * 12) }, () => randomFrame(random));
    const input = concat(frames.map((frame) => frame.bytes));
    const reference = readWithNatsJs(input);
    assertEquals(
      reference.messages.length,
      frames.filter((frame) => frame.kind === "msg").length,
      `seed ${seed} round ${round}: nats.js read every message`,
    );
    // Whole; at every offset when the sequence is short; at random offsets (several cuts) otherwise.
    const cutSets: number[][] = [[]];
    if (input.length <= 1_500) {
      for (let k = 1; k < input.length; k++) cutSets.push([k]);
    }
    for (let n = 0; n < 10; n++) {
      const cuts = Array.from(
        { length: 1 + Math.floor(random() * 6) },
        () => Math.floor(random() * input.length),
      )
        .sort((a, b) => a - b);
      cutSets.push(cuts);
    }
    const expected = reference.messages.map(natsJsReading);
    for (const cuts of cutSets) {
      const ours = readWithKit(input, cuts);
      splitsTried++;
      const where = `seed ${seed} round ${round} cuts ${cuts}`;
      assertEquals(ours.pings, reference.pings, `${where}: PINGs`);
      assertEquals(ours.pongs, reference.pongs, `${where}: PONGs`);
      assertEquals(ours.messages, reference.messages, `${where}: messages`);
      assertEquals(ours.readings, expected, `${where}: deliveries and statuses`);
    }
    for (let i = 0; i < expected.length; i++) {
      const reading = expected[i];
      assert(reading !== undefined, "every generated message is a delivery or a status");
      const kind = "code" in reading
        ? `status ${reading.code}`
        : reference.messages[i].header.length > 0
        ? "HMSG delivery"
        : "MSG delivery";
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
      messagesCompared++;
    }
  }
  for (
    const kind of [
      "MSG delivery",
      "HMSG delivery",
      "status 100",
      "status 404",
      "status 408",
      "status 409",
      "status 503",
    ]
  ) {
    assert((kinds.get(kind) ?? 0) > 0, `the fuzz produced a ${kind}`);
  }
  console.log(
    `pull parse fuzz: ${messagesCompared} messages, ${splitsTried} ways of splitting, seed ${seed}`,
  );
});

Deno.test("the protocol reader refuses a MSG line announcing more than 64 MiB instead of allocating it", () => {
  const reader = new ProtocolReader({
    onMessage: () => {},
    onPing: () => {},
    onPong: () => {},
    onError: () => {},
  });
  const line = encoder.encode("MSG a 1 999999999999\r\n");
  reader.space().set(line);
  let error = "";
  try {
    reader.commit(line.length);
  } catch (e) {
    error = String(e);
  }
  assert(error.includes("bad MSG line"), error);
});
