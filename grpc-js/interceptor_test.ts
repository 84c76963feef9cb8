/**
 * The interceptor on a plain grpc-js server, events caught in memory (no NATS): one event per call with the
 * method, the status the client got, the sizes, the trace and the load run, a duration within the client's;
 * statuses grpc-js sends on its own (deadline, an undecodable request) included; a sink that throws never fails
 * a call; downstream metadata makes a child span. The path through NATS, ingest and ClickHouse is
 * e2e_test.ts's.
 */
import * as grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";
import { Protocol } from "@tailwatch/proto/events/v1";
import { createRegistry } from "@tailwatch/runtime";
import type { EventSink, RequestEventInit } from "@tailwatch/nats";
import { assert, assertEquals } from "@tailwatch/testing";
import { createTailwatchInterceptor, MessageByteCounter, type TailwatchInterceptor } from "./interceptor.ts";
import {
  callInventory,
  type CallSettings,
  type ClientOutcome,
  type Instruction,
  requestOf,
  RESERVE,
  startInventoryServer,
  UNDECODABLE,
  WATCH,
} from "./test_service.ts";

/** A sink that keeps every event (or throws from emit, when told to). */
function memorySink(throwing = false): EventSink & { events: RequestEventInit[] } {
  const events: RequestEventInit[] = [];
  return {
    events,
    emit(event) {
      if (throwing) throw new Error("sink broken");
      events.push(event);
      return true;
    },
    readiness: () => ({ ready: true, reason: "memory" }),
    pending: () => 0,
    flush: () => Promise.resolve(true),
    close: () => Promise.resolve(),
  };
}

const TRACE_ID = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN = "b7ad6b7169203331";
const HEX16 = /^[0-9a-f]{16}$/;
const HEX32 = /^[0-9a-f]{32}$/;

function metadataWith(entries: Record<string, string>): grpc.Metadata {
  const metadata = new grpc.Metadata();
  for (const [key, value] of Object.entries(entries)) metadata.set(key, value);
  return metadata;
}

/** Waits until `count` events are there (grpc-js ends a call a tick after its status). */
async function eventsFor(sink: { events: RequestEventInit[] }, count: number): Promise<void> {
  const deadline = Date.now() + 5000;
  while (sink.events.length < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  assertEquals(sink.events.length, count, "one event per call");
}

interface Case {
  what: string;
  method: typeof RESERVE | typeof WATCH;
  instruction: Instruction;
  settings?: CallSettings;
  /** The request bytes as sent, when not the instruction's JSON. */
  raw?: Buffer;
  code: number;
  /** The event's error_message (default: the details the client got). */
  message?: string;
  responseBytes: number;
  /** The call ends before the server's status reaches the client (deadline, cancel). */
  endedEarly?: boolean;
  trace?: "parent" | "root";
  loadRunId?: string;
}

const traced = () =>
  metadataWith({ traceparent: `00-${TRACE_ID}-${PARENT_SPAN}-01`, "tailwatch-load-run": "run-7" });

const CASES: Case[] = [
  {
    what: "unary OK with trace and load run",
    method: RESERVE,
    instruction: { id: "ok", reply: 321 },
    settings: { metadata: traced() },
    code: 0,
    responseBytes: 321,
    trace: "parent",
    loadRunId: "run-7",
  },
  {
    what: "unary OK with a 100 kB request (several DATA frames)",
    method: RESERVE,
    instruction: { id: "big", reply: 1, pad: "p".repeat(100_000) },
    code: 0,
    responseBytes: 1,
  },
  {
    what: "unary OK, no metadata: a root span",
    method: RESERVE,
    instruction: { id: "root", reply: 0 },
    code: 0,
    responseBytes: 0,
    trace: "root",
  },
  {
    what: "unary NOT_FOUND",
    method: RESERVE,
    instruction: { id: "nf", code: 5, details: "no such sku: ünï" },
    code: 5,
    responseBytes: 0,
  },
  {
    what: "unary UNAVAILABLE after a wait",
    method: RESERVE,
    instruction: { id: "unavailable", code: 14, delayMs: 30 },
    code: 14,
    responseBytes: 0,
  },
  {
    what: "a handler that throws: UNKNOWN",
    method: RESERVE,
    instruction: { id: "throws", throws: true },
    code: 2,
    responseBytes: 0,
  },
  {
    what: "the client's deadline passes: DEADLINE_EXCEEDED (sent by grpc-js's timer)",
    method: RESERVE,
    instruction: { id: "deadline", delayMs: 300, reply: 10 },
    settings: { deadlineMs: 40 },
    code: 4,
    message: "Deadline exceeded",
    responseBytes: 0,
    endedEarly: true,
  },
  {
    what: "the client cancels: CANCELLED",
    method: RESERVE,
    instruction: { id: "cancel", delayMs: 300, reply: 10 },
    settings: { cancelAfterMs: 30 },
    code: 1,
    message: "cancelled by the client",
    responseBytes: 0,
    endedEarly: true,
  },
  {
    what: "a request grpc-js cannot deserialize: INTERNAL, sent past the interceptors",
    method: RESERVE,
    instruction: { id: "undecodable" },
    raw: Buffer.from([UNDECODABLE, 1, 2, 3, 4, 5, 6]),
    code: 13,
    message: "Error deserializing request",
    responseBytes: 0,
  },
  {
    what: "a bad load run id and traceparent are ignored",
    method: RESERVE,
    instruction: { id: "bad-metadata", reply: 5 },
    settings: {
      metadata: metadataWith({ traceparent: "00-zz-yy-01", "tailwatch-load-run": "no spaces allowed" }),
    },
    code: 0,
    responseBytes: 5,
    trace: "root",
    loadRunId: "",
  },
  {
    what: "server streaming, 4 messages, OK",
    method: WATCH,
    instruction: { id: "watch", messages: 4, reply: 1000 },
    settings: { metadata: traced() },
    code: 0,
    responseBytes: 4000,
    trace: "parent",
    loadRunId: "run-7",
  },
  {
    what: "server streaming, ABORTED after 2 messages",
    method: WATCH,
    instruction: { id: "watch-aborted", messages: 2, reply: 70_000, code: 10 },
    code: 10,
    responseBytes: 140_000,
  },
];

async function runCases(tailwatch: TailwatchInterceptor, interceptors: grpc.ServerInterceptor[]) {
  await using server = await startInventoryServer({ interceptors });
  const client = new grpc.Client(server.address, grpc.credentials.createInsecure());
  try {
    const outcomes: ClientOutcome[] = [];
    // One at a time: each call's event comes before the next call starts.
    for (const c of CASES) {
      outcomes.push(await callInventory(client, c.method, c.raw ?? requestOf(c.instruction), c.settings));
    }
    return outcomes;
  } finally {
    client.close();
    await tailwatch.close();
  }
}

function checkEvents(events: RequestEventInit[], outcomes: ClientOutcome[]) {
  assertEquals(events.length, CASES.length, "one event per call");
  for (const [i, c] of CASES.entries()) {
    const event = events[i];
    const outcome = outcomes[i];
    const label = `${c.what}: ${JSON.stringify(event, (_k, v) => typeof v === "bigint" ? String(v) : v)}`;
    assertEquals(outcome.code, c.code, `${c.what}: the client got the expected status`);
    assertEquals(event.method, c.method, label);
    if (c.instruction.id === "deadline") {
      // The server's copy of the deadline starts when the call reached it: when the client's reset comes
      // first, the server saw a cancel.
      assert(event.grpcCode === 4 || event.grpcCode === 1, label);
    } else {
      assertEquals(event.grpcCode, c.code, label);
    }
    assertEquals(event.service, "inventory", label);
    assertEquals(event.protocol, Protocol.GRPC, label);
    assertEquals([event.httpStatus, event.route, event.instance, event.faultInjected], [
      200,
      "",
      "inv-1",
      false,
    ]);
    const expectedMessage = c.code === 0
      ? ""
      : event.grpcCode === 1
      ? "cancelled by the client"
      : c.message ?? outcome.details;
    // A deadline is told by grpc-js's timer ("Deadline exceeded") or, when the client's reset came first, by
    // the interceptor ("deadline exceeded"): the same status either way.
    assert(
      event.errorMessage.toLowerCase().startsWith(expectedMessage.toLowerCase()),
      `${label}: message ${expectedMessage}`,
    );
    const requestBytes = (c.raw ?? requestOf(c.instruction)).length;
    assertEquals(Number(event.requestBytes), requestBytes, `${label}: request bytes`);
    assertEquals(Number(event.responseBytes), c.responseBytes, `${label}: response bytes`);
    if (c.code === 0) assertEquals(outcome.responseBytes, c.responseBytes, `${c.what}: the client got them`);
    assert(
      /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(event.eventId),
      label,
    );
    assert(HEX32.test(event.traceId) && HEX16.test(event.spanId), `${label}: trace and span ids`);
    if (c.trace === "parent") {
      assertEquals([event.traceId, event.parentSpanId], [TRACE_ID, PARENT_SPAN], label);
    } else if (c.trace === "root") {
      assert(event.traceId !== TRACE_ID && event.parentSpanId === "", `${label}: a root span`);
    }
    assertEquals(event.loadRunId, c.loadRunId ?? "", label);
    // Time: the start within the client's call, to the ms and to the µs; the duration within the client's.
    const startMs = Number(event.startTimeMs);
    // A call that ended early may reach the server after the client gave up on it.
    const latestStart = outcome.endMs + (c.endedEarly ? 250 : 0);
    assert(startMs >= outcome.startMs && startMs <= latestStart, `${label}: start within the call`);
    assert(
      Math.abs(Number(event.startTimeUs) / 1000 - startMs) < 20,
      `${label}: start_time_us ~ start_time_ms`,
    );
    const durationUs = Number(event.durationUs);
    if (c.endedEarly) {
      // The server learns of a deadline or a cancel after the client gave up: a little later.
      assert(
        durationUs <= outcome.clientUs + 50_000,
        `${label}: ${durationUs} µs vs the client's ${outcome.clientUs}`,
      );
    } else {
      assert(
        durationUs <= outcome.clientUs + 1,
        `${label}: ${durationUs} µs within the client's ${outcome.clientUs}`,
      );
    }
    // A handler's wait is in the duration (a call that ended early has no such floor: the server may have
    // got it late, its clock starting after the client's).
    if (c.instruction.delayMs && !c.endedEarly) {
      assert(durationUs >= (c.instruction.delayMs - 1) * 1000, `${label}: at least the handler's wait`);
    }
  }
}

Deno.test("grpc-js interceptor: one event per call with method, status, sizes, trace, load run, duration", async () => {
  const sink = memorySink();
  const tailwatch = await createTailwatchInterceptor({
    service: "inventory",
    instance: "inv-1",
    events: sink,
  });
  const outcomes = await runCases(tailwatch, [tailwatch.interceptor]);
  await eventsFor(sink, CASES.length);
  checkEvents(sink.events, outcomes);
  const page = tailwatch.metrics.render();
  assert(
    page.includes('requests_total{method="/inventory.v1.Inventory/Reserve",protocol="grpc",code="OK"} 4'),
    page,
  );
  assert(page.includes("tailwatch_grpc_stream_unavailable_total 0"), page);
  assert(page.includes("tailwatch_grpc_interceptor_errors_total 0"), page);
});

Deno.test("grpc-js interceptor: the same events behind another interceptor", async () => {
  const sink = memorySink();
  const tailwatch = await createTailwatchInterceptor({
    service: "inventory",
    instance: "inv-1",
    events: sink,
  });
  // A pass-through interceptor first: Tailwatch's call wraps it, and still finds the stream under it.
  const passThrough: grpc.ServerInterceptor = (_method, call) => new grpc.ServerInterceptingCall(call);
  const outcomes = await runCases(tailwatch, [passThrough, tailwatch.interceptor]);
  await eventsFor(sink, CASES.length);
  checkEvents(sink.events, outcomes);
});

Deno.test("grpc-js interceptor: a sink that throws never fails a call; the failure is counted", async () => {
  const sink = memorySink(true);
  const metrics = createRegistry();
  const quiet = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };
  const tailwatch = await createTailwatchInterceptor({
    service: "inventory",
    events: sink,
    metrics,
    logger: quiet,
  });
  await using server = await startInventoryServer({ interceptors: [tailwatch.interceptor] });
  const client = new grpc.Client(server.address, grpc.credentials.createInsecure());
  try {
    for (let i = 0; i < 20; i++) {
      const outcome = await callInventory(client, RESERVE, requestOf({ id: `x${i}`, reply: 3 }));
      assertEquals([outcome.code, outcome.responseBytes], [0, 3]);
    }
  } finally {
    client.close();
  }
  await new Promise((r) => setTimeout(r, 20));
  assert(metrics.render().includes("tailwatch_grpc_interceptor_errors_total 20"), metrics.render());
});

Deno.test("grpc-js interceptor: downstream metadata makes the next call a child span in the same run", async () => {
  const sink = memorySink();
  const tailwatch = await createTailwatchInterceptor({
    service: "inventory",
    instance: "inv-1",
    events: sink,
  });
  const outgoing = new Map<string, grpc.Metadata>();
  await using server = await startInventoryServer(
    { interceptors: [tailwatch.interceptor] },
    (id, metadata) => outgoing.set(id, tailwatch.downstreamMetadata(metadata)),
  );
  const client = new grpc.Client(server.address, grpc.credentials.createInsecure());
  try {
    await callInventory(client, RESERVE, requestOf({ id: "parent" }), { metadata: traced() });
    const downstream = outgoing.get("parent")!;
    await callInventory(client, RESERVE, requestOf({ id: "child" }), { metadata: downstream });
    assertEquals(tailwatch.downstreamMetadata(new grpc.Metadata()).getMap(), {}, "unknown metadata: nothing");
  } finally {
    client.close();
  }
  await eventsFor(sink, 2);
  const [parent, child] = sink.events;
  assertEquals([parent.traceId, parent.parentSpanId], [TRACE_ID, PARENT_SPAN]);
  assertEquals([child.traceId, child.parentSpanId, child.loadRunId], [TRACE_ID, parent.spanId, "run-7"]);
  assert(child.spanId !== parent.spanId, "a span of its own");
});

Deno.test("grpc-js interceptor: a service name that is not one subject token is refused", async () => {
  for (const service of ["", "a.b", "a b", "a*", "x>"]) {
    let refused = false;
    try {
      await createTailwatchInterceptor({ service, events: memorySink() });
    } catch {
      refused = true;
    }
    assert(refused, JSON.stringify(service));
  }
});

Deno.test("request bytes: the messages' bytes without their prefixes, however the DATA chunks split them", () => {
  // Three messages (0, 3 and 300 bytes), each with its 5-byte prefix.
  const sizes = [0, 3, 300];
  const wire = new Uint8Array(sizes.reduce((sum, size) => sum + 5 + size, 0));
  let at = 0;
  for (const size of sizes) {
    new DataView(wire.buffer).setUint32(at + 1, size);
    at += 5 + size;
  }
  for (let first = 0; first <= wire.length; first++) {
    for (const second of [first, Math.min(wire.length, first + 1), Math.min(wire.length, first + 7)]) {
      const counter = new MessageByteCounter();
      counter.push(wire.subarray(0, first));
      counter.push(wire.subarray(first, second));
      counter.push(wire.subarray(second));
      assertEquals(counter.bytes, 303, `split at ${first} and ${second}`);
    }
  }
});
