/**
 * ClickHouse as ingest talks to it. Statements are `Sql` fragments from the binder (never raw strings), sent
 * as the query text as they are: no `query_params` (18.16 has no server-side parameters). Two transports sit
 * behind the one `ClickHouse` interface:
 *
 * - `@clickhouse/client` for everything whose speed does not matter: `exec` (its `command`), `query` (its
 *   `query`, JSONEachRow), `insertJsonEachRow` (its `insert`) and `ping`. That is migrations, retention,
 *   rebuild, reconcile, health checks, the tests, and the worker's dedup and repair reads, which a batch of
 *   first deliveries skips (their cost where they run: README "Clients").
 * - A hand-written fetch POST for `insertBody` only: the worker's RowBinary INSERT, named by its query_id,
 *   whose speed was measured (README "Benchmark"). It sends the same bytes as before the library took the
 *   other paths (only its errors now read the server's code too).
 *
 * What @clickhouse/client 1.23 sends, as configured here (clickhouse_test.ts records it): `query_id`, the
 * INSERT's `query`, Basic authorization, and no setting at all: no `database`, `session_id`,
 * `enable_http_compression` or `wait_end_of_query`. A `readonly=1` user refuses any setting in the URL, so
 * anything more would lock out the read-only user; 18.16 knows none of the newer ones.
 *
 * Every error is a `ClickHouseError` that carries the server's exception code when the server answered with
 * one, whichever transport failed; every request has a deadline that covers the whole answer.
 */
import {
  type ClickHouseClient,
  ClickHouseError as LibraryError,
  ClickHouseLogLevel,
  createClient,
} from "@clickhouse/client";
import { ident, literal, type Sql, sql, sqlJoin } from "./sql.ts";

/** How to reach ClickHouse and how long to wait for it. */
export interface ClickHouseOptions {
  /** The HTTP interface, e.g. `"http://127.0.0.1:8123"`; trailing slashes are ignored. Required. */
  url: string;
  /**
   * The user every request runs as.
   * @default "default"
   */
  username?: string;
  /**
   * Its password.
   * @default ""
   */
  password?: string;
  /**
   * Deadline of one request in ms, from sending it to the last byte of its answer; a call may pass its own
   * `timeoutMs`. Past it the request is abandoned (the server may still finish the statement).
   * @default 30_000
   */
  timeoutMs?: number;
  /**
   * Deadline of `ping()` in ms.
   * @default 5_000
   */
  pingTimeoutMs?: number;
  /**
   * Sockets @clickhouse/client opens at most (its `max_open_connections`): requests beyond wait for one.
   * `insertBody` does not count: it goes through fetch's own pool.
   * @default 10
   */
  maxOpenConnections?: number;
  /**
   * How long @clickhouse/client keeps an idle keep-alive socket (its `keep_alive.idle_socket_ttl`). Keep it
   * below the server's `keep_alive_timeout` (10 s on 18.16, as its `Keep-Alive` header says), or a request
   * may go out on a socket the server is closing.
   * @default 2_500
   */
  idleSocketTtlMs?: number;
}

/** What a `ClickHouseError` knows besides its message. */
export interface ClickHouseErrorDetails {
  /** The server's exception code; see `ClickHouseError.code`. */
  code?: number;
  /** The exception's name; see `ClickHouseError.type`. */
  type?: string;
  /** The HTTP status; see `ClickHouseError.status`. */
  status?: number;
  /** Whether the server answered; see `ClickHouseError.answered`. Default: a status or a code is known. */
  answered?: boolean;
}

/**
 * An error answered by the server (a refusal, or a failure in the middle of an answer), or a request that got
 * no answer (unreachable, timed out, connection broken).
 */
export class ClickHouseError extends Error {
  override name = "ClickHouseError";
  /**
   * The server's exception code (`Code: 60` → 60: UNKNOWN_TABLE; 164: READONLY; 241: MEMORY_LIMIT_EXCEEDED),
   * whenever the server answered with an exception, on every path and release. Undefined for no answer.
   */
  readonly code?: number;
  /** The exception's name (`"UNKNOWN_TABLE"`) on releases that send it; 18.16 sends none. */
  readonly type?: string;
  /**
   * The HTTP status of the answer where this client sees it: `insertBody`'s answers (the worker tells an
   * INSERT that got no answer by its absence). @clickhouse/client does not report the status of a request the
   * server refused: on the other paths it is undefined and `answered` says whether the server answered.
   */
  readonly status?: number;
  /** True when the server answered (a status or an exception); false for no answer. */
  readonly answered: boolean;

  constructor(message: string, details: ClickHouseErrorDetails = {}) {
    super(message);
    this.code = details.code;
    this.type = details.type;
    this.status = details.status;
    this.answered = details.answered ?? (details.status !== undefined || details.code !== undefined);
  }
}

/** Where the server's exception code stands: `Code: 60.` (current releases) or `Code: 60,` (18.16). */
const EXCEPTION_CODE = /(?:^|\n)\s*(?:Code|Error): (\d+)[.,]/;
/** The exception's name current releases end with: `... (UNKNOWN_TABLE) (version 24.8.1.1)`. */
const EXCEPTION_TYPE = /\(([A-Z][A-Z0-9_]{2,})\)(?=\s*(?:\(version\b|$))/;

/** The server's exception code and name in an error text (18.16's or a current release's), if any. */
export function exceptionDetails(text: string): { code?: number; type?: string } {
  const code = EXCEPTION_CODE.exec(text);
  if (code === null) return {};
  const type = EXCEPTION_TYPE.exec(text.slice(code.index));
  return type === null ? { code: Number(code[1]) } : { code: Number(code[1]), type: type[1] };
}

/** The methods every ClickHouse of ingest has (the 18.16 server through this client, chDB in the tests). */
export interface ClickHouse {
  readonly url: string;
  /** Runs a statement and discards the result. */
  exec(statement: Sql, options?: { timeoutMs?: number }): Promise<void>;
  /** Runs a SELECT and returns its rows (FORMAT JSONEachRow is appended). UInt64 values arrive as strings. */
  query<T = Record<string, unknown>>(statement: Sql, options?: { timeoutMs?: number }): Promise<T[]>;
  /** INSERT INTO table (columns) FORMAT JSONEachRow with one JSON object per row. */
  insertJsonEachRow(
    table: { database: string; table: string },
    columns: readonly string[],
    rows: readonly object[],
    options?: { timeoutMs?: number },
  ): Promise<void>;
  /** INSERT INTO table (columns) FORMAT `format` with `body` as is (e.g. RowBinary rows). */
  insertBody(
    table: { database: string; table: string },
    columns: readonly string[],
    format: "RowBinary" | "TabSeparated" | "JSONEachRow",
    body: string | Uint8Array<ArrayBuffer>,
    /** queryId: names the INSERT in system.processes (ClickHouse's query_id). */
    options?: { timeoutMs?: number; queryId?: string },
  ): Promise<void>;
  /** True when /ping answers. */
  ping(): Promise<boolean>;
}

/** A client of the server: the interface, and `close()` for its sockets (idle ones close by themselves). */
export type ClickHouseClientHandle = ClickHouse & AsyncDisposable & { close(): Promise<void> };

/**
 * Far beyond any deadline: @clickhouse/client's own `request_timeout` is a socket idle timeout, which would
 * cut a long silent statement (an ALTER, an INSERT ... SELECT) whose caller allowed more. The deadlines are
 * this client's (an AbortSignal per request, which covers the answer's body too).
 */
const LIBRARY_REQUEST_TIMEOUT_MS = 24 * 3600_000;

/** Creates a client; no connection is made until the first request. */
export function createClickHouse(options: ClickHouseOptions): ClickHouseClientHandle {
  const base = options.url.replace(/\/+$/, "");
  const username = options.username ?? "default";
  const password = options.password ?? "";
  const defaultTimeout = options.timeoutMs ?? 30_000;
  const pingTimeout = options.pingTimeoutMs ?? 5_000;
  const headers = { "X-ClickHouse-User": username, "X-ClickHouse-Key": password };
  const client: ClickHouseClient = createClient({
    url: base,
    username,
    password,
    request_timeout: LIBRARY_REQUEST_TIMEOUT_MS,
    max_open_connections: options.maxOpenConnections ?? 10,
    keep_alive: { enabled: true, idle_socket_ttl: options.idleSocketTtlMs ?? 2_500 },
    // Stated although they are the defaults: each one, sent, is a setting 18.16's readonly user refuses.
    compression: { request: false, response: false },
    clickhouse_settings: {},
    // Every error reaches the caller as a ClickHouseError; the library's own log would repeat it on stderr.
    log: { level: ClickHouseLogLevel.OFF },
  });

  /** The ClickHouseError for whatever @clickhouse/client threw (or a deadline that passed). */
  function libraryFailure(error: unknown, signal: AbortSignal, timeoutMs: number): ClickHouseError {
    if (error instanceof ClickHouseError) return error;
    if (signal.aborted) {
      return new ClickHouseError(`ClickHouse at ${base}: no complete answer within ${timeoutMs} ms`);
    }
    if (error instanceof LibraryError) {
      // A current release's exception, parsed by the library into code, name and message.
      const code = Number(error.code);
      return new ClickHouseError(
        `ClickHouse answered: Code: ${code}. DB::Exception: ${error.message.trim()} (${error.type})`,
        { code: Number.isSafeInteger(code) ? code : undefined, type: error.type, answered: true },
      );
    }
    const message = error instanceof Error ? error.message : String(error);
    const details = exceptionDetails(message);
    if (details.code !== undefined) {
      // 18.16's exceptions do not match the library's pattern: their text arrives as a plain Error.
      return new ClickHouseError(`ClickHouse answered: ${message.trim().slice(0, 2000)}`, details);
    }
    return new ClickHouseError(`ClickHouse at ${base} unreachable: ${message}`);
  }

  /** Runs `request` with a deadline (its signal) and turns whatever it throws into a ClickHouseError. */
  async function withDeadline<T>(
    timeoutMs: number,
    request: (signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    const signal = AbortSignal.timeout(timeoutMs);
    try {
      return await request(signal);
    } catch (error) {
      throw libraryFailure(error, signal, timeoutMs);
    }
  }

  /** The hand-written POST: insertBody only (the worker's RowBinary INSERT, measured). */
  async function post(
    query: string,
    body: string | Uint8Array<ArrayBuffer>,
    timeoutMs: number,
    queryId?: string,
  ): Promise<string> {
    const params = new URLSearchParams();
    params.set("query", query);
    if (queryId !== undefined) params.set("query_id", queryId);
    const url = `${base}/?${params}`;
    let response: Response;
    try {
      response = await fetch(url, {
        method: "POST",
        body,
        headers,
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (error) {
      throw new ClickHouseError(
        `ClickHouse at ${base} unreachable: ${error instanceof Error ? error.message : error}`,
      );
    }
    let text: string;
    try {
      text = await response.text();
    } catch (error) {
      throw new ClickHouseError(`ClickHouse at ${base}: reading the answer failed: ${error}`, {
        status: response.status,
      });
    }
    if (!response.ok) {
      throw new ClickHouseError(`ClickHouse answered ${response.status}: ${text.trim().slice(0, 2000)}`, {
        status: response.status,
        ...exceptionDetails(text),
      });
    }
    return text;
  }

  const close = () => client.close();
  return {
    url: base,
    async exec(statement, opts) {
      await withDeadline(
        opts?.timeoutMs ?? defaultTimeout,
        (signal) => client.command({ query: statement.text, abort_signal: signal }),
      );
    },
    query<T>(statement: Sql, opts?: { timeoutMs?: number }): Promise<T[]> {
      return withDeadline(opts?.timeoutMs ?? defaultTimeout, async (signal) => {
        const result = await client.query({
          query: statement.text,
          format: "JSONEachRow",
          abort_signal: signal,
        });
        // The signal ends the request until the answer starts; past that, the deadline closes its stream.
        const stop = () => result.close();
        if (signal.aborted) stop();
        signal.addEventListener("abort", stop, { once: true });
        let text: string;
        try {
          text = await result.text();
        } finally {
          signal.removeEventListener("abort", stop);
        }
        return parseJsonEachRow<T>(text);
      });
    },
    async insertJsonEachRow(table, columns, rows, opts) {
      if (rows.length === 0) return;
      // The library writes `INSERT INTO <table> (<columns>) FORMAT JSONEachRow` from these, as given: quoted
      // by the binder. The rows go as one JSON object per line, as JSON.stringify writes them.
      const quoted = columns.map((column) => literal(ident(column)));
      await withDeadline(opts?.timeoutMs ?? defaultTimeout, (signal) =>
        client.insert({
          table: literal(ident(table.database, table.table)),
          ...(quoted.length > 0 ? { columns: quoted as [string, ...string[]] } : {}),
          values: rows as object[],
          format: "JSONEachRow",
          abort_signal: signal,
        }));
    },
    async insertBody(table, columns, format, body, opts) {
      if (body.length === 0) return;
      const statement = sql`INSERT INTO ${ident(table.database, table.table)} (${
        sqlJoin(columns.map((column) => ident(column)))
      }) FORMAT `;
      await post(statement.text + format, body, opts?.timeoutMs ?? defaultTimeout, opts?.queryId);
    },
    async ping() {
      try {
        const result = await client.ping({ select: false, abort_signal: AbortSignal.timeout(pingTimeout) });
        return result.success;
      } catch {
        return false;
      }
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * The rows of a JSONEachRow answer. A failure after the first rows were sent arrives inside the 200 answer:
 * on 18.16 (and releases before 25.11) as a line `Code: N, ...`; from 25.11 in an `__exception__` block that
 * starts with a line holding only `\r`. Either is thrown as a ClickHouseError with the server's code; any other
 * line that is not JSON (a cut answer) is an error too, never a row quietly lost.
 */
export function parseJsonEachRow<T>(text: string): T[] {
  const rows: T[] = [];
  let at = 0;
  while (at < text.length) {
    let end = text.indexOf("\n", at);
    if (end < 0) end = text.length;
    const line = text.slice(at, end);
    if (line.length > 0) {
      if (line.startsWith("Code: ") || line === "\r" || line.startsWith("__exception__")) {
        const rest = text.slice(at).trim();
        throw new ClickHouseError(`ClickHouse failed mid-answer: ${rest.slice(0, 2000)}`, {
          ...exceptionDetails(rest),
          answered: true,
        });
      }
      try {
        rows.push(JSON.parse(line) as T);
      } catch {
        throw new ClickHouseError(`ClickHouse sent a line that is not JSON: ${line.slice(0, 200)}`, {
          answered: true,
        });
      }
    }
    at = end + 1;
  }
  return rows;
}
