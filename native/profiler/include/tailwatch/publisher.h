// Writing latency_percentiles rows exactly once, through INSERTs whose outcome may be unknown.
//
// Every row carries a `version`: all rows of one INSERT share it, and it is max(last version + 1, now in ms),
// so a rewritten row always has a higher version than the one it replaces (readers take the latest:
// argMax(col, version) ... GROUP BY ts, window_s, service, method). Rows wait in groups, one per version,
// oldest first; each group goes in one INSERT under the query id "tailwatch-profiler-<database>-<version>".
// An INSERT that fails in any way (timeout, connection lost, error answer) may or may not have been stored,
// whole or in part: its group is "in doubt". Before anything is sent again, the Publisher waits until the
// server runs none of the profiler's INSERTs (by query id prefix), asks which versions in doubt are stored
// and how many of their rows, and sends again only what is missing: nothing of a complete version, the
// absent rows of a partial one, everything of an absent one. So no row is stored twice.
//
// latency_percentiles is a Buffer (migrations 0007, 0010): an INSERT that succeeded sits in the server's
// memory until the Buffer flushes it (within 30 s), and a server killed meanwhile loses it. So a group that
// was stored stays held for hold_s after its INSERT; suspect_held() (after any failure to reach the server,
// when it may have restarted) puts the held groups back in doubt, and the next flush() checks and resends
// what the server lost. A row that a later group rewrites is not sent again (the later version wins anyway).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "tailwatch/engine.h"

namespace tailwatch {

/// The identity of a latency_percentiles row: (ts, window_s, service, method).
struct RowId {
  std::int64_t ts = 0;
  std::uint32_t window_s = 0;
  std::string service;
  std::string method;
  friend bool operator<(const RowId& a, const RowId& b) {
    return std::tie(a.ts, a.window_s, a.service, a.method) < std::tie(b.ts, b.window_s, b.service, b.method);
  }
  friend bool operator==(const RowId& a, const RowId& b) {
    return a.ts == b.ts && a.window_s == b.window_s && a.service == b.service && a.method == b.method;
  }
};

/// One latency_percentiles row as written.
struct PercentileRow {
  std::int64_t ts = 0;
  WindowStats stats;
  std::uint64_t version = 0;
  std::uint64_t floor = 0;  ///< ingest_floor_seq: the engine's F when the row was computed
  RowId id() const { return {ts, stats.window_s, stats.key.service, stats.key.method}; }
};

/// "tailwatch-profiler-<database>-" and the query id of one version's INSERT.
std::string insert_query_id_prefix(const std::string& database);
std::string insert_query_id(const std::string& database, std::uint64_t version);

/// Where rows go (ClickHouse in production, memory in tests). Every method throws on failure.
class PercentileSink {
 public:
  virtual ~PercentileSink() = default;
  /// One INSERT of `rows` (all of `version`) under insert_query_id(version). When it throws, the rows may
  /// or may not be stored, whole or in part.
  virtual void insert(std::uint64_t version, const std::vector<PercentileRow>& rows) = 0;
  /// How many of the profiler's INSERTs (query id prefix) the server is running now.
  virtual std::size_t inserts_running() = 0;
  /// Rows stored per version, for the given versions, counting rows with ts in [min_ts, max_ts].
  virtual std::map<std::uint64_t, std::uint64_t> stored_counts(const std::vector<std::uint64_t>& versions,
                                                               std::int64_t min_ts, std::int64_t max_ts) = 0;
  /// The identities of the rows of `version` stored with ts in [min_ts, max_ts].
  virtual std::vector<RowId> stored_rows(std::uint64_t version, std::int64_t min_ts, std::int64_t max_ts) = 0;
};

struct PublisherOptions {
  std::size_t max_rows = 200000;              ///< pending rows kept; the oldest are dropped past it
  std::function<std::uint64_t()> now_ms;       ///< the wall clock in ms (default: the system clock)
  std::function<void(double)> sleep;           ///< waits that many seconds (default: this thread sleeps)
  double wait_running_s = 10;                  ///< how long flush() waits for running INSERTs to end
  double hold_s = 60;                          ///< how long a stored group stays held (Buffer: 30 s)
  std::function<double()> mono_s;              ///< a monotonic clock in s (default: steady_clock)
};

class Publisher {
 public:
  /// `last_version`: the highest version already in the table (new versions are above it).
  Publisher(PercentileSink& sink, std::uint64_t last_version, PublisherOptions options = {});

  /// Queues `rows` as one new version, their ingest_floor_seq set to `floor`; returns the version (0 and
  /// nothing queued when `rows` is empty). Past max_rows pending, the oldest groups are dropped (whole; a
  /// group alone above it keeps its newest rows) and counted in dropped_rows().
  std::uint64_t add(const std::vector<TickRow>& rows, std::uint64_t floor);

  struct FlushReport {
    std::size_t inserts = 0;       ///< INSERTs that succeeded
    std::size_t rows_sent = 0;     ///< rows in them
    std::size_t found_stored = 0;  ///< rows in doubt found stored (not sent again)
  };
  /// Sends every pending group, oldest first, resolving the groups in doubt first (see the header comment).
  /// Throws on the first failure: that group is then in doubt, the held ones too; the later ones wait.
  FlushReport flush();

  /// The server may have lost what it held in memory (it was unreachable, it may have restarted): the held
  /// groups go back in doubt, to be checked by the next flush().
  void suspect_held();

  std::size_t pending_rows() const noexcept { return pending_rows_; }
  std::size_t pending_groups() const noexcept { return groups_.size(); }
  std::size_t held_groups() const noexcept { return held_.size(); }
  std::uint64_t dropped_rows() const noexcept { return dropped_rows_; }
  std::uint64_t last_version() const noexcept { return last_version_; }

 private:
  struct Group {
    std::uint64_t version = 0;
    std::vector<PercentileRow> rows;  ///< every row of the version
    std::vector<char> send;           ///< per row: still to send (not known to be stored)
    std::int64_t min_ts = 0, max_ts = 0;
    bool in_doubt = false;
    double sent_at = 0;  ///< when it was stored (held groups)
    std::size_t to_send() const;
  };
  void resolve_doubts(FlushReport& report);
  void release_held();

  PercentileSink& sink_;
  PublisherOptions options_;
  std::uint64_t last_version_;
  std::deque<Group> groups_;  ///< waiting, oldest version first
  std::deque<Group> held_;    ///< stored, maybe only in the Buffer yet; oldest first
  std::size_t pending_rows_ = 0;
  std::uint64_t dropped_rows_ = 0;
};

}  // namespace tailwatch
