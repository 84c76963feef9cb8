/**
 * Ingest benchmark: `deno run -A ingest/bench.ts` (or `runIngestBench()` from ./dev bench).
 *
 * On private nats-server and clickhouse-server instances: fills REQUEST_EVENTS with INGEST_BENCH_EVENTS
 * (default 1,000,000) events, then measures in the same run
 *   - jetstream_fetch_ack_per_s: raw consume-and-ack rate of a plain consumer (no decode, no insert),
 *   - clickhouse_insert_rows_per_s: raw INSERT rate of prepared rows in 20,000-row batches into the same
 *     schema (materialized views included), insert time only,
 *   - ingest_events_per_s: the worker with its defaults (20,000 / 250 ms), from ready to fully drained.
 * Prints one JSON object and returns it.
 */
import { toBinary } from "@bufbuild/protobuf";
import { AckPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { RequestEventSchema } from "@tailwatch/proto/events/v1";
import { CLICKHOUSE_ADMIN, startClickHouseServer, startNatsServer } from "@tailwatch/testing";
import {
  ensureRequestEventsStream,
  REQUEST_EVENTS_STREAM,
  requestEventSubject,
} from "../services/kit/stream.ts";
import { createClickHouse } from "./clickhouse.ts";
import { loadConfig } from "./config.ts";
import { decodeEvent, REQUEST_EVENT_COLUMNS, type RequestEventRow } from "./event_row.ts";
import { createLogger } from "./log.ts";
import { applyMigrations } from "./migrations.ts";
import { ident, sql } from "./sql.ts";
import { makeEvent } from "./test_helpers.ts";
import { createIngestWorker } from "./worker.ts";

const round = (n: number) => Math.round(n);

export async function runIngestBench(): Promise<Record<string, number>> {
  const total = Number(Deno.env.get("INGEST_BENCH_EVENTS") ?? 1_000_000);
  await using nats = await startNatsServer();
  await using clickhouse = await startClickHouseServer();
  const nc = await connect({ servers: nats.url });
  const ch = createClickHouse({ url: clickhouse.url, ...CLICKHOUSE_ADMIN, timeoutMs: 120_000 });
  try {
    await ensureRequestEventsStream(nc, { duplicateWindowSeconds: 60 });
    const js = jetstream(nc);

    // 1. Fill the stream.
    const payloads: Uint8Array[] = [];
    const started = Date.now();
    const publishStart = performance.now();
    const inFlight = new Set<Promise<unknown>>();
    for (let i = 0; i < total; i++) {
      const event = makeEvent(i, started - (total - i));
      const payload = toBinary(RequestEventSchema, event);
      payloads.push(payload);
      const p = js.publish(requestEventSubject(event.service), payload, {
        msgID: event.eventId,
        timeout: 60_000,
      });
      const tracked = p.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
      if (inFlight.size >= 2_000) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    const publishSeconds = (performance.now() - publishStart) / 1000;

    // 2. Raw JetStream consume-and-ack.
    const jsm = await jetstreamManager(nc);
    await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
      durable_name: "bench-raw",
      ack_policy: AckPolicy.Explicit,
      max_ack_pending: 40_000,
    });
    const rawConsumer = await js.consumers.get(REQUEST_EVENTS_STREAM, "bench-raw");
    let acked = 0;
    const fetchStart = performance.now();
    await new Promise<void>((resolve) => {
      rawConsumer.consume({
        max_messages: 20_000,
        callback: (msg) => {
          msg.ack();
          if (++acked === total) resolve();
        },
      });
    });
    await nc.flush();
    const fetchSeconds = (performance.now() - fetchStart) / 1000;
    await jsm.consumers.delete(REQUEST_EVENTS_STREAM, "bench-raw");

    // 3. Raw ClickHouse inserts of prepared rows into the same schema.
    await applyMigrations({ clickhouse: ch, database: "bench_raw" });
    let insertSeconds = 0;
    for (let i = 0; i < total; i += 20_000) {
      const rows: RequestEventRow[] = [];
      for (let j = i; j < Math.min(total, i + 20_000); j++) {
        const decoded = decodeEvent(payloads[j], j + 1);
        if (decoded.ok) rows.push(decoded.row);
      }
      const t0 = performance.now();
      await ch.insertJsonEachRow(
        { database: "bench_raw", table: "request_events" },
        REQUEST_EVENT_COLUMNS,
        rows,
      );
      insertSeconds += (performance.now() - t0) / 1000;
    }
    payloads.length = 0;

    // 4. The worker, defaults, drain mode.
    const config = loadConfig({
      NATS_URL: nats.url,
      CLICKHOUSE_URL: clickhouse.url,
      CLICKHOUSE_USER: CLICKHOUSE_ADMIN.username,
      CLICKHOUSE_PASSWORD: CLICKHOUSE_ADMIN.password,
      CLICKHOUSE_DATABASE: "bench_ingest",
      INGEST_RETENTION_INTERVAL_S: "0",
    });
    await applyMigrations({ clickhouse: ch, database: "bench_ingest" });
    const worker = createIngestWorker({ config, logger: createLogger("warn"), mode: "drain" });
    let readyAt = 0;
    const poll = setInterval(() => {
      if (!readyAt && worker.ready()) readyAt = performance.now();
    }, 5);
    const runStart = performance.now();
    const stats = await worker.run();
    const runEnd = performance.now();
    clearInterval(poll);
    const ingestSeconds = (runEnd - (readyAt || runStart)) / 1000;
    const [count] = await ch.query<{ n: string }>(
      sql`SELECT count() AS n FROM ${ident("bench_ingest", "request_events")}`,
    );
    if (Number(count.n) !== total) throw new Error(`ingest bench: ${count.n} rows for ${total} events`);

    const result = {
      events: total,
      publish_events_per_s: round(total / publishSeconds),
      jetstream_fetch_ack_per_s: round(total / fetchSeconds),
      clickhouse_insert_rows_per_s: round(total / insertSeconds),
      ingest_events_per_s: round(total / ingestSeconds),
      ingest_seconds: Math.round(ingestSeconds * 100) / 100,
      ingest_batches: stats.batches,
      ingest_rows_inserted: stats.rowsInserted,
    };
    console.log(JSON.stringify(result));
    return result;
  } finally {
    await nc.close();
  }
}

if (import.meta.main) {
  await runIngestBench();
}
