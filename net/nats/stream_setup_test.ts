/**
 * The pure parts of the stream's contract and of the NATS configuration: subject coverage, what makes a stream
 * unfit for a process, the NATS settings every process reads, and how a server's -ERR is classified.
 */
import { assert, assertEquals, AssertionError } from "@tailwatch/testing";
import { ConfigError } from "@tailwatch/runtime";
import { minDuplicateWindowMs } from "./publisher.ts";
import { natsConfig, natsJsOptions, wireServers } from "./config.ts";
import { natsErrorKind, natsErrorText } from "./protocol.ts";
import {
  DEFAULT_REQUEST_EVENTS_STREAM,
  requestEventsStreamConfig,
  requestEventsStreamProblems,
  subjectCovers,
  subjectMatches,
} from "@tailwatch/events";

/** Runs `fn`, which must throw a `type`; returns the error. */
function assertThrows<E extends Error>(
  fn: () => unknown,
  type: new (...args: never[]) => E,
  message = "",
): E {
  try {
    fn();
  } catch (error) {
    if (error instanceof type) return error;
    throw new AssertionError(`${message}: threw ${error}, not a ${type.name}`);
  }
  throw new AssertionError(`${message}: did not throw`);
}

Deno.test("subjects: a pattern covers what it matches, wildcards included, and nothing wider", () => {
  assert(subjectMatches("events.requests.*", "events.requests.catalog"));
  assert(!subjectMatches("events.requests.*", "events.requests.catalog.3"));
  assert(subjectMatches("events.requests.>", "events.requests.catalog.3"));
  assert(subjectMatches("events.requests.catalog", "events.requests.catalog"));
  assert(!subjectMatches("events.requests.orders", "events.requests.catalog"));
  assert(subjectCovers("events.requests.*", "events.requests.*"));
  assert(subjectCovers("events.requests.>", "events.requests.*"));
  assert(subjectCovers("events.>", "events.requests.>"));
  assert(subjectCovers(">", "events.requests.*"));
  assert(!subjectCovers("events.requests.*", "events.requests.>"));
  assert(!subjectCovers("events.requests.catalog", "events.requests.*"));
  assert(!subjectCovers("events.requests.*.*", "events.requests.*"));
});

Deno.test("a stream unfit for a process is named with every reason; the setup step's own fits", () => {
  const needs = {
    publishSubject: "events.requests.catalog",
    minDuplicateWindowMs: minDuplicateWindowMs(5_000),
  };
  assertEquals(minDuplicateWindowMs(5_000), 12_000);
  const fits = requestEventsStreamConfig({ ...DEFAULT_REQUEST_EVENTS_STREAM });
  assertEquals(requestEventsStreamProblems(fits, needs), []);
  assertEquals(
    requestEventsStreamProblems(fits, { consumeSubject: "events.requests.*", keepsAcked: true }),
    [],
  );
  const [missing] = requestEventsStreamProblems(undefined, needs);
  assert(/does not exist: the setup step creates it/.test(missing), missing);
  const problems = requestEventsStreamProblems({
    subjects: ["events.requests.orders"],
    storage: "memory" as typeof fits.storage,
    retention: "workqueue" as typeof fits.retention,
    duplicate_window: 2e9,
    no_ack: true,
    sealed: true,
  }, { ...needs, consumeSubject: "events.requests.*", keepsAcked: true });
  for (
    const words of [
      "do not take events.requests.catalog",
      "do not cover events.requests.*",
      "storage is memory",
      "no_ack",
      "sealed",
      "retention is workqueue",
      "duplicate window is 2 s, shorter than the 12 s",
    ]
  ) {
    assert(problems.some((problem) => problem.includes(words)), `${words} in ${JSON.stringify(problems)}`);
  }
  assert(problems.every((problem) => problem.startsWith("stream REQUEST_EVENTS: ")));
});

Deno.test("NATS settings: credentials once (variables or URL), taken out of the URL, a per-user inbox prefix", () => {
  const config = natsConfig({
    NATS_URL: "nats://n1:4222, tls://n2",
    NATS_USER: "catalog",
    NATS_PASSWORD: "p@ss:word",
  });
  assertEquals(config, {
    servers: ["nats://n1:4222", "tls://n2:4222"],
    user: "catalog",
    pass: "p@ss:word",
    inboxPrefix: "_INBOX_catalog",
  });
  assertEquals(
    natsConfig("nats://catalog:p%40ss%3Aword@n1:4222,tls://catalog:p%40ss%3Aword@n2").pass,
    "p@ss:word",
  );
  assertEquals(natsConfig("nats://s3cret@n1").token, "s3cret");
  assertEquals(natsConfig("nats://s3cret@n1").inboxPrefix, "_INBOX");
  assertEquals(natsJsOptions(config), {
    servers: ["nats://n1:4222", "tls://n2:4222"],
    inboxPrefix: "_INBOX_catalog",
    user: "catalog",
    pass: "p@ss:word",
  });
  assertEquals(wireServers(config).map((s) => [s.hostname, s.port, s.tls, s.user, s.pass]), [
    ["n1", 4222, false, "catalog", "p@ss:word"],
    ["n2", 4222, true, "catalog", "p@ss:word"],
  ]);
  for (
    const env of [
      { NATS_USER: "catalog" },
      { NATS_PASSWORD: "x" },
      { NATS_TOKEN: "t", NATS_USER: "u", NATS_PASSWORD: "p" },
      { NATS_URL: "nats://a:b@n1", NATS_PASSWORD: "b", NATS_USER: "a" },
      { NATS_URL: "nats://a:b@n1,nats://a:c@n2" },
      { NATS_INBOX_PREFIX: "_INBOX.*" },
      { NATS_URL: "http://n1" },
    ]
  ) {
    assertThrows(() => natsConfig(env), ConfigError, JSON.stringify(env));
  }
});

Deno.test("a server's -ERR is classified for the metrics", () => {
  assertEquals(
    natsErrorText(`-ERR 'Permissions Violation for Publish to "events.requests.orders"'`),
    'Permissions Violation for Publish to "events.requests.orders"',
  );
  assertEquals(natsErrorKind('Permissions Violation for Subscription to "_INBOX.>"'), "permissions");
  assertEquals(natsErrorKind("Authorization Violation"), "authorization");
  assertEquals(natsErrorKind("Maximum Payload Violation"), "max_payload");
  assertEquals(natsErrorKind("Slow Consumer"), "slow_consumer");
  assertEquals(natsErrorKind("Unknown Protocol Operation"), "other");
});
