export {
  acquireMigrationLock,
  appliedVersions,
  applyMigrations,
  loadMigrations,
  type Migration,
  MIGRATION_LOCK_TABLE,
  type MigrationLockOptions,
  type MigrationOptions,
  type MigrationTarget,
  splitStatements,
} from "./migrations.ts";
export {
  ident,
  type Identifier,
  literal,
  type Sql,
  sql,
  SqlBindError,
  sqlJoin,
  type SqlValue,
} from "./sql.ts";
export { type ClickHouse, ClickHouseError, type ClickHouseOptions, createClickHouse } from "./clickhouse.ts";
export { ConfigError, type IngestConfig, loadConfig } from "./config.ts";
export {
  createIngestWorker,
  type IngestStats,
  type IngestWorker,
  type IngestWorkerOptions,
} from "./worker.ts";
export { applyRetention, type RetentionOptions } from "./retention.ts";
export {
  projectionCounts,
  rebuild,
  type RebuildOptions,
  RebuildRefused,
  type RebuildResult,
  type Unreplayable,
  unreplayable,
} from "./rebuild.ts";
export {
  END_SECOND_OF_EVENT,
  type ReconcileResult,
  reconcileRollups,
  type ReconcileScope,
  writeFloorMarker,
} from "./rollups.ts";
export { appendEvent, RowWriter } from "./row_writer.ts";
