// An in-memory latency_profile_1s for the engine's tests: batches of requests that can grow over several
// reads, floor markers, and a record of what the engine has read ("served"), from which the truth its rows
// must equal is computed from scratch (every value sorted, the quantile rule of buckets.h and histogram.h).
#pragma once

#include <algorithm>
#include <functional>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "tailwatch/buckets.h"
#include "tailwatch/engine.h"
#include "tailwatch/rollup.h"

namespace tailwatch::testing {

/// One request: its key as stored (method "" is allowed), the second it completed in, its duration, error.
struct Event {
  Key key;
  std::int64_t end_s = 0;
  std::uint64_t value = 0;
  bool error = false;
  friend bool operator==(const Event& a, const Event& b) {
    return a.key == b.key && a.end_s == b.end_s && a.value == b.value && a.error == b.error;
  }
};

/// Events by end second and batch.
using Seconds = std::map<std::int64_t, std::map<std::uint64_t, std::vector<Event>>>;

class FakeStore : public Store {
 public:
  struct Batch {
    std::vector<Event> visible;  ///< what a read returns
    std::vector<Event> hidden;   ///< not inserted yet (the batch grows)
    std::uint64_t floor = 0;     ///< ingest_floor_seq of its rows
    std::size_t parts = 1;       ///< rows per (key, second): unmerged parts, events dealt round robin
  };
  std::map<std::uint64_t, Batch> batches;
  std::multimap<std::uint64_t, std::uint64_t> markers;  ///< floor markers: batch seq -> floor
  std::set<std::pair<std::int64_t, Key>> table;         ///< (tick, key) rows of latency_percentiles
  std::uint64_t recorded_rebuilds = 0;                  ///< rows of projection_rebuilds
  std::size_t max_feed_rows = std::numeric_limits<std::size_t>::max();    ///< above: ReadTooLarge
  std::size_t max_second_rows = std::numeric_limits<std::size_t>::max();  ///< above: ReadTooLarge
  bool down = false;                                                       ///< every read throws
  std::optional<int> fail_in;  ///< the read after this many more reads throws (then reads work again)
  /// Called before each read of batches: ingest goes on while the engine reads (batches grow, complete, new
  /// ones arrive with higher floors).
  std::function<void()> before_feed_read;
  std::size_t feed_reads = 0, second_reads = 0, table_reads = 0, refused = 0;
  /// What the engine has read: per end second and batch, the events of the last read.
  Seconds served;
  /// Seconds whose served events changed since the test last cleared this.
  std::set<std::int64_t> changed;

  void read_batches(std::uint64_t after, std::optional<std::uint64_t> upto, std::vector<RollupRow>& rows) override {
    check_up();
    if (before_feed_read) before_feed_read();
    std::vector<RollupRow> out;
    const auto end = upto ? batches.upper_bound(*upto) : batches.end();
    for (auto it = batches.upper_bound(after); it != end; ++it) rows_of(it->first, it->second, nullptr, out);
    const auto marker_end = upto ? markers.upper_bound(*upto) : markers.end();
    for (auto it = markers.upper_bound(after); it != marker_end; ++it) {
      RollupRow marker;
      marker.batch = it->first;
      marker.floor = it->second;
      marker.end_s = 1700000000;
      out.push_back(marker);
    }
    if (out.size() > max_feed_rows) {
      ++refused;
      throw ReadTooLarge("feed: " + std::to_string(out.size()) + " rows");
    }
    ++feed_reads;
    rows = std::move(out);
    for (auto it = batches.upper_bound(after); it != end; ++it) serve_batch(it->first, it->second);
    // Batches read before and gone now.
    for (auto it = served_seconds_.upper_bound(after); it != served_seconds_.end() && (!upto || it->first <= *upto);) {
      if (batches.count(it->first) == 0) {
        for (const auto s : it->second) serve(it->first, s, {});
        it = served_seconds_.erase(it);
      } else {
        ++it;
      }
    }
  }

  std::optional<std::uint64_t> highest_batch(std::uint64_t after) override {
    check_up();
    std::optional<std::uint64_t> top;
    if (!batches.empty() && batches.rbegin()->first > after) top = batches.rbegin()->first;
    if (!markers.empty() && markers.rbegin()->first > after) top = std::max(top.value_or(0), markers.rbegin()->first);
    return top;
  }

  void read_seconds(std::optional<std::uint64_t> final_upto, std::int64_t from, std::int64_t to,
                    std::vector<RollupRow>& rows) override {
    check_up();
    std::vector<RollupRow> out;
    const std::pair<std::int64_t, std::int64_t> range{from, to};
    const auto end = final_upto ? batches.upper_bound(*final_upto) : batches.end();
    std::vector<std::map<std::uint64_t, Batch>::const_iterator> hit;
    for (auto it = batches.cbegin(); it != end; ++it) {
      if (spans(it->first, it->second, from, to)) hit.push_back(it);
    }
    for (const auto& it : hit) rows_of(it->first, it->second, &range, out);
    if (out.size() > max_second_rows) {
      ++refused;
      throw ReadTooLarge("seconds: " + std::to_string(out.size()) + " rows");
    }
    ++second_reads;
    rows = std::move(out);
    for (const auto& it : hit) {
      std::map<std::int64_t, std::vector<Event>> by_second;
      for (const auto& e : it->second.visible) {
        if (e.end_s >= from && e.end_s < to) by_second[e.end_s].push_back(e);
      }
      for (auto& [s, events] : by_second) serve(it->first, s, std::move(events));
    }
  }

  std::optional<std::int64_t> last_second(std::optional<std::uint64_t> final_upto, std::int64_t from) override {
    check_up();
    std::optional<std::int64_t> last;
    const auto end = final_upto ? batches.upper_bound(*final_upto) : batches.end();
    for (auto it = batches.begin(); it != end; ++it) {
      for (const auto& e : it->second.visible) {
        if (e.end_s >= from) last = std::max(last.value_or(e.end_s), e.end_s);
      }
    }
    return last;
  }

  std::vector<std::pair<std::int64_t, Key>> published_rows(std::int64_t from, std::int64_t to) override {
    check_up();
    ++table_reads;
    std::vector<std::pair<std::int64_t, Key>> out;
    for (auto it = table.lower_bound({from, Key{}}); it != table.end() && it->first <= to; ++it) out.push_back(*it);
    return out;
  }

  std::uint64_t batch_requests(std::uint64_t batch) override {
    check_up();
    const auto it = batches.find(batch);
    return it == batches.end() ? 0 : it->second.visible.size();
  }

  std::uint64_t rebuilds() override {
    check_up();
    return recorded_rebuilds;
  }

  /// The highest floor any row carries (what the daemon takes when latency_percentiles has none).
  std::uint64_t highest_floor() const {
    std::uint64_t floor = 0;
    for (const auto& [seq, batch] : batches) {
      if (!batch.visible.empty()) floor = std::max(floor, batch.floor);
    }
    for (const auto& [seq, f] : markers) floor = std::max(floor, f);
    return floor;
  }

  /// The floor ingest would stamp now: the highest seq with every batch at or below it complete.
  std::uint64_t committed_floor() const {
    std::uint64_t floor = 0;
    for (const auto& [seq, batch] : batches) {
      if (!batch.hidden.empty()) break;
      floor = seq;
    }
    return floor;
  }

  /// Every visible event, as if everything had been read.
  Seconds everything() const {
    Seconds all;
    for (const auto& [seq, batch] : batches) {
      for (const auto& e : batch.visible) all[e.end_s][seq].push_back(e);
    }
    return all;
  }

 private:
  /// Whether a batch has visible events in [from, to) (its end seconds' span, cached per size).
  bool spans(std::uint64_t seq, const Batch& batch, std::int64_t from, std::int64_t to) {
    auto& [size, lo, hi] = spans_[seq];
    if (size != batch.visible.size() || size == 0) {
      size = batch.visible.size();
      lo = std::numeric_limits<std::int64_t>::max();
      hi = std::numeric_limits<std::int64_t>::min();
      for (const auto& e : batch.visible) {
        lo = std::min(lo, e.end_s);
        hi = std::max(hi, e.end_s);
      }
    }
    return size > 0 && lo < to && hi >= from;
  }

  void check_up() {
    if (down) throw std::runtime_error("store down");
    if (fail_in && --*fail_in <= 0) {
      fail_in.reset();
      throw std::runtime_error("store failed in the middle of a tick");
    }
  }

  void rows_of(std::uint64_t seq, const Batch& batch, const std::pair<std::int64_t, std::int64_t>* seconds,
               std::vector<RollupRow>& out) const {
    std::map<std::pair<std::int64_t, Key>, std::vector<const Event*>> groups;
    for (const auto& e : batch.visible) {
      if (seconds != nullptr && (e.end_s < seconds->first || e.end_s >= seconds->second)) continue;
      groups[{e.end_s, e.key}].push_back(&e);
    }
    for (const auto& [where, events] : groups) {
      for (std::size_t part = 0; part < batch.parts; ++part) {
        RollupRow row;
        row.batch = seq;
        row.end_s = where.first;
        row.service = where.second.service;
        row.method = where.second.method;
        row.floor = batch.floor;
        for (std::size_t i = part; i < events.size(); i += batch.parts) {
          row.buckets.push_back({bucket_index(events[i]->value), 1});
          row.errors += events[i]->error ? 1 : 0;
          row.max_us = std::max(row.max_us, events[i]->value);
        }
        if (!row.buckets.empty()) out.push_back(std::move(row));
      }
    }
  }

  void serve_batch(std::uint64_t seq, const Batch& batch) {
    std::map<std::int64_t, std::vector<Event>> by_second;
    for (const auto& e : batch.visible) by_second[e.end_s].push_back(e);
    auto& seconds = served_seconds_[seq];
    for (const auto s : seconds) {
      if (by_second.count(s) == 0) serve(seq, s, {});
    }
    seconds.clear();
    for (auto& [s, events] : by_second) {
      seconds.insert(s);
      serve(seq, s, std::move(events));
    }
  }

  void serve(std::uint64_t seq, std::int64_t s, std::vector<Event> events) {
    auto& slot = served[s];
    const auto it = slot.find(seq);
    if (events.empty()) {
      if (it != slot.end()) {
        slot.erase(it);
        changed.insert(s);
      }
      return;
    }
    if (it == slot.end() || it->second != events) {
      slot[seq] = std::move(events);
      changed.insert(s);
    }
    served_seconds_[seq].insert(s);
  }

  std::map<std::uint64_t, std::set<std::int64_t>> served_seconds_;
  std::map<std::uint64_t, std::tuple<std::size_t, std::int64_t, std::int64_t>> spans_;
};

/// The window (key, w) at tick t over `seconds`, from scratch: every value sorted, pXX the midpoint of the
/// bucket of the value at rank floor(q * n), capped at the max.
inline WindowStats truth(const Seconds& seconds, const Key& key, std::uint32_t w, std::int64_t t) {
  WindowStats row;
  row.key = key;
  row.window_s = w;
  std::vector<std::uint64_t> values;
  for (auto it = seconds.lower_bound(t - static_cast<std::int64_t>(w)); it != seconds.end() && it->first < t; ++it) {
    for (const auto& [batch, events] : it->second) {
      for (const auto& e : events) {
        if (e.key.service != key.service || (!key.method.empty() && e.key.method != key.method)) continue;
        values.push_back(e.value);
        row.errors += e.error ? 1 : 0;
      }
    }
  }
  row.count = values.size();
  row.rps = static_cast<double>(row.count) / static_cast<double>(w);
  if (values.empty()) return row;
  std::sort(values.begin(), values.end());
  row.max_us = values.back();
  row.error_rate = static_cast<double>(row.errors) / static_cast<double>(row.count);
  const auto at = [&](double q) {
    return std::min(bucket_midpoint(bucket_index(values[quantile_position(q, values.size())])), row.max_us);
  };
  row.p50_us = at(0.5);
  row.p90_us = at(0.9);
  row.p95_us = at(0.95);
  row.p99_us = at(0.99);
  row.p999_us = at(0.999);
  return row;
}

/// The keys the engine keeps for `seconds`: each stored (service, method) and each service as a whole.
inline std::set<Key> keys_of(const Seconds& seconds) {
  std::set<Key> keys;
  for (const auto& [s, batches] : seconds) {
    for (const auto& [batch, events] : batches) {
      for (const auto& e : events) {
        keys.insert(e.key);
        keys.insert(Key{e.key.service, ""});
      }
    }
  }
  return keys;
}

}  // namespace tailwatch::testing
