/**
 * Versioned ClickHouse migrations: the files `migrations/NNNN_name.sql`, applied in order and recorded in
 * `<database>.schema_migrations`. Applying them again is a no-op. `{{database}}` in a file stands for the
 * target database (inserted as a quoted identifier), so tests can apply the schema to a database of their own.
 */
import { type ClickHouse, createClickHouse } from "./clickhouse.ts";
import { ident, literal, sql, trustedSqlText } from "./sql.ts";
import type { Sql } from "./sql.ts";

/** Where and as whom to apply the migrations. */
export interface MigrationTarget {
  /** ClickHouse HTTP URL, e.g. "http://127.0.0.1:8123". */
  url: string;
  /** A user allowed to CREATE; the admin user. */
  username: string;
  password: string;
  /** Database to create and migrate; "profiler" in production. */
  database: string;
}

export interface Migration {
  version: number;
  name: string;
  statements: Sql[];
}

const MIGRATIONS_DIR = new URL("./migrations/", import.meta.url);
const DATABASE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Splits a migration file into statements: `;` at the end of a line ends one; `--` comments are dropped. */
export function splitStatements(text: string): string[] {
  return text
    .split(/;[ \t]*$/m)
    .map((statement) => statement.replace(/^\s*--.*$/gm, "").trim())
    .filter((statement) => statement.length > 0);
}

/** Reads the migration files in version order. */
export async function loadMigrations(database: string): Promise<Migration[]> {
  if (!DATABASE_NAME.test(database)) throw new Error(`invalid database name ${JSON.stringify(database)}`);
  const databaseIdent = literal(ident(database));
  const migrations: Migration[] = [];
  for await (const entry of Deno.readDir(MIGRATIONS_DIR)) {
    const match = /^(\d{4})_([a-z0-9_]+)\.sql$/.exec(entry.name);
    if (!entry.isFile || !match) continue;
    const text = await Deno.readTextFile(new URL(entry.name, MIGRATIONS_DIR));
    migrations.push({
      version: Number(match[1]),
      name: match[2],
      statements: splitStatements(text).map((statement) =>
        trustedSqlText(statement.replaceAll("{{database}}", databaseIdent))
      ),
    });
  }
  migrations.sort((a, b) => a.version - b.version);
  for (let i = 1; i < migrations.length; i++) {
    if (migrations[i].version === migrations[i - 1].version) {
      throw new Error(`two migrations have version ${migrations[i].version}`);
    }
  }
  return migrations;
}

/** The versions recorded as applied in `database.schema_migrations` (empty when the table is missing). */
export async function appliedVersions(clickhouse: ClickHouse, database: string): Promise<number[]> {
  const exists = await clickhouse.query<{ n: string | number }>(
    sql`SELECT count() AS n FROM system.tables WHERE database = ${database} AND name = 'schema_migrations'`,
  );
  if (Number(exists[0]?.n ?? 0) === 0) return [];
  const rows = await clickhouse.query<{ version: number }>(
    sql`SELECT DISTINCT version FROM ${ident(database, "schema_migrations")} ORDER BY version`,
  );
  return rows.map((row) => Number(row.version));
}

/** `RENAME TABLE <db>.<a> TO <db>.<b>` (one table): captures b. */
const RENAME_TABLE = /^RENAME TABLE\s+\S+\s+TO\s+\S+?\.`?([A-Za-z_][A-Za-z0-9_]*)`?\s*$/i;

async function tableExists(clickhouse: ClickHouse, database: string, table: string): Promise<boolean> {
  const [row] = await clickhouse.query<{ n: string | number }>(
    sql`SELECT count() AS n FROM system.tables WHERE database = ${database} AND name = ${table}`,
  );
  return Number(row?.n ?? 0) > 0;
}

/**
 * Applies every migration not yet recorded; returns the versions it applied (empty when up to date).
 * `through` stops after that version (for tests that need the schema as it was before a migration).
 */
export async function applyMigrations(
  target: MigrationTarget | {
    clickhouse: ClickHouse;
    database: string;
  },
  options: { through?: number } = {},
): Promise<number[]> {
  const clickhouse = "clickhouse" in target ? target.clickhouse : createClickHouse(target);
  const db = target.database;
  const migrations = (await loadMigrations(db)).filter((m) =>
    options.through === undefined || m.version <= options.through
  );
  await clickhouse.exec(sql`CREATE DATABASE IF NOT EXISTS ${ident(db)}`);
  await clickhouse.exec(
    sql`CREATE TABLE IF NOT EXISTS ${
      ident(db, "schema_migrations")
    } (version UInt32, name String, applied_at DateTime DEFAULT now()) ENGINE = TinyLog`,
  );
  const applied = new Set(await appliedVersions(clickhouse, db));
  const done: number[] = [];
  for (const migration of migrations) {
    if (applied.has(migration.version)) continue;
    // Every statement is IF NOT EXISTS, so a migration interrupted half-way is safe to run again; it is
    // recorded only after all its statements succeeded. ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS:
    // an ALTER ... ADD COLUMN whose column is there already (an earlier, interrupted run) counts as done.
    // Nor RENAME TABLE IF EXISTS: a RENAME TABLE whose target exists already is skipped (done before).
    for (const statement of migration.statements) {
      const rename = RENAME_TABLE.exec(statement.text);
      if (rename && await tableExists(clickhouse, db, rename[1])) continue;
      try {
        await clickhouse.exec(statement);
      } catch (error) {
        const addColumn = /^ALTER TABLE\s[^;]*\sADD COLUMN\s/i.test(statement.text);
        if (!addColumn || !/already exists/i.test(String(error))) throw error;
      }
    }
    await clickhouse.exec(
      sql`INSERT INTO ${
        ident(db, "schema_migrations")
      } (version, name) VALUES (${migration.version}, ${migration.name})`,
    );
    done.push(migration.version);
  }
  return done;
}
