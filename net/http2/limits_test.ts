/** The HTTP/2 limits from the environment: safe defaults, every variable read, bad values named. */
import { assert, assertEquals } from "@tailwatch/testing";
import { ConfigError, createEnvReader } from "@tailwatch/runtime";
import { DEFAULT_HTTP2_LIMITS, readHttp2Limits } from "./limits.ts";

Deno.test("HTTP/2 limits: the defaults when nothing is set, each H2_* variable when it is", () => {
  const defaults = createEnvReader({});
  assertEquals(readHttp2Limits(defaults), { ...DEFAULT_HTTP2_LIMITS });
  assertEquals(defaults.problems, []);
  const read = createEnvReader({
    H2_MAX_CONCURRENT_STREAMS: "100",
    H2_MAX_CONNECTIONS: "64",
    H2_HANDSHAKE_TIMEOUT_MS: "2000",
    H2_IDLE_TIMEOUT_MS: "0",
    H2_ABUSE_WINDOW_MS: "5000",
    H2_MAX_RESETS: "200",
    H2_MAX_OVERHEAD_FRAMES: "300",
    H2_MAX_QUEUED_CONTROL_FRAMES: "4000",
    H2_MAX_OUTPUT_BYTES: "262144",
    H2_MAX_PENDING_BYTES: "1048576",
    H2_WRITE_STALL_TIMEOUT_MS: "5000",
  });
  assertEquals(readHttp2Limits(read), {
    maxConcurrentStreams: 100,
    maxConnections: 64,
    handshakeTimeoutMs: 2000,
    idleTimeoutMs: 0,
    abuseWindowMs: 5000,
    maxResetsPerWindow: 200,
    maxOverheadFramesPerWindow: 300,
    maxQueuedControlFrames: 4000,
    maxOutputBytes: 262_144,
    maxPendingBytes: 1_048_576,
    writeStallTimeoutMs: 5000,
  });
  assertEquals(read.problems, []);
});

Deno.test("HTTP/2 limits: a bad value stops the start, named with the others", () => {
  let error: unknown;
  try {
    const read = createEnvReader({ H2_MAX_RESETS: "0", H2_MAX_OUTPUT_BYTES: "lots" });
    readHttp2Limits(read);
    read.done();
  } catch (caught) {
    error = caught;
  }
  assert(error instanceof ConfigError, String(error));
  assertEquals(error.problems.length, 2, error.message);
  assert(
    /H2_MAX_RESETS/.test(error.problems[0]) && /H2_MAX_OUTPUT_BYTES/.test(error.problems[1]),
    error.message,
  );
});
