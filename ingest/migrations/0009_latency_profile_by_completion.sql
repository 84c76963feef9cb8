-- The profiler's rollup, rebuilt so that its windows can equal the raw rows whatever the lag (see
-- native/profiler/README.md, "Windows and corrections"):
-- - end_ts, the second in which the request completed: its start in µs (ts_ms * 1000) plus its duration.
--   Windows count requests that completed in them, so a slow request counts as soon as it ends, not never.
-- - ingest_batch_seq: the stream sequence with which ingest acked the batch that inserted the row (the
--   batch's highest; the same on every retry of that batch), stamped by the worker on every raw row. It is
--   the first key column, so the profiler reads exactly the batches that arrived since its last read,
--   whatever seconds their requests completed in: a tick's cost follows the rows that arrived, not the
--   window's length.
-- - ingest_floor_seq: every message of the stream at or below it was committed (raw rows and rollups) before
--   the INSERT carrying the row was sent. A batch at or below the highest floor seen never changes again, so
--   the profiler stops re-reading it. Rows of ingest_batch_seq 0 (the backfill below, rows written by others)
--   count as final.
-- - ts, the start second, as in request_events: ingest repairs rollups after a failed view by comparing them
--   with the raw rows of the same start seconds (ingest/README.md, "Rollups").
-- Rows whose service is empty carry no requests: markers ingest writes to publish its floor while no batch
-- flows (at start and when idle). Readers add rows up (sum, sumMap, max): never assume one row per key.
-- Every statement can run again from the top (DROPs first); apply it while no worker inserts, as 0008.
ALTER TABLE {{database}}.request_events ADD COLUMN ingest_batch_seq UInt64 DEFAULT 0;

ALTER TABLE {{database}}.request_events ADD COLUMN ingest_floor_seq UInt64 DEFAULT 0;

DROP TABLE IF EXISTS {{database}}.latency_profile_1s_mv;

DROP TABLE IF EXISTS {{database}}.latency_profile_1s;

CREATE TABLE IF NOT EXISTS {{database}}.latency_profile_1s
(
    ingest_batch_seq UInt64,
    end_ts DateTime,
    ts DateTime,
    service String,
    method String,
    requests UInt64,
    errors UInt64,
    duration_max_us AggregateFunction(max, UInt64),
    ingest_floor_seq AggregateFunction(max, UInt64),
    histogramMap Nested(
        bucket UInt16,
        count UInt64
    )
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(end_ts)
ORDER BY (ingest_batch_seq, end_ts, ts, service, method)
SETTINGS index_granularity = 32;

INSERT INTO {{database}}.latency_profile_1s
SELECT
    ingest_batch_seq,
    toDateTime(intDiv(ts_ms, 1000) + intDiv(ts_ms % 1000 * 1000 + duration_us, 1000000)) AS end_ts,
    ts,
    service,
    method,
    count() AS requests,
    countIf(grpc_code != 0) AS errors,
    maxState(duration_us) AS duration_max_us,
    maxState(ingest_floor_seq) AS ingest_floor_seq,
    groupArray(toUInt16(if(duration_us < 128, duration_us,
        128 * toUInt64(floor(log2(duration_us)) - 7) + bitShiftRight(duration_us, toUInt64(floor(log2(duration_us)) - 7)))))
        AS `histogramMap.bucket`,
    groupArray(toUInt64(1)) AS `histogramMap.count`
FROM {{database}}.request_events
GROUP BY ingest_batch_seq, end_ts, ts, service, method;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.latency_profile_1s_mv
TO {{database}}.latency_profile_1s
AS SELECT
    ingest_batch_seq,
    toDateTime(intDiv(ts_ms, 1000) + intDiv(ts_ms % 1000 * 1000 + duration_us, 1000000)) AS end_ts,
    ts,
    service,
    method,
    count() AS requests,
    countIf(grpc_code != 0) AS errors,
    maxState(duration_us) AS duration_max_us,
    maxState(ingest_floor_seq) AS ingest_floor_seq,
    groupArray(toUInt16(if(duration_us < 128, duration_us,
        128 * toUInt64(floor(log2(duration_us)) - 7) + bitShiftRight(duration_us, toUInt64(floor(log2(duration_us)) - 7)))))
        AS `histogramMap.bucket`,
    groupArray(toUInt64(1)) AS `histogramMap.count`
FROM {{database}}.request_events
GROUP BY ingest_batch_seq, end_ts, ts, service, method;
