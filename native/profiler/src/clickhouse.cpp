#include "tailwatch/clickhouse.h"

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <sstream>

#include "rowbinary.h"

namespace tailwatch {

namespace {

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw ClickHouseError("curl_global_init failed");
  });
}

/// Where curl writes an answer: the string, and the bound past which the answer is refused.
struct Sink {
  std::string* out = nullptr;
  std::size_t limit = 0;
  bool exceeded = false;
};

std::size_t append_body(char* data, std::size_t size, std::size_t count, void* target) {
  auto* sink = static_cast<Sink*>(target);
  if (sink->out->size() + size * count > sink->limit) {
    sink->exceeded = true;
    return 0;  // curl stops with CURLE_WRITE_ERROR
  }
  sink->out->append(data, size * count);
  return size * count;
}

/// ClickHouse error codes that say the request was too big: TOO_MANY_ROWS (158), TIMEOUT_EXCEEDED (159),
/// TOO_SLOW (160), MEMORY_LIMIT_EXCEEDED (241), TOO_MANY_BYTES (307), TOO_MANY_ROWS_OR_BYTES (396).
bool too_large_answer(const std::string& body) {
  for (const char* code : {"Code: 158,", "Code: 159,", "Code: 160,", "Code: 241,", "Code: 307,", "Code: 396,"}) {
    if (body.rfind(code, 0) == 0 || body.find(std::string("\n") + code) != std::string::npos) return true;
  }
  return false;
}

struct CurlDeleter {
  void operator()(CURL* curl) const noexcept { curl_easy_cleanup(curl); }
};
struct SlistDeleter {
  void operator()(curl_slist* list) const noexcept { curl_slist_free_all(list); }
};

std::string trimmed(std::string text, std::size_t limit = 2000) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (text.size() > limit) text = text.substr(0, limit) + "...";
  return text;
}

}  // namespace

struct ClickHouseClient::Impl {
  std::unique_ptr<CURL, CurlDeleter> curl;
  std::unique_ptr<curl_slist, SlistDeleter> headers;
  std::string discarded;  // execute()'s response, its buffer reused
  std::string url;        // the URL last set on the handle
  char error[CURL_ERROR_SIZE] = {0};
};

ClickHouseClient::ClickHouseClient(ClickHouseOptions options) : options_(std::move(options)), impl_(std::make_unique<Impl>()) {
  global_init();
  impl_->curl.reset(curl_easy_init());
  if (!impl_->curl) throw ClickHouseError("curl_easy_init failed");
  curl_slist* list = nullptr;
  for (const std::string& header :
       {"X-ClickHouse-User: " + options_.user, "X-ClickHouse-Key: " + options_.password,
        std::string("Content-Type: text/plain; charset=utf-8"), std::string("Expect:")}) {
    curl_slist* next = curl_slist_append(list, header.c_str());
    if (next == nullptr) {
      curl_slist_free_all(list);
      throw ClickHouseError("curl_slist_append failed");
    }
    list = next;
  }
  impl_->headers.reset(list);
  CURL* curl = impl_->curl.get();
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, impl_->headers.get());
  curl_easy_setopt(curl, CURLOPT_POST, 1L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, append_body);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, impl_->error);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, options_.connect_timeout_ms);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, options_.timeout_ms);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
  // A tick's answer (tens of KB) in a few reads instead of one per 16 KB (libcurl's default).
  curl_easy_setopt(curl, CURLOPT_BUFFERSIZE, 256L * 1024L);
}

ClickHouseClient::~ClickHouseClient() = default;

void ClickHouseClient::post(std::string_view body, std::string& response, std::string_view params) {
  CURL* curl = impl_->curl.get();
  response.clear();
  impl_->error[0] = 0;
  std::string url = options_.url;
  if (!params.empty()) url.append(url.find('?') == std::string::npos ? "?" : "&").append(params);
  if (url != impl_->url) {
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());  // libcurl keeps a copy; the connection is kept
    impl_->url = std::move(url);
  }
  // The handle keeps every other option from the constructor (and its connection) between requests.
  Sink sink{&response, options_.max_response_bytes, false};
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
  const CURLcode code = curl_easy_perform(curl);
  if (sink.exceeded) {
    throw ClickHouseError("ClickHouse's answer is longer than the " + std::to_string(options_.max_response_bytes) +
                              " bytes accepted",
                          true);
  }
  if (code != CURLE_OK) {
    throw ClickHouseError("ClickHouse at " + options_.url + " unreachable: " +
                              (impl_->error[0] != 0 ? std::string(impl_->error) : std::string(curl_easy_strerror(code))),
                          code == CURLE_OPERATION_TIMEDOUT);
  }
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200) {
    throw ClickHouseError("ClickHouse answered HTTP " + std::to_string(status) + ": " + trimmed(response),
                          too_large_answer(response));
  }
}

std::string ClickHouseClient::query(const std::string& sql, std::string_view params) {
  std::string response;
  post(sql, response, params);
  return response;
}

void ClickHouseClient::query_into(std::string_view sql, std::string& response, std::string_view params) {
  post(sql, response, params);
}

void ClickHouseClient::execute(std::string_view body, std::string_view params) {
  post(body, impl_->discarded, params);
}

bool is_identifier(const std::string& name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
    if (!letter && (i == 0 || c < '0' || c > '9')) return false;
  }
  return true;
}

void check_identifier(const std::string& name) {
  if (!is_identifier(name)) throw std::invalid_argument("not a valid identifier: '" + name + "'");
}

namespace {

std::string datetime(std::int64_t t) {
  return "toDateTime(" + std::to_string(std::clamp<std::int64_t>(t, 0, 4294967295LL)) + ")";
}

const char* const kRollupColumns =
    "SELECT ingest_batch_seq, toUInt32(end_ts), service, method, errors, finalizeAggregation(duration_max_us), "
    "finalizeAggregation(ingest_floor_seq), histogramMap.bucket, histogramMap.count FROM ";

std::string sql_string(const std::string& text) {
  std::string out = "'";
  for (const char c : text) {
    if (c == '\\' || c == '\'') out.push_back('\\');
    out.push_back(c);
  }
  return out + "'";
}

}  // namespace

std::string feed_query(const std::string& database, std::uint64_t after, std::optional<std::uint64_t> upto) {
  check_identifier(database);
  std::string sql = kRollupColumns + database + ".latency_profile_1s WHERE ingest_batch_seq > " + std::to_string(after);
  if (upto) sql += " AND ingest_batch_seq <= " + std::to_string(*upto);
  return sql + " FORMAT RowBinary";
}

std::string seconds_query(const std::string& database, std::optional<std::uint64_t> final_upto, std::int64_t from,
                          std::int64_t to) {
  check_identifier(database);
  std::string sql = kRollupColumns + database + ".latency_profile_1s WHERE end_ts >= " + datetime(from) +
                    " AND end_ts < " + datetime(to);
  if (final_upto) sql += " AND ingest_batch_seq <= " + std::to_string(*final_upto);
  return sql + " AND service != '' FORMAT RowBinary";
}

std::string highest_batch_query(const std::string& database, std::uint64_t after) {
  check_identifier(database);
  return "SELECT max(ingest_batch_seq), count() FROM " + database +
         ".latency_profile_1s WHERE ingest_batch_seq > " + std::to_string(after) + " FORMAT TSV";
}

std::string last_second_query(const std::string& database, std::optional<std::uint64_t> final_upto,
                              std::int64_t from) {
  check_identifier(database);
  std::string sql = "SELECT toUInt32(max(end_ts)), count() FROM " + database +
                    ".latency_profile_1s WHERE end_ts >= " + datetime(from) + " AND service != ''";
  if (final_upto) sql += " AND ingest_batch_seq <= " + std::to_string(*final_upto);
  return sql + " FORMAT TSV";
}

std::string batch_requests_query(const std::string& database, std::uint64_t batch) {
  check_identifier(database);
  return "SELECT sum(arraySum(histogramMap.count)) FROM " + database +
         ".latency_profile_1s WHERE ingest_batch_seq = " + std::to_string(batch) + " AND service != '' FORMAT TSV";
}

std::string rebuilds_query(const std::string& database) {
  check_identifier(database);
  return "SELECT count() FROM " + database + ".projection_rebuilds FORMAT TSV";
}

std::string published_rows_query(const std::string& database, std::int64_t from, std::int64_t to) {
  check_identifier(database);
  return "SELECT toUInt32(ts), service, method FROM " + database + ".latency_percentiles WHERE ts >= " +
         datetime(from) + " AND ts <= " + datetime(to) + " GROUP BY ts, service, method FORMAT RowBinary";
}

std::string start_point_query(const std::string& database, std::int64_t now) {
  check_identifier(database);
  return "SELECT toUInt32(max(ts)), max(version), max(ingest_floor_seq), count() FROM " + database +
         ".latency_percentiles WHERE ts >= " + datetime(now - 86400) + " FORMAT TSV";
}

std::string newest_partition_query(const std::string& database) {
  check_identifier(database);
  return "SELECT partition FROM system.parts WHERE database = " + sql_string(database) +
         " AND table = 'latency_profile_1s' AND active ORDER BY partition DESC LIMIT 1 FORMAT TSV";
}

std::string partition_floor_query(const std::string& database, std::uint32_t partition) {
  check_identifier(database);
  return "SELECT maxMerge(ingest_floor_seq) FROM " + database + ".latency_profile_1s WHERE toYYYYMMDD(end_ts) = " +
         std::to_string(partition) + " FORMAT TSV";
}

std::string running_inserts_query(const std::string& database) {
  check_identifier(database);
  const std::string prefix = insert_query_id_prefix(database);
  return "SELECT count() FROM system.processes WHERE substring(query_id, 1, " + std::to_string(prefix.size()) +
         ") = " + sql_string(prefix) + " FORMAT TSV";
}

std::string stored_counts_query(const std::string& database, const std::vector<std::uint64_t>& versions,
                                std::int64_t min_ts, std::int64_t max_ts) {
  check_identifier(database);
  std::string list;
  for (const auto v : versions) list += (list.empty() ? "" : ", ") + std::to_string(v);
  if (list.empty()) list = "0";
  return "SELECT version, count() FROM " + database + ".latency_percentiles WHERE version IN (" + list +
         ") AND ts >= " + datetime(min_ts) + " AND ts <= " + datetime(max_ts) + " GROUP BY version FORMAT TSV";
}

std::string stored_rows_query(const std::string& database, std::uint64_t version, std::int64_t min_ts,
                              std::int64_t max_ts) {
  check_identifier(database);
  return "SELECT toUInt32(ts), window_s, service, method FROM " + database +
         ".latency_percentiles WHERE version = " + std::to_string(version) + " AND ts >= " + datetime(min_ts) +
         " AND ts <= " + datetime(max_ts) + " FORMAT RowBinary";
}

const char* const kPercentileColumns =
    "ts, window_s, service, method, count, errors, rps, error_rate, p50_us, p90_us, p95_us, p99_us, p999_us, "
    "max_us, version, ingest_floor_seq";

std::string percentile_insert_statement(const std::string& database) {
  check_identifier(database);
  return "INSERT INTO " + database + ".latency_percentiles (" + kPercentileColumns + ") FORMAT RowBinary";
}

std::string percentile_rows_rowbinary(const std::vector<PercentileRow>& rows) {
  std::string body;
  body.reserve(rows.size() * 160);
  for (const auto& row : rows) append_percentile_row(body, row);
  return body;
}

std::string read_params(std::size_t max_result_bytes, long max_execution_ms) {
  // A rollup row is at least ~60 bytes in memory: the row bound follows the byte bound.
  const std::size_t max_rows = std::max<std::size_t>(max_result_bytes / 64, 1000);
  const long seconds = std::max(1L, max_execution_ms / 1000);
  return "max_result_bytes=" + std::to_string(max_result_bytes) + "&max_result_rows=" + std::to_string(max_rows) +
         "&result_overflow_mode=throw&max_execution_time=" + std::to_string(seconds) +
         "&timeout_overflow_mode=throw&wait_end_of_query=1&buffer_size=" + std::to_string(2 * max_result_bytes);
}

// ---- ClickHouseStore ----

ClickHouseStore::ClickHouseStore(ClickHouseClient& client, std::string database, std::size_t max_result_bytes,
                                 long max_execution_ms)
    : client_(client),
      database_(std::move(database)),
      params_(read_params(max_result_bytes, max_execution_ms)),
      small_params_(params_ + "&max_threads=1") {
  check_identifier(database_);
}

void ClickHouseStore::read(const std::string& sql, bool small) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  try {
    client_.query_into(sql, answer_, small ? small_params_ : params_);
  } catch (const ClickHouseError& error) {
    if (error.too_large()) throw ReadTooLarge(error.what());
    throw;
  }
  ++stats_.queries;
  stats_.http_ms += std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  stats_.bytes += answer_.size();
}

std::vector<std::string> ClickHouseStore::tsv_fields(const std::string& sql, bool small) {
  read(sql, small);
  std::vector<std::string> fields;
  std::string line = answer_.substr(0, answer_.find('\n'));
  std::size_t start = 0;
  if (line.empty()) return fields;
  for (;;) {
    const std::size_t tab = line.find('\t', start);
    fields.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) break;
    start = tab + 1;
  }
  return fields;
}

namespace {
std::uint64_t number(const std::vector<std::string>& fields, std::size_t i, const char* what) {
  if (i >= fields.size() || fields[i].empty() ||
      fields[i].find_first_not_of("0123456789") != std::string::npos || fields[i].size() > 20) {
    throw ClickHouseError(std::string("bad answer from ClickHouse: expected a number for ") + what);
  }
  return std::stoull(fields[i]);
}

template <typename Parse>
auto parsed(std::string_view answer, ReadStats& stats, Parse&& parse) {
  const auto start = std::chrono::steady_clock::now();
  struct Account {
    ReadStats& stats;
    std::chrono::steady_clock::time_point start;
    ~Account() {
      stats.parse_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    }
  } account{stats, start};
  try {
    return parse(answer);
  } catch (const std::exception& error) {
    throw ClickHouseError(std::string("bad answer from ClickHouse: ") + error.what());
  }
}
}  // namespace

void ClickHouseStore::read_batches(std::uint64_t after, std::optional<std::uint64_t> upto,
                                   std::vector<RollupRow>& rows) {
  read(feed_query(database_, after, upto), true);
  parsed(answer_, stats_, [&](std::string_view body) { parse_rollup_rowbinary(body, rows); });
}

std::optional<std::uint64_t> ClickHouseStore::highest_batch(std::uint64_t after) {
  const auto fields = tsv_fields(highest_batch_query(database_, after), true);
  if (number(fields, 1, "count") == 0) return std::nullopt;
  return number(fields, 0, "max(ingest_batch_seq)");
}

void ClickHouseStore::read_seconds(std::optional<std::uint64_t> final_upto, std::int64_t from, std::int64_t to,
                                   std::vector<RollupRow>& rows) {
  read(seconds_query(database_, final_upto, from, to));
  parsed(answer_, stats_, [&](std::string_view body) { parse_rollup_rowbinary(body, rows); });
}

std::optional<std::int64_t> ClickHouseStore::last_second(std::optional<std::uint64_t> final_upto, std::int64_t from) {
  const auto fields = tsv_fields(last_second_query(database_, final_upto, from));
  if (number(fields, 1, "count") == 0) return std::nullopt;
  return static_cast<std::int64_t>(number(fields, 0, "max(end_ts)"));
}

std::vector<std::pair<std::int64_t, Key>> ClickHouseStore::published_rows(std::int64_t from, std::int64_t to) {
  read(published_rows_query(database_, from, to), true);
  return parsed(answer_, stats_, [](std::string_view body) { return parse_published_rowbinary(body); });
}

std::uint64_t ClickHouseStore::batch_requests(std::uint64_t batch) {
  return number(tsv_fields(batch_requests_query(database_, batch), true), 0, "requests");
}

std::uint64_t ClickHouseStore::rebuilds() {
  return number(tsv_fields(rebuilds_query(database_), true), 0, "rebuilds");
}

StartPoint ClickHouseStore::start_point(std::int64_t now) {
  const auto fields = tsv_fields(start_point_query(database_, now));
  StartPoint point;
  if (number(fields, 3, "count") == 0) return point;
  point.t_last = static_cast<std::int64_t>(number(fields, 0, "max(ts)"));
  point.v_last = number(fields, 1, "max(version)");
  point.f_prev = number(fields, 2, "max(ingest_floor_seq)");
  return point;
}

std::uint64_t ClickHouseStore::newest_partition_floor() {
  const auto partition = tsv_fields(newest_partition_query(database_));
  if (partition.empty()) return 0;
  const std::uint64_t day = number(partition, 0, "partition");
  if (day > 99991231) throw ClickHouseError("bad answer from ClickHouse: partition " + partition[0]);
  return number(tsv_fields(partition_floor_query(database_, static_cast<std::uint32_t>(day))), 0, "floor");
}

// ---- ClickHouseSink ----

ClickHouseSink::ClickHouseSink(ClickHouseClient& client, std::string database)
    : client_(client), database_(std::move(database)), statement_(percentile_insert_statement(database_) + "\n") {}

void ClickHouseSink::insert(std::uint64_t version, const std::vector<PercentileRow>& rows) {
  body_.assign(statement_);
  for (const auto& row : rows) append_percentile_row(body_, row);
  client_.execute(body_, "query_id=" + insert_query_id(database_, version));
}

std::size_t ClickHouseSink::inserts_running() {
  client_.query_into(running_inserts_query(database_), answer_);
  const std::string text = answer_.substr(0, answer_.find('\n'));
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) {
    throw ClickHouseError("bad answer from ClickHouse to the running INSERTs query: " + answer_);
  }
  return static_cast<std::size_t>(std::stoull(text));
}

std::map<std::uint64_t, std::uint64_t> ClickHouseSink::stored_counts(const std::vector<std::uint64_t>& versions,
                                                                     std::int64_t min_ts, std::int64_t max_ts) {
  client_.query_into(stored_counts_query(database_, versions, min_ts, max_ts), answer_);
  std::map<std::uint64_t, std::uint64_t> counts;
  std::istringstream lines(answer_);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    const std::size_t tab = line.find('\t');
    const std::string version = line.substr(0, tab);
    const std::string count = tab == std::string::npos ? "" : line.substr(tab + 1);
    if (version.empty() || count.empty() || version.find_first_not_of("0123456789") != std::string::npos ||
        count.find_first_not_of("0123456789") != std::string::npos) {
      throw ClickHouseError("bad answer from ClickHouse to the stored versions query: " + line);
    }
    counts[std::stoull(version)] = std::stoull(count);
  }
  return counts;
}

std::vector<RowId> ClickHouseSink::stored_rows(std::uint64_t version, std::int64_t min_ts, std::int64_t max_ts) {
  client_.query_into(stored_rows_query(database_, version, min_ts, max_ts), answer_);
  try {
    return parse_row_ids_rowbinary(answer_);
  } catch (const std::exception& error) {
    throw ClickHouseError(std::string("bad answer from ClickHouse: ") + error.what());
  }
}

}  // namespace tailwatch
