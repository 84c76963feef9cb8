// Rolling-window percentiles per (service, method) and per service (method "").
//
// Time is in whole unix seconds. A window of length w evaluated at `now` covers the w whole seconds
// [now - w, now); the second `now` itself is still in progress and not included.
//
// Each key keeps a ring of its last max(windows) per-second sparse histograms and one dense Histogram per
// window. A tick at `now` reads only the seconds [from, now) with from = previous_now - late_margin (the
// margin is re-read), or [now - max_window, now) on the first tick or after a gap longer than the largest
// window. Re-read seconds are reconciled (what was added for them before is subtracted, the fresh data is
// added), then windows slide by adding the new seconds and subtracting the ones that left. A tick's cost is
// O(seconds read * entries per second) histogram updates plus O(keys * windows) quantile scans; only the
// exact-max scan (one uint64 per second of the window and key) grows with the window length.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "tailwatch/histogram.h"

namespace tailwatch {

struct Key {
  std::string service;
  std::string method;  ///< "" = the whole service
  friend bool operator<(const Key& a, const Key& b) {
    return std::tie(a.service, a.method) < std::tie(b.service, b.method);
  }
  friend bool operator==(const Key& a, const Key& b) {
    return a.service == b.service && a.method == b.method;
  }
};

/// One histogram bucket of one second and key (already summed per ts, service, method, bucket).
struct HistogramRow {
  std::int64_t ts = 0;  ///< unix seconds
  std::string service;
  std::string method;
  std::uint32_t bucket = 0;  ///< < kBucketCount
  std::uint64_t count = 0;
  std::uint64_t errors = 0;
};

/// Exact maximum duration of one second and (service, method), from request_stats_1s.
struct MaxRow {
  std::int64_t ts = 0;
  std::string service;
  std::string method;
  std::uint64_t max_us = 0;
};

/// One row of latency_profile_1s: the histogram, errors and exact maximum of one second and (service,
/// method). Rows of the same second and key may repeat (unmerged parts); they add up (max: the largest).
struct ProfileRow {
  std::int64_t ts = 0;
  std::string service;
  std::string method;
  std::uint64_t errors = 0;
  std::uint64_t max_us = 0;        ///< 0: unknown (the top bucket's bound is used)
  SparseHistogram buckets;         ///< any order, duplicates allowed; buckets < kBucketCount
};

/// Everything stored for the seconds [from, to): rows outside the range are ignored. The two forms add up:
/// per-bucket rows (histogram, maxima) and per-key rows (profile).
struct SecondsBatch {
  std::int64_t from = 0;
  std::int64_t to = 0;
  std::vector<HistogramRow> histogram;
  std::vector<MaxRow> maxima;
  std::vector<ProfileRow> profile;
};

/// Where the engine reads seconds from (ClickHouse in production, memory in tests and benchmarks).
class DataSource {
 public:
  virtual ~DataSource() = default;
  /// Returns the rows of the seconds [from, to). Throws on failure (the engine state is then unchanged).
  virtual SecondsBatch fetch(std::int64_t from, std::int64_t to) = 0;
};

struct RollingConfig {
  std::vector<std::uint32_t> windows_s{10, 60, 300};  ///< each >= 1, at most 86400, no duplicates
  std::uint32_t late_margin_s = 5;                    ///< seconds re-read and reconciled each tick
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
  std::uint64_t max_us = 0;  ///< exact when the rows carried the second's max; else the bucket bound
};

class RollingEngine {
 public:
  /// Throws std::invalid_argument for an empty, zero, duplicate or > 86400 s window.
  explicit RollingEngine(RollingConfig config);
  ~RollingEngine();
  RollingEngine(RollingEngine&&) noexcept;
  RollingEngine& operator=(RollingEngine&&) noexcept;

  const RollingConfig& config() const noexcept { return config_; }
  std::uint32_t max_window() const noexcept { return max_window_; }

  /// The end (exclusive) of the last tick, or nullopt-like INT64_MIN before the first.
  std::int64_t end() const noexcept { return end_; }

  /// The seconds [first, second) a tick at `now` must read.
  std::pair<std::int64_t, std::int64_t> range_for(std::int64_t now) const noexcept;

  /// Advances every window to end at `now`, using `batch` which must cover range_for(now) (checked:
  /// std::invalid_argument). `now` must not be before end() (std::invalid_argument). Rows with a bucket >=
  /// kBucketCount throw std::out_of_range; in every error case the engine is unchanged.
  void advance(std::int64_t now, const SecondsBatch& batch);

  /// Reads range_for(now) from `source` and advances. If the source throws, the engine is unchanged.
  void tick(std::int64_t now, DataSource& source);

  /// One row per key and window (keys sorted, windows in config order). Keys whose largest window is empty
  /// are dropped at advance().
  std::vector<WindowStats> snapshot() const;

  /// The histogram of one window (nullptr if the key is unknown or the window is not configured).
  const Histogram* window_histogram(const Key& key, std::uint32_t window_s) const;
  std::uint64_t window_errors(const Key& key, std::uint32_t window_s) const;

  std::size_t key_count() const noexcept;

 private:
  struct KeyState;
  struct Scratch;
  RollingConfig config_;
  std::uint32_t max_window_ = 0;
  std::int64_t end_;
  std::map<Key, std::unique_ptr<KeyState>> keys_;
  std::unique_ptr<Scratch> scratch_;  ///< advance()'s buffers, reused from tick to tick
};

}  // namespace tailwatch
