#include "tailwatch/rolling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <stdexcept>
#include <vector>

using namespace tailwatch;

namespace {

struct Event {
  std::uint64_t value_us;
  bool error;
};

/// Raw events per second and (service, method); fetch() rolls them up like the materialized views do.
class MemorySource : public DataSource {
 public:
  std::map<std::int64_t, std::map<Key, std::vector<Event>>> events;
  int fetches = 0;
  bool fail = false;
  /// Roll up into latency_profile_1s rows (one per second and key, split over 1-3 unmerged "parts") instead
  /// of per-bucket histogram rows + max rows.
  bool profile = false;

  SecondsBatch fetch(std::int64_t from, std::int64_t to) override {
    if (fail) throw std::runtime_error("source down");
    ++fetches;
    SecondsBatch batch;
    batch.from = from;
    batch.to = to;
    for (auto it = events.lower_bound(from); it != events.end() && it->first < to; ++it) {
      for (const auto& [key, list] : it->second) {
        if (profile) {
          // Event i goes to part i % parts, as if each part had come with its own INSERT.
          const std::size_t parts = 1 + static_cast<std::size_t>(it->first % 3);
          for (std::size_t part = 0; part < parts; ++part) {
            std::map<std::uint32_t, std::uint64_t> buckets;
            ProfileRow row{it->first, key.service, key.method, 0, 0, {}};
            for (std::size_t i = part; i < list.size(); i += parts) {
              buckets[bucket_index(list[i].value_us)] += 1;
              row.errors += list[i].error ? 1 : 0;
              row.max_us = std::max(row.max_us, list[i].value_us);
            }
            if (buckets.empty()) continue;
            for (const auto& [bucket, count] : buckets) row.buckets.push_back({bucket, count});
            batch.profile.push_back(std::move(row));
          }
          continue;
        }
        std::map<std::uint32_t, std::pair<std::uint64_t, std::uint64_t>> buckets;
        std::uint64_t max = 0;
        for (const auto& e : list) {
          auto& b = buckets[bucket_index(e.value_us)];
          b.first += 1;
          b.second += e.error ? 1 : 0;
          max = std::max(max, e.value_us);
        }
        // Split each bucket over two rows sometimes, as unmerged SummingMergeTree parts would.
        for (const auto& [bucket, counts] : buckets) {
          batch.histogram.push_back({it->first, key.service, key.method, bucket, counts.first, counts.second});
        }
        if (!list.empty()) batch.maxima.push_back({it->first, key.service, key.method, max});
      }
    }
    return batch;
  }

  /// The window [now - w, now) of `key` recomputed from the raw events.
  WindowStats scratch(const Key& key, std::uint32_t w, std::int64_t now, Histogram& hist) const {
    WindowStats row;
    row.key = key;
    row.window_s = w;
    hist.clear();
    for (auto it = events.lower_bound(now - w); it != events.end() && it->first < now; ++it) {
      for (const auto& [k, list] : it->second) {
        if (k.service != key.service || (!key.method.empty() && k.method != key.method)) continue;
        for (const auto& e : list) {
          hist.record(e.value_us);
          row.errors += e.error ? 1 : 0;
          row.max_us = std::max(row.max_us, e.value_us);
        }
      }
    }
    row.count = hist.count();
    row.rps = static_cast<double>(row.count) / w;
    if (row.count > 0) {
      row.error_rate = static_cast<double>(row.errors) / static_cast<double>(row.count);
      row.p50_us = hist.quantile(0.5);
      row.p90_us = hist.quantile(0.9);
      row.p95_us = hist.quantile(0.95);
      row.p99_us = hist.quantile(0.99);
      row.p999_us = hist.quantile(0.999);
    }
    return row;
  }
};

void expect_same(const WindowStats& a, const WindowStats& b, const std::string& where) {
  ASSERT_EQ(a.key, b.key) << where;
  ASSERT_EQ(a.window_s, b.window_s) << where;
  ASSERT_EQ(a.count, b.count) << where;
  ASSERT_EQ(a.errors, b.errors) << where;
  ASSERT_DOUBLE_EQ(a.rps, b.rps) << where;
  ASSERT_DOUBLE_EQ(a.error_rate, b.error_rate) << where;
  ASSERT_EQ(a.max_us, b.max_us) << where;
  ASSERT_EQ(a.p50_us, b.p50_us) << where;
  ASSERT_EQ(a.p90_us, b.p90_us) << where;
  ASSERT_EQ(a.p95_us, b.p95_us) << where;
  ASSERT_EQ(a.p99_us, b.p99_us) << where;
  ASSERT_EQ(a.p999_us, b.p999_us) << where;
}

/// Runs a random walk of ticks with new, late and withdrawn events and checks every window of every key
/// against a recomputation from scratch after every tick.
void random_walk(RollingConfig config, int steps, std::uint64_t seed, bool profile = false) {
  RollingEngine engine(config);
  MemorySource source;
  source.profile = profile;
  std::mt19937_64 rng(seed);
  const std::vector<Key> keys = {{"catalog", "/catalog.v1.Catalog/Get"}, {"catalog", "/catalog.v1.Catalog/List"},
                                 {"orders", "/orders.v1.Orders/Create"}, {"orders", ""},
                                 {"pay\tments", "we\"ird\\name"}};
  const std::uint32_t max_w = engine.max_window();
  std::int64_t now = 1700000000;
  std::int64_t end = now;  // nothing before it exists yet
  auto add_events = [&](std::int64_t t, int n) {
    for (int i = 0; i < n; ++i) {
      const Key& key = keys[rng() % keys.size()];
      // Silence whole services for long stretches so keys disappear and come back.
      if (key.service == "orders" && (t / 97) % 3 == 0) continue;
      const double v = std::lognormal_distribution<double>(6.0 + (rng() % 3), 1.2)(rng);
      source.events[t][key].push_back({static_cast<std::uint64_t>(v), rng() % 10 == 0});
    }
  };
  Histogram scratch_hist;
  for (int step = 0; step < steps; ++step) {
    const std::uint64_t r = rng() % 100;
    const std::int64_t advance = r < 70 ? 1 : r < 85 ? 0 : r < 97 ? 2 + static_cast<std::int64_t>(rng() % 6)
                                                               : max_w + static_cast<std::int64_t>(rng() % 5);
    const std::int64_t next = now + advance;
    // New seconds up to and including the one in progress at `next`.
    for (std::int64_t t = end; t <= next; ++t) add_events(t, static_cast<int>(rng() % 12));
    // Late arrivals and withdrawals for seconds the next tick re-reads.
    if (config.late_margin_s > 0) {
      for (int i = 0; i < 3; ++i) {
        const std::int64_t t = now - 1 - static_cast<std::int64_t>(rng() % config.late_margin_s);
        if (rng() % 4 == 0) {
          auto& second = source.events[t];
          if (!second.empty()) second.erase(second.begin());
        } else {
          add_events(t, static_cast<int>(rng() % 5));
        }
      }
    }
    end = next + 1;
    now = next;
    engine.tick(now, source);

    std::vector<WindowStats> expected;
    std::map<Key, bool> all_keys;
    for (const auto& key : keys) {
      all_keys[key] = true;
      all_keys[Key{key.service, ""}] = true;
    }
    for (const auto& [key, unused] : all_keys) {
      std::vector<WindowStats> rows;
      for (const auto w : config.windows_s) rows.push_back(source.scratch(key, w, now, scratch_hist));
      if (source.scratch(key, max_w, now, scratch_hist).count == 0) continue;
      expected.insert(expected.end(), rows.begin(), rows.end());
      for (const auto w : config.windows_s) {
        const Histogram* hist = engine.window_histogram(key, w);
        ASSERT_NE(hist, nullptr);
        source.scratch(key, w, now, scratch_hist);
        ASSERT_TRUE(hist->same_counts(scratch_hist)) << "step " << step << " window " << w;
      }
    }
    const auto actual = engine.snapshot();
    ASSERT_EQ(actual.size(), expected.size()) << "step " << step;
    for (std::size_t i = 0; i < actual.size(); ++i) {
      expect_same(actual[i], expected[i], "step " + std::to_string(step) + " row " + std::to_string(i));
    }
  }
}

}  // namespace

TEST(Rolling, SlidWindowsEqualRecomputedSmallWindows) { random_walk({{3, 7, 20}, 4}, 3000, 1); }
TEST(Rolling, SlidWindowsEqualRecomputedNoMargin) { random_walk({{1, 5}, 0}, 2000, 2); }
TEST(Rolling, SlidWindowsEqualRecomputedMarginLongerThanWindow) { random_walk({{2, 4}, 9}, 2000, 3); }
TEST(Rolling, SlidWindowsEqualRecomputedDefaults) { random_walk(RollingConfig{}, 700, 4); }
// The same walks, read as latency_profile_1s rows (what the daemon reads).
TEST(Rolling, ProfileRowsSlidWindowsEqualRecomputedSmallWindows) { random_walk({{3, 7, 20}, 4}, 3000, 1, true); }
TEST(Rolling, ProfileRowsSlidWindowsEqualRecomputedNoMargin) { random_walk({{1, 5}, 0}, 2000, 2, true); }
TEST(Rolling, ProfileRowsSlidWindowsEqualRecomputedMarginLongerThanWindow) {
  random_walk({{2, 4}, 9}, 2000, 3, true);
}
TEST(Rolling, ProfileRowsSlidWindowsEqualRecomputedDefaults) { random_walk(RollingConfig{}, 700, 4, true); }

TEST(Rolling, ReadsOnlyUnseenSecondsPlusMargin) {
  RollingEngine engine({{10, 60, 300}, 5});
  EXPECT_EQ(engine.range_for(1000), (std::pair<std::int64_t, std::int64_t>{700, 1000}));
  MemorySource source;
  engine.tick(1000, source);
  EXPECT_EQ(engine.range_for(1001), (std::pair<std::int64_t, std::int64_t>{995, 1001}));
  EXPECT_EQ(engine.range_for(1003), (std::pair<std::int64_t, std::int64_t>{995, 1003}));
  EXPECT_EQ(engine.range_for(1000), (std::pair<std::int64_t, std::int64_t>{995, 1000}));
  EXPECT_EQ(engine.range_for(1300), (std::pair<std::int64_t, std::int64_t>{1000, 1300}));
  EXPECT_EQ(engine.range_for(5000), (std::pair<std::int64_t, std::int64_t>{4700, 5000}));
}

TEST(Rolling, FailedFetchLeavesStateAndCatchesUp) {
  RollingEngine engine({{5}, 2});
  MemorySource source;
  for (std::int64_t t = 100; t < 120; ++t) source.events[t][{"s", "m"}].push_back({1000, false});
  engine.tick(105, source);
  EXPECT_EQ(engine.snapshot().at(0).count, 5u);
  source.fail = true;
  EXPECT_THROW(engine.tick(108, source), std::runtime_error);
  EXPECT_EQ(engine.end(), 105);
  EXPECT_EQ(engine.snapshot().at(0).count, 5u);
  source.fail = false;
  engine.tick(112, source);
  const auto rows = engine.snapshot();
  ASSERT_EQ(rows.size(), 2u);  // (s, "") and (s, m)
  EXPECT_EQ(rows[0].key, (Key{"s", ""}));
  EXPECT_EQ(rows[0].count, 5u);
  EXPECT_EQ(rows[1].count, 5u);
  EXPECT_DOUBLE_EQ(rows[1].rps, 1.0);
}

TEST(Rolling, RejectsBadInput) {
  EXPECT_THROW(RollingEngine({{}, 5}), std::invalid_argument);
  EXPECT_THROW(RollingEngine({{0}, 5}), std::invalid_argument);
  EXPECT_THROW(RollingEngine({{10, 10}, 5}), std::invalid_argument);
  EXPECT_THROW(RollingEngine({{86401}, 5}), std::invalid_argument);
  RollingEngine engine({{10}, 5});
  MemorySource source;
  engine.tick(100, source);
  EXPECT_THROW(engine.tick(99, source), std::invalid_argument);
  SecondsBatch short_batch{100, 101, {}, {}, {}};
  EXPECT_THROW(engine.advance(102, short_batch), std::invalid_argument);
  SecondsBatch bad_bucket{95, 102, {{100, "s", "m", kBucketCount, 1, 0}}, {}, {}};
  EXPECT_THROW(engine.advance(102, bad_bucket), std::out_of_range);
  SecondsBatch bad_profile{95, 102, {}, {}, {{100, "s", "m", 0, 5, {{5, 1}, {kBucketCount, 1}}}}};
  EXPECT_THROW(engine.advance(102, bad_profile), std::out_of_range);
  EXPECT_EQ(engine.end(), 100);
  EXPECT_EQ(engine.key_count(), 0u);
}

TEST(Rolling, UnmergedRowsAreSummedAndMaxFallsBackToBucket) {
  RollingEngine engine({{10}, 0});
  SecondsBatch batch{90, 100, {}, {}, {}};
  const std::uint32_t b = bucket_index(5000);
  batch.histogram.push_back({95, "s", "m", b, 2, 1});
  batch.histogram.push_back({95, "s", "m", b, 3, 0});  // same key, not merged yet
  batch.histogram.push_back({96, "s", "", 7, 1, 0});     // a row whose method is empty
  engine.advance(100, batch);
  const auto rows = engine.snapshot();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].key, (Key{"s", ""}));
  EXPECT_EQ(rows[0].count, 6u);
  EXPECT_EQ(rows[0].errors, 1u);
  EXPECT_EQ(rows[1].count, 5u);
  EXPECT_EQ(rows[1].max_us, bucket_last(b)) << "no request_stats row: the bucket's upper end";
}

TEST(Rolling, UnmergedProfileRowsAddUpAndKeepTheExactMax) {
  RollingEngine engine({{10}, 0});
  SecondsBatch batch{90, 100, {}, {}, {}};
  const std::uint32_t b = bucket_index(5000);
  batch.profile.push_back({95, "s", "m", 1, 5000, {{b, 2}, {7, 1}}});
  batch.profile.push_back({95, "s", "m", 0, 4990, {{7, 2}, {b, 1}}});  // same second and key, unmerged
  batch.profile.push_back({96, "s", "", 2, 7, {{7, 1}}});               // a row whose method is empty
  batch.profile.push_back({80, "s", "m", 0, 9, {{9, 1}}});              // outside the batch: ignored
  engine.advance(100, batch);
  const auto rows = engine.snapshot();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].key, (Key{"s", ""}));
  EXPECT_EQ(rows[0].count, 7u);
  EXPECT_EQ(rows[0].errors, 3u);
  EXPECT_EQ(rows[0].max_us, 5000u);
  EXPECT_EQ(rows[1].count, 6u);
  EXPECT_EQ(rows[1].errors, 1u);
  EXPECT_EQ(rows[1].max_us, 5000u);
  // Values 7, 7, 7, then three in b: position floor(0.5 * 6) = 3 is in b (its midpoint, capped at the max).
  EXPECT_EQ(rows[1].p50_us, std::min<std::uint64_t>(bucket_midpoint(b), 5000));
  EXPECT_EQ(rows[0].p50_us, 7u);  // the whole service: 7 x4, then b x3
}
