// Latency histogram over the buckets of buckets.h.
//
// Storage is dense (one uint64 per bucket, 58 KiB) plus one running sum per 128-bucket block, so record,
// merge and subtract of a sparse histogram cost O(entries) and a quantile costs at most 58 + 128 steps.
// Windows use this class; per-second data is kept as a SparseHistogram (what ClickHouse returns).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tailwatch/buckets.h"

namespace tailwatch {

/// One non-empty bucket of a sparse histogram.
struct BucketCount {
  std::uint32_t bucket = 0;  ///< < kBucketCount
  std::uint64_t count = 0;   ///< > 0 in a normalized SparseHistogram
  friend bool operator==(const BucketCount& a, const BucketCount& b) {
    return a.bucket == b.bucket && a.count == b.count;
  }
};

/// Sparse histogram: entries sorted by bucket, unique, with count > 0 (see normalize()).
using SparseHistogram = std::vector<BucketCount>;

/// Sorts by bucket, sums duplicates, drops zero counts. Throws std::out_of_range for a bucket >=
/// kBucketCount.
void normalize(SparseHistogram& sparse);
/// The same in O(n) (sorted runs merged, anything more scattered radix-sorted) through `scratch` (overwritten;
/// keep it between calls to save allocations).
void normalize(SparseHistogram& sparse, SparseHistogram& scratch);

/// into += add, bucket by bucket (both normalized; the result is normalized). O(|into| + |add|) through
/// `scratch` (overwritten). Throws std::out_of_range for a bucket >= kBucketCount in `add`.
void sparse_add(SparseHistogram& into, const SparseHistogram& add, SparseHistogram& scratch);
/// from -= remove, bucket by bucket (both normalized; zero counts are dropped). `remove` must be contained in
/// `from`; otherwise throws std::logic_error and leaves `from` unchanged.
void sparse_subtract(SparseHistogram& from, const SparseHistogram& remove, SparseHistogram& scratch);
/// What turns `before` into `now` (both normalized): plus = max(now - before, 0) and minus =
/// max(before - now, 0), bucket by bucket, both normalized (replaced).
void sparse_diff(const SparseHistogram& now, const SparseHistogram& before, SparseHistogram& plus,
                 SparseHistogram& minus);

/// Sum of the counts of a sparse histogram.
std::uint64_t total_count(const SparseHistogram& sparse) noexcept;

/// Quantile rank convention (the same as ClickHouse's quantileExact, so results compare directly): for n
/// values sorted ascending and level q in [0, 1], the quantile is the value at 0-based position
/// floor(q * n) (computed in double), or n - 1 when q >= 1.
std::uint64_t quantile_position(double q, std::uint64_t n) noexcept;

class Histogram {
 public:
  Histogram();

  /// Adds `count` occurrences of `value_us`. The total count must stay below 2^64 (not checked).
  void record(std::uint64_t value_us, std::uint64_t count = 1);
  /// Adds `count` to bucket `bucket`; the maximum becomes an upper bound (bucket_last). Throws
  /// std::out_of_range if bucket >= kBucketCount.
  void record_bucket(std::uint32_t bucket, std::uint64_t count);

  /// Adds every count of `other`.
  void merge(const Histogram& other);
  /// Adds a normalized sparse histogram (buckets < kBucketCount; checked, std::out_of_range).
  void merge(const SparseHistogram& other);

  /// Removes every count of `other`, which must be contained in this histogram (bucket by bucket);
  /// otherwise throws std::logic_error and leaves this histogram unchanged.
  void subtract(const Histogram& other);
  void subtract(const SparseHistogram& other);

  void clear() noexcept;

  /// Number of values recorded (minus those subtracted).
  std::uint64_t count() const noexcept { return total_; }
  bool empty() const noexcept { return total_ == 0; }

  /// Largest value (us); 0 when empty. Exact while only record()/merge() of exact histograms happened
  /// (max_is_exact()); after record_bucket(), a sparse merge or subtract() it is an upper bound that lies in
  /// the highest non-empty bucket, so it exceeds the true maximum by less than 1/128 of it.
  std::uint64_t max() const noexcept { return max_; }
  bool max_is_exact() const noexcept { return max_exact_; }

  /// Value (us) at level q in [0, 1] (rank convention of quantile_position): the midpoint of the bucket
  /// holding that value, capped at max(). Relative error: |result - exact| <= exact / 256. Returns 0 when
  /// empty. Throws std::invalid_argument if q is NaN or outside [0, 1].
  std::uint64_t quantile(double q) const;

  /// Bucket (not value) holding the value at level q; kBucketCount when empty. Same preconditions.
  std::uint32_t quantile_bucket(double q) const;

  /// Count in one bucket (0 for an index out of range).
  std::uint64_t bucket_count(std::uint32_t bucket) const noexcept;

  /// Highest non-empty bucket, or kBucketCount when empty.
  std::uint32_t highest_bucket() const noexcept;

  SparseHistogram to_sparse() const;

  /// Equal bucket counts (max is not compared).
  bool same_counts(const Histogram& other) const noexcept;

 private:
  static constexpr std::size_t kBlocks = kBucketCount / 128;
  void after_removal() noexcept;

  std::vector<std::uint64_t> counts_;
  std::array<std::uint64_t, kBlocks> blocks_{};
  std::uint64_t total_ = 0;
  std::uint64_t max_ = 0;
  bool max_exact_ = true;
};

}  // namespace tailwatch
