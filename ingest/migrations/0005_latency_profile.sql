-- The profiler's rollup (native/profiler): one row per second and (service, method) per INSERT, with the whole
-- latency histogram of that second as a bucket => count map, the error count and the exact maximum. A
-- profiler tick reads a few seconds of it: a few dozen rows, where latency_histogram_1s holds one row per
-- occupied bucket (as many rows as the raw table has events, nearly, at 1000 rps over a few methods).
-- Rows of the same key are merged in the background (SummingMergeTree: requests and errors summed, the map
-- histogramMap summed bucket by bucket, duration_max_us merged as a max state); until then a reader adds them
-- up: never assume one row per key. Small granules, because a tick reads a few seconds (a few dozen rows).
-- The view writes one (bucket, 1) entry per event (a plain groupArray: no map to build while inserting, so
-- the INSERTs into request_events stay nearly as cheap as before); merges sum them into one sorted entry per
-- bucket. The bucket expression is the one of latency_histogram_1s (0002_rollups.sql) and of
-- native/profiler/include/tailwatch/buckets.h: bucket = v < 128 ? v : 128 * s + (v >> s), where
-- s = floor(log2(v)) - 7.
CREATE TABLE IF NOT EXISTS {{database}}.latency_profile_1s
(
    ts DateTime,
    service String,
    method String,
    requests UInt64,
    errors UInt64,
    duration_max_us AggregateFunction(max, UInt64),
    histogramMap Nested(
        bucket UInt16,
        count UInt64
    )
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (ts, service, method)
SETTINGS index_granularity = 32;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.latency_profile_1s_mv
TO {{database}}.latency_profile_1s
AS SELECT
    ts,
    service,
    method,
    count() AS requests,
    countIf(grpc_code != 0) AS errors,
    maxState(duration_us) AS duration_max_us,
    groupArray(toUInt16(if(duration_us < 128, duration_us,
        128 * toUInt64(floor(log2(duration_us)) - 7) + bitShiftRight(duration_us, toUInt64(floor(log2(duration_us)) - 7)))))
        AS `histogramMap.bucket`,
    groupArray(toUInt64(1)) AS `histogramMap.count`
FROM {{database}}.request_events
GROUP BY ts, service, method;
