// ClickHouse over its HTTP interface (libcurl), for the 18.16 dialect and current releases alike: no query
// parameters, no DateTime64; numbers go into SQL only as integers formatted here, names only after
// validation ([A-Za-z_][A-Za-z0-9_]*).
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "tailwatch/rolling.h"

namespace tailwatch {

/// Transport failure, timeout or non-200 answer; what() carries the server's message.
class ClickHouseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ClickHouseOptions {
  std::string url = "http://127.0.0.1:8123";
  std::string user = "default";
  std::string password;
  long connect_timeout_ms = 2000;
  long timeout_ms = 15000;
};

/// One keep-alive connection on one libcurl handle whose options, URL included, are set once (only the body
/// changes per request: every statement goes in the POST body, an INSERT's data after it). Not thread-safe.
/// Auth goes in X-ClickHouse-User / X-ClickHouse-Key headers; no "Expect: 100-continue" (a body is sent at
/// once, without waiting for a round trip first).
class ClickHouseClient {
 public:
  explicit ClickHouseClient(ClickHouseOptions options);
  ~ClickHouseClient();
  ClickHouseClient(const ClickHouseClient&) = delete;
  ClickHouseClient& operator=(const ClickHouseClient&) = delete;

  /// Runs one statement (sent as the POST body) and returns the response body. Throws ClickHouseError.
  std::string query(const std::string& sql);
  /// The same, the response written into `response` (cleared first, its capacity reused).
  void query(std::string_view sql, std::string& response);

  /// Sends `body` as it is: a statement, and for an INSERT a newline and the data (ClickHouse reads the data
  /// from after the first newline that follows the FORMAT clause). The response is discarded. Throws
  /// ClickHouseError.
  void execute(std::string_view body);

  /// Runs `statement` (e.g. "INSERT INTO db.t FORMAT RowBinary") with `data`: execute(statement + "\n" +
  /// data). Throws ClickHouseError.
  void insert(const std::string& statement, const std::string& data);

 private:
  void post(std::string_view body, std::string& response);
  struct Impl;
  ClickHouseOptions options_;
  std::unique_ptr<Impl> impl_;
};

/// True when `name` matches [A-Za-z_][A-Za-z0-9_]*, the names the profiler puts into SQL unquoted.
bool is_identifier(const std::string& name);

/// Throws std::invalid_argument unless is_identifier(name).
void check_identifier(const std::string& name);

/// The SQL a tick reads with (exposed for tests and documentation): seconds [from, to), unix time. One
/// statement, one round trip, on latency_profile_1s (ingest/migrations/0005_latency_profile.sql): per row
/// ts, service, method, errors, exact max (finalizeAggregation of its max state) and the histogram as two
/// arrays (buckets, counts), FORMAT RowBinary. No GROUP BY: rows of a second and key that are not merged yet
/// are added up by the engine. Throws std::invalid_argument for a database name that is not an identifier.
std::string tick_query(const std::string& database, std::int64_t from, std::int64_t to);

/// Where the last fetch() spent its time.
struct FetchStats {
  double http_ms = 0;   ///< the query's round trip: request sent, answer received
  double parse_ms = 0;  ///< RowBinary answer -> rows
  std::size_t bytes = 0;
};

/// Reads a tick's seconds with tick_query.
class ClickHouseSource : public DataSource {
 public:
  ClickHouseSource(ClickHouseClient& client, std::string database);
  SecondsBatch fetch(std::int64_t from, std::int64_t to) override;
  /// The same into `batch`, whose rows (and their strings and arrays) are reused: no allocation in the
  /// steady state. The answer's buffer is kept between calls too.
  void fetch_into(std::int64_t from, std::int64_t to, SecondsBatch& batch);
  const FetchStats& last_fetch() const noexcept { return last_; }

 private:
  ClickHouseClient& client_;
  std::string database_;
  std::string answer_;
  FetchStats last_;
};

/// The latency_percentiles columns the profiler writes, in the order of its RowBinary rows.
extern const char* const kPercentileColumns;

/// "INSERT INTO <database>.latency_percentiles (<kPercentileColumns>) FORMAT RowBinary" (latency_percentiles
/// is a Buffer in front of latency_percentiles_storage since ingest/migrations/0007). Throws
/// std::invalid_argument for a database name that is not an identifier.
std::string percentile_insert_statement(const std::string& database);

/// The RowBinary body for percentile_insert_statement: one row per element of `rows`, ts = `now`. Names go
/// byte for byte (RowBinary has no escapes; nothing is replaced).
std::string percentile_rows_rowbinary(std::int64_t now, const std::vector<WindowStats>& rows);

}  // namespace tailwatch
