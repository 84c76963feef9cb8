-- projection_rebuilds: two rows per rebuild (ingest/rebuild.ts): stage 'emptied' once the projections are
-- emptied, before the stream is replayed into them, and 'done' once every row is back (mode: 'all' or 'newer'). The profiler reads batches above the highest floor it has seen and
-- takes the ones below as final; a replay cuts the same requests into other batches, some above that floor,
-- which would count twice. The profiler counts these rows every tick and starts over when the count changes
-- (native/profiler/README.md, "Rebuilds"), instead of relying on a batch it read before to have changed.
CREATE TABLE IF NOT EXISTS {{database}}.projection_rebuilds
(
    at DateTime DEFAULT now(),
    mode String,
    stage String
)
ENGINE = MergeTree
ORDER BY at;
