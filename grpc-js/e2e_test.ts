/**
 * A plain grpc-js server with the Tailwatch interceptor, under load, through the real pipeline: the kit's
 * event sink → a real nats-server (JetStream, the stream made by the setup step's `applyRequestEventsStream`)
 * → the real ingest worker → a real clickhouse-server. A few thousand calls from 32 concurrent callers:
 * unary and server-streaming, OK and failing with many codes (from the handler, thrown, by deadline, by a
 * cancel, by a request grpc-js cannot decode), half with a W3C traceparent, some with a load run id (and some
 * with a bad one). Then every call is exactly one row, with the right method, code, sizes, trace, load run,
 * start within the call and a duration within what the client measured; rows = calls = events published =
 * distinct event ids, none dropped. About 20 s, most of it clickhouse-server starting.
 */
import * as grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";
import { applyRequestEventsStream } from "@tailwatch/nats";
import { createLogger, type Registry } from "@tailwatch/runtime";
import { applyMigrations } from "@tailwatch/ingest/migrations";
import { createClickHouse, createIngestWorker } from "@tailwatch/ingest";
import { ident, sql } from "@tailwatch/ingest/sql";
import { testConfig } from "@tailwatch/ingest/testing";
import {
  assert,
  assertEquals,
  CLICKHOUSE_ADMIN,
  seededRandom,
  startClickHouseServer,
  startNatsServer,
  waitUntil,
} from "@tailwatch/testing";
import { createTailwatchInterceptor } from "./interceptor.ts";
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

const CALLS = 3000;
const CONCURRENCY = 32;
const RUN_ID = `grpcjs-e2e-${crypto.randomUUID().slice(0, 8)}`;

interface Plan {
  id: string;
  method: typeof RESERVE | typeof WATCH;
  instruction: Instruction;
  request: Buffer;
  code: number;
  responseBytes: number;
  /** A deadline or a cancel ends the call before the server's status reaches the client. */
  endedEarly?: "deadline" | "cancel";
  /** The traceparent sent, if any: its trace id and parent span id. */
  trace?: { traceId: string; parentSpanId: string };
  /** The load-run metadata sent, and the id the row must carry. */
  loadRunSent?: string;
  loadRunId: string;
}

const hex = (random: () => number, digits: number) => {
  let text = "";
  while (text.length < digits) text += Math.floor(random() * 16).toString(16);
  return text.replace(/^0+$/, "1");
};

/** The calls: what each asks, and what its row must say. */
function plans(seed: number): Plan[] {
  const random = seededRandom(seed);
  return Array.from({ length: CALLS }, (_, i): Plan => {
    const id = `c${i}`;
    const r = random();
    let method: Plan["method"] = RESERVE;
    let instruction: Instruction = { id };
    let code = 0;
    let responseBytes = 0;
    let endedEarly: Plan["endedEarly"];
    let undecodable = false;
    const failWith = (failure: number) => {
      code = failure;
      instruction.code = failure;
    };
    if (r < 0.55) {
      instruction.reply = Math.floor(random() * 3000);
      if (random() < 0.1) instruction.delayMs = 1 + Math.floor(random() * 5);
      responseBytes = instruction.reply;
    } else if (r < 0.62) failWith(5);
    else if (r < 0.67) failWith(3);
    else if (r < 0.71) failWith(8);
    else if (r < 0.75) {
      failWith(14);
      instruction.delayMs = 2;
    } else if (r < 0.78) failWith(7);
    else if (r < 0.80) {
      instruction.throws = true;
      code = 2;
    } else if (r < 0.81) {
      undecodable = true;
      code = 13;
    } else if (r < 0.82) {
      instruction = { id, delayMs: 150, reply: 10 };
      code = 4;
      endedEarly = "deadline";
    } else if (r < 0.83) {
      instruction = { id, delayMs: 150, reply: 10 };
      code = 1;
      endedEarly = "cancel";
    } else {
      method = WATCH;
      instruction.messages = r < 0.93 ? 1 + Math.floor(random() * 5) : Math.floor(random() * 4);
      instruction.reply = Math.floor(random() * 2000);
      responseBytes = instruction.messages * instruction.reply;
      if (r >= 0.93) failWith(10);
    }
    // Calls the handler may never see (undecodable, ended early) always carry a trace: matched by trace id.
    const trace = undecodable || endedEarly || random() < 0.5
      ? { traceId: hex(random, 32), parentSpanId: hex(random, 16) }
      : undefined;
    const runDraw = random();
    const loadRunSent = runDraw < 0.4 ? RUN_ID : runDraw < 0.45 ? "not a run id!" : undefined;
    const request = undecodable
      ? Buffer.concat([Buffer.from([UNDECODABLE]), Buffer.from(id)])
      : requestOf(instruction);
    return {
      id,
      method,
      instruction,
      request,
      code,
      responseBytes,
      endedEarly,
      trace,
      loadRunSent,
      loadRunId: loadRunSent === RUN_ID ? RUN_ID : "",
    };
  });
}

interface Row {
  event_id: string;
  service: string;
  method: string;
  protocol: string;
  route: string;
  grpc_code: number;
  http_status: number;
  duration_us: string;
  request_bytes: string;
  response_bytes: string;
  trace_id: string;
  span_id: string;
  parent_span_id: string;
  instance: string;
  error_message: string;
  fault_injected: number;
  load_run_id: string;
  ts_ms: string;
  ts_us: string;
}

function metricSum(registry: Registry, name: string): number {
  let sum = 0;
  for (const match of registry.render().matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "gm"))) {
    sum += Number(match[1]);
  }
  return sum;
}

Deno.test("grpc-js interceptor under load: every call one row in ClickHouse, through NATS and ingest", async () => {
  const seed = Number(Deno.env.get("GRPCJS_E2E_SEED") ?? 20261207);
  await using nats = await startNatsServer();
  await applyRequestEventsStream(nats.url); // the setup step's stream: the sink only checks it
  await using clickhouseServer = await startClickHouseServer();
  const database = `tw_grpcjs_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const clickhouse = createClickHouse({ url: clickhouseServer.url, ...CLICKHOUSE_ADMIN });
  await applyMigrations({ clickhouse, database });

  const worker = createIngestWorker({
    config: testConfig(nats.url, clickhouseServer.url, CLICKHOUSE_ADMIN.password, database),
    logger: createLogger("error"),
  });
  const workerDone = worker.run();
  try {
    const tailwatch = await createTailwatchInterceptor({
      service: "inventory",
      natsUrl: nats.url,
      instance: "inventory-e2e-1",
      logger: createLogger("warn", { test: "grpc-js e2e" }),
    });
    const seen = new Map<string, () => void>();
    const spanOfCall = new Map<string, string>();
    const handlerHas = (id: string) => new Promise<void>((resolve) => seen.set(id, resolve));
    const outcomes: ClientOutcome[] = [];
    const calls = plans(seed);
    let loadSeconds = 0;
    {
      await using server = await startInventoryServer(
        { interceptors: [tailwatch.interceptor] },
        (id, metadata) => {
          // This call's span, as the interceptor hands it to downstream calls.
          const traceparent = String(tailwatch.downstreamMetadata(metadata).get("traceparent")[0] ?? "");
          spanOfCall.set(id, traceparent.slice(36, 52));
          seen.get(id)?.();
        },
      );
      await waitUntil("the sink is ready", () => tailwatch.events.readiness().ready, 20_000);
      const client = new grpc.Client(server.address, grpc.credentials.createInsecure());
      const loadStart = performance.now();
      try {
        let next = 0;
        await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
          while (next < calls.length) {
            const i = next++;
            const plan = calls[i];
            const metadata = new grpc.Metadata();
            if (plan.trace) {
              metadata.set("traceparent", `00-${plan.trace.traceId}-${plan.trace.parentSpanId}-01`);
            }
            if (plan.loadRunSent !== undefined) metadata.set("tailwatch-load-run", plan.loadRunSent);
            const settings: CallSettings = { metadata };
            if (plan.endedEarly === "deadline") settings.deadlineMs = 25;
            if (plan.endedEarly === "cancel") settings.cancelWhen = handlerHas(plan.id);
            outcomes[i] = await callInventory(client, plan.method, plan.request, settings);
          }
        }));
      } finally {
        client.close();
      }
      loadSeconds = (performance.now() - loadStart) / 1000;
    }
    // A call the client gave up on (deadline, cancel) may still be running in the server: wait for its end.
    await waitUntil(
      "the server ended every call",
      () => metricSum(tailwatch.metrics, "requests_total") >= CALLS,
      10_000,
    );
    assert(await tailwatch.events.flush(20_000), "every event acknowledged by JetStream");
    const published = metricSum(tailwatch.metrics, "events_published_total");
    const dropped = metricSum(tailwatch.metrics, "events_dropped_total");
    const served = metricSum(tailwatch.metrics, "requests_total");
    await tailwatch.close();
    assertEquals([served, published, dropped], [CALLS, CALLS, 0], "served = published, none dropped");

    const table = ident(database, "request_events");
    const count = async () =>
      Number((await clickhouse.query<{ n: string }>(sql`SELECT count() AS n FROM ${table}`))[0].n);
    await waitUntil(`${CALLS} rows in ClickHouse`, async () => await count() >= CALLS, 30_000, 200);
    const rows = await clickhouse.query<Row>(sql`
      SELECT toString(event_id) AS event_id, service, method, protocol, route, grpc_code, http_status,
        duration_us, request_bytes, response_bytes, trace_id, span_id, parent_span_id, instance,
        error_message, fault_injected, load_run_id, ts_ms, ts_us
      FROM ${table}`);
    assertEquals(rows.length, CALLS, "rows = calls");
    assertEquals(new Set(rows.map((row) => row.event_id)).size, CALLS, "distinct event ids = calls");

    // Each call's row: by its trace id when it sent one, else by the span its handler saw.
    const byTrace = new Map<string, Row[]>();
    const bySpan = new Map<string, Row[]>();
    for (const row of rows) {
      byTrace.set(row.trace_id, [...byTrace.get(row.trace_id) ?? [], row]);
      bySpan.set(row.span_id, [...bySpan.get(row.span_id) ?? [], row]);
    }
    const codes = new Map<number, number>();
    let cancelsServed = 0;
    for (const [i, plan] of calls.entries()) {
      const outcome = outcomes[i];
      const matches = plan.trace
        ? byTrace.get(plan.trace.traceId)
        : bySpan.get(spanOfCall.get(plan.id) ?? "");
      const label = `call ${plan.id} ${JSON.stringify(plan.instruction)} (seed ${seed})`;
      assertEquals(matches?.length, 1, `${label}: exactly one row`);
      const row = matches![0];
      const context = `${label}: ${JSON.stringify(row)} vs ${JSON.stringify(outcome)}`;
      assertEquals(outcome.code, plan.code, `${label}: the client got the planned status`);
      assertEquals(
        [row.service, row.method, row.protocol, row.route, row.http_status, row.instance, row.fault_injected],
        ["inventory", plan.method, "grpc", "", 200, "inventory-e2e-1", 0],
        context,
      );
      // The server's view of a call the client gave up on:
      // - deadline: the client's deadline passed and it reset the stream (RST_STREAM CANCEL, as for a cancel).
      //   The server's copy of the deadline starts when the call reached it, later under load: when the reset
      //   comes before that copy expires, the server saw a cancel (the kit's services say the same);
      // - cancel: CANCELLED, or OK when the handler answered (150 ms on) before the server read the reset,
      //   which a busy event loop can delay that long: the server did serve it.
      const servedAfterAll = plan.endedEarly === "cancel" && row.grpc_code === 0;
      if (servedAfterAll) cancelsServed++;
      if (plan.endedEarly === "deadline") {
        assert(row.grpc_code === 4 || row.grpc_code === 1, `${context}: DEADLINE_EXCEEDED or CANCELLED`);
      } else if (plan.endedEarly === "cancel") {
        assert(
          row.grpc_code === 1 || servedAfterAll,
          `${context}: CANCELLED, or OK before the reset was read`,
        );
      } else {
        assertEquals(row.grpc_code, plan.code, context);
      }
      codes.set(row.grpc_code, (codes.get(row.grpc_code) ?? 0) + 1);
      assert(
        (row.error_message === "") === (row.grpc_code === 0),
        `${context}: a message exactly on failure`,
      );
      assertEquals(Number(row.request_bytes), plan.request.length, `${context}: request bytes`);
      const responseBytes = servedAfterAll ? 10 : plan.endedEarly ? 0 : plan.responseBytes;
      assertEquals(Number(row.response_bytes), responseBytes, `${context}: response bytes`);
      if (plan.code === 0) {
        assertEquals(outcome.responseBytes, plan.responseBytes, `${context}: the client's`);
      }
      if (plan.trace) {
        assertEquals(
          [row.trace_id, row.parent_span_id],
          [plan.trace.traceId, plan.trace.parentSpanId],
          context,
        );
      } else {
        assertEquals(row.parent_span_id, "", `${context}: a root span`);
      }
      if (spanOfCall.has(plan.id)) assertEquals(row.span_id, spanOfCall.get(plan.id), `${context}: the span`);
      assertEquals(row.load_run_id, plan.loadRunId, context);
      const tsMs = Number(row.ts_ms);
      // A call that ended early may reach the server after the client gave up (its frames wait in the socket
      // while the event loop is busy): then it starts after the client's end.
      const latestStart = outcome.endMs + (plan.endedEarly ? 250 : 0);
      assert(tsMs >= outcome.startMs && tsMs <= latestStart, `${context}: start within the call`);
      assert(Math.abs(Number(row.ts_us) / 1000 - tsMs) < 20, `${context}: ts_us ~ ts_ms`);
      const durationUs = Number(row.duration_us);
      if (servedAfterAll) {
        assert(durationUs >= 149_000 && durationUs <= 400_000, `${context}: the handler's 150 ms`);
      } else if (plan.endedEarly) {
        // The server learns of a deadline or a cancel after the client gave up on the call.
        assert(durationUs <= outcome.clientUs + 250_000, `${context}: duration near the client's`);
      } else {
        assert(durationUs <= outcome.clientUs + 1, `${context}: duration within the client's`);
        assert(durationUs >= ((plan.instruction.delayMs ?? 0) - 1) * 1000, `${context}: at least the delay`);
      }
    }
    console.log(
      `grpc-js e2e: ${CALLS} calls in ${loadSeconds.toFixed(1)} s (${Math.round(CALLS / loadSeconds)}/s), ` +
        `rows by code ${JSON.stringify(Object.fromEntries([...codes].sort((a, b) => a[0] - b[0])))}, ` +
        `${cancelsServed} cancelled calls answered before the server read the reset`,
    );
    // The mix had every kind of outcome (the seed decides how many of each).
    for (const code of [0, 2, 3, 5, 7, 8, 10, 13, 14]) {
      assert((codes.get(code) ?? 0) > 0, `code ${code} among the rows: ${JSON.stringify([...codes])}`);
    }
    assert(codes.has(1) || codes.has(4), "calls that ended early among the rows");
  } finally {
    worker.stop();
    await workerDone;
    await clickhouse.exec(sql`DROP DATABASE IF EXISTS ${ident(database)}`).catch(() => {});
  }
});
