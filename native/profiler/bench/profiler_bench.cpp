// Benchmarks of the engine, in memory (no ClickHouse). Setup is outside the timed loops.
//   ./build/bench/profiler_bench --benchmark_filter=BM_Tick
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "tailwatch/histogram.h"
#include "tailwatch/engine.h"
#include "tailwatch/rollup.h"

using namespace tailwatch;

namespace {

std::vector<std::uint64_t> lognormal_values(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> dist(std::log(2000.0), 1.0);
  std::vector<std::uint64_t> values(n);
  for (auto& v : values) v = static_cast<std::uint64_t>(dist(rng));
  return values;
}

/// 1000 rps of synthetic rollups over 2 services x 3 methods, repeating every kSeconds seconds, as ingest
/// writes them into latency_profile_1s: one batch per second (ingest_batch_seq = the second), its rows (one
/// per key) carrying the floor of the batch before, so a steady tick reads the new batch and the one before
/// it (not final until the new one's floor passes it).
class SyntheticStore : public Store {
 public:
  static constexpr std::int64_t kSeconds = 600;
  explicit SyntheticStore(int rps) {
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
        RollupRow row;
        row.service = keys[k].service;
        row.method = keys[k].method;
        row.errors = h.count() / 50;
        row.max_us = max;
        row.buckets = h.to_sparse();
        buckets_per_second_ += row.buckets.size();
        seconds_[static_cast<std::size_t>(t)].push_back(std::move(row));
      }
    }
    buckets_per_second_ /= kSeconds;
  }
  /// Batches up to this second have arrived.
  std::int64_t arrived = 0;

  void read_batches(std::uint64_t after, std::optional<std::uint64_t> upto, std::vector<RollupRow>& rows) override {
    rows.clear();
    const auto last = static_cast<std::uint64_t>(arrived);
    for (std::uint64_t b = after + 1; b <= std::min(last, upto.value_or(last)); ++b) append(static_cast<std::int64_t>(b), rows);
  }
  std::optional<std::uint64_t> highest_batch(std::uint64_t after) override {
    if (static_cast<std::uint64_t>(arrived) <= after) return std::nullopt;
    return static_cast<std::uint64_t>(arrived);
  }
  void read_seconds(std::optional<std::uint64_t> final_upto, std::int64_t from, std::int64_t to,
                    std::vector<RollupRow>& rows) override {
    rows.clear();
    const std::int64_t last = std::min<std::int64_t>(to - 1, final_upto ? static_cast<std::int64_t>(*final_upto) : arrived);
    for (std::int64_t t = from; t <= last; ++t) append(t, rows);
  }
  std::optional<std::int64_t> last_second(std::optional<std::uint64_t> final_upto, std::int64_t from) override {
    const std::int64_t last = final_upto ? static_cast<std::int64_t>(*final_upto) : arrived;
    if (last < from) return std::nullopt;
    return last;
  }
  std::vector<std::pair<std::int64_t, Key>> published_rows(std::int64_t, std::int64_t) override { return {}; }
  std::uint64_t batch_requests(std::uint64_t batch) override {
    std::vector<RollupRow> rows;
    append(static_cast<std::int64_t>(batch), rows);
    std::uint64_t n = 0;
    for (const auto& row : rows) n += total_count(row.buckets);
    return n;
  }
  std::uint64_t rebuilds() override { return 0; }  // a synthetic stream is never rebuilt
  /// (bucket, count) entries per second, over all keys.
  std::size_t rows_per_second() const { return buckets_per_second_; }

 private:
  void append(std::int64_t t, std::vector<RollupRow>& rows) const {
    for (auto row : seconds_[static_cast<std::size_t>(((t % kSeconds) + kSeconds) % kSeconds)]) {
      row.batch = static_cast<std::uint64_t>(t);
      row.end_s = t;
      row.floor = static_cast<std::uint64_t>(t - 1);
      rows.push_back(std::move(row));
    }
  }
  std::vector<std::vector<RollupRow>> seconds_;
  std::size_t buckets_per_second_ = 0;
};

/// An engine at `now` with every second before it arrived and final: the steady state.
std::unique_ptr<Engine> steady_engine(SyntheticStore& store, std::vector<std::uint32_t> windows, std::int64_t now) {
  EngineConfig config;
  config.windows_s = std::move(windows);
  store.arrived = now - 1;
  auto engine = std::make_unique<Engine>(config, store);
  engine->start(std::nullopt, static_cast<std::uint64_t>(now - 2), now);
  engine->tick(now);
  return engine;
}

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

// One steady-state tick (read the new batch and the one before it from memory, apply them, slide, publish)
// at 1000 rps over 6 methods of 3 services (9 keys), for one window of state.range(0) seconds.
static void BM_Tick(benchmark::State& state) {
  SyntheticStore store(1000);
  std::int64_t now = 1700000000;
  auto engine = steady_engine(store, {static_cast<std::uint32_t>(state.range(0))}, now);
  for (auto _ : state) {
    store.arrived = now;
    benchmark::DoNotOptimize(engine->tick(++now));
  }
  state.counters["rows_per_second"] = static_cast<double>(store.rows_per_second());
}
BENCHMARK(BM_Tick)->Arg(10)->Arg(300)->Unit(benchmark::kMicrosecond);

// The default configuration: windows 10, 60 and 300 s together.
static void BM_TickDefaultWindows(benchmark::State& state) {
  SyntheticStore store(1000);
  std::int64_t now = 1700000000;
  auto engine = steady_engine(store, {10, 60, 300}, now);
  for (auto _ : state) {
    store.arrived = now;
    benchmark::DoNotOptimize(engine->tick(++now));
  }
}
BENCHMARK(BM_TickDefaultWindows)->Unit(benchmark::kMicrosecond);
