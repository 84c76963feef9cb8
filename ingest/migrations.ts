/**
 * Versioned ClickHouse migrations: the files `migrations/NNNN_name.sql`, applied in order and recorded in
 * `<database>.schema_migrations`. Applying them again is a no-op. `{{database}}` in a file stands for the
 * target database, so tests can apply the schema to a database of their own.
 */

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
  statements: string[];
}

const MIGRATIONS_DIR = new URL("./migrations/", import.meta.url);
const DATABASE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Splits a migration file into statements: `;` at the end of a line ends one; `--` comments are dropped. */
export function splitStatements(sql: string): string[] {
  return sql
    .split(/;[ \t]*$/m)
    .map((statement) => statement.replace(/^\s*--.*$/gm, "").trim())
    .filter((statement) => statement.length > 0);
}

/** Reads the migration files in version order. */
export async function loadMigrations(database: string): Promise<Migration[]> {
  if (!DATABASE_NAME.test(database)) throw new Error(`invalid database name ${JSON.stringify(database)}`);
  const migrations: Migration[] = [];
  for await (const entry of Deno.readDir(MIGRATIONS_DIR)) {
    const match = /^(\d{4})_([a-z0-9_]+)\.sql$/.exec(entry.name);
    if (!entry.isFile || !match) continue;
    const text = await Deno.readTextFile(new URL(entry.name, MIGRATIONS_DIR));
    migrations.push({
      version: Number(match[1]),
      name: match[2],
      statements: splitStatements(text.replaceAll("{{database}}", database)),
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

async function execute(target: MigrationTarget, sql: string): Promise<string> {
  const response = await fetch(target.url, {
    method: "POST",
    body: sql,
    headers: { "X-ClickHouse-User": target.username, "X-ClickHouse-Key": target.password },
  });
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`ClickHouse answered ${response.status} to migration statement: ${text.trim()}`);
  }
  return text;
}

/** Applies every migration not yet recorded; returns the versions it applied (empty when up to date). */
export async function applyMigrations(target: MigrationTarget): Promise<number[]> {
  const migrations = await loadMigrations(target.database);
  const db = target.database;
  await execute(target, `CREATE DATABASE IF NOT EXISTS ${db}`);
  await execute(
    target,
    `CREATE TABLE IF NOT EXISTS ${db}.schema_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) ENGINE = TinyLog`,
  );
  const applied = new Set(
    (await execute(target, `SELECT version FROM ${db}.schema_migrations FORMAT TSV`))
      .split("\n").filter(Boolean).map(Number),
  );
  const done: number[] = [];
  for (const migration of migrations) {
    if (applied.has(migration.version)) continue;
    // Every statement is IF NOT EXISTS, so a migration interrupted half-way is safe to run again.
    for (const statement of migration.statements) await execute(target, statement);
    await execute(
      target,
      `INSERT INTO ${db}.schema_migrations (version, name) VALUES (${migration.version}, '${migration.name}')`,
    );
    done.push(migration.version);
  }
  return done;
}
