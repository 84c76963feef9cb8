-- latency_histogram_1s (0002) held one row per second, (service, method) and occupied bucket; since 0005
-- the profiler reads latency_profile_1s, which holds the same histograms (same bucket expression) as one
-- row per second and (service, method). Each materialized view costs every INSERT into request_events:
-- with both, ingest measured 78-88k events/s against about 112k/s without this one (400k events, same
-- harness). Analysts get the per-bucket rows from latency_profile_1s with ARRAY JOIN histogramMap.
DROP TABLE IF EXISTS {{database}}.latency_histogram_1s_mv;

DROP TABLE IF EXISTS {{database}}.latency_histogram_1s;
