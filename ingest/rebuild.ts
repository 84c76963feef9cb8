/**
 * Rebuild: the tables are projections of the stream, so they can be thrown away and recomputed from it, as
 * far as the stream still holds their messages (7 days, 10 GiB). Deletes the durable consumer, empties the
 * projections and replays REQUEST_EVENTS from its first message through the normal worker (same batching,
 * dedup and dead-lettering) until nothing is pending. Rows the stream can no longer give back are never
 * destroyed silently: the rebuild refuses, or keeps them (`keepOlder`), and says which. The workers must not
 * be running meanwhile: rebuild refuses when a consumer of theirs has waiting pull requests. With several
 * partitions (INGEST_PARTITIONS) every partition's durable is deleted, one worker replays the whole stream, and
 * the partitions' durables are then created at the message after the last one it replayed.
 */
import { AckPolicy, type ConsumerInfo, DeliverPolicy, jetstreamManager } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import { connectNats } from "@tailwatch/nats";
import type { Logger } from "@tailwatch/runtime";
import { partitionFilterSubjects, REQUEST_EVENTS_STREAM, REQUEST_EVENTS_SUBJECTS } from "@tailwatch/events";
import { type IngestConfig, partitionDurable } from "./config.ts";
import { ackFloor } from "./floor.ts";
import { type ClickHouse, createClickHouse } from "./clickhouse.ts";
import { applyMigrations } from "./migrations.ts";
import { reconcileRollups } from "./rollups.ts";
import { ident, type Sql, sql } from "./sql.ts";
import { createIngestWorker, type IngestStats } from "./worker.ts";

/**
 * The projections a rebuild recomputes (latency_percentiles, the Buffer in front of
 * latency_percentiles_storage, is the profiler's output, not a projection: left alone).
 */
export const PROJECTION_TABLES = [
  "request_events",
  "request_stats_1s",
  "latency_profile_1s",
] as const;

export interface ProjectionCounts {
  rows: number;
  distinctEvents: number;
  statsRequests: number;
  /** Requests in the profiler's rollup (latency_profile_1s). */
  profileRequests: number;
}

/** Counts that a rebuild must leave unchanged. */
export async function projectionCounts(clickhouse: ClickHouse, database: string): Promise<ProjectionCounts> {
  const [raw] = await clickhouse.query<{ rows: string; distinct_events: string }>(
    sql`SELECT count() AS rows, uniqExact(event_id) AS distinct_events FROM ${
      ident(database, "request_events")
    }`,
  );
  const [stats] = await clickhouse.query<{ n: string }>(
    sql`SELECT sum(requests) AS n FROM ${ident(database, "request_stats_1s")}`,
  );
  const [profile] = await clickhouse.query<{ n: string }>(
    sql`SELECT sum(requests) AS n FROM ${ident(database, "latency_profile_1s")}`,
  ); // floor markers carry no requests
  return {
    rows: Number(raw.rows),
    distinctEvents: Number(raw.distinct_events),
    statsRequests: Number(stats.n),
    profileRequests: Number(profile.n),
  };
}

/** What the stream can no longer give back, found before a rebuild touches anything. */
export interface Unreplayable {
  /** The stream's first sequence: messages below it were removed by its limits (7 days, 10 GiB). */
  streamFirstSeq: number;
  /** Raw rows whose message is no longer in the stream (stream_seq below its first sequence, or 0). */
  rawRows: number;
  /** Rows of the rollups whose start second is before the first second a replay would fill. */
  rollupRows: number;
  /**
   * The first start second (unix s) of the rows a replay gives back: rollup rows before it would be lost.
   * Undefined when the stream gives back no row of the table.
   */
  replayFromTs?: number;
}

/** Counts what a rebuild would lose: raw rows and rollup seconds the stream cannot reproduce. */
export async function unreplayable(
  clickhouse: ClickHouse,
  database: string,
  streamFirstSeq: number,
): Promise<Unreplayable> {
  const [raw] = await clickhouse.query<{ old: string; replay_from: string; replayable: string }>(
    sql`SELECT countIf(stream_seq < ${streamFirstSeq}) AS old,
        minIf(toUInt32(ts), stream_seq >= ${streamFirstSeq}) AS replay_from,
        countIf(stream_seq >= ${streamFirstSeq}) AS replayable
      FROM ${ident(database, "request_events")}`,
  );
  const replayFromTs = Number(raw.replayable) > 0 ? Number(raw.replay_from) : undefined;
  // Rollup rows the replay cannot fill again: seconds before the first replayed row (when nothing is
  // replayable, every rollup row); their raw rows are gone (retention keeps rollups longer) or not replayable.
  const before = replayFromTs === undefined ? sql`1` : sql`ts < ${new Date(replayFromTs * 1000)}`;
  let rollupRows = 0;
  for (const table of ["request_stats_1s", "latency_profile_1s"]) {
    const [row] = await clickhouse.query<{ n: string }>(
      sql`SELECT count() AS n FROM ${ident(database, table)} WHERE ${before} AND requests > 0`,
    );
    rollupRows += Number(row.n);
  }
  return { streamFirstSeq, rawRows: Number(raw.old), rollupRows, replayFromTs };
}

/**
 * After a replay on the base durable: every message up to its ack floor is committed, so the durables of
 * partitions 1..N-1 start after it (the worker of partition 0 recreates the base durable with its own filters
 * at the same place); without this each would read the whole stream again, every message checked by id.
 */
async function handOverToPartitions(config: IngestConfig, logger: Logger): Promise<void> {
  const nc = await connectNats(config.nats, { name: "tailwatch-ingest-rebuild" }, logger);
  try {
    const jsm = await jetstreamManager(nc);
    const replayed = ackFloor(await jsm.consumers.info(REQUEST_EVENTS_STREAM, config.durableBase));
    for (let partition = 1; partition < config.partitions; partition++) {
      const filters = partitionFilterSubjects(partition, config.partitions);
      await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
        durable_name: partitionDurable(config.durableBase, partition),
        ack_policy: AckPolicy.All,
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: replayed + 1,
        ack_wait: nanos(config.ackWaitMs),
        max_ack_pending: config.maxAckPending,
        max_deliver: -1,
        ...(filters.length === 1 ? { filter_subject: filters[0] } : { filter_subjects: filters }),
      });
    }
    logger.info("the partitions' durables start after the replayed messages", {
      partitions: config.partitions,
      startSeq: replayed + 1,
    });
  } finally {
    await nc.close();
  }
}

/**
 * Tells the profiler that the projections changed under it (migration 0014): the replay cuts the same requests
 * into other batches, some above the highest floor it has seen, which it would count twice; it starts over when
 * the number of these rows changes. Written once the projections are emptied and again when every row is back
 * (the rollups of kept rows are added after the replay, into batches it may already take as final).
 */
async function recordRebuild(
  clickhouse: ClickHouse,
  database: string,
  mode: "all" | "newer",
  stage: "emptied" | "done",
): Promise<void> {
  await clickhouse.exec(
    sql`INSERT INTO ${ident(database, "projection_rebuilds")} (mode, stage) VALUES (${mode}, ${stage})`,
  );
}

/** Deletes rows by condition (a mutation) and waits until ClickHouse has applied it. */
async function deleteWhere(clickhouse: ClickHouse, database: string, table: string, condition: Sql) {
  await clickhouse.exec(sql`ALTER TABLE ${ident(database, table)} DELETE WHERE ${condition}`);
  for (;;) {
    const [row] = await clickhouse.query<{ n: string }>(
      sql`SELECT count() AS n FROM system.mutations WHERE database = ${database} AND table = ${table} AND is_done = 0`,
    );
    if (Number(row.n) === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export interface RebuildOptions {
  /** Skip the check that no worker is consuming. */
  force?: boolean;
  /**
   * When the stream no longer holds every message the tables were built from: keep every row the stream
   * cannot give back (raw rows of removed messages, rollup seconds before the first replayed row) and
   * rebuild only the rest. Without it, such a rebuild is refused.
   */
  keepOlder?: boolean;
}

/** Thrown when a rebuild would destroy rows the stream cannot give back (and keepOlder was not asked for). */
export class RebuildRefused extends Error {
  override name = "RebuildRefused";
  constructor(readonly lost: Unreplayable) {
    super(
      `the stream starts at sequence ${lost.streamFirstSeq} and no longer holds the messages of ` +
        `${lost.rawRows} raw rows; ${lost.rollupRows} rollup rows are older than the first second it can ` +
        "replay: a rebuild would lose them. Refusing; `rebuild --keep-older` keeps them and rebuilds the rest.",
    );
  }
}

export interface RebuildResult {
  before: ProjectionCounts;
  after: ProjectionCounts;
  replay: IngestStats;
  /** "all": the tables were emptied and replayed whole; "newer": what the stream cannot give back was kept. */
  mode: "all" | "newer";
  kept: Unreplayable;
}

/**
 * Rebuilds the projections from the stream. When the stream still holds every message the tables hold
 * rows of, the tables are truncated and replayed whole. Otherwise (its limits removed older messages) the
 * rebuild is refused with what it would lose, or, with `keepOlder`, keeps those rows: it deletes only the
 * raw rows the stream gives back and the rollup seconds from the first of them on, replays, and completes
 * the rollups of those seconds from the kept raw rows (rollups.ts).
 */
export async function rebuild(
  config: IngestConfig,
  logger: Logger,
  options: RebuildOptions = {},
): Promise<RebuildResult> {
  const clickhouse = createClickHouse({
    url: config.clickhouseUrl,
    username: config.clickhouseUser,
    password: config.clickhousePassword,
  });
  await applyMigrations({ clickhouse, database: config.database });
  const before = await projectionCounts(clickhouse, config.database);
  const nc = await connectNats(config.nats, { name: "tailwatch-ingest-rebuild" }, logger);
  let lost: Unreplayable;
  try {
    const jsm = await jetstreamManager(nc);
    const stream = await jsm.streams.info(REQUEST_EVENTS_STREAM);
    // An empty stream reports first_seq = last_seq + 1: nothing in it, everything in the tables is older.
    lost = await unreplayable(clickhouse, config.database, stream.state.first_seq);
    if ((lost.rawRows > 0 || lost.rollupRows > 0) && !options.keepOlder) throw new RebuildRefused(lost);
    // Every durable of this ingest: INGEST_DURABLE and its partitions' (`<INGEST_DURABLE>-<n>`).
    const family = new RegExp(`^${config.durableBase}(-\\d+)?$`);
    const durables: ConsumerInfo[] = [];
    for await (const info of jsm.consumers.list(REQUEST_EVENTS_STREAM)) {
      if (family.test(info.name)) durables.push(info);
    }
    for (const info of durables) {
      if (info.num_waiting > 0 && !options.force) {
        throw new Error(
          `consumer ${info.name} has ${info.num_waiting} waiting pull requests: a worker seems to be running; ` +
            "stop every worker first (or pass --force)",
        );
      }
    }
    for (const info of durables) await jsm.consumers.delete(REQUEST_EVENTS_STREAM, info.name);
  } finally {
    await nc.close();
  }
  const mode = lost.rawRows > 0 || lost.rollupRows > 0 ? "newer" : "all";
  const emptied = mode === "all" || lost.replayFromTs !== undefined;
  if (mode === "all") {
    for (const table of PROJECTION_TABLES) {
      await clickhouse.exec(sql`TRUNCATE TABLE ${ident(config.database, table)}`);
    }
    logger.info("projections truncated; replaying the stream from the start", { before });
  } else if (lost.replayFromTs !== undefined) {
    const from = new Date(lost.replayFromTs * 1000);
    await deleteWhere(
      clickhouse,
      config.database,
      "request_events",
      sql`stream_seq >= ${lost.streamFirstSeq}`,
    );
    await deleteWhere(clickhouse, config.database, "request_stats_1s", sql`ts >= ${from}`);
    await deleteWhere(clickhouse, config.database, "latency_profile_1s", sql`ts >= ${from}`);
    logger.info("kept what the stream cannot give back; replaying the rest", { before, kept: lost });
  } else {
    logger.info("the stream holds none of the tables' rows: nothing to rebuild, everything kept", {
      kept: lost,
    });
  }
  if (emptied) await recordRebuild(clickhouse, config.database, mode, "emptied");
  // One worker replays every partition, on the base durable, reading every event subject (with one partition,
  // what the worker reads: INGEST_FILTER_SUBJECT).
  const replayed = config.partitions > 1 ? REQUEST_EVENTS_SUBJECTS : config.filterSubject;
  const worker = createIngestWorker({
    config: {
      ...config,
      migrateOnStart: false,
      partitions: 1,
      partition: 0,
      durable: config.durableBase,
      filterSubject: replayed,
      filterSubjects: [replayed],
    },
    logger,
    mode: "drain",
    deliverFromStart: true,
  });
  const replay = await worker.run();
  if (config.partitions > 1) await handOverToPartitions(config, logger);
  if (mode === "newer" && lost.replayFromTs !== undefined) {
    // The rollups of the kept raw rows from that second on were deleted with the rest: add them back.
    const [{ last }] = await clickhouse.query<{ last: string }>(
      sql`SELECT toUInt32(max(ts)) AS last FROM ${ident(config.database, "request_events")}`,
    );
    const repaired = await reconcileRollups(clickhouse, {
      database: config.database,
      fromTs: lost.replayFromTs,
      toTs: Number(last),
    });
    logger.info("rollups of the kept rows completed", { ...repaired });
  }
  if (emptied) await recordRebuild(clickhouse, config.database, mode, "done");
  const after = await projectionCounts(clickhouse, config.database);
  logger.info("rebuild done", { mode, before, after, replay });
  return { before, after, replay, mode, kept: lost };
}
