import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";

/** One stored message: its payload, its Nats-Msg-Id and Tailwatch-Events headers (undefined when absent). */
export interface StoredMessage {
  data: Uint8Array;
  msgId: string | undefined;
  eventCount: string | undefined;
}

/** Who reads, on a server with users (e.g. deploy/nats's `setup`, with its inbox prefix `_INBOX_setup`). */
export interface StreamReaderAuth {
  user?: string;
  pass?: string;
  token?: string;
  inboxPrefix?: string;
}

/**
 * Every message of `stream`, in stream order, read by an ephemeral consumer (deleted afterwards); an empty
 * list when the stream has none. Throws when the stream does not exist, or when fetches stop bringing
 * messages (six empty 5 s fetches in a row) before all the stream held at the start have come.
 */
export async function readStreamMessages(
  natsUrl: string,
  stream: string,
  auth: StreamReaderAuth = {},
): Promise<StoredMessage[]> {
  const nc = await connect({ servers: natsUrl, ...auth });
  try {
    const jsm = await jetstreamManager(nc);
    const total = (await jsm.streams.info(stream)).state.messages;
    const messages: StoredMessage[] = [];
    if (total === 0) return messages;
    const consumer = await jsm.consumers.add(stream, {
      ack_policy: AckPolicy.None,
      deliver_policy: DeliverPolicy.All,
      inactive_threshold: 30_000_000_000,
    });
    const reader = await jetstream(nc).consumers.get(stream, consumer.name);
    // A fetch can end empty while messages remain (a busy server answers after the fetch's expiry): fetch
    // again, and fail rather than hand back part of the stream as if it were all of it.
    let emptyFetches = 0;
    while (messages.length < total) {
      const batch = await reader.fetch({
        max_messages: Math.min(10_000, total - messages.length),
        expires: 5000,
      });
      let got = 0;
      for await (const message of batch) {
        messages.push({
          data: message.data,
          msgId: message.headers?.get("Nats-Msg-Id"),
          // nats.js answers "" for a header that is not there.
          // EVENT_COUNT_HEADER of events/stream.ts (this package sits below the kit).
          eventCount: message.headers?.get("Tailwatch-Events") || undefined,
        });
        got++;
      }
      if (got > 0) {
        emptyFetches = 0;
      } else if (++emptyFetches >= 6) {
        throw new Error(
          `read ${messages.length} of the ${total} messages of stream ${stream}: nothing more came`,
        );
      }
    }
    await jsm.consumers.delete(stream, consumer.name).catch(() => {});
    return messages;
  } finally {
    await nc.close();
  }
}
