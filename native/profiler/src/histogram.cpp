#include "tailwatch/histogram.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace tailwatch {

void normalize(SparseHistogram& sparse) {
  SparseHistogram scratch;
  normalize(sparse, scratch);
}

namespace {

/// Buckets are below kBucketCount (< 2^13): a stable LSD radix sort in two passes, by the low 7 bits (the
/// position inside a power of two) and then by the rest, in O(n) through `scratch`. Why not std::sort: the
/// rows of latency_profile_1s that the SummingMergeTree has not merged yet (the seconds a steady tick reads)
/// hold one entry per event in arrival order, and sorting them was a quarter of the daemon's CPU.
void sort_by_bucket(SparseHistogram& sparse, SparseHistogram& scratch) {
  constexpr std::uint32_t kLowBits = 7;
  constexpr std::uint32_t kLow = 1u << kLowBits;
  constexpr std::uint32_t kHigh = (kBucketCount + kLow - 1) / kLow;
  static_assert(kHigh <= 64, "buckets fit in 13 bits");
  if (scratch.size() < sparse.size()) scratch.resize(sparse.size());
  std::size_t low_starts[kLow + 1] = {};
  std::size_t high_starts[kHigh + 1] = {};
  for (const auto& entry : sparse) {
    ++low_starts[(entry.bucket & (kLow - 1)) + 1];
    ++high_starts[(entry.bucket >> kLowBits) + 1];
  }
  for (std::uint32_t i = 0; i < kLow; ++i) low_starts[i + 1] += low_starts[i];
  for (std::uint32_t i = 0; i < kHigh; ++i) high_starts[i + 1] += high_starts[i];
  for (const auto& entry : sparse) scratch[low_starts[entry.bucket & (kLow - 1)]++] = entry;
  for (std::size_t i = 0; i < sparse.size(); ++i) {
    sparse[high_starts[scratch[i].bucket >> kLowBits]++] = scratch[i];
  }
}

}  // namespace

void normalize(SparseHistogram& sparse, SparseHistogram& scratch) {
  for (const auto& entry : sparse) {
    if (entry.bucket >= kBucketCount) {
      throw std::out_of_range("bucket index " + std::to_string(entry.bucket) + " out of range");
    }
  }
  const auto by_bucket = [](const BucketCount& a, const BucketCount& b) { return a.bucket < b.bucket; };
  // What a tick gathers is usually a few sorted runs (merged rollup rows, one per method of a service):
  // merge those in linear time; sort anything more scattered (unmerged rows keep arrival order).
  constexpr std::size_t kMaxRuns = 8;
  std::size_t run_ends[kMaxRuns];
  std::size_t runs = 0;
  for (std::size_t i = 1; i <= sparse.size() && runs <= kMaxRuns; ++i) {
    if (i == sparse.size() || sparse[i].bucket < sparse[i - 1].bucket) {
      if (runs < kMaxRuns) run_ends[runs] = i;
      ++runs;
    }
  }
  if (runs > kMaxRuns) {
    sort_by_bucket(sparse, scratch);
  } else if (runs > 1) {
    // Each run is merged into the sorted prefix before it, through `scratch` (std::inplace_merge would
    // allocate a buffer of its own every time).
    if (scratch.size() < sparse.size()) scratch.resize(sparse.size());
    const auto at = [&](std::size_t i) { return sparse.begin() + static_cast<std::ptrdiff_t>(i); };
    for (std::size_t r = 1; r < runs; ++r) {
      const auto end = std::merge(at(0), at(run_ends[r - 1]), at(run_ends[r - 1]), at(run_ends[r]),
                                  scratch.begin(), by_bucket);
      std::copy(scratch.begin(), end, sparse.begin());
    }
  }
  std::size_t out = 0;
  for (std::size_t i = 0; i < sparse.size(); ++i) {
    if (out > 0 && sparse[out - 1].bucket == sparse[i].bucket) {
      sparse[out - 1].count += sparse[i].count;
    } else {
      sparse[out++] = sparse[i];
    }
  }
  sparse.resize(out);
  sparse.erase(std::remove_if(sparse.begin(), sparse.end(), [](const BucketCount& e) { return e.count == 0; }),
               sparse.end());
}

void sparse_add(SparseHistogram& into, const SparseHistogram& add, SparseHistogram& scratch) {
  if (add.empty()) return;
  for (const auto& entry : add) {
    if (entry.bucket >= kBucketCount) {
      throw std::out_of_range("bucket index " + std::to_string(entry.bucket) + " out of range");
    }
  }
  if (into.empty()) {
    into = add;
    return;
  }
  scratch.clear();
  scratch.reserve(into.size() + add.size());
  std::size_t i = 0, j = 0;
  while (i < into.size() || j < add.size()) {
    if (j == add.size() || (i < into.size() && into[i].bucket < add[j].bucket)) {
      scratch.push_back(into[i++]);
    } else if (i == into.size() || add[j].bucket < into[i].bucket) {
      if (add[j].count != 0) scratch.push_back(add[j]);
      ++j;
    } else {
      scratch.push_back({into[i].bucket, into[i].count + add[j].count});
      ++i;
      ++j;
    }
  }
  into.swap(scratch);
}

void sparse_subtract(SparseHistogram& from, const SparseHistogram& remove, SparseHistogram& scratch) {
  if (remove.empty()) return;
  scratch.clear();
  scratch.reserve(from.size());
  std::size_t i = 0;
  for (const auto& entry : remove) {
    while (i < from.size() && from[i].bucket < entry.bucket) scratch.push_back(from[i++]);
    if (entry.count == 0) continue;
    if (i == from.size() || from[i].bucket != entry.bucket || from[i].count < entry.count) {
      throw std::logic_error("subtract: sparse histogram is not contained in this one");
    }
    if (from[i].count > entry.count) scratch.push_back({entry.bucket, from[i].count - entry.count});
    ++i;
  }
  while (i < from.size()) scratch.push_back(from[i++]);
  from.swap(scratch);
}

void sparse_diff(const SparseHistogram& now, const SparseHistogram& before, SparseHistogram& plus,
                 SparseHistogram& minus) {
  plus.clear();
  minus.clear();
  std::size_t i = 0, j = 0;
  while (i < now.size() || j < before.size()) {
    if (j == before.size() || (i < now.size() && now[i].bucket < before[j].bucket)) {
      if (now[i].count != 0) plus.push_back(now[i]);
      ++i;
    } else if (i == now.size() || before[j].bucket < now[i].bucket) {
      if (before[j].count != 0) minus.push_back(before[j]);
      ++j;
    } else {
      if (now[i].count > before[j].count) plus.push_back({now[i].bucket, now[i].count - before[j].count});
      if (before[j].count > now[i].count) minus.push_back({now[i].bucket, before[j].count - now[i].count});
      ++i;
      ++j;
    }
  }
}

std::uint64_t total_count(const SparseHistogram& sparse) noexcept {
  std::uint64_t total = 0;
  for (const auto& entry : sparse) total += entry.count;
  return total;
}

std::uint64_t quantile_position(double q, std::uint64_t n) noexcept {
  if (n == 0) return 0;
  if (q >= 1.0) return n - 1;
  if (!(q > 0.0)) return 0;
  const auto position = static_cast<std::uint64_t>(q * static_cast<double>(n));
  return std::min(position, n - 1);
}

Histogram::Histogram() : counts_(kBucketCount, 0) {}

void Histogram::record(std::uint64_t value_us, std::uint64_t count) {
  if (count == 0) return;
  const std::uint32_t bucket = bucket_index(value_us);
  counts_[bucket] += count;
  blocks_[bucket / 128] += count;
  total_ += count;
  if (value_us > max_) max_ = value_us;
}

void Histogram::record_bucket(std::uint32_t bucket, std::uint64_t count) {
  if (bucket >= kBucketCount) throw std::out_of_range("bucket index " + std::to_string(bucket) + " out of range");
  if (count == 0) return;
  counts_[bucket] += count;
  blocks_[bucket / 128] += count;
  total_ += count;
  const std::uint64_t last = bucket_last(bucket);
  if (last > max_) {
    max_ = last;
    max_exact_ = false;
  }
}

void Histogram::merge(const Histogram& other) {
  if (other.total_ == 0) return;
  for (std::size_t block = 0; block < kBlocks; ++block) {
    if (other.blocks_[block] == 0) continue;
    blocks_[block] += other.blocks_[block];
    const std::size_t begin = block * 128;
    for (std::size_t i = begin; i < begin + 128; ++i) counts_[i] += other.counts_[i];
  }
  total_ += other.total_;
  if (other.max_ > max_) {
    max_ = other.max_;
    max_exact_ = other.max_exact_;
  } else if (other.max_ == max_) {
    max_exact_ = max_exact_ || other.max_exact_;
  }
}

void Histogram::merge(const SparseHistogram& other) {
  for (const auto& entry : other) {
    if (entry.bucket >= kBucketCount) {
      throw std::out_of_range("bucket index " + std::to_string(entry.bucket) + " out of range");
    }
  }
  for (const auto& entry : other) record_bucket(entry.bucket, entry.count);
}

void Histogram::subtract(const Histogram& other) {
  if (other.total_ == 0) return;
  for (std::size_t i = 0; i < kBucketCount; ++i) {
    if (other.counts_[i] > counts_[i]) throw std::logic_error("subtract: histogram is not contained in this one");
  }
  for (std::size_t block = 0; block < kBlocks; ++block) blocks_[block] -= other.blocks_[block];
  for (std::size_t i = 0; i < kBucketCount; ++i) counts_[i] -= other.counts_[i];
  total_ -= other.total_;
  after_removal();
}

void Histogram::subtract(const SparseHistogram& other) {
  // Check first (a sparse histogram may repeat a bucket if not normalized: sum per bucket via a pass that
  // subtracts and rolls back on failure).
  std::size_t done = 0;
  bool ok = true;
  for (; done < other.size(); ++done) {
    const auto& entry = other[done];
    if (entry.bucket >= kBucketCount || counts_[entry.bucket] < entry.count) {
      ok = false;
      break;
    }
    counts_[entry.bucket] -= entry.count;
  }
  if (!ok) {
    for (std::size_t i = 0; i < done; ++i) counts_[other[i].bucket] += other[i].count;
    throw std::logic_error("subtract: histogram is not contained in this one");
  }
  for (const auto& entry : other) {
    blocks_[entry.bucket / 128] -= entry.count;
    total_ -= entry.count;
  }
  if (!other.empty()) after_removal();
}

void Histogram::after_removal() noexcept {
  if (total_ == 0) {
    max_ = 0;
    max_exact_ = true;
    return;
  }
  const std::uint64_t bound = bucket_last(highest_bucket());
  if (bound < max_) max_ = bound;
  max_exact_ = false;
}

void Histogram::clear() noexcept {
  std::fill(counts_.begin(), counts_.end(), 0);
  blocks_.fill(0);
  total_ = 0;
  max_ = 0;
  max_exact_ = true;
}

std::uint32_t Histogram::quantile_bucket(double q) const {
  if (std::isnan(q) || q < 0.0 || q > 1.0) {
    throw std::invalid_argument("quantile level must be in [0, 1], got " + std::to_string(q));
  }
  if (total_ == 0) return kBucketCount;
  const std::uint64_t rank = quantile_position(q, total_) + 1;  // 1-based
  std::uint64_t seen = 0;
  std::size_t block = 0;
  for (; block < kBlocks; ++block) {
    if (seen + blocks_[block] >= rank) break;
    seen += blocks_[block];
  }
  const std::size_t begin = block * 128;
  for (std::size_t i = begin; i < begin + 128; ++i) {
    seen += counts_[i];
    if (seen >= rank) return static_cast<std::uint32_t>(i);
  }
  return highest_bucket();  // unreachable while blocks_ and counts_ agree
}

std::uint64_t Histogram::quantile(double q) const {
  const std::uint32_t bucket = quantile_bucket(q);
  if (bucket >= kBucketCount) return 0;
  return std::min(bucket_midpoint(bucket), max_);
}

std::uint64_t Histogram::bucket_count(std::uint32_t bucket) const noexcept {
  return bucket < kBucketCount ? counts_[bucket] : 0;
}

std::uint32_t Histogram::highest_bucket() const noexcept {
  for (std::size_t block = kBlocks; block-- > 0;) {
    if (blocks_[block] == 0) continue;
    for (std::size_t i = block * 128 + 128; i-- > block * 128;) {
      if (counts_[i] != 0) return static_cast<std::uint32_t>(i);
    }
  }
  return kBucketCount;
}

SparseHistogram Histogram::to_sparse() const {
  SparseHistogram sparse;
  for (std::size_t block = 0; block < kBlocks; ++block) {
    if (blocks_[block] == 0) continue;
    for (std::size_t i = block * 128; i < block * 128 + 128; ++i) {
      if (counts_[i] != 0) sparse.push_back({static_cast<std::uint32_t>(i), counts_[i]});
    }
  }
  return sparse;
}

bool Histogram::same_counts(const Histogram& other) const noexcept {
  return total_ == other.total_ && counts_ == other.counts_;
}

}  // namespace tailwatch
