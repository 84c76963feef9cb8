/**
 * The committed floor for the whole stream, with several partition workers (ingest/README.md, "Several workers:
 * partitions").
 *
 * Every raw row carries `ingest_floor_seq`, and idle workers write it as a marker: the profiler treats every
 * batch at or below the highest floor it has seen as final, whoever wrote it (native/profiler/README.md). One
 * worker's own committed floor says nothing about another partition's messages, so each worker stamps
 *
 *   G = min over every partition p of F_p,
 *
 * F_p being a sequence at or below which every message of p's subjects is committed (rows, rollups, or dead
 * letter): p's consumer's ack floor while it has messages pending or unacked; when it reports none, the first
 * message of p's subjects above that ack floor minus one, or, when there is none, the stream's last sequence
 * read before the consumer was (nats-server counts a consumer's pending messages in a goroutine of its own, so
 * "nothing pending" alone can lag behind a stored message: the look-up by subject, MSG.GET next_by_subj, is what
 * proves it); for a partition whose durable does not exist (its worker never started), the first message of its
 * subjects minus one, or the last sequence when it has none. Every message at or below G is then committed,
 * whichever partition it is in. G never goes down (what was committed stays so; a stream that starts its
 * sequences over resets it), and with one partition the worker stamps its own committed floor, as before.
 */
import { type ConsumerInfo, DeliverPolicy } from "@nats-io/jetstream";
import type { Logger } from "@tailwatch/runtime";
import { partitionFilterSubjects, REQUEST_EVENTS_SUBJECTS } from "@tailwatch/events";
import { partitionDurable } from "./config.ts";

/**
 * The stream sequence below which a consumer has everything acked. A consumer made to start at sequence S
 * reports ack floor 0 until it acks something, but everything below S was acked by the consumer it replaced
 * (it starts at that one's ack floor + 1): recreating it from 1 would replay the whole stream.
 */
export function ackFloor(info: ConsumerInfo): number {
  const start = info.config.deliver_policy === DeliverPolicy.StartSequence
    ? info.config.opt_start_seq ?? 1
    : 1;
  return Math.max(info.ack_floor.stream_seq, start - 1);
}

/** The subjects a consumer reads: its filter(s), or everything (an unfiltered consumer). */
export function consumerFilters(info: ConsumerInfo): string[] {
  const many = info.config.filter_subjects ?? [];
  if (many.length > 0) return [...many];
  return info.config.filter_subject ? [info.config.filter_subject] : [];
}

/** What a worker learned about one partition in one look. */
export interface PartitionObservation {
  /** Everything of the partition at or below it is committed: its consumer's ack floor (0 without one). */
  ackFloor: number;
  /** The consumer reports messages pending or awaiting their ack: its ack floor is all that is known. */
  busy: boolean;
  /**
   * When not busy: the first message of the partition's subjects above `ackFloor`, or undefined when there is
   * none (the stream's last sequence, read before this look, then bounds it).
   */
  next?: number;
}

/** F_p: every message of the partition at or below it is committed (see the module comment). */
export function partitionFloor(observation: PartitionObservation, lastSeq: number): number {
  if (observation.busy) return observation.ackFloor;
  if (observation.next !== undefined) return Math.max(observation.ackFloor, observation.next - 1);
  return Math.max(observation.ackFloor, lastSeq);
}

/** G: the lowest partition floor. `lastSeq` must have been read before any of the observations was made. */
export function globalFloor(observations: readonly PartitionObservation[], lastSeq: number): number {
  let floor = Infinity;
  for (const observation of observations) floor = Math.min(floor, partitionFloor(observation, lastSeq));
  return floor === Infinity ? lastSeq : floor;
}

/** What the tracker reads from JetStream (nats.js in the worker; a fake in the unit tests). */
export interface FloorSource {
  /** The stream's last sequence and creation time. */
  stream(): Promise<{ lastSeq: number; created: string }>;
  /** A consumer's info, or undefined when it does not exist. */
  consumer(name: string): Promise<ConsumerInfo | undefined>;
  /** The names of every consumer of the stream (to find durables of partitions beyond the current count). */
  consumerNames(): Promise<string[]>;
  /** The sequence of the first message above `afterSeq` whose subject matches `filter`, or undefined. */
  firstAfter(filter: string, afterSeq: number): Promise<number | undefined>;
}

export interface GlobalFloorOptions {
  source: FloorSource;
  /** INGEST_DURABLE: partition p's durable is partitionDurable(base, p). */
  durableBase: string;
  partitions: number;
  /** This worker's partition. */
  self: number;
  /** This worker's own committed floor: its partition's term is never below it. */
  ownFloor: () => number;
  logger: Logger;
  /** How often the consumers are listed for durables of partitions beyond the count. Default 30 s. */
  listEveryMs?: number;
  /** How long G may wait for one partition while the stream grows before a warning. Default 60 s. */
  warnAfterMs?: number;
  now?: () => number;
}

export interface GlobalFloorTracker {
  /** Looks at every partition and raises G; returns it. Throws when JetStream does not answer (G is kept). */
  refresh(): Promise<number>;
  /** The highest G computed so far (0 before the first refresh). */
  value(): number;
  /** Forgets G (the stream started its sequences over). */
  reset(): void;
  /** The partitions (and durables) that held G down at the latest refresh. */
  holders(): string[];
}

/**
 * Computes and keeps G for a worker of `partitions` partitions. Durables of the family (`<base>-<k>`) with k at
 * or above the partition count (left by a larger count: their workers are gone, and messages they never took
 * may wait on their subjects) count too, as long as they exist: such messages are not committed, and nobody
 * reads them until the durable is drained or deleted (a warning says so).
 */
export function createGlobalFloorTracker(options: GlobalFloorOptions): GlobalFloorTracker {
  const { source, durableBase, partitions, self, logger } = options;
  const now = options.now ?? Date.now;
  const listEveryMs = options.listEveryMs ?? 30_000;
  const warnAfterMs = options.warnAfterMs ?? 60_000;
  let floor = 0;
  let created: string | undefined;
  let orphans: string[] = [];
  let listedAt = -Infinity;
  let heldSince = 0;
  let warnedAt = 0;
  let holding: string[] = [];
  const orphanPattern = new RegExp(`^${durableBase.replace(/[-]/g, "\\-")}-(\\d+)$`);

  async function observe(
    name: string,
    filters: string[] | undefined,
    own: boolean,
  ): Promise<PartitionObservation & { missing: boolean }> {
    const info = await source.consumer(name);
    let floorOf = info ? ackFloor(info) : 0;
    if (own) floorOf = Math.max(floorOf, options.ownFloor());
    const busy = info !== undefined &&
      (info.num_pending > 0 || info.num_ack_pending > 0 || info.delivered.stream_seq > floorOf);
    if (busy) return { ackFloor: floorOf, busy, missing: false };
    const subjects = filters ??
      (info && consumerFilters(info).length > 0 ? consumerFilters(info) : [REQUEST_EVENTS_SUBJECTS]);
    let next: number | undefined;
    for (const filter of subjects) {
      const found = await source.firstAfter(filter, floorOf);
      if (found !== undefined && (next === undefined || found < next)) next = found;
    }
    return { ackFloor: floorOf, busy: false, next, missing: info === undefined };
  }

  return {
    async refresh() {
      // The last sequence first: every message at or below it existed before any consumer was looked at.
      const stream = await source.stream();
      if ((created !== undefined && stream.created !== created) || stream.lastSeq < floor) {
        logger.error("the stream started its sequences over: the global floor starts again from it", {
          floor,
          lastSeq: stream.lastSeq,
        });
        floor = 0;
      }
      created = stream.created;
      if (now() - listedAt >= listEveryMs) {
        const names = await source.consumerNames();
        listedAt = now();
        const found = names.filter((name) => {
          const match = orphanPattern.exec(name);
          return match !== null && Number(match[1]) >= partitions;
        }).sort();
        const fresh = found.filter((name) => !orphans.includes(name));
        if (fresh.length > 0) {
          logger.warn(
            "durables of partitions beyond INGEST_PARTITIONS exist: the global floor waits for whatever they " +
              "have not taken; drain them (run those workers) or delete them",
            { durables: fresh, partitions },
          );
        }
        orphans = found;
      }
      const looks: { who: string; observation: PartitionObservation & { missing: boolean } }[] = [];
      for (let p = 0; p < partitions; p++) {
        const name = partitionDurable(durableBase, p);
        looks.push({
          who: `partition ${p} (${name})`,
          observation: await observe(name, partitionFilterSubjects(p, partitions), p === self),
        });
      }
      for (const name of orphans) {
        const observation = await observe(name, undefined, false);
        if (!observation.missing) looks.push({ who: `durable ${name}`, observation });
      }
      const computed = globalFloor(looks.map((look) => look.observation), stream.lastSeq);
      holding = looks.filter((look) => partitionFloor(look.observation, stream.lastSeq) === computed)
        .map((look) => look.who);
      const t = now();
      if (computed > floor) {
        floor = computed;
        heldSince = t;
      } else if (stream.lastSeq > floor) {
        if (heldSince === 0) heldSince = t;
        if (t - heldSince >= warnAfterMs && t - warnedAt >= warnAfterMs) {
          warnedAt = t;
          const missing = looks.filter((look) => look.observation.missing).map((look) => look.who);
          logger.warn(
            "the global floor has not moved while the stream grew: the profiler cannot finalize batches above " +
              "it until these partitions commit",
            {
              floor,
              lastSeq: stream.lastSeq,
              forS: Math.round((t - heldSince) / 1000),
              heldBy: holding,
              ...(missing.length > 0 ? { noConsumer: missing } : {}),
            },
          );
        }
      } else {
        heldSince = t;
      }
      return floor;
    },
    value: () => floor,
    reset() {
      floor = 0;
      created = undefined;
      heldSince = 0;
    },
    holders: () => [...holding],
  };
}
