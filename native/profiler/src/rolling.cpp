#include "tailwatch/rolling.h"

#include <algorithm>
#include <limits>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace tailwatch {

namespace {

constexpr std::int64_t kNoTime = std::numeric_limits<std::int64_t>::min();
constexpr std::uint32_t kMaxWindow = 86400;

struct SecondData {
  SparseHistogram buckets;
  std::uint64_t errors = 0;
  std::uint64_t max_us = 0;
  bool empty() const noexcept { return buckets.empty(); }
  friend bool operator==(const SecondData& a, const SecondData& b) {
    return a.errors == b.errors && a.max_us == b.max_us && a.buckets == b.buckets;
  }
};

const SecondData kEmptySecond{};

/// Looks keys up by string_view so that a row costs no allocation when its key is already known.
struct KeyView {
  std::string_view service;
  std::string_view method;
};
struct KeyLess {
  using is_transparent = void;
  static std::pair<std::string_view, std::string_view> view(const Key& k) { return {k.service, k.method}; }
  static std::pair<std::string_view, std::string_view> view(const KeyView& k) { return {k.service, k.method}; }
  template <typename A, typename B>
  bool operator()(const A& a, const B& b) const {
    return view(a) < view(b);
  }
};
template <typename V>
using KeyMap = std::map<Key, V, KeyLess>;

struct Window {
  Histogram hist;
  std::uint64_t errors = 0;
  void add(const SecondData& s) {
    if (s.empty()) return;
    hist.merge(s.buckets);
    errors += s.errors;
  }
  void remove(const SecondData& s) {
    if (s.empty()) return;
    hist.subtract(s.buckets);
    errors -= s.errors;
  }
  void clear() {
    hist.clear();
    errors = 0;
  }
};

std::size_t slot_of(std::int64_t t, std::uint32_t size) {
  const std::int64_t m = static_cast<std::int64_t>(size);
  return static_cast<std::size_t>(((t % m) + m) % m);
}

}  // namespace

struct RollingEngine::KeyState {
  explicit KeyState(std::size_t ring_size, std::size_t window_count)
      : ring_ts(ring_size, kNoTime), ring(ring_size), ring_max(ring_size, 0), windows(window_count) {}
  std::vector<std::int64_t> ring_ts;  // second stored in each slot, kNoTime if none
  std::vector<SecondData> ring;
  std::vector<std::uint64_t> ring_max;  // ring[i].max_us, contiguous for the max scan
  std::vector<Window> windows;

  const SecondData& at(std::int64_t t, std::uint32_t size) const {
    const std::size_t slot = slot_of(t, size);
    return ring_ts[slot] == t ? ring[slot] : kEmptySecond;
  }
  /// Stores second t, swapping `data` with what its slot held (a second every window has dropped, or
  /// empty): `data` keeps that second's buffers for reuse and must not be read as second t again.
  void store(std::int64_t t, std::uint32_t size, SecondData& data) {
    const std::size_t slot = slot_of(t, size);
    ring_ts[slot] = t;
    ring_max[slot] = data.max_us;
    std::swap(ring[slot], data);
  }
};

namespace {
/// What one tick read for one key: a second's data per second of [from, to), and its exact maxima.
struct FreshKey {
  std::vector<SecondData> seconds;
  std::vector<std::uint64_t> max;
  bool used = false;  ///< read in this tick (entries of other keys are dropped at the end of the tick)
};
}  // namespace

/// Buffers advance() reuses from tick to tick, so a steady tick does not allocate for them.
struct RollingEngine::Scratch {
  KeyMap<FreshKey> fresh;
  SparseHistogram merge;  ///< normalize()'s
};

RollingEngine::RollingEngine(RollingConfig config)
    : config_(std::move(config)), end_(kNoTime), scratch_(std::make_unique<Scratch>()) {
  if (config_.windows_s.empty()) throw std::invalid_argument("at least one window is required");
  std::set<std::uint32_t> seen;
  for (const auto w : config_.windows_s) {
    if (w == 0 || w > kMaxWindow) {
      throw std::invalid_argument("window must be between 1 and 86400 seconds, got " + std::to_string(w));
    }
    if (!seen.insert(w).second) throw std::invalid_argument("duplicate window " + std::to_string(w));
    max_window_ = std::max(max_window_, w);
  }
  if (config_.late_margin_s > kMaxWindow) {
    throw std::invalid_argument("late margin must be at most 86400 seconds");
  }
}

RollingEngine::~RollingEngine() = default;
RollingEngine::RollingEngine(RollingEngine&&) noexcept = default;
RollingEngine& RollingEngine::operator=(RollingEngine&&) noexcept = default;

std::pair<std::int64_t, std::int64_t> RollingEngine::range_for(std::int64_t now) const noexcept {
  const std::int64_t oldest = now - static_cast<std::int64_t>(max_window_);
  if (end_ == kNoTime || end_ <= oldest) return {oldest, now};
  return {std::max(end_ - static_cast<std::int64_t>(config_.late_margin_s), oldest), now};
}

void RollingEngine::advance(std::int64_t now, const SecondsBatch& batch) {
  if (end_ != kNoTime && now < end_) {
    throw std::invalid_argument("time went backwards: " + std::to_string(now) + " < " + std::to_string(end_));
  }
  const auto [from, to] = range_for(now);
  if (batch.from > from || batch.to < to) throw std::invalid_argument("batch does not cover the tick's range");
  for (const auto& row : batch.histogram) {
    if (row.bucket >= kBucketCount) {
      throw std::out_of_range("bucket index " + std::to_string(row.bucket) + " out of range");
    }
  }
  for (const auto& row : batch.profile) {
    for (const auto& entry : row.buckets) {
      if (entry.bucket >= kBucketCount) {
        throw std::out_of_range("bucket index " + std::to_string(entry.bucket) + " out of range");
      }
    }
  }
  const auto span = static_cast<std::size_t>(to - from);
  if (!scratch_) scratch_ = std::make_unique<Scratch>();  // a moved-from engine

  // Fresh per-second data per key; each row also counts for its service as a whole (method ""). The entries
  // (and their seconds' buffers) of the keys seen last tick are reused.
  auto& fresh = scratch_->fresh;
  for (auto& entry : fresh) entry.second.used = false;
  const auto key_entry = [&](std::string_view service, std::string_view method) -> FreshKey& {
    auto it = fresh.find(KeyView{service, method});
    if (it == fresh.end()) it = fresh.emplace(Key{std::string(service), std::string(method)}, FreshKey{}).first;
    FreshKey& entry = it->second;
    if (!entry.used) {
      entry.used = true;
      entry.seconds.resize(span);
      for (auto& second : entry.seconds) {
        second.buckets.clear();
        second.errors = 0;
        second.max_us = 0;
      }
      entry.max.assign(span, 0);
    }
    return entry;
  };
  {
    const HistogramRow* last = nullptr;  // rows usually come grouped by key: skip the lookups then
    FreshKey* targets[2] = {nullptr, nullptr};
    for (const auto& row : batch.histogram) {
      if (row.ts < from || row.ts >= to || row.count == 0) continue;
      if (last == nullptr || last->service != row.service || last->method != row.method) {
        last = &row;
        targets[0] = &key_entry(row.service, row.method);
        targets[1] = row.method.empty() ? nullptr : &key_entry(row.service, "");
      }
      const auto i = static_cast<std::size_t>(row.ts - from);
      for (auto* target : targets) {
        if (target == nullptr) continue;
        target->seconds[i].buckets.push_back({row.bucket, row.count});
        target->seconds[i].errors += row.errors;
      }
    }
    for (const auto& row : batch.maxima) {
      if (row.ts < from || row.ts >= to) continue;
      const auto i = static_cast<std::size_t>(row.ts - from);
      for (const bool whole_service : {false, true}) {
        if (whole_service && row.method.empty()) continue;
        auto& max = key_entry(row.service, whole_service ? std::string_view() : row.method).max[i];
        max = std::max(max, row.max_us);
      }
    }
    const ProfileRow* last_row = nullptr;  // rows come ordered by (ts, service, method): keys repeat
    for (const auto& row : batch.profile) {
      if (row.ts < from || row.ts >= to) continue;
      if (last_row == nullptr || last_row->service != row.service || last_row->method != row.method) {
        last_row = &row;
        targets[0] = &key_entry(row.service, row.method);
        targets[1] = row.method.empty() ? nullptr : &key_entry(row.service, "");
      }
      const auto i = static_cast<std::size_t>(row.ts - from);
      for (auto* target : targets) {
        if (target == nullptr) continue;
        auto& second = target->seconds[i];
        second.buckets.insert(second.buckets.end(), row.buckets.begin(), row.buckets.end());
        second.errors += row.errors;
        target->max[i] = std::max(target->max[i], row.max_us);
      }
    }
  }
  for (auto it = fresh.begin(); it != fresh.end();) {
    if (!it->second.used) {
      it = fresh.erase(it);  // a key not read this tick: its buffers go
      continue;
    }
    FreshKey& entry = it->second;
    for (std::size_t i = 0; i < span; ++i) {
      auto& second = entry.seconds[i];
      if (second.buckets.empty()) continue;
      normalize(second.buckets, scratch_->merge);
      if (second.buckets.empty()) continue;
      // Exact max (latency_profile_1s rows carry it; per-bucket rows take it from request_stats_1s) when it
      // agrees with the histogram's highest bucket; otherwise (two rollups read at slightly different moments)
      // the nearest value inside that bucket.
      const std::uint32_t top = second.buckets.back().bucket;
      const std::uint64_t exact = entry.max[i];
      second.max_us = exact == 0 ? bucket_last(top) : std::clamp(exact, bucket_lower(top), bucket_last(top));
    }
    ++it;
  }

  for (const auto& entry : fresh) {
    if (keys_.count(entry.first) == 0) {
      keys_.emplace(entry.first, std::make_unique<KeyState>(max_window_, config_.windows_s.size()));
    }
  }

  const bool restart = end_ == kNoTime || now - end_ >= static_cast<std::int64_t>(max_window_);
  SecondData none;  // what is stored for a second without data (then holds the slot's old buffers)
  for (auto& [key, state] : keys_) {
    const auto found = fresh.find(key);
    std::vector<SecondData>* seconds = found == fresh.end() ? nullptr : &found->second.seconds;
    auto fresh_at = [&](std::int64_t t) -> const SecondData& {
      return seconds == nullptr ? kEmptySecond : (*seconds)[static_cast<std::size_t>(t - from)];
    };
    // A second's fresh data goes into the ring once no later step of this key reads it (its entry then holds
    // the slot's old buffers, for the next tick).
    auto store_fresh = [&](std::int64_t t) {
      if (seconds == nullptr) {
        none = SecondData{};
        state->store(t, max_window_, none);
      } else {
        state->store(t, max_window_, (*seconds)[static_cast<std::size_t>(t - from)]);
      }
    };

    // A: reconcile the re-read seconds that were already seen.
    if (!restart) {
      for (std::int64_t t = from; t < end_; ++t) {
        const SecondData& old_data = state->at(t, max_window_);
        const SecondData& new_data = fresh_at(t);
        if (old_data == new_data) continue;
        for (std::size_t w = 0; w < config_.windows_s.size(); ++w) {
          if (t < end_ - static_cast<std::int64_t>(config_.windows_s[w])) continue;
          state->windows[w].remove(old_data);
          state->windows[w].add(new_data);
        }
        store_fresh(t);  // step B reads only seconds >= end_
      }
    }
    // B: slide every window from end_ to now.
    for (std::size_t w = 0; w < config_.windows_s.size(); ++w) {
      const auto len = static_cast<std::int64_t>(config_.windows_s[w]);
      auto& window = state->windows[w];
      if (restart || now - end_ >= len) {
        window.clear();
        for (std::int64_t t = now - len; t < now; ++t) window.add(fresh_at(t));
      } else {
        for (std::int64_t t = end_; t < now; ++t) window.add(fresh_at(t));
        for (std::int64_t t = end_ - len; t < now - len; ++t) window.remove(state->at(t, max_window_));
      }
    }
    // C: keep the new seconds (their slots held seconds every window has dropped by now).
    for (std::int64_t t = restart ? from : end_; t < now; ++t) store_fresh(t);
  }
  end_ = now;

  const std::size_t largest = static_cast<std::size_t>(
      std::max_element(config_.windows_s.begin(), config_.windows_s.end()) - config_.windows_s.begin());
  for (auto it = keys_.begin(); it != keys_.end();) {
    if (it->second->windows[largest].hist.empty()) {
      it = keys_.erase(it);
    } else {
      ++it;
    }
  }
}

void RollingEngine::tick(std::int64_t now, DataSource& source) {
  const auto [from, to] = range_for(now);
  const SecondsBatch batch = source.fetch(from, to);
  advance(now, batch);
}

std::vector<WindowStats> RollingEngine::snapshot() const {
  std::vector<WindowStats> rows;
  if (end_ == kNoTime) return rows;
  rows.reserve(keys_.size() * config_.windows_s.size());
  for (const auto& [key, state] : keys_) {
    for (std::size_t w = 0; w < config_.windows_s.size(); ++w) {
      const auto len = config_.windows_s[w];
      const auto& window = state->windows[w];
      WindowStats row;
      row.key = key;
      row.window_s = len;
      row.count = window.hist.count();
      row.errors = window.errors;
      row.rps = static_cast<double>(row.count) / static_cast<double>(len);
      if (row.count > 0) {
        row.error_rate = static_cast<double>(row.errors) / static_cast<double>(row.count);
        std::size_t slot = slot_of(end_ - len, max_window_);
        for (std::int64_t t = end_ - len; t < end_; ++t) {
          if (state->ring_ts[slot] == t) row.max_us = std::max(row.max_us, state->ring_max[slot]);
          if (++slot == max_window_) slot = 0;
        }
        auto value = [&](double q) {
          return std::min(bucket_midpoint(window.hist.quantile_bucket(q)), row.max_us);
        };
        row.p50_us = value(0.5);
        row.p90_us = value(0.9);
        row.p95_us = value(0.95);
        row.p99_us = value(0.99);
        row.p999_us = value(0.999);
      }
      rows.push_back(std::move(row));
    }
  }
  return rows;
}

const Histogram* RollingEngine::window_histogram(const Key& key, std::uint32_t window_s) const {
  const auto it = keys_.find(key);
  if (it == keys_.end()) return nullptr;
  for (std::size_t w = 0; w < config_.windows_s.size(); ++w) {
    if (config_.windows_s[w] == window_s) return &it->second->windows[w].hist;
  }
  return nullptr;
}

std::uint64_t RollingEngine::window_errors(const Key& key, std::uint32_t window_s) const {
  const auto it = keys_.find(key);
  if (it == keys_.end()) return 0;
  for (std::size_t w = 0; w < config_.windows_s.size(); ++w) {
    if (config_.windows_s[w] == window_s) return it->second->windows[w].errors;
  }
  return 0;
}

std::size_t RollingEngine::key_count() const noexcept { return keys_.size(); }

}  // namespace tailwatch
