/**
 * The setup step that applies the event stream's configuration (events/stream.ts) through a NATS connection,
 * and the processes' check of it.
 */
import { jetstreamManager, type StreamConfig } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { connectNats, type NatsConfig, natsConfig } from "./config.ts";
import {
  DEFAULT_REQUEST_EVENTS_STREAM,
  REQUEST_EVENTS_STREAM,
  requestEventsStreamConfig,
  type RequestEventsStreamNeeds,
  requestEventsStreamProblems,
  type RequestEventsStreamSettings,
} from "@tailwatch/events";

const isConnection = (target: unknown): target is NatsConnection =>
  typeof (target as NatsConnection).request === "function";

/**
 * The setup step's stream: creates REQUEST_EVENTS with `settings` (the defaults for what is not given), or
 * updates it where it differs; returns what it did. The one function that configures the stream: deploy/setup.ts
 * (compose, k8s), `./dev up` (through setup.ts) and every test that needs the stream call it. `target` is a
 * connection, or a NatsConfig or NATS URL to connect with (and close after); it needs a NATS user that may
 * manage streams (deploy/nats/auth.conf: `setup`).
 */
export async function applyRequestEventsStream(
  target: NatsConnection | NatsConfig | string,
  settings: Partial<RequestEventsStreamSettings> = {},
): Promise<"created" | "updated" | "unchanged"> {
  if (!isConnection(target)) {
    const config = typeof target === "string" ? natsConfig(target) : target;
    const nc = await connectNats(config, { name: "tailwatch-setup", timeout: 5000, reconnect: false });
    try {
      return await applyRequestEventsStream(nc, settings);
    } finally {
      await nc.close().catch(() => {});
    }
  }
  const jsm = await jetstreamManager(target);
  const wanted = requestEventsStreamConfig({ ...DEFAULT_REQUEST_EVENTS_STREAM, ...settings });
  let current: StreamConfig | undefined;
  try {
    current = (await jsm.streams.info(REQUEST_EVENTS_STREAM)).config;
  } catch (error) {
    if (!/not found/i.test(String(error))) throw error;
  }
  if (!current) {
    try {
      await jsm.streams.add(wanted);
      return "created";
    } catch (error) {
      // Another setup created it between our info and add: compare with that one.
      if (!/already in use/i.test(String(error))) throw error;
      current = (await jsm.streams.info(REQUEST_EVENTS_STREAM)).config;
    }
  }
  const differs = (Object.keys(wanted) as Array<keyof typeof wanted>).filter((key) =>
    JSON.stringify(current![key as keyof StreamConfig]) !== JSON.stringify(wanted[key])
  );
  if (differs.length === 0) return "unchanged";
  await jsm.streams.update(REQUEST_EVENTS_STREAM, { ...current, ...wanted });
  return "updated";
}

/**
 * Reads the stream's configuration through nats.js and returns its problems for `needs` (a missing stream is
 * one); throws only when NATS does not answer.
 */
export async function checkRequestEventsStream(
  nc: NatsConnection,
  needs: RequestEventsStreamNeeds,
): Promise<string[]> {
  const jsm = await jetstreamManager(nc);
  let config: StreamConfig | undefined;
  try {
    config = (await jsm.streams.info(REQUEST_EVENTS_STREAM)).config;
  } catch (error) {
    if (!/not found/i.test(String(error))) throw error;
  }
  return requestEventsStreamProblems(config, needs);
}
