/**
 * Versioned ClickHouse migrations: the files `migrations/NNNN_name.sql`, applied in order and recorded in
 * `<database>.schema_migrations`. Applying them again is a no-op. `{{database}}` in a file stands for the
 * target database (inserted as a quoted identifier), so tests can apply the schema to a database of their own.
 *
 * One migrator at a time: the setup step runs them (deploy/setup.ts), and a worker with INGEST_MIGRATE_ON_START
 * may too, so several may start at once (two workers on a fresh database; a rollout overlapping the setup Job).
 * Some migrations drop and rebuild a table (0008-0010): two runs interleaved would lose rows or record a
 * version twice. So whoever finds work to do takes a lock first (`<database>.schema_migrations_lock`, see
 * `acquireMigrationLock`), reads what is applied again, applies the rest and lets go; the others wait for it
 * and then find nothing left to do.
 */
import { type ClickHouse, createClickHouse } from "./clickhouse.ts";
import { ident, literal, type Sql, sql, trustedSqlText } from "./sql.ts";

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

/** The lock's table, in the migrated database. */
export const MIGRATION_LOCK_TABLE = "schema_migrations_lock";

export interface MigrationLockOptions {
  /**
   * A lock whose holder has not written a heartbeat for this long is taken to be a dead holder's (killed while
   * it migrated) and broken. Default 120 s. A live holder writes one every `heartbeatMs`, even while one long
   * statement runs.
   */
  staleAfterMs?: number;
  /** How often the holder writes its heartbeat. Default 5 s. */
  heartbeatMs?: number;
  /** How long to wait for a lock someone else holds before giving up (an error). Default 30 min. */
  waitMs?: number;
  /** Told (once, then every 30 s) while waiting: who holds the lock and how fresh its heartbeat is. */
  onWait?: (holder: string, heartbeatAgeS: number) => void;
}

export interface MigrationOptions {
  /** Stop after this version (for tests that need the schema as it was before a migration). */
  through?: number;
  lock?: MigrationLockOptions;
}

/** A transient refusal of concurrent DDL on one name ("... is creating or attaching right now" on 18.16). */
const isDdlRace = (error: unknown) =>
  /right now|already exists|is being (created|dropped)/i.test(String(error));

const sleepMs = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Who takes the lock: host, pid and a random part (letters, digits, `.`, `-`, `/` only). */
function lockOwner(): string {
  let host = "host";
  try {
    host = Deno.hostname().replace(/[^A-Za-z0-9.-]/g, "-").slice(0, 60) || "host";
  } catch {
    // no permission to read the hostname
  }
  return `${host}/${Deno.pid}/${crypto.randomUUID().slice(0, 8)}`;
}

interface LockState {
  owner: string;
  /** Seconds since the holder's last heartbeat (or since the lock was created, if none yet). */
  ageS: number;
}

/** The lock's holder and the age of its heartbeat; undefined when there is no lock. */
async function lockState(clickhouse: ClickHouse, db: string): Promise<LockState | undefined> {
  try {
    const [row] = await clickhouse.query<
      { owner: string; now: string | number; beat: string | number; made: string | number }
    >(
      sql`SELECT
        (SELECT any(default_expression) FROM system.columns
          WHERE database = ${db} AND table = ${MIGRATION_LOCK_TABLE} AND name = 'owner') AS owner,
        toUInt32(now()) AS now,
        (SELECT toUInt32(max(heartbeat)) FROM ${ident(db, MIGRATION_LOCK_TABLE)}) AS beat,
        (SELECT toUInt32(any(metadata_modification_time)) FROM system.tables
          WHERE database = ${db} AND name = ${MIGRATION_LOCK_TABLE}) AS made`,
    );
    const owner = String(row?.owner ?? "").replace(/^'(.*)'$/, "$1");
    const last = Math.max(Number(row.beat), Number(row.made));
    return { owner, ageS: Number(row.now) - last };
  } catch (error) {
    if (/doesn.t exist|does not exist|unknown table/i.test(String(error))) return undefined;
    throw error;
  }
}

/** A lock held: `check` throws once it is no longer ours; `release` lets it go. */
interface HeldLock {
  owner: string;
  check(): Promise<void>;
  release(): Promise<void>;
}

/**
 * Takes `<db>.schema_migrations_lock`. The lock is the table itself: CREATE TABLE (without IF NOT EXISTS) of one
 * name succeeds for one caller only, on 18.16 and current releases alike; the holder is named in the table's
 * `owner` column default (so it is known the moment the table exists), and writes a heartbeat row every
 * `heartbeatMs` while it holds it. A lock without a heartbeat for `staleAfterMs` is broken by renaming it to
 * `<table>_stale_<its owner>`: a RENAME to one name succeeds once, so two waiters that both found the same dead
 * holder cannot both break it, and neither can break the next holder's lock under that name. The renamed
 * tables stay as a record (one per crashed migration). A holder checks before every migration that the lock
 * is still its own and stops otherwise.
 */
export async function acquireMigrationLock(
  clickhouse: ClickHouse,
  db: string,
  options: MigrationLockOptions = {},
): Promise<HeldLock> {
  const staleAfterS = Math.max(1, Math.round((options.staleAfterMs ?? 120_000) / 1000));
  const heartbeatMs = options.heartbeatMs ?? 5_000;
  const deadline = Date.now() + (options.waitMs ?? 30 * 60_000);
  const owner = lockOwner();
  const table = ident(db, MIGRATION_LOCK_TABLE);
  let toldAt = 0;
  for (let attempt = 0;; attempt++) {
    try {
      await clickhouse.exec(
        sql`CREATE TABLE ${table} (owner String DEFAULT ${owner}, heartbeat DateTime DEFAULT now()) ENGINE = Log`,
      );
      break;
    } catch (error) {
      if (!isDdlRace(error)) throw error;
    }
    const state = await lockState(clickhouse, db);
    if (state === undefined) continue; // let go a moment ago: try again at once
    if (state.ageS > staleAfterS && state.owner !== "") {
      const stale = `${MIGRATION_LOCK_TABLE}_stale_${state.owner.replace(/[^A-Za-z0-9]/g, "_")}`;
      try {
        await clickhouse.exec(sql`RENAME TABLE ${table} TO ${ident(db, stale)}`);
        options.onWait?.(
          `${state.owner} (broken: no heartbeat for ${state.ageS} s; kept as ${stale})`,
          state.ageS,
        );
      } catch (error) {
        if (!isDdlRace(error) && !/doesn.t exist|does not exist/i.test(String(error))) throw error;
      }
      continue;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `the migration lock ${db}.${MIGRATION_LOCK_TABLE} is held by ${state.owner} (heartbeat ${state.ageS} s ago)`,
      );
    }
    if (Date.now() - toldAt >= 30_000) {
      toldAt = Date.now();
      options.onWait?.(state.owner, state.ageS);
    }
    await sleepMs(Math.min(1_000, 100 * 2 ** Math.min(attempt, 4)));
  }
  const beat = () => clickhouse.exec(sql`INSERT INTO ${table} (heartbeat) SELECT now()`);
  await beat();
  const timer = setInterval(() => void beat().catch(() => {}), heartbeatMs);
  const check = async () => {
    const state = await lockState(clickhouse, db);
    if (state?.owner !== owner) {
      clearInterval(timer);
      throw new Error(
        `lost the migration lock ${db}.${MIGRATION_LOCK_TABLE} (now ${
          state ? `held by ${state.owner}` : "gone"
        })`,
      );
    }
  };
  return {
    owner,
    check,
    async release() {
      clearInterval(timer);
      const state = await lockState(clickhouse, db).catch(() => undefined);
      if (state?.owner === owner) await clickhouse.exec(sql`DROP TABLE IF EXISTS ${table}`);
    },
  };
}

/**
 * Applies every migration not yet recorded, under the migration lock; returns the versions it applied (empty
 * when up to date: then no lock is taken). `through` stops after that version.
 */
export async function applyMigrations(
  target: MigrationTarget | {
    clickhouse: ClickHouse;
    database: string;
  },
  options: MigrationOptions = {},
): Promise<number[]> {
  if (!("clickhouse" in target)) {
    await using own = createClickHouse(target);
    return await applyMigrations({ clickhouse: own, database: target.database }, options);
  }
  const clickhouse = target.clickhouse;
  const db = target.database;
  const migrations = (await loadMigrations(db)).filter((m) =>
    options.through === undefined || m.version <= options.through
  );
  const missing = (applied: number[]) => migrations.filter((m) => !applied.includes(m.version));
  // Up to date: nothing to lock (every version is recorded only after all its statements succeeded).
  if (missing(await appliedVersions(clickhouse, db)).length === 0) return [];
  for (let attempt = 0;; attempt++) {
    try {
      await clickhouse.exec(sql`CREATE DATABASE IF NOT EXISTS ${ident(db)}`);
      break;
    } catch (error) {
      if (!isDdlRace(error) || attempt >= 20) throw error;
      await sleepMs(100);
    }
  }
  const lock = await acquireMigrationLock(clickhouse, db, options.lock);
  try {
    await clickhouse.exec(
      sql`CREATE TABLE IF NOT EXISTS ${
        ident(db, "schema_migrations")
      } (version UInt32, name String, applied_at DateTime DEFAULT now()) ENGINE = TinyLog`,
    );
    // Read again under the lock: whoever held it before may have applied everything.
    return await applyLocked(clickhouse, db, missing(await appliedVersions(clickhouse, db)), lock);
  } finally {
    await lock.release();
  }
}

async function applyLocked(
  clickhouse: ClickHouse,
  db: string,
  migrations: Migration[],
  lock: HeldLock,
): Promise<number[]> {
  const done: number[] = [];
  for (const migration of migrations) {
    await lock.check();
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
