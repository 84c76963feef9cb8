-- ingested_at_ms: epoch milliseconds, the ingest worker's clock when it sent the INSERT that carries the row
-- (set by the worker; a retried INSERT carries the time of its own attempt). The row is visible once that
-- INSERT has returned, so ingested_at_ms - ts_ms measures event start → sent to ClickHouse, and the time to
-- visibility is at most that plus the INSERT's duration (ingest_insert_duration_seconds). 0 for rows written
-- by something other than the worker. ingested_at (DateTime, server clock) stays as it was. No IF NOT EXISTS
-- on 18.16: applyMigrations treats "already exists" from an ADD COLUMN as done.
ALTER TABLE {{database}}.request_events ADD COLUMN ingested_at_ms UInt64 DEFAULT 0;
