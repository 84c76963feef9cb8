// The one definition of Tailwatch's latency bucket scheme.
//
// The ClickHouse materialized view in ingest/migrations/0002_rollups.sql computes the same index in SQL; the
// integration test native/profiler/tests/clickhouse_test.ts proves the two agree over a sweep of values.
//
// Values are durations in microseconds (uint64). The scheme is log-linear:
//   - values 0..127 have a bucket each (index = value, width 1, exact);
//   - above, every power of two [2^k, 2^(k+1)), k >= 7, is split into 128 equal buckets of width 2^(k-7).
//   bucket_index(v) = v                        if v < 128
//                   = 128 * s + (v >> s)       otherwise, where s = floor(log2(v)) - 7
//   bucket_lower(i) = i                        if i < 256
//                   = (i - 128 * s) << s       otherwise, where s = i / 128 - 1
//   bucket_width(i) = 1                        if i < 256
//                   = 1 << s                   otherwise
//
// ERROR BOUND. A bucket's width is at most 1/128 of its lower bound (width 2^s, lower >= 128 * 2^s), so any
// two values in one bucket differ by less than 1/128 = 0.79% of the smaller one. Quantiles report
// bucket_midpoint(i) = lower + (width - 1) / 2 (integer division): for every value v in bucket i,
//   |bucket_midpoint(i) - v| <= width / 2 <= lower / 256 <= v / 256,
// a relative error of at most 1/256 < 0.4% (and exactly 0 below 256 us).
//
// Indexes run from 0 to kBucketCount - 1 = 7423 (v = 2^64 - 1), so they fit the SQL column's UInt16.
#pragma once

#include <cstdint>

namespace tailwatch {

/// Values below this have a bucket of width 1 each.
inline constexpr std::uint64_t kLinearLimit = 128;
/// Number of buckets: the index of UINT64_MAX plus one.
inline constexpr std::uint32_t kBucketCount = 128 * 58;
/// Relative bound of the value quantiles report: |reported - true| <= true / kQuantileErrorDivisor.
inline constexpr std::uint64_t kQuantileErrorDivisor = 256;

namespace detail {
/// floor(log2(v)) for v > 0, exact for every uint64.
constexpr int floor_log2(std::uint64_t v) noexcept {
  return 63 - __builtin_clzll(v);
}
}  // namespace detail

/// Bucket of a value in microseconds. Defined for every uint64; the result is < kBucketCount.
constexpr std::uint32_t bucket_index(std::uint64_t value_us) noexcept {
  if (value_us < kLinearLimit) return static_cast<std::uint32_t>(value_us);
  const int s = detail::floor_log2(value_us) - 7;
  return static_cast<std::uint32_t>(128u * static_cast<std::uint32_t>(s) +
                                    static_cast<std::uint32_t>(value_us >> s));
}

/// Smallest value (us) of bucket `index`. Precondition: index < kBucketCount (not checked).
constexpr std::uint64_t bucket_lower(std::uint32_t index) noexcept {
  if (index < 2 * kLinearLimit) return index;
  const std::uint32_t s = index / 128 - 1;
  return static_cast<std::uint64_t>(index - 128 * s) << s;
}

/// Number of distinct values in bucket `index` (a power of two). Precondition: index < kBucketCount.
constexpr std::uint64_t bucket_width(std::uint32_t index) noexcept {
  if (index < 2 * kLinearLimit) return 1;
  return std::uint64_t{1} << (index / 128 - 1);
}

/// Largest value (us) of bucket `index`, inclusive (no overflow, even for the last bucket).
constexpr std::uint64_t bucket_last(std::uint32_t index) noexcept {
  return bucket_lower(index) + (bucket_width(index) - 1);
}

/// The value quantiles report for bucket `index`: within lower/256 of every value in the bucket.
constexpr std::uint64_t bucket_midpoint(std::uint32_t index) noexcept {
  return bucket_lower(index) + (bucket_width(index) - 1) / 2;
}

}  // namespace tailwatch
