#include "tailwatch/buckets.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

using namespace tailwatch;

// The formulas written the slow, obvious way (floating point free), to cross-check the fast ones.
static std::uint32_t reference_index(std::uint64_t v) {
  if (v < 128) return static_cast<std::uint32_t>(v);
  int k = 0;
  while ((v >> k) > 1) ++k;  // k = floor(log2(v))
  const int s = k - 7;
  return static_cast<std::uint32_t>(128 * s + (v >> s));
}

TEST(Buckets, SmallValuesAreExact) {
  for (std::uint64_t v = 0; v < 256; ++v) {
    EXPECT_EQ(bucket_index(v), v);
    EXPECT_EQ(bucket_lower(static_cast<std::uint32_t>(v)), v);
    EXPECT_EQ(bucket_width(static_cast<std::uint32_t>(v)), 1u);
    EXPECT_EQ(bucket_midpoint(static_cast<std::uint32_t>(v)), v);
  }
}

TEST(Buckets, EveryBucketBoundary) {
  std::uint64_t expected_lower = 0;
  for (std::uint32_t i = 0; i < kBucketCount; ++i) {
    const std::uint64_t lower = bucket_lower(i);
    const std::uint64_t width = bucket_width(i);
    ASSERT_EQ(lower, expected_lower) << "buckets must tile the value range without gaps, at " << i;
    ASSERT_EQ(bucket_index(lower), i);
    ASSERT_EQ(bucket_index(bucket_last(i)), i);
    ASSERT_EQ(bucket_last(i), lower + width - 1);
    if (i > 0) { ASSERT_EQ(bucket_index(lower - 1), i - 1); }
    if (i + 1 < kBucketCount) { ASSERT_EQ(bucket_index(bucket_last(i) + 1), i + 1); }
    if (width > 1) { ASSERT_EQ(bucket_index(lower + width / 2), i); }
    // Width is a power of two and at most 1/128 of the lower bound (from 128 on).
    ASSERT_EQ(width & (width - 1), 0u);
    if (i >= 128) { ASSERT_LE(width * 128, lower) << i; }
    ASSERT_EQ(reference_index(lower), i);
    expected_lower = lower + width;  // wraps to 0 after the last bucket
  }
  EXPECT_EQ(expected_lower, 0u) << "the last bucket ends at 2^64";
  EXPECT_EQ(bucket_index(std::numeric_limits<std::uint64_t>::max()), kBucketCount - 1);
  EXPECT_EQ(bucket_last(kBucketCount - 1), std::numeric_limits<std::uint64_t>::max());
}

TEST(Buckets, PowersOfTwoPlusMinusOne) {
  for (int k = 0; k < 64; ++k) {
    const std::uint64_t p = std::uint64_t{1} << k;
    for (const std::uint64_t v : {p - 1, p, p + 1}) {
      ASSERT_EQ(bucket_index(v), reference_index(v)) << v;
      const std::uint32_t i = bucket_index(v);
      ASSERT_LE(bucket_lower(i), v);
      ASSERT_GE(bucket_last(i), v);
    }
    if (k >= 7) {
      // 2^k starts a new run of 128 buckets, each 2^(k-7) wide.
      EXPECT_EQ(bucket_index(p), 128u * static_cast<std::uint32_t>(k - 6));
      EXPECT_EQ(bucket_lower(bucket_index(p)), p);
      EXPECT_EQ(bucket_width(bucket_index(p)), std::uint64_t{1} << (k - 7));
    }
  }
}

TEST(Buckets, MonotonicOverRandomValues) {
  std::mt19937_64 rng(42);
  std::vector<std::uint64_t> values;
  for (int i = 0; i < 200000; ++i) {
    const int bits = static_cast<int>(rng() % 64) + 1;
    values.push_back(bits == 64 ? rng() : rng() & ((std::uint64_t{1} << bits) - 1));
  }
  std::sort(values.begin(), values.end());
  for (std::size_t i = 1; i < values.size(); ++i) {
    ASSERT_LE(bucket_index(values[i - 1]), bucket_index(values[i]));
    ASSERT_EQ(bucket_index(values[i]), reference_index(values[i]));
  }
}

TEST(Buckets, MidpointWithinStatedBound) {
  // |midpoint - v| <= v / 256 for every v: check at both ends of every bucket (the worst cases).
  for (std::uint32_t i = 1; i < kBucketCount; ++i) {
    const std::uint64_t mid = bucket_midpoint(i);
    for (const std::uint64_t v : {bucket_lower(i), bucket_last(i)}) {
      const std::uint64_t diff = mid > v ? mid - v : v - mid;
      // diff * 256 <= v, written without overflow
      ASSERT_LE(diff, v / kQuantileErrorDivisor) << "bucket " << i << " value " << v;
    }
  }
}

TEST(Buckets, Constexpr) {
  static_assert(bucket_index(127) == 127);
  static_assert(bucket_index(128) == 128);
  static_assert(bucket_index(256) == 256);
  static_assert(bucket_index(257) == 256);
  static_assert(bucket_lower(kBucketCount - 1) == (std::uint64_t{255} << 56));
  SUCCEED();
}
