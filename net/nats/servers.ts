/**
 * The servers a wire connects to, in turn: the configured ones and those the cluster announces.
 */
import { type NatsServerAddress, parseConnectUrl, serverKey } from "./protocol.ts";

/** How long a server that announced lame duck mode is not tried again (while another is left). */
export const LAME_DUCK_AVOID_MS = 120_000;

/** A server in the rotation. */
export interface ServerEntry {
  address: NatsServerAddress;
  key: string;
  /** Given in the configuration (never dropped), or announced by the cluster. */
  configured: boolean;
  /** Not tried before this time (epoch ms) while another server is left: it announced lame duck mode. */
  avoidUntil: number;
}

/** The server to try next and its place in the rotation (for `failed`/`connected`). */
export interface ServerPick {
  entry: ServerEntry;
  index: number;
}

/** What an INFO's `connect_urls` changed in the rotation (`host:port`). */
export interface ServerChanges {
  added: string[];
  dropped: string[];
}

/**
 * The rotation of servers. Promises: configured servers (each `host:port` once) are never dropped; announced
 * ones are added as the cluster names them and dropped when it no longer does (never the one connected to);
 * `pick` goes round in order from where the last attempt left off, passes over a server avoided for lame duck
 * mode while another is left, and always answers (the rotation is never empty).
 */
export class ServerRotation {
  /** The servers, configured ones first, then announced ones in the order they were learnt. */
  readonly entries: ServerEntry[] = [];
  /** Where the next attempt starts in `entries` (taken modulo its length). */
  #next = 0;

  /** `servers` must not be empty. */
  constructor(servers: NatsServerAddress[]) {
    for (const address of servers) {
      const key = serverKey(address);
      if (!this.entries.some((entry) => entry.key === key)) {
        this.entries.push({ address, key, configured: true, avoidUntil: 0 });
      }
    }
  }

  /** `host:port` of every server, in rotation order. */
  get keys(): string[] {
    return this.entries.map((entry) => entry.key);
  }

  /** The server to try next: in turn, passing over `avoid` and servers in lame duck mode while others are left. */
  pick(avoid?: ServerEntry): ServerPick {
    const entries = this.entries;
    const now = Date.now();
    let fallback: ServerPick | undefined;
    for (let i = 0; i < entries.length; i++) {
      const index = (this.#next + i) % entries.length;
      const entry = entries[index];
      if (entry === avoid) continue;
      if (entry.avoidUntil > now) {
        fallback ??= { entry, index };
        continue;
      }
      return { entry, index };
    }
    if (fallback) return fallback;
    const index = this.#next % entries.length;
    return { entry: entries[index], index };
  }

  /** The attempt on the server at `index` failed: the next one starts with the server after it. */
  failed(index: number): void {
    this.#next = index + 1;
  }

  /** Connected to the server at `index`: after a disconnect, it is tried first again. */
  connected(index: number): void {
    this.#next = index;
  }

  /** The server announced lame duck mode: not tried again for `LAME_DUCK_AVOID_MS` while another is left. */
  avoid(entry: ServerEntry): void {
    entry.avoidUntil = Date.now() + LAME_DUCK_AVOID_MS;
  }

  /**
   * Adds the servers an INFO of `current`'s server announces, and drops announced ones it no longer names
   * (configured ones and `current` stay). An announced server inherits `current`'s credentials and TLS.
   * Returns what changed, or undefined when nothing did (or nothing was announced).
   */
  learn(current: ServerEntry, urls: string[] | undefined): ServerChanges | undefined {
    if (urls === undefined || urls.length === 0) return undefined;
    const entries = this.entries;
    const base = current.address;
    const announced = new Set<string>();
    const added: string[] = [];
    for (const url of urls) {
      const parsed = parseConnectUrl(url);
      if (parsed === undefined) continue;
      const key = serverKey(parsed);
      announced.add(key);
      if (entries.some((entry) => entry.key === key)) continue;
      const address: NatsServerAddress = {
        ...base,
        hostname: parsed.hostname,
        port: parsed.port,
        // A certificate names the host the configuration gave, not the IP a server announces.
        ...(base.tls ? { tlsName: base.tlsName ?? base.hostname } : {}),
      };
      entries.push({ address, key, configured: false, avoidUntil: 0 });
      added.push(key);
    }
    const dropped: string[] = [];
    for (let i = entries.length - 1; i >= 0; i--) {
      const entry = entries[i];
      if (!entry.configured && !announced.has(entry.key) && entry !== current) {
        entries.splice(i, 1);
        dropped.push(entry.key);
      }
    }
    return added.length > 0 || dropped.length > 0 ? { added, dropped } : undefined;
  }
}
