/**
 * A small ClickHouse HTTP client: statements are `Sql` fragments from the binder (never raw strings), rows
 * come back as JSONEachRow, inserts send JSONEachRow bodies. Plain fetch, so it behaves the same on 18.16 and
 * on current releases, and every request has a timeout.
 */
import { ident, type Sql, sql, sqlJoin } from "./sql.ts";

export interface ClickHouseOptions {
  /** HTTP interface, e.g. "http://127.0.0.1:8123". */
  url: string;
  username: string;
  password: string;
  /** Per-request timeout in ms. */
  timeoutMs?: number;
}

/** An error answered by the server (status and body) or a transport failure. */
export class ClickHouseError extends Error {
  override name = "ClickHouseError";
  constructor(message: string, readonly status?: number) {
    super(message);
  }
}

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

/** Creates a client; no connection is made until the first request. */
export function createClickHouse(options: ClickHouseOptions): ClickHouse {
  const base = options.url.replace(/\/+$/, "");
  const defaultTimeout = options.timeoutMs ?? 30_000;
  const headers = {
    "X-ClickHouse-User": options.username,
    "X-ClickHouse-Key": options.password,
  };

  async function post(
    query: string | undefined,
    body: string | Uint8Array<ArrayBuffer>,
    timeoutMs: number,
    queryId?: string,
  ): Promise<string> {
    const params = new URLSearchParams();
    if (query !== undefined) params.set("query", query);
    if (queryId !== undefined) params.set("query_id", queryId);
    const url = params.size === 0 ? `${base}/` : `${base}/?${params}`;
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
      throw new ClickHouseError(
        `ClickHouse at ${base}: reading the answer failed: ${error}`,
        response.status,
      );
    }
    if (!response.ok) {
      throw new ClickHouseError(
        `ClickHouse answered ${response.status}: ${text.trim().slice(0, 2000)}`,
        response.status,
      );
    }
    return text;
  }

  return {
    url: base,
    async exec(statement, opts) {
      await post(undefined, statement.text, opts?.timeoutMs ?? defaultTimeout);
    },
    async query<T>(statement: Sql, opts?: { timeoutMs?: number }): Promise<T[]> {
      const text = await post(
        undefined,
        `${statement.text}\nFORMAT JSONEachRow`,
        opts?.timeoutMs ?? defaultTimeout,
      );
      const rows: T[] = [];
      for (const line of text.split("\n")) {
        if (line.length === 0) continue;
        // An error after the first rows were sent arrives in the body of a 200 answer, as text.
        if (line.startsWith("Code: ")) {
          throw new ClickHouseError(`ClickHouse failed mid-answer: ${line.slice(0, 2000)}`);
        }
        rows.push(JSON.parse(line) as T);
      }
      return rows;
    },
    async insertJsonEachRow(table, columns, rows, opts) {
      if (rows.length === 0) return;
      const statement = sql`INSERT INTO ${ident(table.database, table.table)} (${
        sqlJoin(columns.map((column) => ident(column)))
      }) FORMAT JSONEachRow`;
      let body = "";
      for (const row of rows) body += JSON.stringify(row) + "\n";
      await post(statement.text, body, opts?.timeoutMs ?? defaultTimeout);
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
        const response = await fetch(`${base}/ping`, { signal: AbortSignal.timeout(5_000) });
        await response.body?.cancel();
        return response.ok;
      } catch {
        return false;
      }
    },
  };
}
