/**
 * The durable consumer and the stream, as the worker needs them (ingest/README.md, "Exactly once" and
 * "Partitions"): the consumer created, updated or recreated at its ack floor + 1 so that cumulative acks stay
 * safe; the stream waited for until it exists and fits; the stream's identity followed (a stream that started
 * over resets the floors); the high-water mark raised to whatever an earlier consumer may have delivered.
 */
import {
  AckPolicy,
  type ConsumerInfo,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamManager,
  type StreamInfo,
} from "@nats-io/jetstream";
import { nanos, type NatsConnection } from "@nats-io/transport-node";
import { checkRequestEventsStream } from "@tailwatch/nats";
import { REQUEST_EVENTS_STREAM, subjectCovers, subjectsOverlap } from "@tailwatch/events";
import { resetFloor } from "./committed_floor.ts";
import { streamSeqOffset } from "./stream_epoch.ts";
import { ackFloor, consumerFilters, type FloorSource } from "./floor.ts";
import { checkHealth, noteRecreation } from "./readiness.ts";
import { AbandonBatch, sleep } from "./retry.ts";
import { ident, sql } from "./sql.ts";
import type { WorkerContext } from "./worker_state.ts";

/** True when both lists hold the same subjects, in any order. */
function sameSubjects(a: readonly string[], b: readonly string[]): boolean {
  const left = [...a].sort();
  const right = [...b].sort();
  return left.length === right.length && left.every((subject, i) => subject === right[i]);
}

/** True for JetStream's "consumer not found" (any other failure is not evidence that it is gone). */
export function isConsumerNotFound(error: unknown): boolean {
  return error instanceof JetStreamApiError && error.code === JetStreamApiCodes.ConsumerNotFound;
}

/** This worker's durable consumer's info (throws when it is gone). */
export function consumerInfo(ctx: WorkerContext, jsm: JetStreamManager): Promise<ConsumerInfo> {
  return jsm.consumers.info(REQUEST_EVENTS_STREAM, ctx.config.durable);
}

/** What the global floor tracker (floor.ts) reads from JetStream: the stream, the partitions' consumers. */
export function floorSource(jsm: JetStreamManager): FloorSource {
  return {
    stream: async () => {
      const info = await jsm.streams.info(REQUEST_EVENTS_STREAM);
      return { lastSeq: info.state.last_seq, created: info.created };
    },
    consumer: (name) =>
      jsm.consumers.info(REQUEST_EVENTS_STREAM, name).catch((error) => {
        if (isConsumerNotFound(error)) return undefined;
        throw error;
      }),
    consumerNames: async () => {
      const names: string[] = [];
      for await (const info of jsm.consumers.list(REQUEST_EVENTS_STREAM)) names.push(info.name);
      return names;
    },
    firstAfter: async (filter, afterSeq) => {
      // MSG.GET with next_by_subj: the first message at or after `seq` whose subject matches.
      const found = await jsm.streams.getMessage(
        REQUEST_EVENTS_STREAM,
        { seq: afterSeq + 1, next_by_subj: filter } as unknown as { seq: number },
      );
      return found?.seq;
    },
  };
}

/**
 * Notes the stream's identity and duplicate window; a stream deleted and created again (another creation
 * time) or reverted (its last sequence below what was committed) starts its sequences over: the floor and
 * the high-water mark of the old one mean nothing for it. Returns true for such a reset.
 */
function noteStream(ctx: WorkerContext, stream: StreamInfo): boolean {
  const { state, metrics, logger } = ctx;
  const windowNs = stream.config.duplicate_window ?? 0;
  state.lateAfterMs = windowNs / 1_000_000 / 2;
  const recreated = state.streamCreated !== undefined && stream.created !== state.streamCreated;
  const reverted = stream.state.last_seq < ctx.floor.committed;
  state.streamCreated = stream.created;
  if (!recreated && !reverted) return false;
  metrics.streamResets.inc();
  logger.error(
    "the stream was deleted and created again, or reverted: its sequences start over; events are checked " +
      "by id, the committed floor starts again from the new stream (a new stream's numbers get an offset " +
      "above the old ones; a reverted stream's reused numbers stay below the profiler's floor: restart it)",
    {
      recreated,
      reverted,
      created: stream.created,
      firstSeq: stream.state.first_seq,
      lastSeq: stream.state.last_seq,
      oldFloor: ctx.floor.committed,
    },
  );
  resetFloor(ctx);
  return true;
}

/**
 * Sets the offset added to this stream's sequences in what is written for the profiler (stream_epoch.ts), once
 * per stream: a stream created anew gets numbers above everything written before.
 */
async function noteStreamOffset(ctx: WorkerContext, stream: StreamInfo): Promise<void> {
  if (ctx.floor.seqOffsetStream === stream.created) return;
  const { offset, recordedNow } = await streamSeqOffset(ctx.clickhouse, ctx.config.database, {
    created: stream.created,
    lastSeq: stream.state.last_seq,
  });
  ctx.floor.seqOffset = offset;
  ctx.floor.seqOffsetStream = stream.created;
  if (recordedNow || offset > 0) {
    ctx.logger.info("stream sequences are written to ClickHouse with an offset", {
      created: stream.created,
      offset,
      recordedNow,
    });
  }
}

/** True when the table holds any row: a consumer created anew may then hand out messages already inserted. */
async function tableHasRows(ctx: WorkerContext): Promise<boolean> {
  const rows = await ctx.clickhouse.query(
    sql`SELECT 1 AS one FROM ${ident(ctx.config.database, "request_events")} LIMIT 1`,
  );
  return rows.length > 0;
}

/**
 * Creates the durable consumer, or recreates it at its ack floor + 1 when it has unacked messages (or
 * another ack policy or filter, or a configuration that refuses this worker's pull requests); raises
 * highWater to what an old consumer delivered. `whileRunning`: the worker was consuming (a consumer found
 * gone is then created at the committed floor + 1, not from the start).
 */
export async function ensureConsumer(
  ctx: WorkerContext,
  jsm: JetStreamManager,
  whileRunning: boolean,
): Promise<void> {
  const { config, logger, state, pullLimits } = ctx;
  let info: ConsumerInfo | undefined;
  try {
    info = await jsm.consumers.info(REQUEST_EVENTS_STREAM, config.durable);
  } catch (error) {
    if (!isConsumerNotFound(error)) throw error;
  }
  const stream = await jsm.streams.info(REQUEST_EVENTS_STREAM);
  const reset = noteStream(ctx, stream);
  await noteStreamOffset(ctx, stream);
  // nats-server matches every message's subject against a consumer's filter (a quarter of its CPU per
  // delivered message in the ingest bench, ingest/README.md): filters that cover every subject of the stream
  // select everything anyway, so the consumer gets none.
  const streamSubjects = stream.config.subjects ?? [];
  const filters = streamSubjects.length > 0 &&
      streamSubjects.every((subject) => config.filterSubjects.some((f) => subjectCovers(f, subject)))
    ? []
    : config.filterSubjects;
  // Two workers whose durables read the same subjects would both insert what they both get: while another
  // durable of this ingest that reads some of these subjects has a live worker (INGEST_PARTITIONS being
  // changed while the old workers still run), wait.
  await awaitNoOverlappingWorker(ctx, jsm, filters);
  // Acks are cumulative (AckPolicy.All: the last message of a batch acks the batch and everything
  // before it). Such an ack is safe only if this process saw every message below it, so messages that
  // an earlier process was handed and never acked must come again, in order, before anything new. The
  // server would redeliver them only after the ack wait, while new messages flow: so a durable with
  // unacked messages (or with another ack policy, which the server does not let us change) is
  // recreated to start at its ack floor + 1. The dedup check absorbs the overlap (README, "Exactly
  // once"). A durable that was created with another filter subject is recreated too, and so is one that
  // refuses this worker's pull requests (push based, or request limits below what it asks).
  const unusable = info === undefined ? undefined : (
    info.config.deliver_subject
      ? "push based"
      : (info.config.max_batch ?? 0) > 0 && info.config.max_batch! < pullLimits.batch
      ? `max_batch ${info.config.max_batch}`
      : (info.config.max_expires ?? 0) > 0 && info.config.max_expires! < nanos(pullLimits.expiresMs)
      ? `max_expires ${info.config.max_expires} ns`
      : (info.config.max_bytes ?? 0) > 0 && info.config.max_bytes! < pullLimits.requestBytes
      ? `max_bytes ${info.config.max_bytes}`
      : undefined
  );
  const recreate = info !== undefined && (
    info.config.ack_policy !== AckPolicy.All || info.num_ack_pending > 0 ||
    info.delivered.stream_seq > ackFloor(info) ||
    !sameSubjects(consumerFilters(info), filters) || unusable !== undefined
  );
  // A durable that was recreated (by this code: start sequence = the old one's ack floor + 1) no longer
  // knows what its earlier incarnations delivered: a process killed after recreating it (caught by the kill
  // -9 test: the next process found ack floor 0, delivered 2500, while the incarnation before had delivered
  // up to 4000 and inserted unacked batches above 2500, which then went in a second time). Any of those
  // deliveries is in the stream, so the stream's last sequence bounds them: every message up to it gets the
  // dedup check. A durable never recreated keeps its delivered sequence, which is enough (below). The same
  // holds for a durable that is gone while the table has rows (deleted by hand, lost with NATS's store, or
  // gone with its stream): whatever it delivered may be in the table.
  if (info && (recreate || info.config.deliver_policy === DeliverPolicy.StartSequence)) {
    if (stream.state.last_seq > state.highWater) state.highWater = stream.state.last_seq;
  }
  if (info === undefined && (whileRunning || reset || await tableHasRows(ctx))) {
    if (stream.state.last_seq > state.highWater || reset) state.highWater = stream.state.last_seq;
  }
  if (info && !recreate) {
    await jsm.consumers.update(REQUEST_EVENTS_STREAM, config.durable, {
      ack_wait: nanos(config.ackWaitMs),
      max_ack_pending: config.maxAckPending,
    });
    return;
  }
  let startSeq: number | undefined;
  if (info) {
    await jsm.consumers.delete(REQUEST_EVENTS_STREAM, config.durable);
    const reason = unusable !== undefined
      ? "unusable"
      : info.num_ack_pending > 0 || info.delivered.stream_seq > ackFloor(info)
      ? "unacked"
      : "config";
    (reason === "unusable" ? logger.error : logger.info)(
      "recreated the durable consumer at its ack floor + 1",
      {
        ackPolicy: info.config.ack_policy,
        ackFloor: ackFloor(info),
        delivered: info.delivered.stream_seq,
        ...(unusable !== undefined ? { unusable } : {}),
      },
    );
    noteRecreation(ctx, reason);
    // Everything up to what the old consumer delivered may have been inserted already.
    if (info.delivered.stream_seq > state.highWater) state.highWater = info.delivered.stream_seq;
    startSeq = ackFloor(info) + 1;
    // Filters that now read subjects the old ones did not (fewer partitions, down to one): messages of those
    // subjects above the ack floors of the durables that read them until now are not committed. Start at
    // the lowest of those floors (what comes again is checked by id: highWater is the stream's last).
    const before = consumerFilters(info);
    const widened = before.length > 0 &&
      (filters.length === 0 || filters.some((f) => !before.some((old) => subjectCovers(old, f))));
    if (widened) {
      for (const other of await familyConsumers(ctx, jsm)) {
        if (other.name === config.durable) continue;
        const otherFilters = consumerFilters(other);
        const reads = filters.length === 0 || otherFilters.length === 0 ||
          otherFilters.some((o) => filters.some((f) => subjectsOverlap(o, f)));
        if (reads && ackFloor(other) + 1 < startSeq) startSeq = ackFloor(other) + 1;
      }
      logger.info(
        "the durable now reads subjects other durables read: starting at their lowest ack floor",
        {
          startSeq,
          filters,
          before,
        },
      );
    }
  } else if (whileRunning) {
    // Gone while this worker consumed: everything at or below its committed floor is in the table; the rest
    // comes again (checked by id). From the stream's start if the stream itself started over.
    startSeq = reset || ctx.floor.committed === 0 ? undefined : ctx.floor.committed + 1;
    logger.error("the durable consumer was gone; created it again", {
      startSeq: startSeq ?? "the stream's first message",
      streamReset: reset,
    });
    noteRecreation(ctx, "missing");
  }
  await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
    durable_name: config.durable,
    ack_policy: AckPolicy.All,
    ...(startSeq !== undefined ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: startSeq } : {
      deliver_policy: ctx.options.deliverFromStart === false && !whileRunning
        ? DeliverPolicy.New
        : DeliverPolicy.All,
    }),
    ack_wait: nanos(config.ackWaitMs),
    max_ack_pending: config.maxAckPending,
    max_deliver: -1,
    ...(filters.length === 1 ? { filter_subject: filters[0] } : {}),
    ...(filters.length > 1 ? { filter_subjects: filters } : {}),
  });
  await awaitConsumerLeader(jsm, config.durable);
}

/** How long a new durable's replicas get to elect a leader before the worker pulls anyway. */
const CONSUMER_LEADER_WAIT_MS = 10_000;

/**
 * Waits until a just-created durable has a leader. The server answers the create once the meta group has
 * placed the consumer; a replicated one (R3 in a cluster) elects its leader after that, and until it has, a
 * pull request finds no responder (503): the receiver would take that for a consumer gone and resync. A
 * consumer on a single server has no cluster group and is ready at once. Past CONSUMER_LEADER_WAIT_MS the
 * worker goes on, and the receiver deals with what it meets as before.
 */
async function awaitConsumerLeader(jsm: JetStreamManager, durable: string): Promise<void> {
  const deadline = Date.now() + CONSUMER_LEADER_WAIT_MS;
  for (;;) {
    const info = await jsm.consumers.info(REQUEST_EVENTS_STREAM, durable);
    if (info.cluster === undefined || info.cluster.leader) return;
    if (Date.now() > deadline) return;
    await sleep(50);
  }
}

/** The durables of this ingest: INGEST_DURABLE and its partitions' (`<INGEST_DURABLE>-<n>`). */
async function familyConsumers(ctx: WorkerContext, jsm: JetStreamManager): Promise<ConsumerInfo[]> {
  const family = new RegExp(`^${ctx.config.durableBase}(-\\d+)?$`);
  const found: ConsumerInfo[] = [];
  for await (const info of jsm.consumers.list(REQUEST_EVENTS_STREAM)) {
    if (family.test(info.name)) found.push(info);
  }
  return found;
}

/**
 * Waits while another durable of this ingest reads some of `filters`' subjects and has a live worker: one
 * with a pull request waiting, or that took a message within the last minute and holds it unacked (a dead
 * worker's pull request expires within 30 s). That happens only while workers of two partition counts run
 * at once (INGEST_PARTITIONS changed without stopping the old ones first), with one partition too.
 */
async function awaitNoOverlappingWorker(
  ctx: WorkerContext,
  jsm: JetStreamManager,
  filters: string[],
): Promise<void> {
  const { config, logger, health } = ctx;
  let loggedAt = 0;
  for (let attempt = 0;; attempt++) {
    const live = (await familyConsumers(ctx, jsm)).filter((other) => {
      if (other.name === config.durable) return false;
      const otherFilters = consumerFilters(other);
      const overlaps = filters.length === 0 || otherFilters.length === 0 ||
        otherFilters.some((o) => filters.some((f) => subjectsOverlap(o, f)));
      const lastActive = Date.parse(String(other.delivered.last_active ?? ""));
      const active = other.num_waiting > 0 ||
        (Number.isFinite(lastActive) && Date.now() - lastActive < 60_000 && other.num_ack_pending > 0);
      return overlaps && active;
    });
    if (live.length === 0) {
      if (attempt > 0) health.waitingFor = undefined;
      return;
    }
    const names = live.map((other) => other.name).join(", ");
    health.waitingFor =
      `durable ${names} reads some of the same subjects and its worker is alive: stop the old ` +
      "workers before changing INGEST_PARTITIONS (two workers would insert the same messages)";
    if (Date.now() - loggedAt >= 30_000) {
      loggedAt = Date.now();
      logger.error("waiting: another worker reads some of this partition's subjects", {
        durables: names,
        filters,
      });
    }
    checkHealth(ctx);
    if (ctx.state.stopping) throw new AbandonBatch("stopped while another worker read the same subjects");
    await sleep(2_000);
  }
}

/**
 * Waits until the stream exists and fits this worker (the setup step creates and configures it; the worker
 * never does): not ready meanwhile, with the reason in /readyz and an error in the log when it changes (and
 * every minute). Checked at start and after the receiver stopped (the stream may have gone with NATS's store).
 */
export async function awaitStream(ctx: WorkerContext, conn: NatsConnection): Promise<boolean> {
  const { logger, health } = ctx;
  const streamNeeds = { consumeSubjects: ctx.config.filterSubjects, keepsAcked: true };
  let problem: string | undefined;
  let loggedAt = 0;
  for (let attempt = 0;; attempt++) {
    let problems: string[];
    try {
      problems = await checkRequestEventsStream(conn, streamNeeds);
    } catch (error) {
      problems = [`the stream check failed: ${error instanceof Error ? error.message : error}`];
    }
    if (problems.length === 0) {
      if (problem !== undefined) logger.info("the stream is there and fits; going on");
      health.waitingFor = undefined;
      return true;
    }
    const now = Date.now();
    const next = problems.join("; ");
    if (next !== problem || now - loggedAt >= 60_000) {
      loggedAt = now;
      logger.error("waiting for the stream (the setup step creates and configures it)", { problem: next });
    }
    problem = next;
    health.waitingFor = next;
    checkHealth(ctx);
    if (ctx.state.stopping) return false;
    await sleep(Math.min(5_000, 250 * 2 ** Math.min(attempt, 5)));
  }
}
