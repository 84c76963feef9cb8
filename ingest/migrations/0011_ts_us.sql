-- ts_us: the request's start in epoch microseconds (the event's start_time_us). A whole order takes about a
-- millisecond, so ts_ms cannot place the spans of one trace against each other; ts_us can. 0 in rows written
-- before the services sent it (readers fall back to ts_ms * 1000). Additive; no IF NOT EXISTS on 18.16:
-- applyMigrations treats "already exists" from an ADD COLUMN as done.
ALTER TABLE {{database}}.request_events ADD COLUMN ts_us UInt64 DEFAULT 0;
