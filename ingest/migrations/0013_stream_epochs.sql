-- stream_epochs: each REQUEST_EVENTS stream ingest has written from, by its creation time, with the offset
-- ingest adds to that stream's sequences in ingest_batch_seq and ingest_floor_seq. A stream deleted and created
-- again numbers its messages from 1 again; the profiler takes every batch at or below the highest floor it has
-- seen as final and never reads it again, so without the offset the new stream's rows would never reach the
-- percentiles. The offset is decided once, under the migration lock, so that every worker (partition) of the
-- database and every restart uses the same one (ingest/stream_epoch.ts). request_events.stream_seq keeps the
-- stream's own sequence.
CREATE TABLE IF NOT EXISTS {{database}}.stream_epochs
(
    stream_created String,
    seq_offset UInt64,
    recorded_at DateTime DEFAULT now()
)
ENGINE = MergeTree
ORDER BY stream_created;
