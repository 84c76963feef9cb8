/**
 * How the ingest worker retries what fails (INSERTs, dedup queries, dead-letter publishes, start-up steps):
 * forever, with jittered exponential backoff, until it succeeds or a stop's grace period is over.
 */
import type { WorkerContext } from "./worker_state.ts";

/** Thrown inside the worker when a stop's grace period ran out while a batch was still failing. */
export class AbandonBatch extends Error {}

export const sleep = (ms: number): Promise<void> => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Runs `action` until it succeeds, counting every failure as a retry (stats.retries, ingest_insert_retries_total)
 * and waiting INGEST_RETRY_BASE_MS doubling up to INGEST_RETRY_MAX_MS (jittered) between attempts. Throws
 * AbandonBatch instead of retrying once a stop was asked for: at once before consuming (nothing is in hand),
 * after the grace period while consuming (a wait is cut short at the deadline).
 */
export async function withRetry<T>(
  ctx: WorkerContext,
  what: string,
  action: (attempt: number) => Promise<T>,
): Promise<T> {
  const { config, state } = ctx;
  for (let attempt = 0;; attempt++) {
    try {
      return await action(attempt);
    } catch (error) {
      ctx.stats.retries++;
      ctx.metrics.retries.inc();
      // A stop before consuming gives up at once (nothing is in hand); while consuming, after the grace.
      if (state.stopping && (!state.consuming || Date.now() >= state.stopDeadline)) {
        throw new AbandonBatch(`${what}: ${error}`);
      }
      const delay = Math.min(config.retryMaxMs, config.retryBaseMs * 2 ** Math.min(attempt, 20));
      const jittered = Math.round(delay / 2 + Math.random() * delay / 2);
      ctx.logger.warn(`${what} failed; retrying`, { attempt: attempt + 1, retryInMs: jittered, error });
      await sleep(
        state.stopping ? Math.min(jittered, Math.max(0, state.stopDeadline - Date.now())) : jittered,
      );
    }
  }
}
