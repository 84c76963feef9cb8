#include "tailwatch/engine.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <stdexcept>
#include <string_view>
#include <utility>

namespace tailwatch {

namespace {

constexpr std::uint32_t kMaxSeconds = 86400;
constexpr std::int64_t kNoTime = std::numeric_limits<std::int64_t>::min() / 4;

/// Looks keys up by string_view, so that a row costs no allocation when its key is known.
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

/// The requests of one key that completed in one second (or one batch's share of them).
struct SecondData {
  SparseHistogram buckets;   // normalized
  std::uint64_t errors = 0;
  std::uint64_t max_us = 0;  // meaningful when buckets is not empty
  bool empty() const noexcept { return buckets.empty(); }
};
const SecondData kEmptySecond{};

/// What one batch contributed, per (service, method) as stored and end second.
using Contribution = std::map<std::pair<Key, std::int64_t>, SecondData>;
const Contribution kNoContribution{};

/// The aggregate of a window's seconds: their dense histogram, errors, and a multiset of the maxima of the
/// non-empty ones (so the window's exact max costs O(log w) per second entering or leaving).
class WindowAcc {
 public:
  void add(const SecondData& s) {
    if (s.empty()) return;
    hist_.merge(s.buckets);
    errors_ += s.errors;
    ++maxima_[s.max_us];
  }
  void remove(const SecondData& s) {
    if (s.empty()) return;
    hist_.subtract(s.buckets);
    errors_ -= s.errors;
    drop_max(s.max_us);
  }
  /// One of its seconds changed: buckets + plus - minus, errors + errors_delta, from (was_empty, old_max) to
  /// (now_empty, new_max).
  void change(const SparseHistogram& plus, const SparseHistogram& minus, std::int64_t errors_delta, bool was_empty,
              std::uint64_t old_max, bool now_empty, std::uint64_t new_max) {
    hist_.merge(plus);
    hist_.subtract(minus);
    errors_ += static_cast<std::uint64_t>(errors_delta);  // modulo 2^64: a negative delta subtracts
    if (!was_empty) drop_max(old_max);
    if (!now_empty) ++maxima_[new_max];
  }
  void replace_max(std::uint64_t old_max, std::uint64_t new_max) {
    drop_max(old_max);
    ++maxima_[new_max];
  }
  void clear() {
    hist_.clear();
    errors_ = 0;
    maxima_.clear();
  }
  std::uint64_t count() const noexcept { return hist_.count(); }

  WindowStats stats(const Key& key, std::uint32_t window_s) const {
    WindowStats row;
    row.key = key;
    row.window_s = window_s;
    row.count = hist_.count();
    row.errors = errors_;
    row.rps = static_cast<double>(row.count) / static_cast<double>(window_s);
    if (row.count == 0) return row;
    row.error_rate = static_cast<double>(row.errors) / static_cast<double>(row.count);
    row.max_us = maxima_.empty() ? 0 : maxima_.rbegin()->first;
    const auto value = [&](double q) { return std::min(bucket_midpoint(hist_.quantile_bucket(q)), row.max_us); };
    row.p50_us = value(0.5);
    row.p90_us = value(0.9);
    row.p95_us = value(0.95);
    row.p99_us = value(0.99);
    row.p999_us = value(0.999);
    return row;
  }

 private:
  void drop_max(std::uint64_t value) {
    const auto it = maxima_.find(value);
    if (it == maxima_.end()) throw std::logic_error("window: a second's max is not in its window");
    if (--it->second == 0) maxima_.erase(it);
  }
  Histogram hist_;
  std::uint64_t errors_ = 0;
  std::map<std::uint64_t, std::uint32_t> maxima_;
};

/// Sorted, disjoint tick intervals [a, b]; intervals closer than `step` merge.
class TickSet {
 public:
  void insert(std::int64_t a, std::int64_t b, std::int64_t step) {
    if (!spans_.empty() && spans_.back().second + step >= a && spans_.back().first <= a) {
      spans_.back().second = std::max(spans_.back().second, b);  // the common case: appending a tick
      return;
    }
    auto it = std::lower_bound(spans_.begin(), spans_.end(), std::make_pair(a, a));
    if (it != spans_.begin() && std::prev(it)->second + step >= a) --it;
    auto last = it;
    while (last != spans_.end() && last->first <= b + step) {
      a = std::min(a, last->first);
      b = std::max(b, last->second);
      ++last;
    }
    it = spans_.erase(it, last);
    spans_.insert(it, {a, b});
  }
  bool contains(std::int64_t t) const {
    auto it = std::upper_bound(spans_.begin(), spans_.end(), std::make_pair(t, std::numeric_limits<std::int64_t>::max()));
    return it != spans_.begin() && std::prev(it)->second >= t;
  }
  /// The parts of [a, b] no interval covers.
  std::vector<std::pair<std::int64_t, std::int64_t>> gaps(std::int64_t a, std::int64_t b) const {
    std::vector<std::pair<std::int64_t, std::int64_t>> out;
    std::int64_t next = a;
    for (const auto& [x, y] : spans_) {
      if (y < next) continue;
      if (x > b) break;
      if (x > next) out.emplace_back(next, x - 1);
      next = std::max(next, y + 1);
      if (next > b) break;
    }
    if (next <= b) out.emplace_back(next, b);
    return out;
  }
  void erase_below(std::int64_t t) {
    auto it = spans_.begin();
    while (it != spans_.end() && it->second < t) ++it;
    spans_.erase(spans_.begin(), it);
    if (!spans_.empty() && spans_.front().first < t) spans_.front().first = t;
  }
  bool empty() const noexcept { return spans_.empty(); }

 private:
  std::vector<std::pair<std::int64_t, std::int64_t>> spans_;
};

/// Per key: the per-second data H and the windows at T_pub.
struct KeyState {
  explicit KeyState(std::size_t window_count) : windows(window_count) {}
  std::map<std::int64_t, SecondData> seconds;
  std::vector<WindowAcc> windows;
  const SecondData& at(std::int64_t s) const {
    const auto it = seconds.find(s);
    return it == seconds.end() ? kEmptySecond : it->second;
  }
};

/// Moves `acc`, the window of length w ending at `from`, to end at `to`: step by step, or summed afresh when
/// the two do not overlap. `at(s)` gives second s.
template <typename At>
void move_window(WindowAcc& acc, std::int64_t from, std::int64_t to, std::int64_t w, const At& at) {
  if (from == to) return;
  if (to - from >= w || from - to >= w) {
    acc.clear();
    for (std::int64_t s = to - w; s < to; ++s) acc.add(at(s));
  } else if (to > from) {
    for (std::int64_t s = from; s < to; ++s) acc.add(at(s));
    for (std::int64_t s = from - w; s < to - w; ++s) acc.remove(at(s));
  } else {
    for (std::int64_t s = to - w; s < from - w; ++s) acc.add(at(s));
    for (std::int64_t s = to; s < from; ++s) acc.remove(at(s));
  }
}

/// The same over a key's held seconds, visiting only seconds that hold data.
void move_window(WindowAcc& acc, std::int64_t from, std::int64_t to, std::int64_t w, const KeyState& key) {
  const auto range = [&](std::int64_t a, std::int64_t b, bool add) {
    for (auto it = key.seconds.lower_bound(a); it != key.seconds.end() && it->first < b; ++it) {
      if (add) {
        acc.add(it->second);
      } else {
        acc.remove(it->second);
      }
    }
  };
  if (from == to) return;
  if (to - from >= w || from - to >= w) {
    acc.clear();
    range(to - w, to, true);
  } else if (to > from) {
    range(from, to, true);
    range(from - w, to - w, false);
  } else {
    range(to - w, from - w, true);
    range(to, from, false);
  }
}

void add_row(KeyMap<std::map<std::int64_t, SecondData>>& into, const RollupRow& row) {
  const auto add = [&](std::string_view service, std::string_view method) {
    auto it = into.find(KeyView{service, method});
    if (it == into.end()) it = into.emplace(Key{std::string(service), std::string(method)}, std::map<std::int64_t, SecondData>{}).first;
    SecondData& second = it->second[row.end_s];
    second.buckets.insert(second.buckets.end(), row.buckets.begin(), row.buckets.end());
    second.errors += row.errors;
    second.max_us = std::max(second.max_us, row.max_us);
  };
  add(row.service, row.method);
  if (!row.method.empty()) add(row.service, "");
}

void check_buckets(const std::vector<RollupRow>& rows) {
  for (const auto& row : rows) {
    for (const auto& entry : row.buckets) {
      if (entry.bucket >= kBucketCount) {
        throw std::out_of_range("bucket index " + std::to_string(entry.bucket) + " out of range");
      }
    }
  }
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  const std::int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

}  // namespace

void check_windows(const std::vector<std::uint32_t>& windows_s) {
  if (windows_s.empty()) throw std::invalid_argument("at least one window is required");
  std::set<std::uint32_t> seen;
  for (const auto w : windows_s) {
    if (w == 0 || w > kMaxSeconds) {
      throw std::invalid_argument("window must be between 1 and 86400 seconds, got " + std::to_string(w));
    }
    if (!seen.insert(w).second) throw std::invalid_argument("duplicate window " + std::to_string(w));
  }
}

struct Engine::Impl {
  Impl(EngineConfig config_in, Store& store_in) : config(std::move(config_in)), store(store_in) {
    check_windows(config.windows_s);
    if (config.tick_s == 0 || config.tick_s > kMaxSeconds) throw std::invalid_argument("tick must be 1..86400 s");
    if (config.correction_memory_s > kMaxSeconds) throw std::invalid_argument("correction memory above 86400 s");
    if (config.max_catch_up_ticks == 0) throw std::invalid_argument("max_catch_up_ticks must be at least 1");
    for (std::size_t i = 0; i < config.windows_s.size(); ++i) {
      if (config.windows_s[i] > max_window) {
        max_window = config.windows_s[i];
        largest = i;
      }
    }
    tick = config.tick_s;
  }

  EngineConfig config;
  Store& store;
  std::uint32_t max_window = 0;
  std::size_t largest = 0;  // index of the largest window
  std::int64_t tick = 1;
  std::int64_t t_pub = kNoTime;
  std::int64_t held_from = kNoTime;
  std::uint64_t floor = 0;
  std::optional<std::int64_t> t_last;
  std::optional<Engine::Sentinel> sentinel;

  KeyMap<std::unique_ptr<KeyState>> keys;
  std::map<std::uint64_t, Contribution> records;  // the non-final batches' contributions, as last read
  KeyMap<std::set<std::int64_t>> dirty;           // seconds < T_pub changed since the last successful tick
  std::set<std::pair<Key, std::int64_t>> need_resync;  // held seconds a contribution shrank in (reloaded)
  TickSet published_ticks;                        // ticks this engine published
  KeyMap<TickSet> published;                      // (tick, key) rows this engine wrote
  TickSet prior_ticks;                            // ticks <= t_last the table holds rows for
  KeyMap<TickSet> prior;                          // (tick, key) rows the table held at ticks <= t_last
  TickSet prior_queried;                          // tick ranges asked for `prior`

  TickReport* report = nullptr;
  std::vector<RollupRow> rows;
  SparseHistogram plus, minus, scratch;
  WindowAcc walk;  // a window copied or summed for corrections

  std::int64_t align_down(std::int64_t t) const { return floor_div(t, tick) * tick; }
  std::int64_t align_up(std::int64_t t) const { return -floor_div(-t, tick) * tick; }
  std::int64_t window(std::size_t i) const { return config.windows_s[i]; }

  template <typename F>
  auto timed(F&& f) {
    const auto start = std::chrono::steady_clock::now();
    struct Account {
      TickReport* report;
      std::chrono::steady_clock::time_point start;
      ~Account() {
        if (report == nullptr) return;
        ++report->reads;
        report->read_ms +=
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      }
    } account{report, start};
    return f();
  }

  void count_rows() {
    if (report == nullptr) return;
    report->rows_read += rows.size();
    for (const auto& row : rows) report->bucket_entries += row.buckets.size();
  }

  KeyState& state_of(const Key& key) {
    auto it = keys.find(key);
    if (it == keys.end()) it = keys.emplace(key, std::make_unique<KeyState>(config.windows_s.size())).first;
    return *it->second;
  }

  // ---- startup ----

  void start(std::optional<std::int64_t> last, std::uint64_t floor_in, std::int64_t t_start, bool rewrite_held,
             std::optional<std::int64_t> published_since) {
    if (t_pub != kNoTime) throw std::logic_error("Engine::start called twice");
    t_last = last;
    floor = floor_in;
    t_start = align_down(t_start);
    std::int64_t first = align_up(t_start - static_cast<std::int64_t>(config.correction_memory_s));
    if (t_last) first = std::max(first, align_down(*t_last) + tick);
    t_pub = first - tick;
    held_from = t_pub - max_window - static_cast<std::int64_t>(config.correction_memory_s);
    // H from the final batches, every end second from held_from on (the seconds after t_start too: final
    // batches are never read again).
    const auto top = timed([&] { return store.last_second(floor, held_from); });
    if (top && *top >= held_from) {
      KeyMap<std::map<std::int64_t, SecondData>> loaded;
      read_halving<std::int64_t>(held_from, *top, [&](std::int64_t a, std::int64_t b) {
        timed([&] { store.read_seconds(floor, a, b + 1, rows); });
        check_buckets(rows);
        for (const auto& row : rows) {
          if (row.service.empty() || row.batch > floor || row.end_s < a || row.end_s > b) continue;
          add_row(loaded, row);
        }
      });
      for (auto& [key, seconds] : loaded) {
        KeyState& state = state_of(key);
        for (auto& [s, data] : seconds) {
          normalize(data.buckets, scratch);
          if (!data.empty()) state.seconds.emplace(s, std::move(data));
        }
      }
    }
    for (auto& [key, state] : keys) {
      for (std::size_t i = 0; i < state->windows.size(); ++i) {
        move_window(state->windows[i], t_pub - window(i), t_pub, window(i), *state);  // summed afresh
      }
    }
    if (rewrite_held && t_last && held_from < t_pub) {
      // Every second held is "changed": the first tick rewrites every row they reach, for the keys with
      // data and for the keys the table holds rows of.
      learn_prior(held_from + 1, std::min(t_pub, *t_last));
      if (published_since) {
        const std::int64_t from = align_up(std::max(*published_since, held_from + 1));
        const std::int64_t to = std::min(t_pub, *t_last);
        if (from <= to) published_ticks.insert(from, to, tick);
      }
      std::set<Key> all;
      for (const auto& [key, state] : keys) all.insert(key);
      for (const auto& [key, ticks] : prior) all.insert(key);
      for (const auto& key : all) {
        auto& seconds = dirty[key];
        for (std::int64_t s = held_from; s < t_pub; ++s) seconds.insert(seconds.end(), s);
      }
    }
  }

  // ---- the feed ----

  void read_feed() {
    std::uint64_t seen = floor;
    bool whole = false;
    try {
      seen = std::max(seen, read_batches(floor, std::nullopt));
      whole = true;
    } catch (const ReadTooLarge&) {
      ++report->splits;
    }
    if (!whole) {
      const auto top = timed([&] { return store.highest_batch(floor); });
      if (top && *top > floor) {
        report->splits += read_halving<std::uint64_t>(floor + 1, *top, [&](std::uint64_t a, std::uint64_t b) {
          seen = std::max(seen, read_batches(a - 1, b));
        });
      }
      // Batches read before and above every batch there is now: gone.
      const std::uint64_t above = top ? std::max(*top, floor) : floor;
      for (auto it = records.upper_bound(above); it != records.end();) {
        apply_contribution(it->second, kNoContribution);
        it = records.erase(it);
      }
    }
    floor = seen;
    // The newest batch turning final with requests is the sentinel (REBUILDS in engine.h).
    for (auto it = records.upper_bound(floor); it != records.begin();) {
      --it;
      std::uint64_t requests = 0;
      for (const auto& [where, data] : it->second) requests += total_count(data.buckets);
      if (requests == 0) continue;
      if (!sentinel || it->first > sentinel->batch) sentinel = Engine::Sentinel{it->first, requests};
      break;
    }
    records.erase(records.begin(), records.upper_bound(floor));
  }

  /// Reads the batches in (after, upto], applies what changed, returns the highest floor in the rows.
  std::uint64_t read_batches(std::uint64_t after, std::optional<std::uint64_t> upto) {
    timed([&] { store.read_batches(after, upto, rows); });
    count_rows();
    check_buckets(rows);
    std::uint64_t seen = 0;
    std::map<std::uint64_t, Contribution> fresh;
    std::set<std::uint64_t> batches;
    for (const auto& row : rows) {
      if (row.batch <= after || (upto && row.batch > *upto)) continue;  // not asked for
      seen = std::max(seen, row.floor);
      batches.insert(row.batch);
      if (row.service.empty()) continue;  // a floor marker
      SecondData& data = fresh[row.batch][{Key{row.service, row.method}, row.end_s}];
      data.buckets.insert(data.buckets.end(), row.buckets.begin(), row.buckets.end());
      data.errors += row.errors;
      data.max_us = std::max(data.max_us, row.max_us);
    }
    report->batches_read += batches.size();
    for (auto& [batch, contribution] : fresh) {
      for (auto& entry : contribution) normalize(entry.second.buckets, scratch);
    }
    for (auto& [batch, now] : fresh) {
      auto it = records.find(batch);
      apply_contribution(it == records.end() ? kNoContribution : it->second, now);
      records[batch] = std::move(now);
    }
    for (auto it = records.upper_bound(after); it != records.end() && (!upto || it->first <= *upto);) {
      if (fresh.count(it->first) == 0) {
        apply_contribution(it->second, kNoContribution);
        it = records.erase(it);
      } else {
        ++it;
      }
    }
    return seen;
  }

  /// Applies the change of one batch's contribution from `before` to `now`.
  void apply_contribution(const Contribution& before, const Contribution& now) {
    auto i = before.begin();
    auto j = now.begin();
    while (i != before.end() || j != now.end()) {
      if (j == now.end() || (i != before.end() && i->first < j->first)) {
        apply_change(i->first.first, i->first.second, i->second, kEmptySecond);
        ++i;
      } else if (i == before.end() || j->first < i->first) {
        apply_change(j->first.first, j->first.second, kEmptySecond, j->second);
        ++j;
      } else {
        apply_change(i->first.first, i->first.second, i->second, j->second);
        ++i;
        ++j;
      }
    }
  }

  void apply_change(const Key& stored, std::int64_t s, const SecondData& before, const SecondData& now) {
    sparse_diff(now.buckets, before.buckets, plus, minus);
    const auto errors_delta = static_cast<std::int64_t>(now.errors - before.errors);
    if (plus.empty() && minus.empty() && errors_delta == 0 && now.max_us == before.max_us) return;
    // A contribution that lost requests: the second is reloaded (resync_shrunk_seconds).
    const bool shrunk = !minus.empty() || now.errors < before.errors || now.max_us < before.max_us;
    apply_to(stored, s, errors_delta, now.max_us, shrunk);
    if (!stored.method.empty()) apply_to(Key{stored.service, ""}, s, errors_delta, now.max_us, shrunk);
  }

  /// Applies plus/minus (the members) and errors_delta to H(key, s) and to the windows that hold s.
  void apply_to(const Key& key, std::int64_t s, std::int64_t errors_delta, std::uint64_t contribution_max,
                bool shrunk) {
    if (s < t_pub) dirty[key].insert(s);
    if (s < held_from) return;  // not held: corrections reload it
    KeyState& state = state_of(key);
    SecondData& data = state.seconds[s];
    const bool was_empty = data.empty();
    const std::uint64_t old_max = data.max_us;
    sparse_add(data.buckets, plus, scratch);
    sparse_subtract(data.buckets, minus, scratch);
    data.errors += static_cast<std::uint64_t>(errors_delta);
    if (shrunk) {
      need_resync.insert({key, s});  // reloaded before this tick's corrections
      report->shrunk = true;
    }
    if (data.empty()) {
      data.max_us = 0;
    } else if (was_empty) {
      data.max_us = contribution_max;  // this batch holds all of the second
    } else if (!shrunk) {
      data.max_us = std::max(data.max_us, contribution_max);
    }  // else the old max stays, an upper bound until resync_shrunk_seconds()
    for (std::size_t i = 0; i < state.windows.size(); ++i) {
      if (s >= t_pub - window(i) && s < t_pub) {
        state.windows[i].change(plus, minus, errors_delta, was_empty, old_max, data.empty(), data.max_us);
      }
    }
    if (data.empty()) state.seconds.erase(s);
  }

  // ---- reloads ----

  /// The seconds [from, to) of every key: the final batches from the Store plus the non-final batches'
  /// contributions.
  KeyMap<std::map<std::int64_t, SecondData>> load_seconds(std::int64_t from, std::int64_t to) {
    KeyMap<std::map<std::int64_t, SecondData>> loaded;
    if (from >= to) return loaded;
    report->splits += read_halving<std::int64_t>(from, to - 1, [&](std::int64_t a, std::int64_t b) {
      timed([&] { store.read_seconds(floor, a, b + 1, rows); });
      count_rows();
      check_buckets(rows);
      for (const auto& row : rows) {
        if (row.service.empty() || row.batch > floor || row.end_s < a || row.end_s > b) continue;
        add_row(loaded, row);
      }
    });
    RollupRow row;
    for (const auto& [batch, contribution] : records) {
      for (const auto& [where, data] : contribution) {
        if (where.second < from || where.second >= to) continue;
        row.batch = batch;
        row.end_s = where.second;
        row.service = where.first.service;
        row.method = where.first.method;
        row.errors = data.errors;
        row.max_us = data.max_us;
        row.buckets = data.buckets;
        add_row(loaded, row);
      }
    }
    for (auto& [key, seconds] : loaded) {
      for (auto& [s, data] : seconds) normalize(data.buckets, scratch);
    }
    report->reloaded_seconds += static_cast<std::size_t>(to - from);
    return loaded;
  }

  /// Reloads every held second a batch's contribution shrank in (only a truncated or rebuilt table does
  /// that): its max can only be recomputed from all its contributions, and after a rebuild the requests a
  /// batch lost may sit in a batch that is final, which is not read again. The second becomes what the Store
  /// holds (final batches) plus the non-final batches' contributions; the difference is applied like a delta.
  void resync_shrunk_seconds() {
    std::int64_t lo = std::numeric_limits<std::int64_t>::max();
    std::int64_t hi = std::numeric_limits<std::int64_t>::min();
    for (const auto& [key, s] : need_resync) {
      if (s < held_from) continue;
      lo = std::min(lo, s);
      hi = std::max(hi, s);
    }
    if (lo > hi) {
      need_resync.clear();
      return;
    }
    const auto loaded = load_seconds(lo, hi + 1);
    for (const auto& [key, s] : need_resync) {
      if (s < held_from) continue;
      const SecondData* fresh = &kEmptySecond;
      if (const auto k = loaded.find(key); k != loaded.end()) {
        if (const auto d = k->second.find(s); d != k->second.end()) fresh = &d->second;
      }
      KeyState& state = state_of(key);
      SecondData& data = state.seconds[s];
      sparse_diff(fresh->buckets, data.buckets, plus, minus);
      const auto errors_delta = static_cast<std::int64_t>(fresh->errors - data.errors);
      if (plus.empty() && minus.empty() && errors_delta == 0 && fresh->max_us == data.max_us) {
        if (data.empty()) state.seconds.erase(s);
        continue;
      }
      for (std::size_t i = 0; i < state.windows.size(); ++i) {
        if (s >= t_pub - window(i) && s < t_pub) {
          state.windows[i].change(plus, minus, errors_delta, data.empty(), data.max_us, fresh->empty(),
                                  fresh->max_us);
        }
      }
      if (s < t_pub) dirty[key].insert(s);
      if (fresh->empty()) {
        state.seconds.erase(s);
      } else {
        data = *fresh;
      }
    }
    need_resync.clear();
  }

  // ---- corrections ----

  /// A tick whose rows may be rewritten: published by this engine, or held by the table at startup.
  bool tick_published(std::int64_t t) const {
    return published_ticks.contains(t) || (t_last && t <= *t_last && prior_ticks.contains(t));
  }
  /// Whether the row (t, key) was written (by this engine or, at ticks <= t_last, found in the table).
  bool row_published(const Key& key, std::int64_t t) const {
    if (const auto it = published.find(key); it != published.end() && it->second.contains(t)) return true;
    if (t_last && t <= *t_last) {
      const auto it = prior.find(key);
      return it != prior.end() && it->second.contains(t);
    }
    return false;
  }

  /// Learns which (tick, key) rows the table holds at ticks [a, b] (all <= t_last), once per tick.
  void learn_prior(std::int64_t a, std::int64_t b) {
    for (const auto& [x, y] : prior_queried.gaps(a, b)) {
      std::vector<std::pair<std::int64_t, Key>> found;
      report->splits += read_halving<std::int64_t>(x, y, [&](std::int64_t p, std::int64_t q) {
        auto part = timed([&] { return store.published_rows(p, q); });
        found.insert(found.end(), std::make_move_iterator(part.begin()), std::make_move_iterator(part.end()));
      });
      std::sort(found.begin(), found.end(), [](const auto& l, const auto& r) {
        return std::tie(l.second, l.first) < std::tie(r.second, r.first);
      });
      for (const auto& [t, key] : found) prior[key].insert(t, t, 1);
      std::sort(found.begin(), found.end(), [](const auto& l, const auto& r) { return l.first < r.first; });
      for (const auto& [t, key] : found) prior_ticks.insert(t, t, 1);
      prior_queried.insert(x, y, 1);
    }
  }

  std::vector<TickRow> corrections() {
    std::vector<TickRow> out;
    if (dirty.empty()) return out;
    struct Job {
      const Key* key;
      std::size_t window;
      std::vector<std::int64_t> ticks;
    };
    std::vector<Job> jobs;
    const std::int64_t oldest = align_up(t_pub - static_cast<std::int64_t>(config.correction_horizon_s));
    std::int64_t lo = std::numeric_limits<std::int64_t>::max();
    std::int64_t hi = std::numeric_limits<std::int64_t>::min();
    for (const auto& [key, seconds] : dirty) {
      for (std::size_t i = 0; i < config.windows_s.size(); ++i) {
        // Window w at tick T holds s iff T - w <= s < T: the ticks (s, s + w], up to T_pub.
        Job job{&key, i, {}};
        std::int64_t next = std::numeric_limits<std::int64_t>::min();  // first tick not listed yet
        for (const std::int64_t s : seconds) {
          const std::int64_t a = std::max({align_up(s + 1), oldest, next});
          const std::int64_t b = align_down(std::min(s + window(i), t_pub));
          for (std::int64_t t = a; t <= b; t += tick) job.ticks.push_back(t);
          next = std::max(next, b + tick);
        }
        if (job.ticks.empty()) continue;
        lo = std::min(lo, job.ticks.front());
        hi = std::max(hi, job.ticks.back());
        jobs.push_back(std::move(job));
      }
    }
    if (jobs.empty()) return out;
    if (t_last && lo <= *t_last) learn_prior(lo, std::min(hi, *t_last));
    std::int64_t need_from = held_from;
    for (auto& job : jobs) {
      job.ticks.erase(std::remove_if(job.ticks.begin(), job.ticks.end(),
                                     [&](std::int64_t t) { return !tick_published(t); }),
                      job.ticks.end());
      if (!job.ticks.empty()) need_from = std::min(need_from, job.ticks.front() - window(job.window));
    }
    const auto reloaded = load_seconds(need_from, held_from);

    for (const auto& job : jobs) {
      if (job.ticks.empty()) continue;
      const Key& key = *job.key;
      const std::int64_t w = window(job.window);
      const auto state_it = keys.find(key);
      const KeyState* state = state_it == keys.end() ? nullptr : state_it->second.get();
      const auto old_it = reloaded.find(key);
      const auto at = [&](std::int64_t s) -> const SecondData& {
        if (s >= held_from) return state == nullptr ? kEmptySecond : state->at(s);
        if (old_it == reloaded.end()) return kEmptySecond;
        const auto it = old_it->second.find(s);
        return it == old_it->second.end() ? kEmptySecond : it->second;
      };
      const std::int64_t first = job.ticks.front();
      const std::int64_t last = job.ticks.back();
      const bool held = first - w >= held_from;
      // Walking back from the current window costs T_pub - first seconds; summing the first window and
      // sliding forward costs w + (last - first).
      const bool back = held && state != nullptr && t_pub - first <= w + (last - first);
      // A row of a published tick is rewritten if it was written, or written now if it has requests (so
      // every window with requests at a published tick has its row, late as they came); never otherwise.
      const auto emit = [&](std::int64_t t) {
        if (walk.count() == 0 && !row_published(key, t)) return;
        out.push_back({t, walk.stats(key, config.windows_s[job.window]), true});
        published[key].insert(t, t, tick);
      };
      if (back) {
        walk = state->windows[job.window];
        std::int64_t at_tick = t_pub;
        for (auto it = job.ticks.rbegin(); it != job.ticks.rend(); ++it) {
          move_window(walk, at_tick, *it, w, at);
          at_tick = *it;
          emit(*it);
        }
      } else {
        walk.clear();
        std::int64_t at_tick = first - w;  // an empty window that does not overlap the first one
        for (const std::int64_t t : job.ticks) {
          move_window(walk, at_tick, t, w, at);
          at_tick = t;
          emit(t);
        }
      }
    }
    return out;
  }

  // ---- publication ----

  void publish(std::int64_t target, TickReport& result) {
    target = align_down(target);
    if (target <= t_pub) return;
    std::int64_t from = t_pub + tick;
    const std::int64_t cap = config.max_catch_up_ticks;
    if ((target - t_pub) / tick > cap) {
      from = target - (cap - 1) * tick;
      result.skipped_ticks = static_cast<std::size_t>((from - t_pub) / tick - 1);
      for (auto& [key, state] : keys) {
        for (std::size_t i = 0; i < state->windows.size(); ++i) {
          move_window(state->windows[i], t_pub, from - tick, window(i), *state);
        }
      }
    }
    for (std::int64_t t = from; t <= target; t += tick) {
      for (auto& [key, state] : keys) {
        for (std::size_t i = 0; i < state->windows.size(); ++i) {
          move_window(state->windows[i], t - tick, t, window(i), *state);
        }
        if (state->windows[largest].count() == 0) continue;
        for (std::size_t i = 0; i < state->windows.size(); ++i) {
          result.rows.push_back({t, state->windows[i].stats(key, config.windows_s[i]), false});
        }
        published[key].insert(t, t, tick);
      }
      published_ticks.insert(t, t, tick);
      ++result.ticks;
    }
    result.published = result.rows.size();
    t_pub = target;
  }

  void evict() {
    const std::int64_t keep_from = t_pub - max_window - static_cast<std::int64_t>(config.correction_memory_s);
    if (keep_from > held_from) {
      for (auto& [key, state] : keys) state->seconds.erase(state->seconds.begin(), state->seconds.lower_bound(keep_from));
      held_from = keep_from;
    }
    // A key without held seconds has empty windows (they lie inside the held range): drop it.
    for (auto it = keys.begin(); it != keys.end();) {
      it = it->second->seconds.empty() ? keys.erase(it) : std::next(it);
    }
    const std::int64_t oldest = t_pub - static_cast<std::int64_t>(config.correction_horizon_s);
    published_ticks.erase_below(oldest);
    prior_ticks.erase_below(oldest);
    for (auto* sets : {&published, &prior}) {
      for (auto it = sets->begin(); it != sets->end();) {
        it->second.erase_below(oldest);
        it = it->second.empty() ? sets->erase(it) : std::next(it);
      }
    }
    prior_queried.erase_below(oldest);
  }

  TickReport run_tick(std::int64_t target) {
    if (t_pub == kNoTime) throw std::logic_error("Engine::tick before start");
    const auto started = std::chrono::steady_clock::now();
    TickReport result;
    report = &result;
    struct Reset {
      TickReport*& report;
      ~Reset() { report = nullptr; }
    } reset{report};
    read_feed();
    resync_shrunk_seconds();
    auto corrected = corrections();
    publish(target, result);
    result.corrections = corrected.size();
    result.rows.insert(result.rows.end(), std::make_move_iterator(corrected.begin()),
                       std::make_move_iterator(corrected.end()));
    dirty.clear();
    evict();
    result.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    return result;
  }
};

Engine::Engine(EngineConfig config, Store& store) : impl_(std::make_unique<Impl>(std::move(config), store)) {}
Engine::~Engine() = default;

void Engine::start(std::optional<std::int64_t> t_last, std::uint64_t floor, std::int64_t t_start,
                   bool rewrite_held, std::optional<std::int64_t> published_since) {
  TickReport ignored;
  impl_->report = &ignored;
  struct Reset {
    TickReport*& report;
    ~Reset() { report = nullptr; }
  } reset{impl_->report};
  impl_->start(t_last, floor, t_start, rewrite_held, published_since);
}

TickReport Engine::tick(std::int64_t target) { return impl_->run_tick(target); }
std::int64_t Engine::last_published() const noexcept { return impl_->t_pub; }
std::uint64_t Engine::floor() const noexcept { return impl_->floor; }
std::int64_t Engine::held_from() const noexcept { return impl_->held_from; }
const EngineConfig& Engine::config() const noexcept { return impl_->config; }
std::uint32_t Engine::max_window() const noexcept { return impl_->max_window; }
std::size_t Engine::open_batches() const noexcept { return impl_->records.size(); }
std::optional<Engine::Sentinel> Engine::sentinel() const noexcept { return impl_->sentinel; }
std::size_t Engine::key_count() const noexcept { return impl_->keys.size(); }

std::vector<WindowStats> windows_at(const std::vector<std::uint32_t>& windows_s, std::int64_t now,
                                    const std::vector<RollupRow>& rows) {
  check_windows(windows_s);
  const std::int64_t max_window = *std::max_element(windows_s.begin(), windows_s.end());
  const std::size_t largest =
      static_cast<std::size_t>(std::max_element(windows_s.begin(), windows_s.end()) - windows_s.begin());
  check_buckets(rows);
  KeyMap<std::map<std::int64_t, SecondData>> seconds;
  for (const auto& row : rows) {
    if (row.service.empty() || row.end_s < now - max_window || row.end_s >= now) continue;
    add_row(seconds, row);
  }
  SparseHistogram scratch;
  std::vector<WindowAcc> windows(windows_s.size());
  std::vector<WindowStats> out;
  for (auto& [key, data] : seconds) {
    for (auto& [s, second] : data) normalize(second.buckets, scratch);
    for (std::size_t i = 0; i < windows_s.size(); ++i) {
      windows[i].clear();
      for (auto it = data.lower_bound(now - windows_s[i]); it != data.end() && it->first < now; ++it) {
        windows[i].add(it->second);
      }
    }
    if (windows[largest].count() == 0) continue;
    for (std::size_t i = 0; i < windows_s.size(); ++i) out.push_back(windows[i].stats(key, windows_s[i]));
  }
  return out;
}

}  // namespace tailwatch
