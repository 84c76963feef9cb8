-- Rolling percentiles written by the profiler (native/profiler) every tick, one row per (window, key).
-- method is empty for the whole service.
CREATE TABLE IF NOT EXISTS {{database}}.latency_percentiles
(
    ts DateTime,
    window_s UInt32,
    service String,
    method String,
    count UInt64,
    rps Float64,
    error_rate Float64,
    p50_us UInt64,
    p90_us UInt64,
    p95_us UInt64,
    p99_us UInt64,
    p999_us UInt64,
    max_us UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (service, method, window_s, ts);
