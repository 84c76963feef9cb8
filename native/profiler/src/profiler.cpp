#include "profiler.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <ctime>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>

#include "tailwatch/clickhouse.h"
#include "tailwatch/publisher.h"
#include "tailwatch/schedule.h"

namespace tailwatch {

namespace {

volatile std::sig_atomic_t g_stop = 0;

/// The daemon's stop signals. They are blocked for the whole daemon (and every thread it starts), so a
/// signal that arrives during a tick stays pending: the tick finishes, and the next wait takes it.
sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

void block_stop_signals() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double mono_now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

/// Waits `seconds` or until a stop signal arrives (then g_stop = 1). One wakeup in the ordinary case: a
/// sigtimedwait on the blocked stop signals, on the monotonic clock's measure of time.
void sleep_for(double seconds) {
  const sigset_t set = stop_signals();
  const double until = mono_now() + seconds;
  while (g_stop == 0) {
    const double left = until - mono_now();
    if (left <= 0) return;
    timespec timeout{};
    timeout.tv_sec = static_cast<time_t>(left);
    timeout.tv_nsec = static_cast<long>((left - static_cast<double>(timeout.tv_sec)) * 1e9);
    if (sigtimedwait(&set, nullptr, &timeout) > 0) g_stop = 1;
  }
}

ClickHouseOptions clickhouse_options(const Config& config) {
  ClickHouseOptions options;
  options.url = config.clickhouse_url;
  options.user = config.user;
  options.password = config.password;
  // An answer may be a little larger in RowBinary than ClickHouse's in-memory measure of it.
  options.max_response_bytes = 2 * config.max_read_bytes + (std::size_t{1} << 20);
  return options;
}

/// Reads take at most this long on the server (max_execution_time), under the client's own timeout.
constexpr long kReadExecutionMs = 10000;
/// How often the daemon checks that the rollup was not rebuilt under it (one small read).
constexpr int kRebuildCheckTicks = 10;

EngineConfig engine_config(const Config& config) {
  EngineConfig engine;
  engine.windows_s = config.windows_s;
  engine.tick_s = config.tick_s;
  engine.correction_memory_s = config.correction_memory_s;
  return engine;
}

nlohmann::json row_json(std::int64_t ts, const WindowStats& row, std::uint64_t version, std::uint64_t floor) {
  return {
      {"ts", ts},
      {"window_s", row.window_s},
      {"service", row.key.service},
      {"method", row.key.method},
      {"count", row.count},
      {"errors", row.errors},
      {"rps", row.rps},
      {"error_rate", row.error_rate},
      {"p50_us", row.p50_us},
      {"p90_us", row.p90_us},
      {"p95_us", row.p95_us},
      {"p99_us", row.p99_us},
      {"p999_us", row.p999_us},
      {"max_us", row.max_us},
      {"version", version},
      {"ingest_floor_seq", floor},
  };
}

std::uint64_t now_ms() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

int run_once(const Config& config, std::ostream& out, std::ostream& err) {
  try {
    check_windows(config.windows_s);
    ClickHouseClient client(clickhouse_options(config));
    ClickHouseStore store(client, config.database, config.max_read_bytes, kReadExecutionMs);
    const std::int64_t now = config.now ? *config.now : static_cast<std::int64_t>(std::time(nullptr));
    const std::int64_t from = now - *std::max_element(config.windows_s.begin(), config.windows_s.end());
    OnceTiming timing;
    timing.from = from;
    timing.to = now;
    // Every row that completed in the largest window, whatever its batch: no feed, no finality.
    std::vector<RollupRow> rows, chunk;
    auto start = Clock::now();
    timing.splits = read_halving<std::int64_t>(from, now - 1, [&](std::int64_t a, std::int64_t b) {
      store.read_seconds(std::nullopt, a, b + 1, chunk);
      rows.insert(rows.end(), std::make_move_iterator(chunk.begin()), std::make_move_iterator(chunk.end()));
    });
    timing.read_ms = ms_since(start);
    timing.http_ms = store.stats().http_ms;
    timing.parse_ms = store.stats().parse_ms;
    timing.response_bytes = store.stats().bytes;
    timing.reads = store.stats().queries;
    timing.rows = rows.size();
    for (const auto& row : rows) timing.histogram_rows += row.buckets.size();
    start = Clock::now();
    const auto windows = windows_at(config.windows_s, now, rows);
    timing.compute_ms = ms_since(start);
    std::uint64_t version = 0;
    if (config.insert && !windows.empty()) {
      start = Clock::now();
      // Above every version in the table, so these rows are the latest of their (ts, window, key).
      const StartPoint point = store.start_point(now);
      version = std::max(point.v_last + 1, now_ms());
      std::vector<PercentileRow> out_rows;
      for (const auto& row : windows) out_rows.push_back({now, row, version, 0});
      ClickHouseSink sink(client, config.database);
      sink.insert(version, out_rows);
      timing.insert_ms = ms_since(start);
    }
    if (config.json) out << snapshot_json(config, now, windows, version, timing) << std::endl;
    return 0;
  } catch (const std::exception& error) {
    err << "tailwatch-profiler: " << error.what() << std::endl;
    return 1;
  }
}

/// The daemon: startup (retried until it succeeds), then one tick whenever one is due.
class Daemon {
 public:
  Daemon(const Config& config, std::ostream& err)
      : config_(config),
        err_(err),
        client_(clickhouse_options(config)),
        store_(client_, config.database, config.max_read_bytes, kReadExecutionMs),
        sink_(client_, config.database),
        schedule_(config.tick_s, config.settle_s) {}

  int run() {
    err_ << "tailwatch-profiler: reading " << config_.database << " at " << config_.clickhouse_url << ", windows";
    for (const auto w : config_.windows_s) err_ << ' ' << w << 's';
    err_ << ", tick " << config_.tick_s << "s, settle " << config_.settle_s << "s, correction memory "
         << config_.correction_memory_s << "s" << std::endl;
    while (g_stop == 0 && !engine_) {
      try {
        start();
        healthy();
      } catch (const std::exception& error) {
        engine_.reset();
        failed(std::string("startup: ") + error.what());
      }
    }
    while (g_stop == 0) {
      const auto due = schedule_.due(engine_->last_published(), unix_now(), mono_now(), last_publication_mono_);
      if (!due) {
        sleep_for(schedule_.wait(engine_->last_published(), unix_now(), mono_now(), last_publication_mono_));
        continue;
      }
      if (due->by_monotonic) {
        if (!stepped_back_logged_) {
          err_ << "tailwatch-profiler: the wall clock is behind the last tick published ("
               << engine_->last_published() << "); publishing one tick per " << config_.tick_s + 1
               << " s of monotonic time until it catches up" << std::endl;
          stepped_back_logged_ = true;
        }
      } else {
        stepped_back_logged_ = false;
      }
      try {
        tick(due->target);
        healthy();
      } catch (const std::exception& error) {
        failed(error.what());
      }
    }
    if (publisher_ && publisher_->pending_rows() > 0) {
      try {
        publisher_->flush();
      } catch (const std::exception& error) {
        err_ << "tailwatch-profiler: last flush failed: " << error.what() << std::endl;
      }
    }
    err_ << "tailwatch-profiler: stopping";
    if (publisher_ && publisher_->pending_rows() > 0) err_ << " (" << publisher_->pending_rows() << " rows not written)";
    err_ << std::endl;
    return 0;
  }

 private:
  void start() {
    // Read before anything else: a rebuild recorded while this engine starts is noticed at the first tick.
    rebuilds_seen_ = store_.rebuilds();
    const double wall = unix_now();
    const auto now = static_cast<std::int64_t>(wall);
    const StartPoint point = store_.start_point(now);
    const std::uint64_t floor = point.f_prev > 0 ? point.f_prev : store_.newest_partition_floor();
    const std::int64_t t_start = schedule_.wall_tick(wall);
    auto engine = std::make_unique<Engine>(engine_config(config_), store_);
    engine->start(point.t_last, floor, t_start);
    engine_ = std::move(engine);
    first_published_ = engine_->last_published() + config_.tick_s;
    PublisherOptions options;
    options.sleep = sleep_for;  // a stop signal ends the wait for a running INSERT
    publisher_ = std::make_unique<Publisher>(sink_, point.v_last, options);
    err_ << "tailwatch-profiler: started at tick " << t_start << ": last tick in the table "
         << (point.t_last ? std::to_string(*point.t_last) : std::string("none")) << ", floor " << floor
         << ", publishing from " << engine_->last_published() + config_.tick_s << std::endl;
    last_publication_mono_ = mono_now();
  }

  void tick(std::int64_t target) {
    check_rebuild_recorded();
    const ReadStats before = store_.stats();
    const std::int64_t published_before = engine_->last_published();
    TickReport report = engine_->tick(target);
    if (engine_->last_published() != published_before) last_publication_mono_ = mono_now();
    if (report.skipped_ticks > 0) {
      err_ << "tailwatch-profiler: catch-up capped at " << engine_->config().max_catch_up_ticks << " ticks: "
           << report.skipped_ticks << " ticks before " << engine_->last_published() << " skipped" << std::endl;
    }
    const std::uint64_t dropped = publisher_->dropped_rows();
    publisher_->add(report.rows, engine_->floor());
    if (publisher_->dropped_rows() > dropped) {
      err_ << "tailwatch-profiler: " << publisher_->dropped_rows() - dropped
           << " oldest pending rows dropped (more than 200000 waiting)" << std::endl;
    }
    const auto start = Clock::now();
    try {
      publisher_->flush();
    } catch (...) {
      log_timing(target, report, before, ms_since(start));
      throw;
    }
    log_timing(target, report, before, ms_since(start));
    if (report.shrunk) {
      start_over("a batch read again holds fewer requests than before");
    } else {
      check_rebuilt();
    }
  }

  /// Every tick: has ingest recorded a rebuild (projection_rebuilds) since the last look? Then the batches read
  /// from now on may hold requests already counted under other batch numbers, and the engine starts over.
  /// Unlike the checks below this does not depend on which batches the rebuild happened to cut the same way:
  /// a rebuild that left the last batch read before unchanged, followed by new batches that moved the sentinel,
  /// went unnoticed (a CI run of the derived-numbers suite counted 10-25 % too many after one).
  void check_rebuild_recorded() {
    const std::uint64_t recorded = store_.rebuilds();
    if (recorded == rebuilds_seen_) return;
    start_over("ingest recorded a rebuild in projection_rebuilds");
    rebuilds_seen_ = recorded;
  }

  /// Every kRebuildCheckTicks ticks: does latency_profile_1s still hold what the engine read of the last
  /// batch that turned final? A rebuild cuts the replayed requests into other batches, some above the floor,
  /// which would count twice (engine.h, REBUILDS): then a new engine starts from the table's current floor
  /// and rewrites every row its memory reaches.
  void check_rebuilt() {
    if (++ticks_since_check_ < kRebuildCheckTicks) return;
    ticks_since_check_ = 0;
    const auto sentinel = engine_->sentinel();
    if (!sentinel) return;
    const std::uint64_t now = store_.batch_requests(sentinel->batch);
    if (now == sentinel->requests) return;
    start_over("batch " + std::to_string(sentinel->batch) + " holds " + std::to_string(now) +
               " requests, it held " + std::to_string(sentinel->requests) + " when it became final");
  }

  /// latency_profile_1s was truncated or rebuilt: a new engine from its current floor, rewriting every row
  /// the engine's memory reaches (engine.h, REBUILDS).
  void start_over(const std::string& why) {
    const std::int64_t last = engine_->last_published();
    const std::uint64_t floor = store_.newest_partition_floor();
    err_ << "tailwatch-profiler: latency_profile_1s was truncated or rebuilt (" << why << "): starting over "
         << "from its floor " << floor << ", rewriting the rows of the last "
         << engine_->max_window() + config_.correction_memory_s << " s" << std::endl;
    auto engine = std::make_unique<Engine>(engine_config(config_), store_);
    engine->start(last, floor, last, true, first_published_);
    engine_ = std::move(engine);
    ticks_since_check_ = 0;
  }

  void log_timing(std::int64_t target, const TickReport& report, const ReadStats& before, double insert_ms) {
    if (!config_.log_timing) return;
    const ReadStats& after = store_.stats();
    const nlohmann::json timing = {
        {"read_ms", report.read_ms},
        {"http_ms", after.http_ms - before.http_ms},
        {"parse_ms", after.parse_ms - before.parse_ms},
        {"compute_ms", std::max(0.0, report.total_ms - report.read_ms)},
        {"insert_ms", insert_ms},
        {"response_bytes", after.bytes - before.bytes},
        {"rows", report.rows_read},
        {"histogram_rows", report.bucket_entries},
        {"batches", report.batches_read},
        {"reads", report.reads},
        {"splits", report.splits},
        {"ticks", report.ticks},
        {"published", report.published},
        {"corrections", report.corrections},
        {"reloaded_seconds", report.reloaded_seconds},
        {"floor", engine_->floor()},
        {"pending", publisher_->pending_rows()},
    };
    err_ << nlohmann::json{{"now", target}, {"timing", timing}}.dump() << std::endl;
  }

  void healthy() {
    if (failing_) {
      err_ << "tailwatch-profiler: ClickHouse is back; published up to " << engine_->last_published() << std::endl;
      failing_ = false;
    }
    backoff_s_ = 0.5;
  }

  void failed(const std::string& what) {
    // ClickHouse may have restarted and lost what its Buffer held: the rows stored lately are checked again.
    if (publisher_) publisher_->suspect_held();
    err_ << "tailwatch-profiler: " << what;
    if (publisher_) err_ << "; " << publisher_->pending_rows() << " rows pending";
    err_ << "; retrying in " << backoff_s_ << "s" << std::endl;
    failing_ = true;
    sleep_for(backoff_s_);
    backoff_s_ = std::min(backoff_s_ * 2, 30.0);
  }

  const Config& config_;
  std::ostream& err_;
  ClickHouseClient client_;
  ClickHouseStore store_;
  ClickHouseSink sink_;
  TickSchedule schedule_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Publisher> publisher_;
  double last_publication_mono_ = 0;
  double backoff_s_ = 0.5;
  int ticks_since_check_ = 0;
  std::uint64_t rebuilds_seen_ = 0;
  /// The first tick this daemon published: every tick since was published, by one engine or the next.
  std::int64_t first_published_ = 0;
  bool failing_ = false;
  bool stepped_back_logged_ = false;
};

int run_daemon(const Config& config, std::ostream& err) {
  block_stop_signals();  // before the client exists: no thread of it may take the signals
  check_windows(config.windows_s);
  Daemon daemon(config, err);
  return daemon.run();
}

}  // namespace

std::string snapshot_json(const Config& config, std::int64_t now, const std::vector<WindowStats>& rows,
                          std::uint64_t version, const OnceTiming& timing) {
  nlohmann::json doc;
  doc["now"] = now;
  doc["database"] = config.database;
  doc["windows_s"] = config.windows_s;
  doc["inserted"] = version != 0;
  doc["version"] = version;
  doc["timing"] = {{"read_ms", timing.read_ms},       {"http_ms", timing.http_ms},
                   {"parse_ms", timing.parse_ms},     {"compute_ms", timing.compute_ms},
                   {"insert_ms", timing.insert_ms},   {"response_bytes", timing.response_bytes},
                   {"rows", timing.rows},             {"histogram_rows", timing.histogram_rows},
                   {"reads", timing.reads},           {"splits", timing.splits},
                   {"from", timing.from},             {"to", timing.to}};
  doc["rows"] = nlohmann::json::array();
  for (const auto& row : rows) doc["rows"].push_back(row_json(now, row, version, 0));
  return doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

int run_profiler(const Config& config, std::ostream& out, std::ostream& err) {
  if (config.once) return run_once(config, out, err);
  try {
    return run_daemon(config, err);
  } catch (const std::exception& error) {
    err << "tailwatch-profiler: " << error.what() << std::endl;
    return 1;
  }
}

}  // namespace tailwatch
