/**
 * The one way values enter SQL: the `sql` tagged template. Every `${value}` becomes a typed ClickHouse literal
 * that cannot end the string it is in, start a comment, or add a statement or a column; identifiers go
 * through `ident()`; trusted fragments built by `sql` itself nest as they are. The same text runs on
 * ClickHouse 18.16 and on current releases (no server-side query parameters).
 *
 * ```ts
 * const q = sql`SELECT count() FROM ${ident(db, "request_events")} WHERE service = ${service} AND ts >= ${since}`;
 * q.text; // "SELECT count() FROM `profiler`.`request_events` WHERE service = 'orders' AND ts >= toDateTime(1700000000)"
 * ```
 *
 * Literals by type:
 * - string: single-quoted; `\` `'` and every C0 control character (incl. NUL, tab, newline) and DEL escaped,
 *   the rest (all of Unicode) as UTF-8. A string that is not well-formed UTF-16 (a lone surrogate) is refused,
 *   since it could not round-trip.
 * - number: finite only (NaN and ±Infinity refused); safe integers as integers, other values in JavaScript's
 *   shortest round-trip form (e.g. `0.1`, `1e+21`); negative values in parentheses, so `1-${-5}` can never
 *   become the comment `1--5`.
 * - bigint: as an integer (negative in parentheses).
 * - boolean: `1` or `0` (18.16 has no Bool type).
 * - null: `NULL`. undefined is refused (almost always a bug).
 * - Date: `toDateTime(<unix seconds>)`, second precision (the milliseconds are dropped), independent of the
 *   server's time zone. An invalid Date is refused.
 * - array: `[a, b, ...]` of the above, recursively.
 * - `ident(...parts)`: back-quoted identifier(s) joined by `.`.
 * - `Sql` (the result of `sql` / `sqlJoin`): inserted verbatim.
 */

const SQL_BRAND: unique symbol = Symbol("tailwatch.sql");
const IDENT_BRAND: unique symbol = Symbol("tailwatch.ident");

/** A fragment of SQL whose every value went through the binder. */
export interface Sql {
  readonly [SQL_BRAND]: true;
  readonly text: string;
  toString(): string;
}

/** An identifier (database, table, column), possibly qualified. */
export interface Identifier {
  readonly [IDENT_BRAND]: true;
  readonly parts: readonly string[];
}

/** What may appear in `${...}` inside `sql`. */
export type SqlValue =
  | string
  | number
  | bigint
  | boolean
  | null
  | Date
  | Identifier
  | Sql
  | readonly SqlValue[];

/** Thrown for a value the binder refuses (NaN, undefined, lone surrogate, ...). */
export class SqlBindError extends TypeError {
  override name = "SqlBindError";
}

function fragment(text: string): Sql {
  return { [SQL_BRAND]: true, text, toString: () => text };
}

function isSql(value: unknown): value is Sql {
  return typeof value === "object" && value !== null && SQL_BRAND in value;
}

function isIdentifier(value: unknown): value is Identifier {
  return typeof value === "object" && value !== null && IDENT_BRAND in value;
}

/** Wraps a (possibly qualified) identifier: `ident("profiler", "request_events")`. */
export function ident(...parts: string[]): Identifier {
  if (parts.length === 0) throw new SqlBindError("ident() needs at least one part");
  for (const part of parts) {
    if (typeof part !== "string" || part.length === 0) {
      throw new SqlBindError(`identifier part must be a non-empty string, got ${JSON.stringify(part)}`);
    }
    if (!part.isWellFormed() || part.includes("\0")) {
      throw new SqlBindError("identifier contains a lone surrogate or NUL");
    }
  }
  return { [IDENT_BRAND]: true, parts: [...parts] };
}

const ESCAPES: Record<string, string> = {
  "\\": "\\\\",
  "'": "\\'",
  "\0": "\\0",
  "\b": "\\b",
  "\f": "\\f",
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
};

function escapeChar(ch: string): string {
  return ESCAPES[ch] ?? `\\x${ch.charCodeAt(0).toString(16).padStart(2, "0")}`;
}

// Backslash, quote, C0 controls and DEL.
// deno-lint-ignore no-control-regex
const STRING_SPECIAL = /[\\'\x00-\x1f\x7f]/g;
// deno-lint-ignore no-control-regex
const IDENT_SPECIAL = /[\\`\x00-\x1f\x7f]/g;

/** A ClickHouse string literal for `value`. */
export function quoteString(value: string): string {
  if (!value.isWellFormed()) throw new SqlBindError("string contains a lone surrogate; it cannot round-trip");
  return `'${value.replace(STRING_SPECIAL, escapeChar)}'`;
}

function quoteIdentifierPart(part: string): string {
  return "`" + part.replace(IDENT_SPECIAL, (ch) => ch === "`" ? "\\`" : escapeChar(ch)) + "`";
}

function numberLiteral(value: number): string {
  if (!Number.isFinite(value)) throw new SqlBindError(`cannot bind non-finite number ${value}`);
  const text = Number.isSafeInteger(value) ? value.toFixed(0) : String(value);
  if (Object.is(value, -0)) return "0";
  return value < 0 ? `(${text})` : text;
}

/** The literal for one value (see the module comment for the rules). */
export function literal(value: SqlValue): string {
  switch (typeof value) {
    case "string":
      return quoteString(value);
    case "number":
      return numberLiteral(value);
    case "bigint":
      return value < 0n ? `(${value.toString()})` : value.toString();
    case "boolean":
      return value ? "1" : "0";
    case "object": {
      if (value === null) return "NULL";
      if (value instanceof Date) {
        const ms = value.getTime();
        if (!Number.isFinite(ms)) throw new SqlBindError("cannot bind an invalid Date");
        return `toDateTime(${numberLiteral(Math.floor(ms / 1000))})`;
      }
      if (isSql(value)) return value.text;
      if (isIdentifier(value)) return value.parts.map(quoteIdentifierPart).join(".");
      if (Array.isArray(value)) return `[${value.map((item) => literal(item)).join(", ")}]`;
      break;
    }
  }
  throw new SqlBindError(`cannot bind a value of type ${value === undefined ? "undefined" : typeof value}`);
}

/** The tagged template: `sql\`SELECT ${value}\`` → a Sql fragment. */
export function sql(strings: TemplateStringsArray, ...values: SqlValue[]): Sql {
  let text = strings[0];
  for (let i = 0; i < values.length; i++) {
    text += literal(values[i]) + strings[i + 1];
  }
  return fragment(text);
}

/**
 * SQL text that ships with the code (the migration files), taken as it is. Never pass anything built from
 * input, configuration or data to it: those go through `sql`.
 */
export function trustedSqlText(text: string): Sql {
  return fragment(text);
}

/** Joins values or fragments with a separator, e.g. a column list: `sqlJoin(columns.map((c) => ident(c)))`. */
export function sqlJoin(values: readonly SqlValue[], separator: Sql = fragment(", ")): Sql {
  return fragment(values.map((value) => literal(value)).join(separator.text));
}
