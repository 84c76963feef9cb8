// ClickHouse TabSeparated parsing (private).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "tailwatch/rolling.h"

namespace tailwatch {

/// Splits one line (without its '\n') of ClickHouse's TabSeparated output into fields and undoes its
/// escapes (\t \n \r \b \f \0 \\ \' \" \a \v \/ and \xHH). Throws std::runtime_error on a dangling or
/// unknown escape.
std::vector<std::string> split_tsv_line(std::string_view line);

/// Splits a whole body into lines (a final '\n' does not make an empty line) and calls split_tsv_line.
std::vector<std::vector<std::string>> parse_tsv(std::string_view body);

/// Parses a decimal unsigned integer field; throws std::runtime_error naming `what` otherwise.
unsigned long long parse_uint_field(std::string_view field, const char* what);

/// Parses an array of unsigned integers as TabSeparated writes it ("[]", "[1,22,3]"); throws
/// std::runtime_error naming `what` otherwise.
std::vector<unsigned long long> parse_uint_array(std::string_view field, const char* what);

/// Parses the answer to tick_query (clickhouse.h): per line ts, service, method, errors, max, buckets,
/// counts (the last two arrays of equal length, buckets < kBucketCount). Throws std::runtime_error for
/// anything else.
std::vector<ProfileRow> parse_profile_tsv(std::string_view body);

}  // namespace tailwatch
