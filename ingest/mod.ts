export {
  applyMigrations,
  loadMigrations,
  type Migration,
  type MigrationTarget,
  splitStatements,
} from "./migrations.ts";
