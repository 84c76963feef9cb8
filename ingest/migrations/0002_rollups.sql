-- Per-second rollups, filled by materialized views from request_events.
-- Ordered by time first: their readers (the profiler's ticks, dashboards) ask for a range of seconds across
-- every key, and a key-first order would make each tick scan the whole day's partition. Small granules,
-- because a tick reads a few seconds (a few thousand rows) from parts that are not merged yet.

-- Counts, errors, duration sum and max per second and (service, method, protocol, grpc_code, http_status).
-- Read with sum(requests), sum(errors), sum(duration_sum_us), max(duration_max_us) and GROUP BY: rows of the
-- same key are merged in the background, so never assume one row per key.
-- This file first made it an AggregatingMergeTree with plain sum columns, which merges lost (and a current
-- ClickHouse refuses); 0008 rebuilds it as the SummingMergeTree below, which a fresh database now gets here.
CREATE TABLE IF NOT EXISTS {{database}}.request_stats_1s
(
    ts DateTime,
    service String,
    method String,
    protocol String,
    grpc_code UInt8,
    http_status UInt16,
    requests UInt64,
    errors UInt64,
    duration_sum_us UInt64,
    duration_max_us AggregateFunction(max, UInt64)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (ts, service, method, protocol, grpc_code, http_status)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.request_stats_1s_mv
TO {{database}}.request_stats_1s
AS SELECT
    ts,
    service,
    method,
    protocol,
    grpc_code,
    http_status,
    count() AS requests,
    countIf(grpc_code != 0) AS errors,
    sum(duration_us) AS duration_sum_us,
    maxState(duration_us) AS duration_max_us
FROM {{database}}.request_events
GROUP BY ts, service, method, protocol, grpc_code, http_status;

-- Latency histogram per second and (service, method) in the profiler's log-linear buckets (see
-- native/profiler/include/tailwatch/buckets.h, the one definition of the scheme): values below 128 us have
-- a bucket each; above, each power of two is split into 128 equal buckets, so a bucket's width is at most
-- 1/128 of its lower bound (relative error < 0.79%). bucket = v < 128 ? v : 128 * s + (v >> s), where
-- s = floor(log2(v)) - 7. Exact for v < 2^53 us.
CREATE TABLE IF NOT EXISTS {{database}}.latency_histogram_1s
(
    ts DateTime,
    service String,
    method String,
    bucket UInt16,
    count UInt64,
    errors UInt64
)
ENGINE = SummingMergeTree((count, errors))
PARTITION BY toYYYYMMDD(ts)
ORDER BY (ts, service, method, bucket)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.latency_histogram_1s_mv
TO {{database}}.latency_histogram_1s
AS SELECT
    ts,
    service,
    method,
    toUInt16(if(duration_us < 128, duration_us,
        128 * toUInt64(floor(log2(duration_us)) - 7) + bitShiftRight(duration_us, toUInt64(floor(log2(duration_us)) - 7))))
        AS bucket,
    count() AS count,
    countIf(grpc_code != 0) AS errors
FROM {{database}}.request_events
GROUP BY ts, service, method, bucket;
