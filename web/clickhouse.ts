/**
 * ClickHouse as the web server reads it: `@clickhouse/client` as the read-only user, queries only as `Sql`
 * fragments built by the project's binder (`sql`, `ident` from @tailwatch/ingest/sql), JSONEachRow answers.
 * It counts the queries it sends (the bench's "queries per second") and remembers since when ClickHouse is
 * unreachable, so that every page can say so and recover by itself.
 */
import { ClickHouseLogLevel, createClient } from "@clickhouse/client";
import type { Sql } from "@tailwatch/ingest/sql";

export interface ReaderStatus {
  ok: boolean;
  /** Epoch ms of the first failure of the current outage. */
  downSince?: number;
  lastError?: string;
}

export interface Reader {
  /** Runs one SELECT and returns its rows (64-bit integers arrive as strings: convert with `num`). */
  rows<T = Record<string, unknown>>(query: Sql): Promise<T[]>;
  status(): ReaderStatus;
  /** Queries sent since start. */
  queries(): number;
  close(): Promise<void>;
}

export class QueryError extends Error {
  override name = "QueryError";
  constructor(message: string, readonly unreachable: boolean) {
    super(message);
  }
}

export interface ReaderOptions {
  url: string;
  username: string;
  password: string;
  database: string;
  /** Per-query timeout; default 10 s. */
  timeoutMs?: number;
  /** Queries in flight at once; default 8. */
  concurrency?: number;
}

/** A ClickHouse number from JSON (UInt64 comes quoted) as a JS number. */
export function num(value: unknown): number {
  if (typeof value === "number") return value;
  if (typeof value === "string" && value !== "") return Number(value);
  return 0;
}

export function createReader(options: ReaderOptions): Reader {
  const client = createClient({
    url: options.url,
    username: options.username,
    password: options.password,
    database: options.database,
    request_timeout: options.timeoutMs ?? 10_000,
    max_open_connections: options.concurrency ?? 8,
    log: { level: ClickHouseLogLevel.OFF },
  });
  let sent = 0;
  let downSince: number | undefined;
  let lastError: string | undefined;
  const limit = options.concurrency ?? 8;
  let active = 0;
  const waiting: (() => void)[] = [];
  const acquire = async () => {
    while (active >= limit) await new Promise<void>((resolve) => waiting.push(resolve));
    active++;
  };
  const release = () => {
    active--;
    waiting.shift()?.();
  };
  return {
    async rows<T>(query: Sql): Promise<T[]> {
      await acquire();
      sent++;
      try {
        const result = await client.query({ query: query.text, format: "JSONEachRow" });
        const rows = await result.json<T>();
        downSince = undefined;
        lastError = undefined;
        return rows;
      } catch (error) {
        const message = String((error as Error)?.message ?? error);
        // A server-side exception carries "Code: N"; anything else (refused, reset, timeout) is an outage.
        const unreachable = !/Code: \d+/.test(message);
        if (unreachable) {
          downSince ??= Date.now();
          lastError = message.split("\n")[0].slice(0, 300);
        }
        throw new QueryError(message.split("\n")[0].slice(0, 500), unreachable);
      } finally {
        release();
      }
    },
    status: () => ({ ok: downSince === undefined, downSince, lastError }),
    queries: () => sent,
    close: () => client.close(),
  };
}
