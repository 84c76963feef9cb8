#include "profiler.h"

#include <pthread.h>

#include <csignal>
#include <chrono>
#include <ctime>
#include <limits>
#include <algorithm>
#include <deque>
#include <nlohmann/json.hpp>
#include <ostream>
#include <thread>

#include "tailwatch/clickhouse.h"
#include "rowbinary.h"
#include "rows.h"

namespace tailwatch {

namespace {

nlohmann::json timing_object(const TickTiming& timing) {
  return {{"read_ms", timing.read_ms},         {"http_ms", timing.http_ms},
          {"parse_ms", timing.parse_ms},       {"compute_ms", timing.compute_ms},
          {"insert_ms", timing.insert_ms},     {"response_bytes", timing.response_bytes},
          {"rows", timing.rows},               {"histogram_rows", timing.histogram_rows},
          {"from", timing.from},               {"to", timing.to}};
}

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

/// Sleeps until the wall clock reaches `unix_s` or a stop signal arrives (then g_stop = 1). One wakeup per
/// call in the ordinary case: the wait is a sigtimedwait on the blocked stop signals, not a polling loop.
void sleep_until_unix(double unix_s) {
  const sigset_t set = stop_signals();
  while (g_stop == 0) {
    const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    if (now >= unix_s) return;
    const double left = unix_s - now;
    timespec timeout{};
    timeout.tv_sec = static_cast<time_t>(left);
    timeout.tv_nsec = static_cast<long>((left - static_cast<double>(timeout.tv_sec)) * 1e9);
    if (sigtimedwait(&set, nullptr, &timeout) > 0) g_stop = 1;
  }
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

/// Reads (into `batch`, whose buffers are reused), advances and snapshots. Throws (engine unchanged) if
/// reading fails.
std::vector<WindowStats> one_tick(RollingEngine& engine, ClickHouseSource& source, std::int64_t now,
                                  SecondsBatch& batch, TickTiming& timing) {
  const auto [from, to] = engine.range_for(now);
  timing.from = from;
  timing.to = to;
  auto start = Clock::now();
  source.fetch_into(from, to, batch);
  timing.read_ms = ms_since(start);
  timing.http_ms = source.last_fetch().http_ms;
  timing.parse_ms = source.last_fetch().parse_ms;
  timing.response_bytes = source.last_fetch().bytes;
  timing.rows = batch.profile.size();
  for (const auto& row : batch.profile) timing.histogram_rows += row.buckets.size();
  start = Clock::now();
  engine.advance(now, batch);
  auto rows = engine.snapshot();
  timing.compute_ms = ms_since(start);
  return rows;
}

RollingConfig rolling_config(const Config& config) {
  RollingConfig rolling;
  rolling.windows_s = config.windows_s;
  rolling.late_margin_s = config.late_margin_s;
  return rolling;
}

ClickHouseOptions clickhouse_options(const Config& config) {
  ClickHouseOptions options;
  options.url = config.clickhouse_url;
  options.user = config.user;
  options.password = config.password;
  return options;
}

int run_once(const Config& config, std::ostream& out, std::ostream& err) {
  try {
    RollingEngine engine(rolling_config(config));
    ClickHouseClient client(clickhouse_options(config));
    ClickHouseSource source(client, config.database);
    const std::int64_t now = config.now ? *config.now : static_cast<std::int64_t>(std::time(nullptr));
    TickTiming timing;
    SecondsBatch batch;
    const auto rows = one_tick(engine, source, now, batch, timing);
    if (config.insert && !rows.empty()) {
      const auto start = Clock::now();
      client.insert(percentile_insert_statement(config.database), percentile_rows_rowbinary(now, rows));
      timing.insert_ms = ms_since(start);
    }
    if (config.json) out << snapshot_json(config, now, rows, timing) << std::endl;
    return 0;
  } catch (const std::exception& error) {
    err << "tailwatch-profiler: " << error.what() << std::endl;
    return 1;
  }
}

int run_daemon(const Config& config, std::ostream& err) {
  block_stop_signals();  // before the client exists: no thread of it may take the signals
  RollingEngine engine(rolling_config(config));
  ClickHouseClient client(clickhouse_options(config));
  ClickHouseSource source(client, config.database);
  err << "tailwatch-profiler: reading " << config.database << " at " << config.clickhouse_url << " every "
      << config.tick_s << "s" << std::endl;

  constexpr std::size_t kMaxPendingRows = 200000;  // unsent rows kept across a ClickHouse outage
  // The INSERT's body, built in place: the statement, a newline, then the RowBinary rows not sent yet (one
  // tick's, or every tick's since ClickHouse became unreachable); their sizes, to drop the oldest.
  const std::string statement = percentile_insert_statement(config.database) + "\n";
  std::string pending = statement;
  std::deque<std::size_t> pending_sizes;
  SecondsBatch batch;  // the tick's rows, their buffers reused from tick to tick
  std::size_t dropped = 0;
  double backoff_s = 0.5;
  bool failing = false;
  const auto tick = static_cast<std::int64_t>(config.tick_s);

  while (g_stop == 0) {
    const auto now = static_cast<std::int64_t>(unix_now());
    if (engine.end() != std::numeric_limits<std::int64_t>::min() && now <= engine.end()) {
      sleep_until_unix(static_cast<double>((now / tick + 1) * tick));
      continue;
    }
    std::string failure;
    try {
      TickTiming timing;
      const auto rows = one_tick(engine, source, now, batch, timing);
      for (const auto& row : rows) {
        const std::size_t before = pending.size();
        append_percentile_row(pending, now, row);
        pending_sizes.push_back(pending.size() - before);
      }
      if (pending_sizes.size() > kMaxPendingRows) {
        std::size_t bytes = 0;
        while (pending_sizes.size() > kMaxPendingRows) {
          bytes += pending_sizes.front();
          pending_sizes.pop_front();
          ++dropped;
        }
        pending.erase(statement.size(), bytes);
      }
      if (!pending_sizes.empty()) {
        const auto start = Clock::now();
        client.execute(pending);
        timing.insert_ms = ms_since(start);
        pending.resize(statement.size());
        pending_sizes.clear();
      }
      if (config.log_timing) {
        err << nlohmann::json{{"now", now}, {"timing", timing_object(timing)}}.dump() << std::endl;
      }
    } catch (const std::exception& error) {
      failure = error.what();
    }
    if (!failure.empty()) {
      err << "tailwatch-profiler: " << failure << "; " << pending_sizes.size() << " rows pending";
      if (dropped > 0) err << ", " << dropped << " oldest rows dropped";
      err << "; retrying in " << backoff_s << "s" << std::endl;
      failing = true;
      sleep_until_unix(unix_now() + backoff_s);
      backoff_s = std::min(backoff_s * 2, 30.0);
      continue;
    }
    if (failing) {
      err << "tailwatch-profiler: ClickHouse is back; caught up to " << now << std::endl;
      failing = false;
    }
    backoff_s = 0.5;
    sleep_until_unix(static_cast<double>((now / tick + 1) * tick));
  }
  err << "tailwatch-profiler: stopping";
  if (!pending_sizes.empty()) err << " (" << pending_sizes.size() << " rows not written)";
  err << std::endl;
  return 0;
}

}  // namespace

std::string snapshot_json(const Config& config, std::int64_t now, const std::vector<WindowStats>& rows,
                          const TickTiming& timing) {
  nlohmann::json doc;
  doc["now"] = now;
  doc["database"] = config.database;
  doc["windows_s"] = config.windows_s;
  doc["late_margin_s"] = config.late_margin_s;
  doc["inserted"] = config.insert && !rows.empty();
  doc["timing"] = timing_object(timing);
  doc["rows"] = nlohmann::json::array();
  for (const auto& row : rows) {
    auto line = percentile_row(now, row);
    line["errors"] = row.errors;
    doc["rows"].push_back(std::move(line));
  }
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
