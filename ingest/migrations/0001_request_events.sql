-- Raw request events: the source-of-truth projection of stream REQUEST_EVENTS (one row per event).
-- stream_seq is the JetStream stream sequence of the message that carried the row; ingest uses it to make
-- redelivered messages idempotent (see ingest/README.md).
CREATE TABLE IF NOT EXISTS {{database}}.request_events
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
    ingested_at DateTime DEFAULT now()
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (service, method, ts, event_id)
SETTINGS index_granularity = 8192;
