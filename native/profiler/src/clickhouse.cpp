#include "tailwatch/clickhouse.h"

#include <curl/curl.h>

#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>

#include "rows.h"
#include "rowbinary.h"

namespace tailwatch {

namespace {

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw ClickHouseError("curl_global_init failed");
  });
}

std::size_t append_body(char* data, std::size_t size, std::size_t count, void* target) {
  static_cast<std::string*>(target)->append(data, size * count);
  return size * count;
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
  curl_easy_setopt(curl, CURLOPT_URL, options_.url.c_str());  // libcurl keeps a copy
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

void ClickHouseClient::post(std::string_view body, std::string& response) {
  CURL* curl = impl_->curl.get();
  response.clear();
  impl_->error[0] = 0;
  // The handle keeps every other option from the constructor (and its connection) between requests.
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response);
  const CURLcode code = curl_easy_perform(curl);
  if (code != CURLE_OK) {
    throw ClickHouseError("ClickHouse at " + options_.url + " unreachable: " +
                          (impl_->error[0] != 0 ? std::string(impl_->error) : std::string(curl_easy_strerror(code))));
  }
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200) {
    throw ClickHouseError("ClickHouse answered HTTP " + std::to_string(status) + ": " + trimmed(response));
  }
}

std::string ClickHouseClient::query(const std::string& sql) {
  std::string response;
  post(sql, response);
  return response;
}

void ClickHouseClient::query(std::string_view sql, std::string& response) { post(sql, response); }

void ClickHouseClient::execute(std::string_view body) { post(body, impl_->discarded); }

void ClickHouseClient::insert(const std::string& statement, const std::string& data) {
  std::string body;
  body.reserve(statement.size() + 1 + data.size());
  body.append(statement).append(1, '\n').append(data);
  execute(body);
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
std::string time_range(std::int64_t from, std::int64_t to) {
  return "ts >= toDateTime(" + std::to_string(from) + ") AND ts < toDateTime(" + std::to_string(to) + ")";
}
}  // namespace

std::string tick_query(const std::string& database, std::int64_t from, std::int64_t to) {
  check_identifier(database);
  // No GROUP BY: the rows of one second and key that are not merged yet (one per INSERT) are added up by the
  // engine, which costs less than a server-side sumMap.
  return "SELECT toUInt32(ts), service, method, errors, finalizeAggregation(duration_max_us), "
         "histogramMap.bucket, histogramMap.count FROM " +
         database + ".latency_profile_1s WHERE " + time_range(from, to) + " FORMAT RowBinary";
}

ClickHouseSource::ClickHouseSource(ClickHouseClient& client, std::string database)
    : client_(client), database_(std::move(database)) {
  check_identifier(database_);
}

SecondsBatch ClickHouseSource::fetch(std::int64_t from, std::int64_t to) {
  SecondsBatch batch;
  fetch_into(from, to, batch);
  return batch;
}

void ClickHouseSource::fetch_into(std::int64_t from, std::int64_t to, SecondsBatch& batch) {
  batch.from = from;
  batch.to = to;
  batch.histogram.clear();
  batch.maxima.clear();
  last_ = FetchStats{};
  if (from >= to) {
    batch.profile.clear();
    return;
  }
  using Clock = std::chrono::steady_clock;
  auto start = Clock::now();
  client_.query(tick_query(database_, from, to), answer_);
  last_.http_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  last_.bytes = answer_.size();
  start = Clock::now();
  try {
    parse_profile_rowbinary(answer_, batch.profile);
  } catch (const std::exception& error) {
    batch.profile.clear();
    throw ClickHouseError(std::string("bad answer from ClickHouse: ") + error.what());
  }
  last_.parse_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

nlohmann::json percentile_row(std::int64_t now, const WindowStats& row) {
  return {
      {"ts", now},
      {"window_s", row.window_s},
      {"service", row.key.service},
      {"method", row.key.method},
      {"count", row.count},
      {"rps", row.rps},
      {"error_rate", row.error_rate},
      {"p50_us", row.p50_us},
      {"p90_us", row.p90_us},
      {"p95_us", row.p95_us},
      {"p99_us", row.p99_us},
      {"p999_us", row.p999_us},
      {"max_us", row.max_us},
  };
}

const char* const kPercentileColumns =
    "ts, window_s, service, method, count, rps, error_rate, p50_us, p90_us, p95_us, p99_us, p999_us, max_us";

std::string percentile_insert_statement(const std::string& database) {
  check_identifier(database);
  return "INSERT INTO " + database + ".latency_percentiles (" + kPercentileColumns + ") FORMAT RowBinary";
}

std::string percentile_rows_rowbinary(std::int64_t now, const std::vector<WindowStats>& rows) {
  std::string body;
  body.reserve(rows.size() * 128);
  for (const auto& row : rows) append_percentile_row(body, now, row);
  return body;
}

}  // namespace tailwatch
