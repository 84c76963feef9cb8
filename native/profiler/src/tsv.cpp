#include "tsv.h"

#include <stdexcept>

namespace tailwatch {

namespace {
int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

std::vector<std::string> split_tsv_line(std::string_view line) {
  std::vector<std::string> fields(1);
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (c == '\t') {
      fields.emplace_back();
      continue;
    }
    if (c != '\\') {
      fields.back().push_back(c);
      continue;
    }
    if (++i >= line.size()) throw std::runtime_error("TSV: dangling backslash at end of line");
    const char e = line[i];
    char out = 0;
    switch (e) {
      case 't': out = '\t'; break;
      case 'n': out = '\n'; break;
      case 'r': out = '\r'; break;
      case 'b': out = '\b'; break;
      case 'f': out = '\f'; break;
      case 'a': out = '\a'; break;
      case 'v': out = '\v'; break;
      case '0': out = '\0'; break;
      case '\\': case '\'': case '"': case '/': case '`': out = e; break;
      case 'x': {
        if (i + 2 >= line.size()) throw std::runtime_error("TSV: short \\x escape");
        const int hi = hex_digit(line[i + 1]);
        const int lo = hex_digit(line[i + 2]);
        if (hi < 0 || lo < 0) throw std::runtime_error("TSV: bad \\x escape");
        out = static_cast<char>(hi * 16 + lo);
        i += 2;
        break;
      }
      default: throw std::runtime_error(std::string("TSV: unknown escape \\") + e);
    }
    fields.back().push_back(out);
  }
  return fields;
}

std::vector<std::vector<std::string>> parse_tsv(std::string_view body) {
  std::vector<std::vector<std::string>> rows;
  std::size_t start = 0;
  while (start < body.size()) {
    std::size_t end = body.find('\n', start);
    if (end == std::string_view::npos) end = body.size();
    rows.push_back(split_tsv_line(body.substr(start, end - start)));
    start = end + 1;
  }
  return rows;
}

unsigned long long parse_uint_field(std::string_view field, const char* what) {
  if (field.empty() || field.size() > 20) {
    throw std::runtime_error(std::string("TSV: bad ") + what + " '" + std::string(field.substr(0, 40)) + "'");
  }
  unsigned long long value = 0;
  for (const char c : field) {
    if (c < '0' || c > '9') throw std::runtime_error(std::string("TSV: bad ") + what + " '" + std::string(field) + "'");
    const unsigned long long digit = static_cast<unsigned long long>(c - '0');
    if (value > (~0ULL - digit) / 10) throw std::runtime_error(std::string("TSV: ") + what + " overflows");
    value = value * 10 + digit;
  }
  return value;
}

std::vector<unsigned long long> parse_uint_array(std::string_view field, const char* what) {
  if (field.size() < 2 || field.front() != '[' || field.back() != ']') {
    throw std::runtime_error(std::string("TSV: bad ") + what + " array '" + std::string(field.substr(0, 40)) + "'");
  }
  std::vector<unsigned long long> values;
  const std::string_view inner = field.substr(1, field.size() - 2);
  if (inner.empty()) return values;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = inner.find(',', start);
    values.push_back(parse_uint_field(inner.substr(start, comma == std::string_view::npos ? inner.npos : comma - start), what));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return values;
}

std::vector<ProfileRow> parse_profile_tsv(std::string_view body) {
  std::vector<ProfileRow> rows;
  std::size_t start = 0;
  while (start < body.size()) {
    std::size_t end = body.find('\n', start);
    if (end == std::string_view::npos) end = body.size();
    auto fields = split_tsv_line(body.substr(start, end - start));
    start = end + 1;
    if (fields.size() != 7) {
      throw std::runtime_error("TSV: row with " + std::to_string(fields.size()) + " fields, expected 7");
    }
    ProfileRow row;
    row.ts = static_cast<std::int64_t>(parse_uint_field(fields[0], "ts"));
    row.service = std::move(fields[1]);
    row.method = std::move(fields[2]);
    row.errors = parse_uint_field(fields[3], "errors");
    row.max_us = parse_uint_field(fields[4], "max");
    const auto buckets = parse_uint_array(fields[5], "bucket");
    const auto counts = parse_uint_array(fields[6], "count");
    if (buckets.size() != counts.size()) throw std::runtime_error("TSV: bucket and count arrays differ in length");
    row.buckets.reserve(buckets.size());
    for (std::size_t i = 0; i < buckets.size(); ++i) {
      if (buckets[i] >= kBucketCount) throw std::runtime_error("TSV: bucket " + std::to_string(buckets[i]) + " out of range");
      row.buckets.push_back({static_cast<std::uint32_t>(buckets[i]), counts[i]});
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace tailwatch
