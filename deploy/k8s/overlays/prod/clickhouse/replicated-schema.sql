-- The schema of ingest/migrations 0001-0013 as it stands after the last of them, with every table replicated
-- (Replicated*MergeTree, coordinated by ClickHouse Keeper) and created ON CLUSTER tailwatch: what prod runs. The
-- setup Job applies this file (SETUP_INIT_SQL) before `ingest/main.ts migrate`; it records versions 1-13 in a
-- replicated schema_migrations, so migrate finds them applied and changes nothing. Every statement can run again.
-- {{database}} is the database (CLICKHOUSE_DATABASE, "profiler").
--
-- Until the migrations know the cluster themselves (issue 27, point 7; deploy/README.md), a migration 0013+
-- must be added here too, replicated; deploy/clickhouse_test.ts fails while this file and the migrations do
-- not end at the same schema (it applies both on chDB, this one with the replication taken out, and compares
-- every column, engine, key and view).
--
-- Materialized views are created on every replica: an INSERT into request_events on one replica feeds that
-- replica's views, whose rows the replicated rollups then copy to the others; a replica that fetches a part of
-- request_events does not run its views on it, so every row is counted once. latency_percentiles is a Buffer
-- per replica in front of the replicated storage: a reader on another replica sees the profiler's newest rows
-- once they are flushed (at most 30 s).

CREATE DATABASE IF NOT EXISTS {{database}} ON CLUSTER tailwatch;

CREATE TABLE IF NOT EXISTS {{database}}.schema_migrations ON CLUSTER tailwatch
(
    version UInt32,
    name String,
    applied_at DateTime DEFAULT now()
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/schema_migrations', '{replica}')
ORDER BY version;

CREATE TABLE IF NOT EXISTS {{database}}.request_events ON CLUSTER tailwatch
(
    event_id UUID,
    ts DateTime,
    ts_ms UInt64,
    service String,
    method String,
    protocol String,
    route String,
    grpc_code UInt8,
    http_status UInt16,
    duration_us UInt64,
    request_bytes UInt64,
    response_bytes UInt64,
    trace_id String,
    span_id String,
    parent_span_id String,
    instance String,
    error_message String,
    fault_injected UInt8,
    stream_seq UInt64,
    ingested_at DateTime DEFAULT now(),
    ingested_at_ms UInt64 DEFAULT 0,
    ingest_batch_seq UInt64 DEFAULT 0,
    ingest_floor_seq UInt64 DEFAULT 0,
    ts_us UInt64 DEFAULT 0,
    load_run_id String DEFAULT ''
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/request_events', '{replica}')
PARTITION BY toYYYYMMDD(ts)
ORDER BY (service, method, ts, event_id)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS {{database}}.request_stats_1s ON CLUSTER tailwatch
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
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/request_stats_1s', '{replica}')
PARTITION BY toYYYYMMDD(ts)
ORDER BY (ts, service, method, protocol, grpc_code, http_status)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.request_stats_1s_mv ON CLUSTER tailwatch
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

CREATE TABLE IF NOT EXISTS {{database}}.latency_profile_1s ON CLUSTER tailwatch
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
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/latency_profile_1s', '{replica}')
PARTITION BY toYYYYMMDD(end_ts)
ORDER BY (ingest_batch_seq, end_ts, ts, service, method)
SETTINGS index_granularity = 32;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{database}}.latency_profile_1s_mv ON CLUSTER tailwatch
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

CREATE TABLE IF NOT EXISTS {{database}}.latency_percentiles_storage ON CLUSTER tailwatch
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/latency_percentiles_storage', '{replica}', version)
PARTITION BY toYYYYMMDD(ts)
ORDER BY (service, method, window_s, ts);

CREATE TABLE IF NOT EXISTS {{database}}.latency_percentiles ON CLUSTER tailwatch AS {{database}}.latency_percentiles_storage
ENGINE = Buffer({{database}}, latency_percentiles_storage, 1, 30, 30, 100000, 100000, 67108864, 67108864);

-- The offset ingest adds to each stream's sequences (ingest/stream_epoch.ts): replicated, so that a worker on
-- any replica finds the offset another one decided.
CREATE TABLE IF NOT EXISTS {{database}}.stream_epochs ON CLUSTER tailwatch
(
    stream_created String,
    seq_offset UInt64,
    recorded_at DateTime DEFAULT now()
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/stream_epochs', '{replica}')
ORDER BY stream_created;

-- Two rows per rebuild (ingest/rebuild.ts): the profiler starts over when their count changes. Replicated, so a
-- profiler reading any replica sees a rebuild run against another.
CREATE TABLE IF NOT EXISTS {{database}}.projection_rebuilds ON CLUSTER tailwatch
(
    at DateTime DEFAULT now(),
    mode String,
    stage String
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/projection_rebuilds', '{replica}')
ORDER BY at;

-- The migrations this file stands for, recorded once (a re-run inserts nothing; the table keeps one row per
-- version in any case).
INSERT INTO {{database}}.schema_migrations (version, name)
SELECT version, name
FROM
(
    SELECT
        tupleElement(migration, 1) AS version,
        tupleElement(migration, 2) AS name
    FROM system.one
    ARRAY JOIN [
        (1, 'request_events'), (2, 'rollups'), (3, 'latency_percentiles'), (4, 'ingested_at_ms'),
        (5, 'latency_profile'), (6, 'drop_latency_histogram'), (7, 'latency_percentiles_buffer'),
        (8, 'request_stats_sum'), (9, 'latency_profile_by_completion'), (10, 'latency_percentiles_versions'),
        (11, 'ts_us'), (12, 'load_run_id'), (13, 'stream_epochs'),
        (14, 'projection_rebuilds')
    ] AS migration
)
WHERE version NOT IN (SELECT version FROM {{database}}.schema_migrations);
