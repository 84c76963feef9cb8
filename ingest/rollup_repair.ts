/**
 * Rollup repair (ingest/README.md, "Rollups equal the raw rows"): when the dedup check finds rows of a group in
 * the table already, an earlier INSERT committed them, and its materialized views may have failed after that
 * commit. The repair compares both rollups with the raw rows and adds what they lack, with this worker's
 * INSERTs held (the write gate) and none of its durable's running in ClickHouse.
 */
import type { RowGroup } from "./batch.ts";
import { stampFloor } from "./committed_floor.ts";
import { awaitNoInsertsInFlight, INSERT_QUERY_FAMILY, servicesOf } from "./dedup.ts";
import { reconcileRollups } from "./rollups.ts";
import type { WorkerContext } from "./worker_state.ts";

/**
 * Holds the worker's own INSERTs while a rollup repair compares rollups with raw rows (rollups.ts): an INSERT
 * whose raw part is committed and whose views are not fed yet would look like a gap and be added twice.
 * INSERTs share the gate; a repair takes it alone, after the INSERTs in flight returned.
 */
export interface WriteGate {
  shared<T>(action: () => Promise<T>): Promise<T>;
  exclusive<T>(action: () => Promise<T>): Promise<T>;
}

export function createWriteGate(): WriteGate {
  let holders = 0;
  let exclusiveHeld: Promise<void> | undefined;
  let onDrained: (() => void)[] = [];
  return {
    async shared(action) {
      while (exclusiveHeld) await exclusiveHeld;
      holders++;
      try {
        return await action();
      } finally {
        holders--;
        if (holders === 0) {
          const waiting = onDrained;
          onDrained = [];
          for (const resolve of waiting) resolve();
        }
      }
    },
    async exclusive(action) {
      while (exclusiveHeld) await exclusiveHeld;
      let release = () => {};
      exclusiveHeld = new Promise<void>((resolve) => release = resolve);
      try {
        while (holders > 0) await new Promise<void>((resolve) => onDrained.push(resolve));
        return await action();
      } finally {
        exclusiveHeld = undefined;
        release();
      }
    },
  };
}

/** The write gate, and when the repair last logged cells it had to look at again (at most every 10 s). */
export interface RollupRepairState {
  readonly gate: WriteGate;
  unsettledLoggedAt: number;
}

export function createRollupRepairState(): RollupRepairState {
  return { gate: createWriteGate(), unsettledLoggedAt: 0 };
}

/**
 * After rows of this group were found in the table: an earlier INSERT of them committed its raw part, and
 * its views may have failed after that (ClickHouse 18.16 feeds them after the commit). Compares both
 * rollups with the raw rows over the group's seconds and services and inserts what they lack, with every
 * other INSERT of this worker held and none of its durable running in ClickHouse.
 */
export async function repairRollups(ctx: WorkerContext, group: RowGroup, batchSeq: number): Promise<void> {
  const { config, logger, metrics, rollups } = ctx;
  await rollups.gate.exclusive(async () => {
    await awaitNoInsertsInFlight(ctx);
    const services = servicesOf(group);
    const result = await reconcileRollups(ctx.clickhouse, {
      database: config.database,
      fromTs: group.minTs,
      toTs: group.maxTs,
      ...(services === undefined ? {} : { services }),
      batchSeq,
      floorSeq: stampFloor(ctx),
      // Other workers (partitions, or other durables) insert the same seconds meanwhile: the repair counts
      // only cells no INSERT was half done in (rollups.ts).
      concurrentInsertPrefix: INSERT_QUERY_FAMILY,
      onUnsettled: (cells, round) => {
        const now = Date.now();
        if (now - rollups.unsettledLoggedAt < 10_000) return;
        rollups.unsettledLoggedAt = now;
        logger.info(
          "rollup repair: cells that differ were touched by other INSERTs meanwhile; looking again",
          {
            cells,
            round,
          },
        );
      },
    });
    metrics.rollupRepaired.inc({ table: "request_stats_1s" }, result.statsCellsRepaired);
    metrics.rollupRepaired.inc({ table: "latency_profile_1s" }, result.profileCellsRepaired);
    metrics.rollupSurplus.inc({ table: "request_stats_1s" }, result.statsCellsSurplus);
    metrics.rollupSurplus.inc({ table: "latency_profile_1s" }, result.profileCellsSurplus);
    if (result.statsCellsRepaired + result.profileCellsRepaired > 0) {
      logger.warn(
        "rollups were short of the raw rows (a view failed after the raw rows were committed): repaired",
        {
          ...result,
        },
      );
    }
    if (result.statsCellsSurplus + result.profileCellsSurplus > 0) {
      logger.error("rollup cells hold more than the raw rows; not repairable by an insert", { ...result });
    }
  });
}
