/**
 * Dead letters (ingest/README.md, "Poison messages"): a message (or an event of a batch message) that cannot be
 * ingested is published to `<DEAD_LETTER_SUBJECT_PREFIX>.<reason>` before the ack that lets the original go,
 * so that nothing is ever dropped without a trace.
 */
import { headers, type NatsConnection } from "@nats-io/transport-node";
import { DEAD_LETTER_SUBJECT_PREFIX } from "@tailwatch/events";
import type { Poison } from "./batch.ts";
import { sleep, withRetry } from "./retry.ts";
import type { WorkerContext } from "./worker_state.ts";

/** Header values of a dead letter: printable ASCII (other characters escaped), at most `max` characters. */
function headerText(text: string, max: number): string {
  const escaped = text.slice(0, 4 * max).replace(/[^\x20-\x7e]/gu, (c) => {
    const code = c.codePointAt(0)!;
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`;
  }).trim();
  return escaped.length > max ? `${escaped.slice(0, max - 3)}...` : escaped;
}

/**
 * Publishes one dead letter (nats.js, core NATS): the original bytes (of the message, or of the event of a
 * batch message) with the reason and where the original is in headers. Header values are printable ASCII
 * (nats.js refuses CR and LF, and a message's own Nats-Msg-Id may hold anything). When the payload and the
 * headers would exceed the server's max_payload, the payload is cut to fit, and Tailwatch-Truncated and
 * Tailwatch-Original-Size say so: the whole original stays in the stream under Tailwatch-Stream-Seq. Returns
 * true when it was cut.
 */
function publishDeadLetter(nc: NatsConnection, { msg, reason, detail, event }: Poison): boolean {
  const fields: [string, string][] = [
    ["Tailwatch-Dead-Letter-Reason", reason],
    ["Tailwatch-Dead-Letter-Detail", headerText(detail, 500)],
    ["Tailwatch-Stream-Seq", String(msg.seq)],
    ["Tailwatch-Subject", headerText(msg.subject, 300)],
  ];
  const msgId = msg.header("Nats-Msg-Id");
  if (msgId) fields.push(["Tailwatch-Msg-Id", headerText(msgId, 300)]);
  if (event) fields.push(["Tailwatch-Event-Index", String(event.index)]);
  let data = event ? msg.chunk.subarray(event.start, event.end) : msg.data;
  const maxPayload = nc.info?.max_payload ?? 1024 * 1024;
  const headerBytes = (list: [string, string][]) =>
    "NATS/1.0\r\n\r\n".length + list.reduce((sum, [k, v]) => sum + k.length + 2 + v.length + 2, 0);
  let truncated = false;
  if (headerBytes(fields) + data.length > maxPayload) {
    fields.push(["Tailwatch-Truncated", "true"], ["Tailwatch-Original-Size", String(data.length)]);
    data = data.subarray(0, Math.max(0, maxPayload - headerBytes(fields) - 64));
    truncated = true;
  }
  const h = headers();
  for (const [name, value] of fields) h.set(name, value);
  nc.publish(`${DEAD_LETTER_SUBJECT_PREFIX}.${reason}`, data, { headers: h });
  return truncated;
}

/**
 * Publishes every dead letter of a batch and waits until NATS has them (a flush), retrying the whole set
 * until it succeeds (withRetry: a dead letter may then come twice, never not at all); then counts and logs
 * each. Called before the batch's ack.
 */
export async function publishDeadLetters(
  ctx: WorkerContext,
  nc: NatsConnection,
  poison: readonly Poison[],
): Promise<void> {
  let truncated = 0;
  await withRetry(ctx, "publish dead letters", async () => {
    truncated = 0;
    for (const entry of poison) if (publishDeadLetter(nc, entry)) truncated++;
    await Promise.race([
      nc.flush(),
      sleep(ctx.config.insertTimeoutMs).then(() => Promise.reject(new Error("NATS flush timed out"))),
    ]);
  });
  ctx.metrics.deadLettersTruncated.inc({}, truncated);
  for (const { msg, reason, detail, event } of poison) {
    ctx.stats.deadLettered++;
    ctx.metrics.deadLettered.inc({ reason });
    ctx.logger.warn(event ? "dead-lettered an event of a message" : "dead-lettered a message", {
      seq: msg.seq,
      subject: msg.subject.slice(0, 300),
      reason,
      detail: detail.slice(0, 500),
      ...(event ? { eventIndex: event.index } : {}),
    });
  }
}
