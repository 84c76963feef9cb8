/**
 * The worker's health (ingest/README.md, "Health"): what /readyz answers and why, the stall detector, the
 * consumer-recreation window and NATS refusals. The state lives in a Health record; the functions here are the
 * only ones that decide readiness.
 */
import { DEAD_LETTER_SUBJECT_PREFIX, REQUEST_EVENTS_STREAM } from "@tailwatch/events";
import { describeNats, natsErrorKind } from "@tailwatch/nats";
import type { Readiness } from "./metrics.ts";
import type { WorkerContext } from "./worker_state.ts";

/** How many consumer recreations within RECREATION_WINDOW_MS make the worker "keep recreating it". */
const RECREATIONS_NOT_READY = 3;
const RECREATION_WINDOW_MS = 60_000;
/** A receiver connection down this long makes the worker not ready (a reconnect takes well under it). */
const DISCONNECTED_NOT_READY_MS = 2_000;
/**
 * A refusal from the NATS server (-ERR: a permission the user lacks) makes the worker not ready this long; a
 * lasting mistake repeats with every ack or pull request and keeps it so.
 */
const REFUSAL_NOT_READY_MS = 30_000;

/** What readiness() decides from, besides the worker's lifecycle and queue. */
export interface Health {
  /** Why pulling stopped (the consumer is missing or unusable), until it was resumed. */
  consumerProblem: string | undefined;
  /** When the consumer was created again, newest last, within RECREATION_WINDOW_MS. */
  recreatedAt: { at: number; reason: string }[];
  lastCommitAt: number;
  /** Since when messages have been waiting (0: none waiting). */
  pendingSince: number;
  /** Messages the server still holds for the consumer, from the latest consumer info. */
  serverPending: number;
  stalled: boolean;
  /** The receiver's connection, and since when it has been down (0: up). */
  receiverConnected: () => boolean;
  disconnectedSince: number;
  /** What the worker waits for, while it has to (the stream missing or unfit, NATS refusing the connection). */
  waitingFor: string | undefined;
  /** The NATS server's latest refusal (-ERR) on either connection, and when. */
  refusal: { text: string; at: number } | undefined;
  /** When each refusal text was last logged (each at most every 10 s). */
  refusalLogged: Map<string, number>;
}

export function createHealth(): Health {
  return {
    consumerProblem: undefined,
    recreatedAt: [],
    lastCommitAt: Date.now(),
    pendingSince: 0,
    serverPending: 0,
    stalled: false,
    receiverConnected: () => true,
    disconnectedSince: 0,
    waitingFor: undefined,
    refusal: undefined,
    refusalLogged: new Map(),
  };
}

/** A -ERR from NATS: counted, logged as an error (each text at most every 10 s), not ready for a while. */
export function onServerError(ctx: WorkerContext, text: string): void {
  const { health, config } = ctx;
  const kind = natsErrorKind(text);
  ctx.metrics.natsServerErrors.inc({ kind });
  const now = Date.now();
  health.refusal = { text, at: now };
  const last = health.refusalLogged.get(text);
  if (last === undefined || now - last >= 10_000) {
    if (health.refusalLogged.size > 100) health.refusalLogged.clear();
    health.refusalLogged.set(text, now);
    ctx.logger.error("NATS refused", {
      error: text,
      kind,
      nats: describeNats(config.nats),
      hint: kind === "permissions"
        ? `the NATS user needs its consumer API, $JS.ACK.${REQUEST_EVENTS_STREAM}.>, ` +
          `${DEAD_LETTER_SUBJECT_PREFIX}.> and ${config.nats.inboxPrefix}.> (deploy/nats/auth.conf)`
        : undefined,
    });
  }
}

/**
 * Ready, or why not (the body of a 503 /readyz), in order of precedence: starting or stopped, a NATS refusal,
 * something waited for, a consumer that keeps being recreated, the consumer's trouble of the moment, a
 * receiver disconnected for DISCONNECTED_NOT_READY_MS, a stall. Reads state only; changes nothing.
 */
export function readiness(ctx: WorkerContext): Readiness {
  const { health, state } = ctx;
  const now = Date.now();
  const refused = health.refusal !== undefined && now - health.refusal.at < REFUSAL_NOT_READY_MS
    ? `NATS refused: ${health.refusal.text}`
    : undefined;
  if (!state.consuming) {
    if (state.stopping) return { ready: false, reason: "stopped" };
    const waiting = [health.waitingFor, refused].filter((text) => text !== undefined).join("; ");
    return { ready: false, reason: `starting (connecting, migrating)${waiting ? `: ${waiting}` : ""}` };
  }
  if (refused) return { ready: false, reason: refused };
  if (health.waitingFor !== undefined) return { ready: false, reason: health.waitingFor };
  // A consumer that keeps being recreated first: the trouble of the moment (consumerProblem, until the
  // latest recreation resumed pulling) is only its latest instance.
  const recent = health.recreatedAt.filter((r) => now - r.at < RECREATION_WINDOW_MS);
  if (recent.length >= RECREATIONS_NOT_READY) {
    return {
      ready: false,
      reason: `the consumer was recreated ${recent.length} times in the last ${
        RECREATION_WINDOW_MS / 1000
      } s (last: ${recent.at(-1)!.reason})`,
    };
  }
  if (health.consumerProblem !== undefined) {
    return { ready: false, reason: `consumer: ${health.consumerProblem}` };
  }
  if (health.disconnectedSince > 0 && now - health.disconnectedSince >= DISCONNECTED_NOT_READY_MS) {
    return {
      ready: false,
      reason: `not connected to NATS for ${Math.round((now - health.disconnectedSince) / 1000)} s`,
    };
  }
  if (health.stalled) {
    return {
      ready: false,
      reason:
        `no batch committed for ${
          Math.round((now - Math.max(health.lastCommitAt, health.pendingSince)) / 1000)
        } s ` +
        `while messages wait (${ctx.queue.size()} received, ${state.inHand.length} batches in hand, ` +
        `${health.serverPending} more in the stream)`,
    };
  }
  return { ready: true, reason: "consuming" };
}

/**
 * Re-evaluates the stall state (a transition into it is a counted, logged error), the receiver's connection,
 * the recreation window, and the bytes-in-flight and ready gauges. Called every second and after changes.
 */
export function checkHealth(ctx: WorkerContext): void {
  const { health, state, queue } = ctx;
  const now = Date.now();
  if (health.receiverConnected()) health.disconnectedSince = 0;
  else if (health.disconnectedSince === 0) health.disconnectedSince = now;
  const waiting = queue.size() > 0 || state.inHand.length > 0 || health.serverPending > 0;
  if (!waiting) health.pendingSince = 0;
  else if (health.pendingSince === 0) health.pendingSince = now;
  const idleFor = waiting ? now - Math.max(health.lastCommitAt, health.pendingSince) : 0;
  const nowStalled = state.consuming && waiting && idleFor >= ctx.config.stallTimeoutMs;
  if (nowStalled && !health.stalled) {
    ctx.metrics.stalls.inc();
    ctx.logger.error("stalled: messages wait and no batch was committed", {
      forMs: idleFor,
      received: queue.size(),
      batchesInHand: state.inHand.length,
      pendingInStream: health.serverPending,
    });
  } else if (!nowStalled && health.stalled) {
    ctx.logger.info("no longer stalled: a batch was committed");
  }
  health.stalled = nowStalled;
  health.recreatedAt = health.recreatedAt.filter((r) => now - r.at < RECREATION_WINDOW_MS);
  ctx.metrics.bytesInFlight.set(state.heldBytes);
  ctx.metrics.up.set(readiness(ctx).ready ? 1 : 0);
}

/** Counts a recreation of the durable consumer; a third within a minute is logged as an error (and not ready). */
export function noteRecreation(ctx: WorkerContext, reason: string): void {
  const { health } = ctx;
  ctx.stats.recreations++;
  ctx.metrics.recreations.inc({ reason });
  health.recreatedAt.push({ at: Date.now(), reason });
  if (health.recreatedAt.length >= RECREATIONS_NOT_READY) {
    ctx.logger.error("the durable consumer keeps being recreated", {
      times: health.recreatedAt.length,
      windowS: RECREATION_WINDOW_MS / 1000,
      reason,
    });
  }
}
