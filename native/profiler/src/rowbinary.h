// ClickHouse's RowBinary format (private): the answers the profiler reads and the INSERT body it writes.
//
// RowBinary is what ClickHouse reads and writes with the least work (no digits, quotes or escapes): numbers
// little-endian at their fixed width, DateTime as UInt32 seconds, String as a LEB128 length and the raw bytes,
// Array(T) as a LEB128 element count and the elements. Names are sent byte for byte (no UTF-8 repair needed,
// nothing to escape). A RowBinary body carries no types: the reader and writer here hold the columns'
// types, and the statements that go with them (feed_query, seconds_query, published_rows_query,
// stored_rows_query, percentile_insert_statement in clickhouse.h) name the columns explicitly.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tailwatch/publisher.h"
#include "tailwatch/rollup.h"

namespace tailwatch {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "RowBinary is little-endian; so must the host be");

/// Appends RowBinary encodings to `out` (never clears it).
void put_u32(std::string& out, std::uint32_t value);
void put_u64(std::string& out, std::uint64_t value);
void put_f64(std::string& out, double value);
void put_string(std::string& out, std::string_view value);

/// Reads RowBinary values from a body, front to back. Every read throws std::runtime_error (naming `what`)
/// when the body ends too early or a length is impossible; it never reads past the body.
class RowBinaryReader {
 public:
  explicit RowBinaryReader(std::string_view body) noexcept : body_(body) {}
  bool done() const noexcept { return pos_ == body_.size(); }
  std::uint16_t u16(const char* what);
  std::uint32_t u32(const char* what);
  std::uint64_t u64(const char* what);
  /// A LEB128 length (at most 10 bytes).
  std::uint64_t varint(const char* what);
  std::string_view string(const char* what);
  /// An array length, checked against the bytes left (`element_size` bytes each).
  std::size_t array_size(std::size_t element_size, const char* what);
  /// The next `n * element_size` bytes (checked), for reading an array's elements in one pass.
  const char* bytes(std::size_t n, std::size_t element_size, const char* what);

 private:
  const char* take(std::size_t n, const char* what);
  std::string_view body_;
  std::size_t pos_ = 0;
};

/// Parses the answer to feed_query / seconds_query (clickhouse.h): per row ingest_batch_seq UInt64, end
/// second UInt32, service String, method String, errors UInt64, max UInt64, floor UInt64, buckets
/// Array(UInt16), counts Array(UInt64) (the arrays of equal length, buckets < kBucketCount), into `rows`
/// (replaced; its elements, their strings and arrays are reused, so a steady stream of answers of one shape
/// parses without allocating). Throws std::runtime_error for anything else (truncated, trailing bytes); `rows`
/// then holds what was read so far.
void parse_rollup_rowbinary(std::string_view body, std::vector<RollupRow>& rows);

/// Parses the answer to published_rows_query: per row ts UInt32, service String, method String.
std::vector<std::pair<std::int64_t, Key>> parse_published_rowbinary(std::string_view body);

/// Parses the answer to stored_rows_query: per row ts UInt32, window_s UInt32, service String, method String.
std::vector<RowId> parse_row_ids_rowbinary(std::string_view body);

/// Appends one latency_percentiles row in the column order of kPercentileColumns (clickhouse.h).
void append_percentile_row(std::string& out, const PercentileRow& row);

}  // namespace tailwatch
