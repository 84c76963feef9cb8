// Benchmarks of the engine, in memory (no ClickHouse). Setup is outside the timed loops.
//   ./build/bench/profiler_bench --benchmark_filter=BM_Tick
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <vector>

#include "tailwatch/histogram.h"
#include "tailwatch/rolling.h"

using namespace tailwatch;

namespace {

std::vector<std::uint64_t> lognormal_values(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> dist(std::log(2000.0), 1.0);
  std::vector<std::uint64_t> values(n);
  for (auto& v : values) v = static_cast<std::uint64_t>(dist(rng));
  return values;
}

/// 1000 rps of synthetic per-second rollups over 2 services x 3 methods, repeating every kSeconds seconds, as
/// latency_profile_1s rows (one per second and key, what the daemon reads).
class SyntheticSource : public DataSource {
 public:
  static constexpr std::int64_t kSeconds = 600;
  explicit SyntheticSource(int rps) {
    const std::vector<Key> keys = {{"catalog", "/catalog.v1.Catalog/GetItem"},
                                   {"catalog", "/catalog.v1.Catalog/ListItems"},
                                   {"catalog", "/catalog.v1.Catalog/Search"},
                                   {"orders", "/orders.v1.Orders/CreateOrder"},
                                   {"orders", "/orders.v1.Orders/GetOrder"},
                                   {"payments", "/payments.v1.Payments/Charge"}};
    std::mt19937_64 rng(1);
    std::lognormal_distribution<double> dist(std::log(2000.0), 1.0);
    seconds_.resize(kSeconds);
    for (std::int64_t t = 0; t < kSeconds; ++t) {
      for (std::size_t k = 0; k < keys.size(); ++k) {
        Histogram h;
        std::uint64_t max = 0;
        for (int i = 0; i < rps / static_cast<int>(keys.size()); ++i) {
          const auto v = static_cast<std::uint64_t>(dist(rng) * (1.0 + static_cast<double>(k)));
          h.record(v);
          max = std::max(max, v);
        }
        ProfileRow row{0, keys[k].service, keys[k].method, h.count() / 50, max, h.to_sparse()};
        buckets_per_second_ += row.buckets.size();
        seconds_[t].push_back(std::move(row));
      }
    }
    buckets_per_second_ /= kSeconds;
  }
  SecondsBatch fetch(std::int64_t from, std::int64_t to) override {
    SecondsBatch batch{from, to, {}, {}, {}};
    for (std::int64_t t = from; t < to; ++t) {
      for (auto row : seconds_[static_cast<std::size_t>(((t % kSeconds) + kSeconds) % kSeconds)]) {
        row.ts = t;
        batch.profile.push_back(std::move(row));
      }
    }
    return batch;
  }
  /// (bucket, count) entries per second, over all keys.
  std::size_t rows_per_second() const { return buckets_per_second_; }

 private:
  std::vector<std::vector<ProfileRow>> seconds_;
  std::size_t buckets_per_second_ = 0;
};

}  // namespace

static void BM_Record(benchmark::State& state) {
  const auto values = lognormal_values(1 << 16, 1);
  Histogram h;
  std::size_t i = 0;
  for (auto _ : state) {
    h.record(values[i++ & 0xffff]);
  }
  benchmark::DoNotOptimize(h.count());
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(BM_Record);

static void BM_MergeDense(benchmark::State& state) {
  Histogram a, b;
  for (const auto v : lognormal_values(100000, 2)) a.record(v);
  for (auto _ : state) {
    b.merge(a);
    benchmark::DoNotOptimize(b.count());
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(BM_MergeDense);

// One second at 1000 rps (sparse, as read from ClickHouse) added to and removed from a window.
static void BM_MergeSubtractSparseSecond(benchmark::State& state) {
  Histogram second, window;
  for (const auto v : lognormal_values(1000, 3)) second.record(v);
  const SparseHistogram sparse = second.to_sparse();
  for (const auto v : lognormal_values(300000, 4)) window.record(v);
  for (auto _ : state) {
    window.merge(sparse);
    window.subtract(sparse);
  }
  state.counters["buckets_per_second"] = static_cast<double>(sparse.size());
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * 2);
}
BENCHMARK(BM_MergeSubtractSparseSecond);

static void BM_Quantiles5(benchmark::State& state) {
  Histogram h;
  for (const auto v : lognormal_values(300000, 5)) h.record(v);
  for (auto _ : state) {
    for (const double q : {0.5, 0.9, 0.95, 0.99, 0.999}) benchmark::DoNotOptimize(h.quantile(q));
  }
}
BENCHMARK(BM_Quantiles5);

// normalize() of one method's second at 1000 rps over 6 methods as an unmerged latency_profile_1s row holds
// it: ~167 (bucket, 1) entries in arrival order (log-normal durations), copied in before each call.
static void BM_NormalizeArrivalOrderSecond(benchmark::State& state) {
  SparseHistogram arrivals;
  for (const auto v : lognormal_values(167, 5)) arrivals.push_back({bucket_index(v), 1});
  SparseHistogram work;
  SparseHistogram scratch;
  for (auto _ : state) {
    work.assign(arrivals.begin(), arrivals.end());
    normalize(work, scratch);
    benchmark::DoNotOptimize(work.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(arrivals.size()));
}
BENCHMARK(BM_NormalizeArrivalOrderSecond);

// One steady-state tick (read from memory, reconcile the 5 s margin, slide, snapshot) at 1000 rps over 6
// methods of 3 services (9 keys), for one window of state.range(0) seconds.
static void BM_Tick(benchmark::State& state) {
  SyntheticSource source(1000);
  RollingConfig config;
  config.windows_s = {static_cast<std::uint32_t>(state.range(0))};
  config.late_margin_s = 5;
  RollingEngine engine(config);
  std::int64_t now = 1700000000;
  engine.tick(now, source);
  for (auto _ : state) {
    engine.tick(++now, source);
    benchmark::DoNotOptimize(engine.snapshot());
  }
  state.counters["rows_per_second"] = static_cast<double>(source.rows_per_second());
}
BENCHMARK(BM_Tick)->Arg(10)->Arg(300)->Unit(benchmark::kMicrosecond);

// The default configuration: windows 10, 60 and 300 s together.
static void BM_TickDefaultWindows(benchmark::State& state) {
  SyntheticSource source(1000);
  RollingEngine engine(RollingConfig{});
  std::int64_t now = 1700000000;
  engine.tick(now, source);
  for (auto _ : state) {
    engine.tick(++now, source);
    benchmark::DoNotOptimize(engine.snapshot());
  }
}
BENCHMARK(BM_TickDefaultWindows)->Unit(benchmark::kMicrosecond);
