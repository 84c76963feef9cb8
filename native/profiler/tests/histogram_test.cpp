#include "tailwatch/histogram.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace tailwatch;

namespace {

constexpr double kLevels[] = {0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0};

std::uint64_t exact_quantile(std::vector<std::uint64_t> sorted, double q) {
  return sorted[quantile_position(q, sorted.size())];
}

struct Distribution {
  std::string name;
  std::function<std::uint64_t(std::mt19937_64&)> draw;
};

std::vector<Distribution> distributions() {
  return {
      {"uniform", [](std::mt19937_64& rng) { return std::uniform_int_distribution<std::uint64_t>(1, 1000000)(rng); }},
      {"lognormal",
       [](std::mt19937_64& rng) {
         return static_cast<std::uint64_t>(std::lognormal_distribution<double>(std::log(2000.0), 1.0)(rng));
       }},
      {"bimodal",
       [](std::mt19937_64& rng) {
         const bool slow = std::bernoulli_distribution(0.1)(rng);
         const double v = slow ? std::normal_distribution<double>(20000, 2000)(rng)
                               : std::normal_distribution<double>(500, 50)(rng);
         return static_cast<std::uint64_t>(std::max(0.0, v));
       }},
      {"pareto",
       [](std::mt19937_64& rng) {
         const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
         const double v = 100.0 / std::pow(1.0 - u, 1.0 / 1.2);  // xm = 100 us, alpha = 1.2
         return static_cast<std::uint64_t>(std::min(v, 1e15));
       }},
      {"tiny", [](std::mt19937_64& rng) { return std::uniform_int_distribution<std::uint64_t>(0, 300)(rng); }},
      {"huge", [](std::mt19937_64& rng) { return rng() | (std::uint64_t{1} << 62); }},
  };
}

/// What normalize() must give, computed the obvious way: per-bucket sums in bucket order, zeros dropped.
SparseHistogram sorted_sums(const SparseHistogram& input) {
  std::map<std::uint32_t, std::uint64_t> sums;
  for (const auto& e : input) sums[e.bucket] += e.count;
  SparseHistogram expected;
  for (const auto& [bucket, count] : sums) {
    if (count > 0) expected.push_back({bucket, count});
  }
  return expected;
}

}  // namespace

TEST(Histogram, EmptyHistogram) {
  Histogram h;
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.max(), 0u);
  EXPECT_EQ(h.quantile(0.5), 0u);
  EXPECT_EQ(h.quantile_bucket(0.5), kBucketCount);
  EXPECT_EQ(h.highest_bucket(), kBucketCount);
  EXPECT_TRUE(h.to_sparse().empty());
}

TEST(Histogram, RejectsBadLevels) {
  Histogram h;
  h.record(10);
  EXPECT_THROW(h.quantile(-0.1), std::invalid_argument);
  EXPECT_THROW(h.quantile(1.5), std::invalid_argument);
  EXPECT_THROW(h.quantile(std::nan("")), std::invalid_argument);
  EXPECT_THROW(h.record_bucket(kBucketCount, 1), std::out_of_range);
}

TEST(Histogram, QuantileRankMatchesClickHouseQuantileExact) {
  // quantileExact(0.5) over 1..10 is 6 and quantileExact(0.25) is 3 on ClickHouse 18.16.
  Histogram h;
  for (std::uint64_t v = 1; v <= 10; ++v) h.record(v);
  EXPECT_EQ(h.quantile(0.5), 6u);
  EXPECT_EQ(h.quantile(0.25), 3u);
  EXPECT_EQ(h.quantile(0.0), 1u);
  EXPECT_EQ(h.quantile(1.0), 10u);
  EXPECT_EQ(h.quantile(0.999), 10u);
}

class Accuracy : public ::testing::TestWithParam<std::size_t> {};

TEST_P(Accuracy, WithinStatedBound) {
  const Distribution dist = distributions()[GetParam()];
  std::mt19937_64 rng(1234 + GetParam());
  for (const std::size_t n : {1, 2, 7, 1000, 200000}) {
    std::vector<std::uint64_t> values(n);
    Histogram h;
    for (auto& v : values) {
      v = dist.draw(rng);
      h.record(v);
    }
    std::sort(values.begin(), values.end());
    ASSERT_EQ(h.count(), n);
    ASSERT_EQ(h.max(), values.back());
    ASSERT_TRUE(h.max_is_exact());
    for (const double q : kLevels) {
      const std::uint64_t exact = exact_quantile(values, q);
      const std::uint64_t estimate = h.quantile(q);
      const std::uint64_t diff = estimate > exact ? estimate - exact : exact - estimate;
      ASSERT_LE(diff, exact / kQuantileErrorDivisor)
          << dist.name << " n=" << n << " q=" << q << " exact=" << exact << " estimate=" << estimate;
      ASSERT_EQ(h.quantile_bucket(q), bucket_index(exact)) << dist.name << " q=" << q;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Distributions, Accuracy, ::testing::Range<std::size_t>(0, 6),
                         [](const ::testing::TestParamInfo<std::size_t>& info) {
                           return distributions()[info.param].name;
                         });

TEST(Histogram, MergeEqualsRecordingEverything) {
  std::mt19937_64 rng(7);
  Histogram all, a, b;
  for (int i = 0; i < 50000; ++i) {
    const std::uint64_t v = rng() >> (rng() % 64);
    all.record(v);
    (i % 3 == 0 ? a : b).record(v);
  }
  Histogram merged;
  merged.merge(a);
  merged.merge(b);
  EXPECT_TRUE(merged.same_counts(all));
  EXPECT_EQ(merged.max(), all.max());
  EXPECT_TRUE(merged.max_is_exact());

  Histogram sparse_merged;
  sparse_merged.merge(a.to_sparse());
  sparse_merged.merge(b.to_sparse());
  EXPECT_TRUE(sparse_merged.same_counts(all));
  EXPECT_GE(sparse_merged.max(), all.max());
  EXPECT_EQ(bucket_index(sparse_merged.max()), bucket_index(all.max()));
}

TEST(Histogram, SubtractUndoesMergeAndKeepsMaxAnUpperBound) {
  std::mt19937_64 rng(8);
  Histogram a, b;
  std::uint64_t max_a = 0;
  for (int i = 0; i < 10000; ++i) {
    const std::uint64_t va = rng() % 100000;
    a.record(va);
    max_a = std::max(max_a, va);
    b.record(100000 + rng() % 900000);
  }
  Histogram sum = a;
  sum.merge(b);
  sum.subtract(b);
  EXPECT_TRUE(sum.same_counts(a));
  EXPECT_FALSE(sum.max_is_exact());
  EXPECT_GE(sum.max(), max_a);
  EXPECT_EQ(bucket_index(sum.max()), bucket_index(max_a));

  Histogram sparse_sum = a;
  sparse_sum.merge(b.to_sparse());
  sparse_sum.subtract(b.to_sparse());
  EXPECT_TRUE(sparse_sum.same_counts(a));

  sum.subtract(a);
  EXPECT_TRUE(sum.empty());
  EXPECT_EQ(sum.max(), 0u);
}

TEST(Histogram, SubtractRefusesWhatIsNotThereAndChangesNothing) {
  Histogram h;
  h.record(5, 3);
  h.record(1000, 1);
  const Histogram before = h;
  SparseHistogram too_much{{5, 1}, {bucket_index(1000), 2}};
  EXPECT_THROW(h.subtract(too_much), std::logic_error);
  EXPECT_TRUE(h.same_counts(before));
  EXPECT_EQ(h.count(), 4u);
  Histogram other;
  other.record(7);
  EXPECT_THROW(h.subtract(other), std::logic_error);
  EXPECT_TRUE(h.same_counts(before));
}

TEST(Histogram, NormalizeSortsSumsAndDropsZeros) {
  SparseHistogram s{{300, 2}, {5, 1}, {300, 3}, {7, 0}};
  normalize(s);
  EXPECT_EQ(s, (SparseHistogram{{5, 1}, {300, 5}}));
  EXPECT_EQ(total_count(s), 6u);
  SparseHistogram bad{{kBucketCount, 1}};
  EXPECT_THROW(normalize(bad), std::out_of_range);
}

TEST(Histogram, NormalizeOfSortedRunsWithAReusedScratchEqualsSortAndSum) {
  // 1 to 12 sorted runs (up to 8 are merged, more are sorted), duplicates inside and across runs, zeros;
  // one scratch buffer for all of them, as the rolling engine keeps it.
  std::mt19937_64 random(11);
  SparseHistogram scratch;
  for (int round = 0; round < 500; ++round) {
    SparseHistogram input;
    const int runs = 1 + static_cast<int>(random() % 12);
    for (int r = 0; r < runs; ++r) {
      std::vector<std::uint32_t> buckets(random() % 40);
      for (auto& b : buckets) b = static_cast<std::uint32_t>(random() % 600);
      std::sort(buckets.begin(), buckets.end());
      for (const auto b : buckets) input.push_back({b, random() % 4});
    }
    const SparseHistogram expected = sorted_sums(input);
    normalize(input, scratch);
    ASSERT_EQ(input, expected) << "round " << round;
  }
}

TEST(Histogram, NormalizeOfEntriesInArrivalOrderEqualsSortAndSum) {
  // What unmerged latency_profile_1s rows hold: one (bucket, 1) entry per event in arrival order, over the
  // whole bucket range (edges included), from a handful to thousands per second; one reused scratch.
  std::mt19937_64 random(12);
  SparseHistogram scratch;
  for (int round = 0; round < 300; ++round) {
    SparseHistogram input(random() % 3000);
    for (auto& entry : input) {
      const auto pick = random() % 10;
      const auto anywhere = static_cast<std::uint32_t>(random() % kBucketCount);
      entry.bucket = pick == 0 ? 0 : pick == 1 ? kBucketCount - 1 : anywhere;
      entry.count = round % 2 == 0 ? 1 : random() % 3;
    }
    const SparseHistogram expected = sorted_sums(input);
    normalize(input, scratch);
    ASSERT_EQ(input, expected) << "round " << round;
  }
}

TEST(Histogram, QuantileNeverExceedsMax) {
  Histogram h;
  h.record(1000000, 1);  // bucket midpoint is above 1000000
  EXPECT_EQ(h.quantile(1.0), 1000000u);
  EXPECT_LE(h.quantile(0.5), h.max());
}
