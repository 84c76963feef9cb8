/**
 * The HTTP/2 defences (kit/http2/limits.ts), each attacked over TCP on a real catalog process: the attacker's
 * connection must end with GOAWAY and the right code, the limit must be counted in /metrics, the memory the
 * process holds for the attacker must stay bounded (its gauges, and RSS with a generous bound), and a
 * well-behaved client calling on its own connection meanwhile must have every call succeed. Its latency is
 * printed, never asserted: the machine is shared (http2_attacks_bench.ts measures it).
 */
import { assert } from "@tailwatch/testing";
import {
  addLargeProducts,
  type AttackOptions,
  type AttackOutcome,
  closedFor,
  concat,
  emptyContinuationFlood,
  emptyDataFlood,
  emptyHeadersFlood,
  ErrorCode,
  errorCodeName,
  pingFlood,
  rapidReset,
  RawPeer,
  sampleGauges,
  settingsFlood,
  settingsFrame,
  slowReader,
  startTarget,
  type Target,
  tinyWindowUpdates,
  watchCloses,
  wellBehavedClient,
  zeroWindow,
} from "./h2_attacks.ts";
import { CLIENT_PREFACE } from "@tailwatch/http2";

const options = { sanitizeOps: false, sanitizeResources: false, ignore: Deno.build.os !== "linux" };
const MiB = 1024 * 1024;
/** The defaults, but a stall closes a connection after 2 s rather than 30 s (a test waits for it). */
const ENV = { H2_WRITE_STALL_TIMEOUT_MS: "2000" };
/** What a process may grow by during an attack, at most: generous (V8's heap grows with any burst of calls). */
const RSS_GROWTH_BOUND = 256 * MiB;

/**
 * Runs `attacks` one after the other on `target` while the well-behaved client calls it; checks each ended
 * with GOAWAY(`code`) and was counted under `reasons`; returns what the gauges reached.
 */
async function underAttack(
  target: Target,
  attacks: Array<{
    name: string;
    run: (port: number, options: AttackOptions) => Promise<AttackOutcome>;
    code: number;
    reasons: string[];
  }>,
) {
  const client = await wellBehavedClient(target.grpcPort);
  await new Promise((resolve) => setTimeout(resolve, 300));
  await client.mark();
  const rssBefore = target.rss();
  const maxima = { maxOutputBytes: 0, maxPendingBytes: 0, maxQueuedControlFrames: 0, maxRss: 0 };
  const outcomes: AttackOutcome[] = [];
  try {
    for (const attack of attacks) {
      const counted = async () => {
        let sum = 0;
        for (const reason of attack.reasons) sum += await closedFor(target, reason);
        return sum;
      };
      const before = await counted();
      const watch = await watchCloses(target);
      const sampled = await sampleGauges(target, attack.run(target.grpcPort, { gaveUp: watch.gaveUp }));
      await watch.stop();
      const { result } = sampled;
      outcomes.push(result);
      for (const key of Object.keys(maxima) as Array<keyof typeof maxima>) {
        maxima[key] = Math.max(maxima[key], sampled[key]);
      }
      assert(
        result.goaway?.code === attack.code,
        `${attack.name}: GOAWAY ${errorCodeName(attack.code)} expected, got ${
          result.goaway ? `${errorCodeName(result.goaway.code)} "${result.goaway.debug}"` : "none"
        } (${JSON.stringify(result)})`,
      );
      assert(result.closed, `${attack.name}: the server closed the connection`);
      assert(
        await counted() > before,
        `${attack.name}: counted in /metrics as ${attack.reasons.join(" or ")}`,
      );
    }
  } finally {
    const report = await client.stop();
    console.log(
      `well-behaved client during ${attacks.map((a) => a.name).join(", ")}: ${report.calls} calls, ` +
        `${report.failures.length} failed, p50 ${report.p50Ms.toFixed(2)} ms, p99 ${
          report.p99Ms.toFixed(2)
        } ms, ` +
        `max ${report.maxMs.toFixed(2)} ms; RSS ${(rssBefore / MiB).toFixed(1)} -> max ${
          (maxima.maxRss / MiB).toFixed(1)
        } MiB; max output ${maxima.maxOutputBytes} B, pending DATA ${maxima.maxPendingBytes} B, ` +
        `queued control frames ${maxima.maxQueuedControlFrames}`,
    );
    assert(report.calls > 0, "the well-behaved client made calls");
    assert(
      report.failures.length === 0,
      `every call of the well-behaved client succeeded: ${report.failures}`,
    );
  }
  assert(
    maxima.maxRss - rssBefore < RSS_GROWTH_BOUND,
    `RSS grew by ${((maxima.maxRss - rssBefore) / MiB).toFixed(1)} MiB`,
  );
  return { ...maxima, outcomes };
}

Deno.test(
  "rapid reset (CVE-2023-44487): past the resets a window allows, GOAWAY(ENHANCE_YOUR_CALM)",
  options,
  async () => {
    await using target = await startTarget(ENV);
    const { outcomes } = await underAttack(target, [
      { name: "rapid reset", run: rapidReset, code: ErrorCode.ENHANCE_YOUR_CALM, reasons: ["resets"] },
    ]);
    // Streams processed before the GOAWAY (its last stream id): the 1000 resets the window allows, and at most
    // what the last read brought on top (a read is 64 KiB: under 1000 streams of these).
    const lastStreamId = outcomes[0].goaway!.lastStreamId;
    assert(lastStreamId < 2 * (1000 + 1000), `last stream processed: ${lastStreamId}`);
    // Reset in the read that brought them, those calls never ran.
    const metrics = await target.metrics();
    assert((metrics.get("grpc_calls_ended_before_start_total") ?? 0) >= 1000, "reset calls were not started");
    assert((metrics.get("http2_connections") ?? 0) <= 1, "the attacker's connection is gone");
  },
);

Deno.test(
  "PING and SETTINGS floods from a peer that never reads (CVE-2019-9512, -9515): queued answers bounded",
  options,
  async () => {
    await using target = await startTarget(ENV);
    const maxima = await underAttack(target, [
      {
        name: "PING flood",
        run: pingFlood,
        code: ErrorCode.ENHANCE_YOUR_CALM,
        reasons: ["control_frame_flood"],
      },
      {
        name: "SETTINGS flood",
        run: settingsFlood,
        code: ErrorCode.ENHANCE_YOUR_CALM,
        reasons: ["overhead_frames", "control_frame_flood"],
      },
    ]);
    // 10000 queued answers at most, plus what one read of 64 KiB of PINGs can ask for before the check.
    assert(maxima.maxQueuedControlFrames <= 10_000 + 4096, `queued: ${maxima.maxQueuedControlFrames}`);
    assert(maxima.maxOutputBytes <= MiB + 128 * 1024, `output: ${maxima.maxOutputBytes}`);
  },
);

Deno.test(
  "empty frames (CVE-2019-9518, -9516, -9514): empty DATA, empty CONTINUATION and empty header blocks end in GOAWAY",
  options,
  async () => {
    await using target = await startTarget(ENV);
    await underAttack(target, [
      {
        name: "empty DATA",
        run: emptyDataFlood,
        code: ErrorCode.ENHANCE_YOUR_CALM,
        reasons: ["overhead_frames"],
      },
      {
        name: "empty CONTINUATION",
        run: emptyContinuationFlood,
        code: ErrorCode.ENHANCE_YOUR_CALM,
        reasons: ["overhead_frames"],
      },
      // Each empty header block is a malformed request, reset: a flood of resets the server has to send.
      {
        name: "empty header blocks",
        run: emptyHeadersFlood,
        code: ErrorCode.ENHANCE_YOUR_CALM,
        reasons: ["resets"],
      },
    ]);
  },
);

Deno.test(
  "data dribble (CVE-2019-9511): windows opened a byte at a time end in GOAWAY",
  options,
  async () => {
    await using target = await startTarget(ENV);
    await underAttack(target, [
      {
        name: "tiny WINDOW_UPDATEs",
        run: tinyWindowUpdates,
        code: ErrorCode.ENHANCE_YOUR_CALM,
        reasons: ["overhead_frames"],
      },
    ]);
  },
);

Deno.test(
  "a zero window held open with many streams (CVE-2019-9517): answers held are bounded, then GOAWAY",
  options,
  async () => {
    await using target = await startTarget(ENV);
    const maxima = await underAttack(target, [
      {
        name: "zero window, 900 streams",
        run: zeroWindow,
        code: ErrorCode.ENHANCE_YOUR_CALM,
        reasons: ["flow_control_stall"],
      },
    ]);
    // The answers of the 900 streams (the stream limit bounds them), each a ListProducts of the seeded
    // catalog: well under 4 KiB.
    assert(maxima.maxPendingBytes <= 900 * 4096, `pending DATA: ${maxima.maxPendingBytes}`);
  },
);

Deno.test(
  "a slow reader: the server stops reading it, its output stays bounded, and it is closed",
  options,
  async () => {
    await using target = await startTarget(ENV);
    await addLargeProducts(target); // ListProducts of 100 then answers about 220 KB
    const before = (await target.metrics()).get("http2_reads_paused_total") ?? 0;
    const maxima = await underAttack(target, [
      { name: "slow reader", run: slowReader, code: ErrorCode.ENHANCE_YOUR_CALM, reasons: ["slow_reader"] },
    ]);
    assert((((await target.metrics()).get("http2_reads_paused_total")) ?? 0) > before, "reading was paused");
    // The output buffer stops taking DATA at H2_MAX_OUTPUT_BYTES (a frame over at most), and reading stops
    // there too (the answers to one more read at most: 64 KiB of PINGs); the answers of the 200 calls it has
    // running wait in their streams.
    assert(maxima.maxOutputBytes <= MiB + 128 * 1024, `output: ${maxima.maxOutputBytes}`);
    assert(maxima.maxPendingBytes <= 200 * 256 * 1024, `pending DATA: ${maxima.maxPendingBytes}`);
  },
);

/** Waits until the process has `count` connections open (closing ones linger until their peer closes). */
async function connectionsDownTo(target: Target, count: number): Promise<void> {
  const until = Date.now() + 10_000;
  while ((await target.metrics()).get("http2_connections") !== count && Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

Deno.test(
  "connection limits: handshake timeout, idle timeout and the connection cap each end in GOAWAY",
  options,
  async () => {
    await using target = await startTarget({
      H2_HANDSHAKE_TIMEOUT_MS: "1000",
      H2_IDLE_TIMEOUT_MS: "1500",
      H2_MAX_CONNECTIONS: "8",
    });
    const client = await wellBehavedClient(target.grpcPort);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await client.mark();
    const peers: RawPeer[] = [];
    try {
      // Silent after connecting, and silent after the preface and SETTINGS (no acknowledgement of ours).
      const silent = await RawPeer.open(target.grpcPort, { handshake: false });
      const unacknowledged = await RawPeer.open(target.grpcPort, { handshake: false });
      peers.push(silent, unacknowledged);
      await unacknowledged.write(concat([CLIENT_PREFACE, settingsFrame([])]));
      for (const [name, peer] of [["silent", silent], ["no SETTINGS ACK", unacknowledged]] as const) {
        peer.startReading({ ackSettings: false });
        assert(await peer.closedWithin(10_000), `${name}: closed`);
        assert(
          peer.goaway?.code === ErrorCode.SETTINGS_TIMEOUT,
          `${name}: GOAWAY SETTINGS_TIMEOUT, got ${peer.goaway && errorCodeName(peer.goaway.code)}`,
        );
        peer.close(); // the server lingers until its peer closes too; a lingering connection still counts
      }
      assert(await closedFor(target, "handshake_timeout") >= 2, "handshake timeouts counted");

      // Up to the cap (the well-behaved client holds one connection), the next is refused at once.
      await connectionsDownTo(target, 1);
      const held: RawPeer[] = [];
      for (let i = 0; i < 7; i++) held.push(await RawPeer.open(target.grpcPort));
      peers.push(...held);
      for (const peer of held) peer.startReading();
      const refused = await RawPeer.open(target.grpcPort, { handshake: false });
      peers.push(refused);
      refused.startReading({ ackSettings: false });
      assert(await refused.closedWithin(5000), "over the cap: closed");
      assert(
        refused.goaway?.code === ErrorCode.ENHANCE_YOUR_CALM &&
          /H2_MAX_CONNECTIONS/.test(refused.goaway.debug),
        `over the cap: GOAWAY ENHANCE_YOUR_CALM naming the limit, got ${JSON.stringify(refused.goaway)}`,
      );
      assert(await closedFor(target, "max_connections") >= 1, "refusal counted");

      // Idle (no stream) for H2_IDLE_TIMEOUT_MS: GOAWAY(NO_ERROR), and the cap has room again.
      for (const peer of held) {
        assert(await peer.closedWithin(10_000), "idle: closed");
        assert(
          peer.goaway?.code === ErrorCode.NO_ERROR,
          `idle: GOAWAY NO_ERROR, got ${JSON.stringify(peer.goaway)}`,
        );
        peer.close();
      }
      assert(await closedFor(target, "idle_timeout") >= 7, "idle closes counted");
      await connectionsDownTo(target, 1);
      const again = await RawPeer.open(target.grpcPort);
      peers.push(again);
      const call = again.call();
      await again.write(call.bytes);
      again.startReading();
      const until = Date.now() + 5000;
      while (!again.answered.has(call.streamId) && Date.now() < until) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assert(again.answered.has(call.streamId) && !again.goaway, "a new connection is served again");
    } finally {
      for (const peer of peers) peer.close();
      const report = await client.stop();
      console.log(
        `well-behaved client during the connection limits: ${report.calls} calls, ${report.failures.length} ` +
          `failed, p50 ${report.p50Ms.toFixed(2)} ms, p99 ${report.p99Ms.toFixed(2)} ms, max ${
            report.maxMs.toFixed(2)
          } ms`,
      );
      assert(
        report.failures.length === 0,
        `every call of the well-behaved client succeeded: ${report.failures}`,
      );
    }
  },
);

Deno.test(
  "grpc-go (ghz) at 2000 calls/s is never taken for an attacker: its BDP PINGs and small WINDOW_UPDATEs pass",
  options,
  async () => {
    await using target = await startTarget(ENV);
    const run = await new Deno.Command("ghz", {
      args: [
        "--insecure",
        "--call",
        "catalog.v1.CatalogService/GetProduct",
        "--data",
        '{"product_id":"kibble-salmon-2kg"}',
        "--connections",
        "1",
        "--concurrency",
        "16",
        "--rps",
        "2000",
        "--total",
        "12000",
        "--format",
        "json",
        `127.0.0.1:${target.grpcPort}`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const report = JSON.parse(new TextDecoder().decode(run.stdout));
    assert(
      report.statusCodeDistribution?.OK === 12_000,
      `every call OK: ${JSON.stringify(report.statusCodeDistribution)} ${
        JSON.stringify(report.errorDistribution)
      }`,
    );
    const closed = [...(await target.metrics())].filter(([series]) =>
      series.startsWith("http2_connections_closed_total")
    );
    assert(closed.every(([, value]) => value === 0), `no connection closed for a limit: ${closed}`);
  },
);
