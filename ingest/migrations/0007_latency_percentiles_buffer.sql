-- latency_percentiles behind a Buffer. The profiler (native/profiler) writes one small INSERT per tick (one row
-- per window and key: 9-27 rows a second here). Into the MergeTree each of them was a part of ~30 files, and on
-- these machines' ext4 creating them cost ClickHouse 3.5-35 ms of CPU per tick (plus the merges of one part a
-- second), ten times the tick's SELECT. The MergeTree keeps its data and becomes latency_percentiles_storage;
-- latency_percentiles is now a Buffer in front of it, so readers keep the name and see the buffered rows
-- together with the stored ones, and the storage gets one part per flush instead of one per tick.
--
-- Flush: when the buffer's oldest row is more than 30 s old (ClickHouse checks every second, and at each
-- INSERT), or at 100 000 rows or 64 MiB, whichever comes first; an INSERT larger than that goes straight to the
-- storage; OPTIMIZE TABLE latency_percentiles, DROP, ALTER and the end of a server shutdown flush too.
-- What that costs, stated in native/profiler/README.md ("Buffer"):
-- - ClickHouse dying before the end of its shutdown (crash, kill -9, power loss, or a stop that ends in
--   SIGKILL: on SIGTERM 18.16 first waits for open HTTP connections, 5 s and often more) loses the rows not
--   flushed yet: at most the last ~32 s of percentile rows. Before a planned stop, OPTIMIZE TABLE
--   latency_percentiles. They are derived data: `tailwatch-profiler --once --now <t>` recomputes the rows of
--   any tick t from latency_profile_1s (which is not buffered).
-- - a query that starts while a flush is being written can miss that flush's rows (18.16's Buffer reads the
--   storage's parts first, then the buffer, which the flush has emptied by then); the next query sees them.
-- - 18.16's Buffer has no PREWHERE (use WHERE), no partition operations (retention drops the partitions of
--   latency_percentiles_storage), and a later ALTER of the storage needs the Buffer dropped and created again.
--
-- ClickHouse 18.16 has no RENAME TABLE IF EXISTS: applyMigrations skips a RENAME whose target table exists
-- (an earlier, interrupted run did it), so this file can run again at any point.
RENAME TABLE {{database}}.latency_percentiles TO {{database}}.latency_percentiles_storage;

CREATE TABLE IF NOT EXISTS {{database}}.latency_percentiles AS {{database}}.latency_percentiles_storage
ENGINE = Buffer({{database}}, latency_percentiles_storage, 1, 30, 30, 100000, 100000, 67108864, 67108864);
