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
 * messages before all the stream held at the start have come.
 *
 * No acks (a reader such as deploy/nats's `setup` user may not publish them), so a message the server sent
 * and this client never got (a busy process: a CI run read 3,168 of 7,275 messages, then nothing more) is
 * not sent again by the same consumer: after two empty 5 s fetches the consumer is made again from the first
 * sequence not yet read, and what comes twice is kept once, by stream sequence. It gives up after six empty
 * fetches in a row or five new consumers.
 */
export async function readStreamMessages(
  natsUrl: string,
  stream: string,
  auth: StreamReaderAuth = {},
): Promise<StoredMessage[]> {
  const nc = await connect({ servers: natsUrl, ...auth });
  try {
    const jsm = await jetstreamManager(nc);
    const state = (await jsm.streams.info(stream)).state;
    const total = state.messages;
    if (total === 0) return [];
    const bySeq = new Map<number, StoredMessage>();
    const firstMissing = () => {
      let seq = state.first_seq;
      while (bySeq.has(seq)) seq++;
      return seq;
    };
    const newConsumer = async (startSeq: number) => {
      const info = await jsm.consumers.add(stream, {
        ack_policy: AckPolicy.None,
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: startSeq,
        inactive_threshold: 30_000_000_000,
      });
      return { name: info.name, reader: await jetstream(nc).consumers.get(stream, info.name) };
    };
    let consumer = await newConsumer(state.first_seq);
    let emptyFetches = 0;
    let consumers = 1;
    const fail = () =>
      new Error(`read ${bySeq.size} of the ${total} messages of stream ${stream}: nothing more came`);
    while (bySeq.size < total) {
      const batch = await consumer.reader.fetch({
        max_messages: Math.min(1_000, total - bySeq.size),
        expires: 5000,
      });
      let received = 0;
      for await (const message of batch) {
        received++;
        if (bySeq.has(message.seq)) continue;
        bySeq.set(message.seq, {
          data: message.data,
          msgId: message.headers?.get("Nats-Msg-Id"),
          // nats.js answers "" for a header that is not there.
          // EVENT_COUNT_HEADER of events/stream.ts (this package sits below the kit).
          eventCount: message.headers?.get("Tailwatch-Events") || undefined,
        });
      }
      if (received > 0) {
        emptyFetches = 0;
        continue;
      }
      if (++emptyFetches >= 6) throw fail();
      if (emptyFetches % 2 === 0) {
        if (++consumers > 5) throw fail();
        await jsm.consumers.delete(stream, consumer.name).catch(() => {});
        consumer = await newConsumer(firstMissing());
      }
    }
    await jsm.consumers.delete(stream, consumer.name).catch(() => {});
    return [...bySeq.entries()].sort((a, b) => a[0] - b[0]).map(([, message]) => message);
  } finally {
    await nc.close();
  }
}
