// The Publisher against a fake server that can store an INSERT and still fail it (a timeout after the
// commit), store part of one, or keep one running: no row may be stored twice, none may be lost.
#include "tailwatch/publisher.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

using namespace tailwatch;

namespace {

class FakeSink : public PercentileSink {
 public:
  enum class Outcome { kStore, kStoreThenFail, kStoreHalfThenFail, kFailBeforeStoring };
  std::vector<Outcome> next;         ///< outcomes of the next INSERTs (then kStore)
  std::size_t running_polls = 0;     ///< inserts_running() says 1 this many times
  bool reads_fail = false;
  std::vector<PercentileRow> stored;  ///< what the table holds, duplicates included
  std::vector<std::uint64_t> inserted_versions;
  std::size_t running_calls = 0;

  void insert(std::uint64_t version, const std::vector<PercentileRow>& rows) override {
    inserted_versions.push_back(version);
    for (const auto& row : rows) EXPECT_EQ(row.version, version);
    const Outcome outcome = next.empty() ? Outcome::kStore : next.front();
    if (!next.empty()) next.erase(next.begin());
    switch (outcome) {
      case Outcome::kStore:
        stored.insert(stored.end(), rows.begin(), rows.end());
        return;
      case Outcome::kStoreThenFail:
        stored.insert(stored.end(), rows.begin(), rows.end());
        throw std::runtime_error("timeout after the server stored the rows");
      case Outcome::kStoreHalfThenFail:
        stored.insert(stored.end(), rows.begin(), rows.begin() + static_cast<long>(rows.size() / 2));
        throw std::runtime_error("connection lost half way");
      case Outcome::kFailBeforeStoring:
        throw std::runtime_error("connection refused");
    }
  }
  std::size_t inserts_running() override {
    ++running_calls;
    if (reads_fail) throw std::runtime_error("down");
    if (running_polls > 0) {
      --running_polls;
      return 1;
    }
    return 0;
  }
  std::map<std::uint64_t, std::uint64_t> stored_counts(const std::vector<std::uint64_t>& versions, std::int64_t min_ts,
                                                       std::int64_t max_ts) override {
    if (reads_fail) throw std::runtime_error("down");
    std::map<std::uint64_t, std::uint64_t> counts;
    const std::set<std::uint64_t> wanted(versions.begin(), versions.end());
    for (const auto& row : stored) {
      if (wanted.count(row.version) > 0 && row.ts >= min_ts && row.ts <= max_ts) ++counts[row.version];
    }
    return counts;
  }
  std::vector<RowId> stored_rows(std::uint64_t version, std::int64_t min_ts, std::int64_t max_ts) override {
    if (reads_fail) throw std::runtime_error("down");
    std::vector<RowId> ids;
    for (const auto& row : stored) {
      if (row.version == version && row.ts >= min_ts && row.ts <= max_ts) ids.push_back(row.id());
    }
    return ids;
  }
  /// A server killed before its Buffer flushed: what the last inserts stored is gone.
  void lose_versions_from(std::uint64_t version) {
    stored.erase(std::remove_if(stored.begin(), stored.end(), [&](const PercentileRow& r) { return r.version >= version; }),
                 stored.end());
  }
  /// Every (id, version) stored exactly once?
  bool no_duplicates() const {
    std::set<std::pair<RowId, std::uint64_t>> seen;
    for (const auto& row : stored) {
      if (!seen.insert({row.id(), row.version}).second) return false;
    }
    return true;
  }
};

std::vector<TickRow> tick_rows(std::int64_t ts, std::size_t keys) {
  std::vector<TickRow> rows;
  for (std::size_t k = 0; k < keys; ++k) {
    TickRow row;
    row.ts = ts;
    row.stats.key = {"s", "m" + std::to_string(k)};
    row.stats.window_s = 10;
    row.stats.count = k;
    rows.push_back(row);
  }
  return rows;
}

struct Clock {
  std::uint64_t ms = 1700000000000;
};

PublisherOptions options(Clock& clock, std::size_t max_rows = 200000) {
  PublisherOptions o;
  o.max_rows = max_rows;
  o.now_ms = [&clock] { return clock.ms; };
  o.sleep = [&clock](double s) { clock.ms += static_cast<std::uint64_t>(s * 1000); };
  o.mono_s = [&clock] { return static_cast<double>(clock.ms) / 1000; };
  o.wait_running_s = 2;
  o.hold_s = 60;
  return o;
}

}  // namespace

TEST(Publisher, VersionsRiseAboveTheTableAndTheClock) {
  FakeSink sink;
  Clock clock;
  Publisher publisher(sink, 1800000000000, options(clock));
  EXPECT_EQ(publisher.add(tick_rows(100, 2), 7), 1800000000001u) << "above the table's highest version";
  EXPECT_EQ(publisher.add(tick_rows(101, 2), 7), 1800000000002u);
  Publisher fresh(sink, 5, options(clock));
  EXPECT_EQ(fresh.add(tick_rows(100, 1), 7), clock.ms) << "now in ms when that is higher";
  EXPECT_EQ(fresh.add(tick_rows(100, 1), 7), clock.ms + 1) << "same millisecond: last + 1";
  EXPECT_EQ(fresh.add({}, 7), 0u) << "nothing to write, no version";
  publisher.flush();
  ASSERT_EQ(sink.stored.size(), 4u);
  EXPECT_EQ(sink.stored[0].floor, 7u);
  EXPECT_EQ(sink.inserted_versions, (std::vector<std::uint64_t>{1800000000001, 1800000000002}));
  EXPECT_EQ(insert_query_id("profiler", 42), "tailwatch-profiler-profiler-42");
}

TEST(Publisher, AnInsertStoredThenFailedIsNotStoredTwice) {
  FakeSink sink;
  Clock clock;
  Publisher publisher(sink, 0, options(clock));
  publisher.add(tick_rows(100, 5), 1);
  sink.next = {FakeSink::Outcome::kStoreThenFail};
  sink.running_polls = 3;  // the server still runs it for a while
  EXPECT_THROW(publisher.flush(), std::runtime_error);
  EXPECT_EQ(publisher.pending_rows(), 5u);
  publisher.add(tick_rows(101, 5), 1);
  const auto report = publisher.flush();
  EXPECT_EQ(report.found_stored, 5u);
  EXPECT_EQ(report.rows_sent, 5u) << "only the new version";
  EXPECT_EQ(sink.running_calls, 4u) << "waited until no INSERT of the profiler ran";
  EXPECT_EQ(sink.stored.size(), 10u);
  EXPECT_TRUE(sink.no_duplicates());
  EXPECT_EQ(publisher.pending_rows(), 0u);
}

TEST(Publisher, APartlyStoredInsertSendsOnlyWhatIsMissing) {
  FakeSink sink;
  Clock clock;
  Publisher publisher(sink, 0, options(clock));
  publisher.add(tick_rows(100, 8), 1);
  sink.next = {FakeSink::Outcome::kStoreHalfThenFail, FakeSink::Outcome::kStoreHalfThenFail};
  EXPECT_THROW(publisher.flush(), std::runtime_error);
  EXPECT_THROW(publisher.flush(), std::runtime_error);  // 4 found, 2 of the other 4 stored, then failed
  const auto report = publisher.flush();
  EXPECT_EQ(report.found_stored, 2u);
  EXPECT_EQ(report.rows_sent, 2u);
  EXPECT_EQ(sink.stored.size(), 8u);
  EXPECT_TRUE(sink.no_duplicates());
}

TEST(Publisher, AnInsertThatStoredNothingIsSentAgainWhole) {
  FakeSink sink;
  Clock clock;
  Publisher publisher(sink, 0, options(clock));
  publisher.add(tick_rows(100, 3), 1);
  publisher.add(tick_rows(101, 3), 1);
  sink.next = {FakeSink::Outcome::kFailBeforeStoring};
  EXPECT_THROW(publisher.flush(), std::runtime_error);
  EXPECT_EQ(sink.inserted_versions.size(), 1u) << "the later version waits behind the one in doubt";
  sink.reads_fail = true;
  EXPECT_THROW(publisher.flush(), std::runtime_error) << "cannot tell what is stored: nothing is sent";
  EXPECT_EQ(sink.inserted_versions.size(), 1u);
  sink.reads_fail = false;
  publisher.flush();
  EXPECT_EQ(sink.stored.size(), 6u);
  EXPECT_TRUE(sink.no_duplicates());
  // Versions go to the server in order: a rewrite never lands before what it replaces.
  EXPECT_TRUE(std::is_sorted(sink.inserted_versions.begin(), sink.inserted_versions.end()));
}

TEST(Publisher, AnInsertStillRunningBlocksResending) {
  FakeSink sink;
  Clock clock;
  Publisher publisher(sink, 0, options(clock));
  publisher.add(tick_rows(100, 3), 1);
  sink.next = {FakeSink::Outcome::kFailBeforeStoring};
  EXPECT_THROW(publisher.flush(), std::runtime_error);
  sink.running_polls = 1000;  // longer than wait_running_s
  EXPECT_THROW(publisher.flush(), std::runtime_error);
  EXPECT_EQ(sink.inserted_versions.size(), 1u);
  sink.running_polls = 0;
  publisher.flush();
  EXPECT_EQ(sink.stored.size(), 3u);
}

TEST(Publisher, PendingRowsAreCappedOldestFirst) {
  FakeSink sink;
  Clock clock;
  Publisher publisher(sink, 0, options(clock, 10));
  sink.next = {FakeSink::Outcome::kFailBeforeStoring};
  publisher.add(tick_rows(100, 4), 1);
  EXPECT_THROW(publisher.flush(), std::runtime_error);
  sink.next = {FakeSink::Outcome::kFailBeforeStoring};
  publisher.add(tick_rows(101, 4), 1);
  publisher.add(tick_rows(102, 4), 1);
  EXPECT_EQ(publisher.dropped_rows(), 4u) << "the oldest group went";
  EXPECT_EQ(publisher.pending_rows(), 8u);
  publisher.add(tick_rows(103, 30), 1);
  EXPECT_EQ(publisher.pending_rows(), 10u) << "a group alone above the cap keeps its newest rows";
  EXPECT_EQ(publisher.dropped_rows(), 4u + 8u + 20u);
  sink.next.clear();
  publisher.flush();
  EXPECT_EQ(sink.stored.size(), 10u);
}

TEST(Publisher, RowsTheServerLostFromItsBufferAreSentAgainOnce) {
  FakeSink sink;
  Clock clock;
  Publisher publisher(sink, 0, options(clock));
  const auto v1 = publisher.add(tick_rows(100, 3), 1);
  publisher.flush();
  clock.ms += 1000;
  auto rewrite = tick_rows(100, 3);  // tick 100 rewritten (late rows): m0 and m1 only
  rewrite.pop_back();
  publisher.add(rewrite, 2);
  publisher.flush();
  clock.ms += 1000;
  publisher.add(tick_rows(101, 3), 2);
  publisher.flush();
  EXPECT_EQ(publisher.held_groups(), 3u);
  // The server is killed with the last two INSERTs still in its Buffer; the daemon cannot reach it.
  sink.lose_versions_from(v1 + 1);
  publisher.suspect_held();
  EXPECT_EQ(publisher.pending_groups(), 3u);
  const auto report = publisher.flush();
  EXPECT_EQ(report.rows_sent, 5u) << "the two lost groups, whole";
  EXPECT_EQ(report.found_stored, 3u) << "the first one was flushed";
  EXPECT_EQ(sink.stored.size(), 8u);
  EXPECT_TRUE(sink.no_duplicates());
  // Held groups older than hold_s are released: the Buffer has flushed them.
  clock.ms += 61000;
  publisher.suspect_held();
  EXPECT_EQ(publisher.pending_groups(), 0u);
}

TEST(Publisher, ALostRowThatALaterVersionRewritesIsNotSentAgain) {
  FakeSink sink;
  Clock clock;
  Publisher publisher(sink, 0, options(clock));
  publisher.add(tick_rows(100, 2), 1);
  publisher.flush();
  publisher.add(tick_rows(100, 2), 2);  // both rows rewritten
  publisher.flush();
  sink.stored.clear();  // everything lost
  publisher.suspect_held();
  const auto report = publisher.flush();
  EXPECT_EQ(report.rows_sent, 2u) << "only the latest version of each row";
  ASSERT_EQ(sink.stored.size(), 2u);
  EXPECT_EQ(sink.stored[0].version, sink.stored[1].version);
}
