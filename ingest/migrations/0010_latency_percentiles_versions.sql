-- latency_percentiles becomes versioned: the profiler rewrites a row (same ts, window_s, service, method)
-- with a higher `version` whenever rows arrive late for a window it already wrote (native/profiler/README.md,
-- "Windows and corrections"), so every window ends equal to the raw rows. Readers take the latest version:
--   SELECT ts, window_s, service, method, argMax(p99_us, version) AS p99_us, ...
--   FROM latency_percentiles WHERE ... GROUP BY ts, window_s, service, method
-- (FINAL does not work through the Buffer: its buffered rows are not collapsed.) Merges of the
-- ReplacingMergeTree keep the latest version only. New columns: errors (the count behind error_rate),
-- version, and ingest_floor_seq (every ingest batch at or below it had been read when the row was written:
-- where a restarted profiler resumes).
--
-- The rows written before this migration counted requests by start second, once, never corrected: they
-- are dropped, not converted. They are derived data; a running profiler writes its windows again from the
-- rollups on start (its last --correction-memory seconds).
DROP TABLE IF EXISTS {{database}}.latency_percentiles;

DROP TABLE IF EXISTS {{database}}.latency_percentiles_storage;

CREATE TABLE IF NOT EXISTS {{database}}.latency_percentiles_storage
(
    ts DateTime,
    window_s UInt32,
    service String,
    method String,
    count UInt64,
    errors UInt64,
    rps Float64,
    error_rate Float64,
    p50_us UInt64,
    p90_us UInt64,
    p95_us UInt64,
    p99_us UInt64,
    p999_us UInt64,
    max_us UInt64,
    version UInt64,
    ingest_floor_seq UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMMDD(ts)
ORDER BY (service, method, window_s, ts);

CREATE TABLE IF NOT EXISTS {{database}}.latency_percentiles AS {{database}}.latency_percentiles_storage
ENGINE = Buffer({{database}}, latency_percentiles_storage, 1, 30, 30, 100000, 100000, 67108864, 67108864);
