// What the profiler reads: rows of the rollup latency_profile_1s (ingest/migrations/0009) and which rows
// latency_percentiles already holds; the interface the engine reads them through (ClickHouse in production,
// memory in tests), and the rule for reads too large to answer at once.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "tailwatch/histogram.h"

namespace tailwatch {

/// A (service, method) pair; method "" stands for the whole service.
struct Key {
  std::string service;
  std::string method;
  friend bool operator<(const Key& a, const Key& b) {
    return std::tie(a.service, a.method) < std::tie(b.service, b.method);
  }
  friend bool operator==(const Key& a, const Key& b) { return a.service == b.service && a.method == b.method; }
  friend bool operator!=(const Key& a, const Key& b) { return !(a == b); }
};

/// One row of latency_profile_1s as the profiler reads it. Rows of one (batch, end second, service, method)
/// may repeat (unmerged parts, requests that started in different seconds): they add up (max: the largest).
struct RollupRow {
  std::uint64_t batch = 0;   ///< ingest_batch_seq: the ingest batch that inserted the requests (0: unknown)
  std::int64_t end_s = 0;    ///< end_ts: the unix second in which the requests completed
  std::string service;       ///< "" marks a floor marker: it carries no requests, only its floor counts
  std::string method;
  std::uint64_t errors = 0;
  std::uint64_t max_us = 0;  ///< exact max duration of the row's requests
  std::uint64_t floor = 0;   ///< ingest_floor_seq: every batch at or below it was committed before this row
  SparseHistogram buckets;   ///< any order, duplicates allowed; buckets < kBucketCount
};

/// A read refused for its size: a result limit, the memory limit, a timeout, or an answer larger than the
/// client accepts. The caller splits the read (read_halving) instead of repeating it unchanged.
class ReadTooLarge : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Everything the engine reads. Every method throws on failure: ReadTooLarge when the read was refused for
/// its size (the caller splits it), anything else for other failures. A method that throws has no effect.
class Store {
 public:
  virtual ~Store() = default;
  /// The rows (markers included) of the batches in (after, upto]; no upper bound when upto is nullopt.
  /// `rows` is replaced (its elements' buffers may be reused).
  virtual void read_batches(std::uint64_t after, std::optional<std::uint64_t> upto,
                            std::vector<RollupRow>& rows) = 0;
  /// The highest batch above `after`; nullopt when there is none.
  virtual std::optional<std::uint64_t> highest_batch(std::uint64_t after) = 0;
  /// The rows whose end second is in [from, to) of the batches <= final_upto (every batch when nullopt),
  /// markers left out. `rows` is replaced.
  virtual void read_seconds(std::optional<std::uint64_t> final_upto, std::int64_t from, std::int64_t to,
                            std::vector<RollupRow>& rows) = 0;
  /// The highest end second >= from among the rows of the batches <= final_upto (all when nullopt);
  /// nullopt when there is none.
  virtual std::optional<std::int64_t> last_second(std::optional<std::uint64_t> final_upto, std::int64_t from) = 0;
  /// The (tick, key) pairs latency_percentiles holds a row for (any window, any version), ticks in [from, to].
  virtual std::vector<std::pair<std::int64_t, Key>> published_rows(std::int64_t from, std::int64_t to) = 0;
  /// How many requests the rows of one batch hold (the sum of their histograms' counts).
  virtual std::uint64_t batch_requests(std::uint64_t batch) = 0;
  /// How many rows ingest's rebuild has recorded (projection_rebuilds, two per rebuild); it only grows. A change
  /// means the rollup was emptied and replayed under the reader (engine.h, REBUILDS).
  virtual std::uint64_t rebuilds() = 0;
};

/// Reads the integer range [lo, hi] (lo <= hi) through read(lo, hi). When a read throws ReadTooLarge, its range
/// is halved and both halves are read, the upper one first, recursively. Upper first matters for the feed: a
/// floor seen in one read then covers the batches below it, which are all read later (so after the batches
/// the floor vouches for were complete). A single value that still throws ReadTooLarge is a real failure:
/// the exception propagates (ranges read before it stay read). Returns how many reads were refused and split.
template <typename Int, typename Read>
std::size_t read_halving(Int lo, Int hi, Read&& read) {
  std::size_t splits = 0;
  std::vector<std::pair<Int, Int>> todo{{lo, hi}};
  while (!todo.empty()) {
    const auto [a, b] = todo.back();
    todo.pop_back();
    try {
      read(a, b);
    } catch (const ReadTooLarge&) {
      if (a == b) throw;
      ++splits;
      const Int mid = a + (b - a) / 2;
      todo.emplace_back(a, mid);      // read second
      todo.emplace_back(mid + 1, b);  // read first
    }
  }
  return splits;
}

}  // namespace tailwatch
