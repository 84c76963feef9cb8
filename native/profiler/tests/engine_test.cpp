// The engine against an in-memory rollup (fake_store.h): every row it publishes must equal, at all times,
// the window computed from scratch over what it has read, and, once everything has arrived, over all data.
#include "tailwatch/engine.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <tuple>

#include "fake_store.h"

using namespace tailwatch;
using tailwatch::testing::Event;
using tailwatch::testing::FakeStore;
using tailwatch::testing::Seconds;
using tailwatch::testing::truth;

namespace {

std::string describe(const WindowStats& r) {
  std::ostringstream out;
  out << r.key.service << "/" << r.key.method << " " << r.window_s << "s: count " << r.count << " errors " << r.errors
      << " max " << r.max_us << " p " << r.p50_us << "," << r.p90_us << "," << r.p95_us << "," << r.p99_us << ","
      << r.p999_us << " rps " << r.rps << " error_rate " << r.error_rate;
  return out.str();
}

bool same(const WindowStats& a, const WindowStats& b) {
  return a.key == b.key && a.window_s == b.window_s && a.count == b.count && a.errors == b.errors &&
         a.max_us == b.max_us && a.p50_us == b.p50_us && a.p90_us == b.p90_us && a.p95_us == b.p95_us &&
         a.p99_us == b.p99_us && a.p999_us == b.p999_us && a.rps == b.rps && a.error_rate == b.error_rate;
}

/// latency_percentiles as readers see it: the latest row of each (key, window, tick).
class Table {
 public:
  using Id = std::tuple<Key, std::uint32_t, std::int64_t>;
  void write(const std::vector<TickRow>& rows) {
    for (const auto& row : rows) {
      const auto key = keys_.emplace(row.stats.key, keys_.size()).first->second;
      rows_[{key, row.stats.window_s, row.ts}] = row.stats;
      windows_.insert({key, row.stats.window_s});
    }
  }
  std::size_t size() const { return rows_.size(); }
  std::size_t count(const Id& id) const { return find(id) == nullptr ? 0 : 1; }
  const WindowStats& at(const Id& id) const {
    const WindowStats* row = find(id);
    if (row == nullptr) throw std::out_of_range("no such row");
    return *row;
  }
  std::vector<Id> ids() const {
    std::vector<Id> out;
    for (const auto& [id, row] : rows_) out.emplace_back(row.key, row.window_s, std::get<2>(id));
    return out;
  }
  /// Rows whose window holds second s: ticks (s, s + w].
  std::vector<Id> holding(std::int64_t s) const {
    std::vector<Id> out;
    for (const auto& [key, w] : windows_) {
      for (auto it = rows_.lower_bound({key, w, s + 1}); it != rows_.end(); ++it) {
        if (std::get<0>(it->first) != key || std::get<1>(it->first) != w || std::get<2>(it->first) > s + w) break;
        out.emplace_back(it->second.key, w, std::get<2>(it->first));
      }
    }
    return out;
  }
  std::set<std::pair<std::int64_t, Key>> tick_keys() const {
    std::set<std::pair<std::int64_t, Key>> out;
    for (const auto& [id, row] : rows_) out.insert({std::get<2>(id), row.key});
    return out;
  }
  std::int64_t first_tick() const {
    std::int64_t first = std::numeric_limits<std::int64_t>::max();
    for (const auto& [id, row] : rows_) first = std::min(first, std::get<2>(id));
    return first;
  }

 private:
  using Slot = std::tuple<std::size_t, std::uint32_t, std::int64_t>;  // keys interned: cheap to compare
  const WindowStats* find(const Id& id) const {
    const auto key = keys_.find(std::get<0>(id));
    if (key == keys_.end()) return nullptr;
    const auto it = rows_.find({key->second, std::get<1>(id), std::get<2>(id)});
    return it == rows_.end() ? nullptr : &it->second;
  }
  std::map<Key, std::size_t> keys_;
  std::map<Slot, WindowStats> rows_;
  std::set<std::pair<std::size_t, std::uint32_t>> windows_;
};

/// Checks rows `ids` of `table` against the truth over `seconds`.
::testing::AssertionResult check_rows(const Table& table, const std::vector<Table::Id>& ids, const Seconds& seconds,
                                      const std::string& when) {
  for (const auto& id : ids) {
    const auto& actual = table.at(id);
    const auto expected = truth(seconds, std::get<0>(id), std::get<1>(id), std::get<2>(id));
    if (!same(actual, expected)) {
      return ::testing::AssertionFailure() << when << ", tick " << std::get<2>(id) << ": wrote "
                                           << describe(actual) << "; truth " << describe(expected);
    }
  }
  return ::testing::AssertionSuccess();
}

std::vector<Table::Id> all_ids(const Table& table) { return table.ids(); }

struct WalkOptions {
  EngineConfig config;
  int steps = 3000;
  std::uint64_t seed = 1;
  std::size_t max_feed_rows = std::numeric_limits<std::size_t>::max();
  bool restarts = false;  ///< restart the engine now and then, as a new process would
  bool outages = false;   ///< the store fails now and then
  bool concurrent = false;  ///< batches grow and arrive between the reads of one tick
};

/// The property: random arrivals (late by seconds or minutes, slow requests far from their start, batches
/// that grow over several reads, floors that advance, markers), ticks that advance by 0, 1, a few or many
/// seconds. After every tick that succeeds, every row written so far (its latest version) equals the truth
/// over what the engine has read: checked for the rows written in the tick and for every row whose window
/// holds a second whose data changed (the others are unchanged on both sides since they were last checked;
/// every 1000 steps all rows are checked anyway). Every newly published tick has a row for every key with
/// requests in its largest window. After everything has arrived, every row equals the truth over all data.
void random_walk(const WalkOptions& options) {
  FakeStore store;
  store.max_feed_rows = options.max_feed_rows;
  std::mt19937_64 rng(options.seed);
  const EngineConfig& config = options.config;
  const std::int64_t tick = config.tick_s;
  const std::uint32_t max_w = *std::max_element(config.windows_s.begin(), config.windows_s.end());
  const std::vector<Key> keys = {{"catalog", "/catalog.v1.Catalog/Get"},
                                 {"catalog", "/catalog.v1.Catalog/List"},
                                 {"orders", "/orders.v1.Orders/Create"},
                                 {"orders", ""},  // a row whose method is empty counts for the service only
                                 {"pay\tments", "we\"ird\\name"}};
  std::set<Key> engine_keys;  // each stored key and each service as a whole
  for (const auto& key : keys) {
    engine_keys.insert(key);
    engine_keys.insert(Key{key.service, ""});
  }
  std::int64_t clock = 1700000000;
  std::uint64_t seq = 0;
  const auto draw_event = [&](std::int64_t end_s) {
    const Key& key = keys[rng() % keys.size()];
    double v = std::lognormal_distribution<double>(6.0 + static_cast<double>(rng() % 3), 1.2)(rng);
    if (rng() % 50 == 0) v = 1e6 + static_cast<double>(rng() % 100000000);  // a slow request, seconds long
    return Event{key, end_s, static_cast<std::uint64_t>(v), rng() % 10 == 0};
  };
  // Rows written before the engine starts, by something that stamps no batch (batch 0: final).
  {
    FakeStore::Batch old;
    for (std::int64_t s = clock - 400; s < clock; ++s) {
      for (int i = 0; i < 2; ++i) old.visible.push_back(draw_event(s));
    }
    store.batches[0] = std::move(old);
  }
  auto engine = std::make_unique<Engine>(config, store);
  engine->start(std::nullopt, 0, clock - 1);
  Table table;
  std::size_t corrections = 0, failures = 0, restarts = 0;
  std::int64_t last_tick = engine->last_published();
  std::uint64_t last_floor = 0;  // F of the last tick that succeeded: what its rows carry

  const auto add_batch = [&](std::size_t events, bool grows) {
    FakeStore::Batch batch;
    batch.floor = store.committed_floor();
    batch.parts = 1 + rng() % 3;
    for (std::size_t i = 0; i < events; ++i) {
      const std::uint64_t r = rng() % 100;
      // Completed just now, a few seconds ago, a minute ago, several minutes ago, or a second ahead (a
      // request's clock may run ahead of ingest's).
      const std::int64_t late = r < 75   ? static_cast<std::int64_t>(rng() % 3)
                                : r < 88 ? 3 + static_cast<std::int64_t>(rng() % 10)
                                : r < 95 ? 15 + static_cast<std::int64_t>(rng() % 60)
                                : r < 98 ? 100 + static_cast<std::int64_t>(rng() % 300)
                                         : -1;
      Event e = draw_event(clock - late);
      if (grows && rng() % 2 == 0) {
        batch.hidden.push_back(e);
      } else {
        batch.visible.push_back(e);
      }
    }
    store.batches[++seq] = std::move(batch);
  };

  if (options.concurrent) {
    store.before_feed_read = [&] {
      for (auto& [s, batch] : store.batches) {
        if (!batch.hidden.empty() && rng() % 2 == 0) {
          batch.visible.push_back(batch.hidden.back());
          batch.hidden.pop_back();
        }
      }
      if (rng() % 2 == 0) add_batch(1 + rng() % 4, rng() % 2 == 0);
      // An idle ingest's marker carries the floor as its own batch number: it can land inside the range
      // this tick is reading, in a part not read yet.
      if (rng() % 2 == 0) store.markers.emplace(store.committed_floor(), store.committed_floor());
    };
  }
  for (int step = 0; step < options.steps; ++step) {
    // Time passes.
    const std::uint64_t r = rng() % 100;
    const std::int64_t advance = r < 70 ? 1 : r < 80 ? 0 : r < 97 ? 2 + static_cast<std::int64_t>(rng() % 4)
                                                                  : 20 + static_cast<std::int64_t>(rng() % 40);
    clock += advance * tick;
    // Batches arrive; some grow over the next reads.
    const int new_batches = static_cast<int>(rng() % 4);
    for (int b = 0; b < new_batches; ++b) add_batch(1 + rng() % 12, rng() % 4 == 0);
    for (auto& [s, batch] : store.batches) {
      if (!batch.hidden.empty() && rng() % 3 == 0) {
        const std::size_t n = 1 + rng() % batch.hidden.size();
        batch.visible.insert(batch.visible.end(), batch.hidden.begin(), batch.hidden.begin() + static_cast<long>(n));
        batch.hidden.erase(batch.hidden.begin(), batch.hidden.begin() + static_cast<long>(n));
      }
    }
    // Idle ingest writes its floor as a marker (under the floor's own batch number, or a new one).
    if (rng() % 4 == 0) {
      const std::uint64_t floor = store.committed_floor();
      store.markers.emplace(rng() % 2 == 0 ? floor : ++seq, floor);
    }
    if (options.outages) {
      store.down = rng() % 20 == 0;
      if (rng() % 15 == 0) store.fail_in = 1 + static_cast<int>(rng() % 4);  // fails in the middle of a tick
    }
    if (options.restarts && rng() % 300 == 0) {
      // A new process: latency_percentiles holds what was written; it starts from the highest tick and floor.
      store.table = table.tick_keys();
      try {
        auto next = std::make_unique<Engine>(config, store);
        next->start(last_tick, last_floor, clock - tick);
        engine = std::move(next);
        ++restarts;
      } catch (const std::runtime_error&) {
        ++failures;  // the store is down: keep the old one
      }
    }

    const std::int64_t before = engine->last_published();
    TickReport report;
    try {
      report = engine->tick(clock - tick);
    } catch (const std::runtime_error&) {
      ++failures;
      ASSERT_EQ(engine->last_published(), before) << "a failed tick publishes nothing";
      continue;
    }
    store.fail_in.reset();
    corrections += report.corrections;
    table.write(report.rows);
    last_floor = engine->floor();
    last_tick = std::max(last_tick, engine->last_published());

    // Newly published ticks: a row for every key with requests in the largest window.
    const std::string when = "step " + std::to_string(step);
    for (std::int64_t t = std::max(before + tick, engine->last_published() - 10 * tick); t <= engine->last_published();
         t += tick) {
      for (const auto& key : engine_keys) {
        if (truth(store.served, key, max_w, t).count == 0) continue;
        ASSERT_EQ(table.count({key, max_w, t}), 1u) << when << ": no row for " << key.service << "/"
                                                           << key.method << " at tick " << t;
      }
    }
    std::set<Table::Id> check;
    for (const auto& row : report.rows) check.insert({row.stats.key, row.stats.window_s, row.ts});
    for (const auto s : store.changed) {
      for (const auto& id : table.holding(s)) check.insert(id);
    }
    store.changed.clear();
    ASSERT_TRUE(check_rows(table, step % 1000 == 999 ? all_ids(table) : std::vector<Table::Id>(check.begin(), check.end()),
                           store.served, when));
  }

  // Everything arrives; ingest's floor passes every batch; a few more ticks.
  store.down = false;
  store.fail_in.reset();
  store.before_feed_read = nullptr;
  for (auto& [s, batch] : store.batches) {
    batch.visible.insert(batch.visible.end(), batch.hidden.begin(), batch.hidden.end());
    batch.hidden.clear();
  }
  store.markers.emplace(seq + 1, seq);
  for (int i = 0; i < 3; ++i) {
    clock += tick;
    table.write(engine->tick(clock - tick).rows);
  }
  EXPECT_EQ(engine->open_batches(), 0u) << "every batch is final";
  ASSERT_TRUE(check_rows(table, all_ids(table), store.everything(), "after everything arrived"));
  // The walk must have exercised what it is about.
  EXPECT_GT(corrections, 100u);
  EXPECT_GT(table.size(), 1000u);
  if (options.outages) {
    EXPECT_GT(failures, 10u);
  }
  if (options.restarts) {
    EXPECT_GT(restarts, 1u);
  }
  if (options.max_feed_rows != std::numeric_limits<std::size_t>::max()) {
    EXPECT_GT(store.refused, 10u);
  }
  std::cout << "[ walk ] " << options.steps << " steps: " << table.size() << " rows, " << corrections
            << " corrections, " << failures << " failed ticks, " << restarts << " restarts, " << store.refused
            << " reads refused, " << store.second_reads << " second reads" << std::endl;
}

EngineConfig engine_config(std::vector<std::uint32_t> windows, std::uint32_t memory, std::uint32_t tick = 1) {
  EngineConfig config;
  config.windows_s = std::move(windows);
  config.correction_memory_s = memory;
  config.tick_s = tick;
  return config;
}

}  // namespace

TEST(EngineWalk, SmallWindowsShortMemoryReloadsOldSeconds) { random_walk({engine_config({3, 7, 20}, 5), 3000, 1}); }
TEST(EngineWalk, NoMemoryAtAll) { random_walk({engine_config({1, 5}, 0), 2000, 2}); }
TEST(EngineWalk, LongMemory) { random_walk({engine_config({4, 30}, 600), 2000, 3}); }
TEST(EngineWalk, TwoSecondTicks) { random_walk({engine_config({4, 9, 30}, 20, 2), 1500, 4}); }
TEST(EngineWalk, DefaultWindows) { random_walk({engine_config({10, 60, 300}, 30), 600, 5}); }
TEST(EngineWalk, FeedReadsSplitWhileIngestGoesOn) {
  // Reads of one tick split over batch ranges, and between them batches grow, complete and arrive with
  // higher floors: a floor seen in one read must only finalize batches read after it.
  WalkOptions options{engine_config({3, 7, 20}, 5), 1500, 6};
  options.max_feed_rows = 60;
  options.concurrent = true;
  random_walk(options);
}
TEST(EngineWalk, OutagesAndRestarts) {
  WalkOptions options{engine_config({3, 7, 20}, 10), 3000, 7};
  options.outages = true;
  options.restarts = true;
  random_walk(options);
}

namespace {

/// A store with one batch per call, for the tests below.
std::uint64_t add(FakeStore& store, std::vector<Event> events, std::uint64_t seq, std::uint64_t floor,
                  std::size_t parts = 1) {
  FakeStore::Batch batch;
  batch.visible = std::move(events);
  batch.floor = floor;
  batch.parts = parts;
  store.batches[seq] = std::move(batch);
  return seq;
}

std::vector<Event> events(const Key& key, std::int64_t end_s, std::vector<std::uint64_t> values) {
  std::vector<Event> out;
  for (const auto v : values) out.push_back({key, end_s, v, v % 7 == 0});
  return out;
}

const Key kKey{"s", "m"};
const Key kService{"s", ""};

}  // namespace

TEST(Engine, PublishesByCompletionSecondAndAddsUpUnmergedRows) {
  FakeStore store;
  add(store, events(kKey, 95, {100, 5000, 4990}), 1, 0, 3);  // three unmerged parts
  add(store, events(Key{"s", ""}, 96, {7}), 2, 0);           // a row whose method is empty
  add(store, events(kKey, 80, {9}), 3, 0);                   // outside the window at 100
  Engine engine(engine_config({10}, 0), store);
  engine.start(std::nullopt, 0, 90);
  const auto report = engine.tick(100);
  Table table;
  table.write(report.rows);
  ASSERT_EQ(table.count({kKey, 10u, 100}), 1u);
  const auto& row = table.at({kKey, 10u, 100});
  EXPECT_EQ(row.count, 3u);
  EXPECT_EQ(row.max_us, 5000u);
  EXPECT_EQ(row.p50_us, std::min<std::uint64_t>(bucket_midpoint(bucket_index(4990)), 5000));
  EXPECT_EQ(table.at({kService, 10u, 100}).count, 4u);
  EXPECT_EQ(table.at({kService, 10u, 100}).p50_us, std::min<std::uint64_t>(bucket_midpoint(bucket_index(4990)), 5000));
  EXPECT_TRUE(check_rows(table, all_ids(table), store.served, "tick 100"));
  EXPECT_EQ(report.ticks, 11u) << "ticks 90..100";
}

TEST(Engine, FinalBatchesAreNotReadAgainAndOpenOnesAre) {
  FakeStore store;
  Engine engine(engine_config({10}, 10), store);
  engine.start(std::nullopt, 0, 100);
  add(store, events(kKey, 100, {10}), 1, 0);
  add(store, events(kKey, 100, {20}), 2, 0);
  engine.tick(101);
  EXPECT_EQ(engine.open_batches(), 2u);
  EXPECT_EQ(engine.floor(), 0u);
  add(store, events(kKey, 101, {30}), 3, 2);  // its rows say: 1 and 2 are committed
  engine.tick(102);
  EXPECT_EQ(engine.floor(), 2u);
  EXPECT_EQ(engine.open_batches(), 1u) << "only batch 3 is still read";
  // A final batch that changed anyway (it cannot, in ingest) is not seen: it is not read again.
  store.batches[1].visible.push_back({kKey, 101, 999999, false});
  store.markers.emplace(3, 3);
  const auto report = engine.tick(103);
  EXPECT_EQ(engine.open_batches(), 0u);
  for (const auto& row : report.rows) EXPECT_NE(row.stats.max_us, 999999u);
}

TEST(Engine, LateRowsRewriteEveryPublishedWindowThatHoldsThem) {
  FakeStore store;
  Engine engine(engine_config({3, 10}, 50), store);
  engine.start(std::nullopt, 0, 100);
  for (std::int64_t s = 95; s < 120; ++s) add(store, events(kKey, s, {100 + static_cast<std::uint64_t>(s)}), static_cast<std::uint64_t>(s), 0);
  Table table;
  table.write(engine.tick(120).rows);
  add(store, events(kKey, 110, {50000}), 200, 0);  // completed at 110, arrives at 121
  const auto report = engine.tick(121);
  std::set<std::pair<std::uint32_t, std::int64_t>> rewritten;
  for (const auto& row : report.rows) {
    if (row.correction && row.stats.key == kKey) rewritten.insert({row.stats.window_s, row.ts});
  }
  std::set<std::pair<std::uint32_t, std::int64_t>> expected;
  for (std::int64_t t = 111; t <= 113; ++t) expected.insert({3u, t});
  for (std::int64_t t = 111; t <= 120; ++t) expected.insert({10u, t});
  EXPECT_EQ(rewritten, expected) << "windows w at ticks (110, 110 + w], up to the last tick published";
  table.write(report.rows);
  EXPECT_TRUE(check_rows(table, all_ids(table), store.served, "after the late row"));
}

TEST(Engine, CorrectionsOlderThanMemoryReloadAndGiveTheSameRows) {
  // Two engines over the same arrivals: one holds every second it needs, the other none beyond its windows;
  // the second reloads what late rows need from the store and must write the same rows.
  FakeStore store;
  Engine holding(engine_config({5, 20}, 600), store);
  Engine reloading(engine_config({5, 20}, 0), store);
  holding.start(std::nullopt, 0, 1000);
  reloading.start(std::nullopt, 0, 1000);
  std::mt19937_64 rng(9);
  Table a, b;
  std::uint64_t seq = 0;
  for (std::int64_t now = 1001; now < 1300; ++now) {
    std::vector<Event> batch;
    for (int i = 0; i < 5; ++i) {
      const std::int64_t late = rng() % 10 == 0 ? 30 + static_cast<std::int64_t>(rng() % 200) : 0;
      batch.push_back({kKey, now - 1 - late, 100 + rng() % 100000, rng() % 5 == 0});
    }
    const std::uint64_t floor = seq;
    add(store, batch, ++seq, floor);
    const auto ra = holding.tick(now);
    const auto rb = reloading.tick(now);
    a.write(ra.rows);
    b.write(rb.rows);
    EXPECT_EQ(ra.reloaded_seconds, 0u);
  }
  EXPECT_GT(store.second_reads, 10u) << "the reload path ran";
  // The engine with memory republished 600 s at startup; from 1001 on both wrote the same rows.
  std::size_t compared = 0;
  for (const auto& id : b.ids()) {
    if (std::get<2>(id) <= 1000) continue;
    ASSERT_EQ(a.count(id), 1u);
    ASSERT_TRUE(same(b.at(id), a.at(id))) << "tick " << std::get<2>(id) << ": " << describe(b.at(id)) << " vs "
                                          << describe(a.at(id));
    ++compared;
  }
  for (const auto& id : a.ids()) compared -= std::get<2>(id) > 1000 ? 1 : 0;
  EXPECT_EQ(compared, 0u) << "the same rows after 1000 on both sides";
  EXPECT_TRUE(check_rows(a, all_ids(a), store.everything(), "all data"));
}

TEST(Engine, TooLargeReadsAreSplitAndOneTooLargeAloneFailsUntilItFits) {
  FakeStore store;
  for (std::uint64_t s = 1; s <= 40; ++s) {
    add(store, events(kKey, 1000 + static_cast<std::int64_t>(s % 8), {s * 100, s * 101}), s, 0, 2);
  }
  FakeStore unlimited = store;
  store.max_feed_rows = 7;
  store.max_second_rows = 7;
  Engine split(engine_config({10}, 5), store);
  Engine whole(engine_config({10}, 5), unlimited);
  split.start(std::nullopt, 0, 1000);
  whole.start(std::nullopt, 0, 1000);
  const auto rs = split.tick(1010);
  const auto rw = whole.tick(1010);
  EXPECT_GT(rs.splits, 3u);
  Table a, b;
  a.write(rs.rows);
  b.write(rw.rows);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& id : a.ids()) EXPECT_TRUE(same(a.at(id), b.at(id)));
  // One batch larger than any read may be: a real failure (not retried unchanged for ever by the engine:
  // the daemon backs off), the engine unchanged; once it fits, the tick goes through.
  std::vector<Event> big;
  for (std::int64_t s = 1000; s < 1010; ++s) big.push_back({kKey, s, 777, false});
  add(store, big, 41, 40);
  add(unlimited, big, 41, 40);
  EXPECT_THROW(split.tick(1011), ReadTooLarge);
  EXPECT_EQ(split.last_published(), 1010);
  store.max_feed_rows = 100;
  a.write(split.tick(1011).rows);
  b.write(whole.tick(1011).rows);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& id : a.ids()) EXPECT_TRUE(same(a.at(id), b.at(id))) << describe(a.at(id));
  EXPECT_TRUE(check_rows(a, all_ids(a), store.everything(), "all data"));
}

TEST(Engine, AShrunkenBatchTakesItsRowsAwayAndTheMaxIsReloaded) {
  FakeStore store;
  Engine engine(engine_config({10}, 30), store);
  engine.start(std::nullopt, 0, 1000);
  add(store, events(kKey, 1003, {100, 200}), 1, 0);
  add(store, events(kKey, 1003, {90000}), 2, 0);  // not final: read again each tick
  add(store, events(kKey, 1004, {300}), 3, 1);    // floor 1: batch 1 is final
  Table table;
  table.write(engine.tick(1010).rows);
  EXPECT_EQ(table.at({kKey, 10u, 1010}).max_us, 90000u);
  store.batches[2].visible.clear();  // someone truncated and rebuilt the table without it
  const auto report = engine.tick(1011);
  table.write(report.rows);
  EXPECT_TRUE(report.shrunk) << "the daemon starts over on it";
  EXPECT_GT(report.reloaded_seconds, 0u) << "the max of second 1003 reloaded";
  EXPECT_EQ(table.at({kKey, 10u, 1010}).max_us, 300u);
  EXPECT_EQ(table.at({kKey, 10u, 1010}).count, 3u);
  EXPECT_TRUE(check_rows(table, all_ids(table), store.served, "after the shrink"));
}

TEST(Engine, ARebuildThatMovesRequestsIntoAFinalBatchIsFollowed) {
  // A rebuild replays the stream into batches cut differently: requests a batch that is not final yet held
  // now sit in one that is final, which the engine does not read again. The shrink makes it reload the second.
  FakeStore store;
  Engine engine(engine_config({10}, 30), store);
  engine.start(std::nullopt, 0, 1000);
  add(store, events(kKey, 1003, {100}), 1, 0);
  add(store, events(kKey, 1003, {200, 300}), 2, 1);  // floor 1: batch 1 final, 2 not
  Table table;
  table.write(engine.tick(1010).rows);
  EXPECT_EQ(engine.floor(), 1u);
  store.batches[1].visible.push_back(store.batches[2].visible.front());  // 200 moved into batch 1
  store.batches[2].visible.erase(store.batches[2].visible.begin());
  const auto report = engine.tick(1011);
  table.write(report.rows);
  EXPECT_TRUE(report.shrunk);
  EXPECT_GT(report.reloaded_seconds, 0u);
  EXPECT_EQ(table.at({kKey, 10u, 1010}).count, 3u);
  EXPECT_TRUE(check_rows(table, all_ids(table), store.everything(), "after the rebuild"));
}

TEST(Engine, ARebuiltRollupIsNoticedAndAFreshEngineRewritesWhatItHolds) {
  // Sixty stream messages, one request each. Ingest cut them into batches of 3 (a batch's number: its last
  // message); a rebuild replays them into batches of 4. Batch 60 was not final yet: read again after the
  // rebuild it brings message 57 a second time (57 was final, in batch 57).
  FakeStore store;
  std::vector<Event> messages;
  for (std::int64_t m = 1; m <= 60; ++m) {
    messages.push_back({m % 2 == 0 ? kKey : Key{"s", "n"}, 990 + m / 4, 100 + static_cast<std::uint64_t>(m) * 7,
                        m % 5 == 0});
  }
  const auto cut = [&](std::size_t size) {
    store.batches.clear();
    std::uint64_t previous = 0;
    for (std::size_t i = 0; i < messages.size(); i += size) {
      FakeStore::Batch batch;
      const std::size_t end = std::min(i + size, messages.size());
      batch.visible.assign(messages.begin() + static_cast<long>(i), messages.begin() + static_cast<long>(end));
      batch.floor = previous;
      store.batches[end] = batch;
      previous = end;
    }
  };
  cut(3);
  auto engine = std::make_unique<Engine>(engine_config({10, 30}, 30), store);
  engine->start(std::nullopt, 0, 1000);
  Table table;
  table.write(engine->tick(1010).rows);
  ASSERT_TRUE(engine->sentinel());
  EXPECT_EQ(engine->sentinel()->batch, 57u);
  EXPECT_EQ(engine->sentinel()->requests, 3u);
  EXPECT_EQ(store.batch_requests(57), 3u) << "the table still says what the engine read";
  cut(4);
  table.write(engine->tick(1011).rows);
  EXPECT_FALSE(check_rows(table, all_ids(table), store.everything(), "counted twice")) << "the problem";
  EXPECT_NE(store.batch_requests(engine->sentinel()->batch), engine->sentinel()->requests) << "noticed";
  // A fresh engine from the table's floor, rewriting what its memory reaches.
  store.table = table.tick_keys();
  const std::int64_t last = engine->last_published();
  engine = std::make_unique<Engine>(engine_config({10, 30}, 30), store);
  engine->start(last, store.highest_floor(), last, true);
  const auto report = engine->tick(1012);
  EXPECT_GT(report.corrections, 0u);
  table.write(report.rows);
  EXPECT_TRUE(check_rows(table, all_ids(table), store.everything(), "after starting over"));
}

TEST(Engine, AStartOverWritesTheRowsOfTicksPublishedWhileTheRollupWasEmpty) {
  // A rebuild has just truncated the rollup and the daemon started over: the engine before published ticks
  // 971..1005 with no row at all (nothing to read). The replay then brings their requests back. The engine
  // after the next start-over must write those rows, though the table holds none at those ticks.
  FakeStore store;
  auto engine = std::make_unique<Engine>(engine_config({10}, 30), store);
  engine->start(std::nullopt, 0, 1000);
  const std::int64_t first_published = engine->last_published() + 1;
  Table table;
  table.write(engine->tick(1005).rows);
  EXPECT_EQ(table.size(), 0u) << "nothing to publish";
  add(store, events(kKey, 1001, {100, 200}), 1, 0);
  add(store, events(kKey, 1003, {300}), 2, 1);
  add(store, events(kKey, 1006, {400}), 3, 2);  // batch 2 final by this batch's floor
  store.table = table.tick_keys();
  const std::int64_t last = engine->last_published();
  engine = std::make_unique<Engine>(engine_config({10}, 30), store);
  engine->start(last, store.highest_floor(), last, true, first_published);
  table.write(engine->tick(1007).rows);
  ASSERT_EQ(table.count({kKey, 10u, 1002}), 1u) << "a tick published before with no row gets its row";
  EXPECT_EQ(table.at({kKey, 10u, 1002}).count, 2u);
  EXPECT_EQ(table.at({kKey, 10u, 1004}).count, 3u);
  EXPECT_TRUE(check_rows(table, all_ids(table), store.everything(), "after the start-over"));
  // Without the ticks published before, only the ticks this engine publishes get rows.
  Table without;
  Engine unaware(engine_config({10}, 30), store);
  unaware.start(last, store.highest_floor(), last, true);
  without.write(unaware.tick(1007).rows);
  EXPECT_EQ(without.count({kKey, 10u, 1002}), 0u) << "the hole the daemon used to leave";
}

TEST(Engine, StartupRepublishesItsMemoryAndCorrectsTheTicksTheTableHolds) {
  FakeStore store;
  std::uint64_t seq = 0;
  for (std::int64_t s = 900; s < 1000; ++s) {
    ++seq;
    add(store, events(kKey, s, {1000 + static_cast<std::uint64_t>(s)}), seq, seq - 1);
  }
  // The previous process wrote up to 990 and read up to floor 80; batches 81.. are read as the feed.
  std::set<std::pair<std::int64_t, Key>> written;
  for (std::int64_t t = 900; t <= 990; ++t) {
    written.insert({t, kKey});
    written.insert({t, kService});
  }
  store.table = written;
  add(store, events(kKey, 950, {123456}), 101, 80);  // late: rewrites ticks 951..960 of the 10 s window
  add(store, events(Key{"new", "m"}, 985, {5}), 102, 80);  // a key the table has no row for at 986..990
  Engine engine(engine_config({10}, 20), store);
  engine.start(990, 80, 1000);
  EXPECT_EQ(engine.last_published(), 990);
  const auto report = engine.tick(1000);
  Table table;
  table.write(report.rows);
  std::set<std::int64_t> new_ticks, corrected;
  for (const auto& row : report.rows) (row.correction ? corrected : new_ticks).insert(row.ts);
  EXPECT_EQ(*new_ticks.begin(), 991);
  EXPECT_EQ(*new_ticks.rbegin(), 1000);
  EXPECT_EQ(*corrected.begin(), 951);
  EXPECT_EQ(*corrected.rbegin(), 990);
  EXPECT_EQ(table.count({Key{"new", "m"}, 10u, 986}), 1u) << "requests at a published tick get their row";
  EXPECT_EQ(table.count({kKey, 10u, 950}), 0u) << "ticks it did not affect are left alone";
  EXPECT_EQ(store.table_reads, 1u);
  EXPECT_TRUE(check_rows(table, all_ids(table), store.everything(), "after startup"));
  // Nothing before the last tick of the table minus the memory is republished.
  Engine late(engine_config({10}, 20), store);
  late.start(900, 80, 1000);
  EXPECT_EQ(late.last_published(), 979) << "ticks from max(t_last + 1, t_start - memory)";
}

TEST(Engine, CatchUpAfterAStallIsCapped) {
  FakeStore store;
  EngineConfig config = engine_config({10}, 0);
  config.max_catch_up_ticks = 50;
  Engine engine(config, store);
  engine.start(std::nullopt, 0, 1000);
  for (std::int64_t s = 1000; s < 1200; s += 3) add(store, events(kKey, s, {400}), static_cast<std::uint64_t>(s), 0);
  const auto report = engine.tick(1200);
  EXPECT_EQ(report.ticks, 50u);
  EXPECT_EQ(report.skipped_ticks, 151u) << "1000..1150";
  Table table;
  table.write(report.rows);
  EXPECT_EQ(table.first_tick(), 1151);
  EXPECT_TRUE(check_rows(table, all_ids(table), store.served, "after the catch-up"));
}

TEST(Engine, ATickThatDoesNotAdvanceStillReadsAndCorrects) {
  FakeStore store;
  Engine engine(engine_config({10}, 10), store);
  engine.start(std::nullopt, 0, 100);
  add(store, events(kKey, 95, {10}), 1, 0);
  Table table;
  table.write(engine.tick(100).rows);
  add(store, events(kKey, 99, {20}), 2, 0);
  const auto report = engine.tick(99);  // the wall clock stepped back: nothing new to publish
  EXPECT_EQ(report.ticks, 0u);
  EXPECT_EQ(report.corrections, 2u) << "(100, key) and (100, service)";
  table.write(report.rows);
  EXPECT_TRUE(check_rows(table, all_ids(table), store.served, "after"));
}

TEST(Engine, RejectsBadConfigurations) {
  FakeStore store;
  EXPECT_THROW(Engine(engine_config({}, 5), store), std::invalid_argument);
  EXPECT_THROW(Engine(engine_config({0}, 5), store), std::invalid_argument);
  EXPECT_THROW(Engine(engine_config({10, 10}, 5), store), std::invalid_argument);
  EXPECT_THROW(Engine(engine_config({86401}, 5), store), std::invalid_argument);
  EXPECT_THROW(Engine(engine_config({10}, 5, 0), store), std::invalid_argument);
  Engine engine(engine_config({10}, 5), store);
  EXPECT_THROW(engine.tick(100), std::logic_error) << "tick before start";
  engine.start(std::nullopt, 0, 95);
  EXPECT_THROW(engine.start(std::nullopt, 0, 95), std::logic_error);
  EXPECT_NO_THROW(engine.tick(100));
}

TEST(WindowsAt, EqualsTheTruthOverEveryRow) {
  FakeStore store;
  std::mt19937_64 rng(3);
  for (std::uint64_t b = 0; b < 30; ++b) {
    std::vector<Event> batch;
    for (int i = 0; i < 20; ++i) {
      const Key key = i % 3 == 0 ? Key{"a", "x"} : i % 3 == 1 ? Key{"a", "y"} : Key{"b", ""};
      batch.push_back({key, 970 + static_cast<std::int64_t>(rng() % 40), rng() % 1000000, rng() % 4 == 0});
    }
    add(store, batch, b, 0, 1 + b % 3);
  }
  std::vector<RollupRow> rows;
  store.read_seconds(std::nullopt, 0, 2000, rows);
  const auto out = windows_at({5, 30}, 1000, rows);
  const Seconds all = store.everything();
  std::size_t checked = 0;
  for (const auto& row : out) {
    EXPECT_TRUE(same(row, truth(all, row.key, row.window_s, 1000))) << describe(row);
    ++checked;
  }
  EXPECT_EQ(checked, 4u * 2u) << "a/x, a/y, a, b; two windows each";
}
