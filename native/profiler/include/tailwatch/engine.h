// Rolling latency windows by completion second, read from what ingest has committed, corrected when late
// data arrive (native/profiler/README.md, "Windows and corrections").
//
// WINDOWS. The row (ts = T, window_s = w, key) covers the requests whose end second (end_ts) is in [T - w, T).
// Keys: every (service, method) and every service as a whole (method ""). Ticks T are multiples of tick_s.
// pXX = min(bucket_midpoint(bucket of the value at rank floor(q * n)), window max) (histogram.h); count, errors
// and max_us are exact; rps = count / w; error_rate = errors / count (0 when count is 0).
//
// THE FEED. Every tick reads the batches X > F, F being the highest ingest_floor_seq seen in any row read. A
// batch X <= F is final: it is never read again (rows of batch 0 are final from the start). Every batch X > F
// is read again each tick (it may still grow); the engine keeps what each contributed per (key, end second)
// and applies the difference to the per-second data. A read too large to answer is split by batch range
// (read_halving, upper half first).
//
// STATE. Per key: the per-second data H(key, s) for s >= held_from() = T_pub - max_window -
// correction_memory, and per window the window at the last published tick T_pub, kept by sliding (add the
// second that enters, subtract the one that leaves) and by applying every change of a second inside it.
//
// PUBLICATION AND CORRECTIONS. tick(target) publishes every tick T_pub + tick_s .. target (at most
// max_catch_up_ticks of them: older ones are skipped) for each key whose largest window is not empty, all
// windows of the key. A change to H(key, s) with s < T_pub changes rows already published: for each window w,
// the ticks in (s, min(s + w, T_pub)]. The same tick() returns them rewritten, at the ticks this engine
// published and, at ticks <= t_last, the ticks latency_percentiles holds rows for (Store::published_rows):
// the (tick, key, window) rows written before, and the ones whose window now holds requests (late requests
// of a key that had none there: every window with requests at a published tick gets its row). Nothing is
// written for a tick never published. The rows are computed in memory (walking back from the current window
// or summing forward, whichever is cheaper) when the seconds they need are held, else from the seconds
// reloaded from the Store (final batches, read by end second) plus the contributions of the non-final
// batches. Ticks older than correction_horizon_s behind T_pub are not rewritten.
//
// SHRINKS. A re-read batch that contributes less than before (only a truncated or rebuilt table does that)
// is applied as a negative delta, and each held second it shrank in is reloaded as above (its max can only
// be recomputed from every contribution, and a rebuild may have moved the requests into a final batch).
//
// REBUILDS. A rebuild (ingest/rebuild.ts) truncates the rollup and replays the stream in batches cut anew:
// the same requests come back under other batch numbers, some above F, and would count twice. The rebuild
// records itself (Store::rebuilds, checked by the daemon every tick); two older signs cover a table emptied by
// hand: a batch read again holds less than before (TickReport::shrunk), or the last batch that became final
// (sentinel()) no longer holds the requests it held then (Store::batch_requests, checked now and then). Those
// two alone miss a replay that left the batches read again unchanged or grown once newer batches moved the
// sentinel. On any of them the daemon starts a new engine from the table's current floor with rewrite_held,
// which rewrites every row its memory reaches.
//
// FAILURES. Every public method that reads may throw (the Store's exceptions). The state stays consistent:
// what was read and applied stays applied, changes not yet turned into corrections are kept and corrected by
// the next successful tick, and a tick that throws publishes nothing.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "tailwatch/histogram.h"
#include "tailwatch/rollup.h"

namespace tailwatch {

struct EngineConfig {
  std::vector<std::uint32_t> windows_s{10, 60, 300};  ///< each 1..86400 s, no duplicates
  std::uint32_t tick_s = 1;                           ///< ticks are multiples of it, 1..86400
  std::uint32_t correction_memory_s = 300;            ///< seconds held beyond the largest window
  std::uint32_t max_catch_up_ticks = 3600;            ///< at most this many ticks published by one tick()
  std::uint32_t correction_horizon_s = 86400;         ///< published ticks remembered for corrections
};

/// One window of one key, as written to latency_percentiles.
struct WindowStats {
  Key key;
  std::uint32_t window_s = 0;
  std::uint64_t count = 0;
  std::uint64_t errors = 0;
  double rps = 0;         ///< count / window_s
  double error_rate = 0;  ///< errors / count, 0 when count is 0
  std::uint64_t p50_us = 0, p90_us = 0, p95_us = 0, p99_us = 0, p999_us = 0;  ///< 0 when count is 0
  std::uint64_t max_us = 0;                                                    ///< exact
};

/// A row to write: the window `stats` at tick `ts`.
struct TickRow {
  std::int64_t ts = 0;
  WindowStats stats;
  bool correction = false;  ///< a rewrite of a row published before
};

/// What one tick() did.
struct TickReport {
  std::vector<TickRow> rows;       ///< new rows first (by tick), then corrections
  std::size_t published = 0;       ///< rows of newly published ticks
  std::size_t corrections = 0;     ///< rows rewritten
  std::size_t ticks = 0;           ///< ticks newly published
  std::size_t skipped_ticks = 0;   ///< ticks passed over (catch-up capped at max_catch_up_ticks)
  std::size_t rows_read = 0;       ///< rollup rows read (feed and reloads)
  std::size_t bucket_entries = 0;  ///< their (bucket, count) entries
  std::size_t batches_read = 0;    ///< distinct batches in the feed's rows
  std::size_t reads = 0;           ///< Store calls
  std::size_t splits = 0;          ///< reads refused for their size and split
  std::size_t reloaded_seconds = 0;  ///< seconds reloaded from the Store (old corrections, shrinks)
  bool shrunk = false;               ///< a batch read again held less than before (a truncate or rebuild)
  double read_ms = 0;              ///< time spent in the Store
  double total_ms = 0;             ///< the whole tick()
};

class Engine {
 public:
  /// Throws std::invalid_argument for a bad configuration.
  Engine(EngineConfig config, Store& store);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /// Startup (if it throws, discard the engine and start a new one). `t_last`: the last tick latency_percentiles holds (nullopt when none); rows at ticks <= t_last
  /// may be rewritten. `floor`: batches <= floor are taken as final (any value not above the true floor is
  /// safe). Publishes nothing: sets T_pub to max(t_last, t_start - correction_memory - tick) (aligned), so
  /// that tick(t_start) publishes T_pub + tick .. t_start; loads H from the final batches by end second
  /// (every end second >= held_from()) and builds the windows at T_pub. Call once, first.
  /// With `rewrite_held` (after a rebuild), every row at the ticks <= t_last that H reaches is rewritten by
  /// the first tick() (the (tick, key) rows the table holds there, and the windows with requests).
  /// `published_since`: the first tick the engine this one replaces published (every tick from it to t_last
  /// was published, rows or not): those ticks count as published here, so that a tick published while the
  /// rollup was empty (a rebuild had just truncated it) gets its rows once the replay brings its requests.
  void start(std::optional<std::int64_t> t_last, std::uint64_t floor, std::int64_t t_start,
             bool rewrite_held = false, std::optional<std::int64_t> published_since = std::nullopt);

  /// Reads the feed, applies it, rewrites the published rows it changed and publishes the ticks up to
  /// `target` (aligned down to tick_s; nothing new when it is not after T_pub). See the header comment.
  TickReport tick(std::int64_t target);

  /// T_pub: the last tick published (before the first tick(), the one start() set).
  std::int64_t last_published() const noexcept;
  /// F: the highest floor seen (written with every row as ingest_floor_seq).
  std::uint64_t floor() const noexcept;
  /// The oldest second H holds.
  std::int64_t held_from() const noexcept;
  const EngineConfig& config() const noexcept;
  std::uint32_t max_window() const noexcept;
  /// Batches whose contribution is kept (read, not final yet).
  std::size_t open_batches() const noexcept;

  /// The last batch that became final while this engine read it, and the requests it held then.
  struct Sentinel {
    std::uint64_t batch = 0;
    std::uint64_t requests = 0;
  };
  std::optional<Sentinel> sentinel() const noexcept;
  std::size_t key_count() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The windows at `now` computed directly from `rows` (every row with an end second in [now - max(windows),
/// now); other rows and markers are ignored): one row per key whose largest window is not empty and window
/// (keys sorted, windows in the given order). What --once writes.
std::vector<WindowStats> windows_at(const std::vector<std::uint32_t>& windows_s, std::int64_t now,
                                    const std::vector<RollupRow>& rows);

/// Throws std::invalid_argument unless every window is in 1..86400 s and none repeats.
void check_windows(const std::vector<std::uint32_t>& windows_s);

}  // namespace tailwatch
