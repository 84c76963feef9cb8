#include "rowbinary.h"

#include <cstring>
#include <stdexcept>

namespace tailwatch {

namespace {
template <typename T>
void put_raw(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}
template <typename T>
T get_raw(const char* data) {
  T value;
  std::memcpy(&value, data, sizeof(T));
  return value;
}
}  // namespace

void put_u32(std::string& out, std::uint32_t value) { put_raw(out, value); }
void put_u64(std::string& out, std::uint64_t value) { put_raw(out, value); }
void put_f64(std::string& out, double value) { put_raw(out, value); }

void put_string(std::string& out, std::string_view value) {
  std::uint64_t n = value.size();
  while (n >= 0x80) {
    out.push_back(static_cast<char>(static_cast<unsigned char>(n | 0x80)));
    n >>= 7;
  }
  out.push_back(static_cast<char>(n));
  out.append(value.data(), value.size());
}

const char* RowBinaryReader::take(std::size_t n, const char* what) {
  if (body_.size() - pos_ < n) {
    throw std::runtime_error(std::string("RowBinary: answer ends inside ") + what + " at byte " +
                             std::to_string(pos_));
  }
  const char* data = body_.data() + pos_;
  pos_ += n;
  return data;
}

std::uint16_t RowBinaryReader::u16(const char* what) { return get_raw<std::uint16_t>(take(2, what)); }
std::uint32_t RowBinaryReader::u32(const char* what) { return get_raw<std::uint32_t>(take(4, what)); }
std::uint64_t RowBinaryReader::u64(const char* what) { return get_raw<std::uint64_t>(take(8, what)); }

std::uint64_t RowBinaryReader::varint(const char* what) {
  std::uint64_t value = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    const auto byte = static_cast<unsigned char>(*take(1, what));
    value |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return value;
  }
  throw std::runtime_error(std::string("RowBinary: length of ") + what + " longer than 10 bytes");
}

std::string_view RowBinaryReader::string(const char* what) {
  const std::uint64_t n = varint(what);
  if (n > body_.size() - pos_) {
    throw std::runtime_error(std::string("RowBinary: ") + what + " of " + std::to_string(n) +
                             " bytes runs past the answer");
  }
  return {take(static_cast<std::size_t>(n), what), static_cast<std::size_t>(n)};
}

std::size_t RowBinaryReader::array_size(std::size_t element_size, const char* what) {
  const std::uint64_t n = varint(what);
  if (n > (body_.size() - pos_) / element_size) {
    throw std::runtime_error(std::string("RowBinary: ") + what + " of " + std::to_string(n) +
                             " elements runs past the answer");
  }
  return static_cast<std::size_t>(n);
}

const char* RowBinaryReader::bytes(std::size_t n, std::size_t element_size, const char* what) {
  if (n > (body_.size() - pos_) / element_size) {
    throw std::runtime_error(std::string("RowBinary: ") + what + " of " + std::to_string(n) +
                             " elements runs past the answer");
  }
  return take(n * element_size, what);
}

void parse_rollup_rowbinary(std::string_view body, std::vector<RollupRow>& rows) {
  RowBinaryReader in(body);
  std::size_t count = 0;
  // Rows past `count` are kept until the end (their buffers are reused the next time), then dropped.
  struct Trim {
    std::vector<RollupRow>& rows;
    std::size_t& count;
    ~Trim() { rows.resize(count); }
  } trim{rows, count};
  while (!in.done()) {
    if (count == rows.size()) rows.emplace_back();
    RollupRow& row = rows[count++];
    row.batch = in.u64("ingest_batch_seq");
    row.end_s = in.u32("end_ts");
    row.service.assign(in.string("service"));
    row.method.assign(in.string("method"));
    row.errors = in.u64("errors");
    row.max_us = in.u64("max");
    row.floor = in.u64("floor");
    const std::size_t n = in.array_size(2, "buckets");
    row.buckets.resize(n);
    const char* buckets = in.bytes(n, 2, "buckets");
    for (std::size_t i = 0; i < n; ++i) {
      const auto bucket = get_raw<std::uint16_t>(buckets + 2 * i);
      if (bucket >= kBucketCount) {
        throw std::runtime_error("RowBinary: bucket " + std::to_string(bucket) + " out of range");
      }
      row.buckets[i].bucket = bucket;
    }
    if (in.array_size(8, "counts") != n) throw std::runtime_error("RowBinary: bucket and count arrays differ in length");
    const char* counts = in.bytes(n, 8, "counts");
    for (std::size_t i = 0; i < n; ++i) row.buckets[i].count = get_raw<std::uint64_t>(counts + 8 * i);
  }
}

std::vector<std::pair<std::int64_t, Key>> parse_published_rowbinary(std::string_view body) {
  RowBinaryReader in(body);
  std::vector<std::pair<std::int64_t, Key>> rows;
  while (!in.done()) {
    const std::int64_t ts = in.u32("ts");
    Key key;
    key.service.assign(in.string("service"));
    key.method.assign(in.string("method"));
    rows.emplace_back(ts, std::move(key));
  }
  return rows;
}

std::vector<RowId> parse_row_ids_rowbinary(std::string_view body) {
  RowBinaryReader in(body);
  std::vector<RowId> rows;
  while (!in.done()) {
    RowId id;
    id.ts = in.u32("ts");
    id.window_s = in.u32("window_s");
    id.service.assign(in.string("service"));
    id.method.assign(in.string("method"));
    rows.push_back(std::move(id));
  }
  return rows;
}

void append_percentile_row(std::string& out, const PercentileRow& row) {
  const WindowStats& stats = row.stats;
  put_u32(out, static_cast<std::uint32_t>(row.ts));
  put_u32(out, stats.window_s);
  put_string(out, stats.key.service);
  put_string(out, stats.key.method);
  put_u64(out, stats.count);
  put_u64(out, stats.errors);
  put_f64(out, stats.rps);
  put_f64(out, stats.error_rate);
  for (const std::uint64_t value :
       {stats.p50_us, stats.p90_us, stats.p95_us, stats.p99_us, stats.p999_us, stats.max_us, row.version, row.floor}) {
    put_u64(out, value);
  }
}

}  // namespace tailwatch
