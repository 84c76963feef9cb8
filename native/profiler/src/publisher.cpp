#include "tailwatch/publisher.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <stdexcept>
#include <thread>

namespace tailwatch {

std::string insert_query_id_prefix(const std::string& database) { return "tailwatch-profiler-" + database + "-"; }

std::string insert_query_id(const std::string& database, std::uint64_t version) {
  return insert_query_id_prefix(database) + std::to_string(version);
}

Publisher::Publisher(PercentileSink& sink, std::uint64_t last_version, PublisherOptions options)
    : sink_(sink), options_(std::move(options)), last_version_(last_version) {
  if (!options_.now_ms) {
    options_.now_ms = [] {
      return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                            std::chrono::system_clock::now().time_since_epoch())
                                            .count());
    };
  }
  if (!options_.sleep) {
    options_.sleep = [](double seconds) { std::this_thread::sleep_for(std::chrono::duration<double>(seconds)); };
  }
  if (!options_.mono_s) {
    options_.mono_s = [] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    };
  }
  if (options_.max_rows == 0) throw std::invalid_argument("max_rows must be at least 1");
}

std::size_t Publisher::Group::to_send() const {
  return static_cast<std::size_t>(std::count(send.begin(), send.end(), 1));
}

std::uint64_t Publisher::add(const std::vector<TickRow>& rows, std::uint64_t floor) {
  if (rows.empty()) return 0;
  Group group;
  group.version = std::max(last_version_ + 1, options_.now_ms());
  last_version_ = group.version;
  group.rows.reserve(rows.size());
  for (const auto& row : rows) group.rows.push_back({row.ts, row.stats, group.version, floor});
  if (group.rows.size() > options_.max_rows) {
    // Alone above the cap: keep its newest rows.
    std::stable_sort(group.rows.begin(), group.rows.end(),
                     [](const PercentileRow& a, const PercentileRow& b) { return a.ts < b.ts; });
    const std::size_t drop = group.rows.size() - options_.max_rows;
    group.rows.erase(group.rows.begin(), group.rows.begin() + static_cast<std::ptrdiff_t>(drop));
    dropped_rows_ += drop;
  }
  group.send.assign(group.rows.size(), 1);
  group.min_ts = group.max_ts = group.rows.front().ts;
  for (const auto& row : group.rows) {
    group.min_ts = std::min(group.min_ts, row.ts);
    group.max_ts = std::max(group.max_ts, row.ts);
  }
  pending_rows_ += group.rows.size();
  groups_.push_back(std::move(group));
  while (pending_rows_ > options_.max_rows && groups_.size() > 1) {
    const std::size_t n = groups_.front().to_send();
    pending_rows_ -= n;
    dropped_rows_ += n;
    groups_.pop_front();
  }
  return last_version_;
}

void Publisher::release_held() {
  const double now = options_.mono_s();
  while (!held_.empty() && now - held_.front().sent_at >= options_.hold_s) held_.pop_front();
}

void Publisher::suspect_held() {
  release_held();
  // Back in front of the waiting groups, oldest first: their versions are lower.
  while (!held_.empty()) {
    Group group = std::move(held_.back());
    held_.pop_back();
    group.send.assign(group.rows.size(), 1);
    group.in_doubt = true;
    pending_rows_ += group.rows.size();
    groups_.push_front(std::move(group));
  }
}

void Publisher::resolve_doubts(FlushReport& report) {
  std::vector<std::uint64_t> versions;
  std::int64_t min_ts = 0, max_ts = 0;
  for (const auto& group : groups_) {
    if (!group.in_doubt) continue;
    if (versions.empty()) {
      min_ts = group.min_ts;
      max_ts = group.max_ts;
    }
    versions.push_back(group.version);
    min_ts = std::min(min_ts, group.min_ts);
    max_ts = std::max(max_ts, group.max_ts);
  }
  if (versions.empty()) return;
  // An INSERT still running may yet store its rows: wait until none runs.
  double waited = 0;
  while (sink_.inserts_running() > 0) {
    if (waited >= options_.wait_running_s) {
      throw std::runtime_error("an earlier INSERT of the profiler is still running after " +
                               std::to_string(options_.wait_running_s) + " s");
    }
    options_.sleep(0.1);
    waited += 0.1;
  }
  const auto counts = sink_.stored_counts(versions, min_ts, max_ts);
  // Newest first: rows a later group writes again need not be sent (the later version wins anyway).
  std::set<RowId> rewritten;
  for (auto it = groups_.rbegin(); it != groups_.rend(); ++it) {
    Group& group = *it;
    if (group.in_doubt) {
      const std::size_t before = group.to_send();
      const auto found = counts.find(group.version);
      const std::uint64_t stored = found == counts.end() ? 0 : found->second;
      if (stored >= group.rows.size()) {
        group.send.assign(group.rows.size(), 0);
      } else if (stored > 0) {
        const auto ids = sink_.stored_rows(group.version, group.min_ts, group.max_ts);
        const std::set<RowId> present(ids.begin(), ids.end());
        for (std::size_t i = 0; i < group.rows.size(); ++i) {
          if (present.count(group.rows[i].id()) > 0) group.send[i] = 0;
        }
      }
      for (std::size_t i = 0; i < group.rows.size(); ++i) {
        if (group.send[i] != 0 && rewritten.count(group.rows[i].id()) > 0) group.send[i] = 0;
      }
      report.found_stored += before - group.to_send();
      pending_rows_ -= before - group.to_send();
      group.in_doubt = false;
    }
    for (std::size_t i = 0; i < group.rows.size(); ++i) {
      if (group.send[i] != 0) rewritten.insert(group.rows[i].id());
    }
  }
  groups_.erase(std::remove_if(groups_.begin(), groups_.end(), [](const Group& g) { return g.to_send() == 0; }),
                groups_.end());
}

Publisher::FlushReport Publisher::flush() {
  FlushReport report;
  release_held();
  try {
    resolve_doubts(report);
    std::vector<PercentileRow> batch;
    while (!groups_.empty()) {
      Group& group = groups_.front();
      batch.clear();
      for (std::size_t i = 0; i < group.rows.size(); ++i) {
        if (group.send[i] != 0) batch.push_back(group.rows[i]);
      }
      group.in_doubt = true;  // from here until the server says it is stored
      sink_.insert(group.version, batch);
      ++report.inserts;
      report.rows_sent += batch.size();
      pending_rows_ -= batch.size();
      // Held, every row of the version, until the Buffer has surely flushed it.
      group.in_doubt = false;
      group.sent_at = options_.mono_s();
      group.send.assign(group.rows.size(), 0);
      held_.push_back(std::move(group));
      groups_.pop_front();
    }
  } catch (...) {
    suspect_held();  // the server may have restarted: what it held in memory may be gone
    throw;
  }
  return report;
}

}  // namespace tailwatch
