// ClickHouse over its HTTP interface (libcurl), for the 18.16 dialect and current releases alike: no query
// parameters, no DateTime64; numbers go into SQL only as integers formatted here, names only after
// validation ([A-Za-z_][A-Za-z0-9_]*). The Store (rollup.h) and the PercentileSink (publisher.h) the daemon
// uses, and the statements they send (exposed for tests and documentation).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "tailwatch/publisher.h"
#include "tailwatch/rollup.h"

namespace tailwatch {

/// Transport failure, timeout or non-200 answer; what() carries the server's message. too_large(): the
/// failure says the request was too big to answer (result limits, memory limit, timeout, or an answer over
/// the client's bound), so a smaller one may succeed.
class ClickHouseError : public std::runtime_error {
 public:
  explicit ClickHouseError(const std::string& message, bool too_large = false)
      : std::runtime_error(message), too_large_(too_large) {}
  bool too_large() const noexcept { return too_large_; }

 private:
  bool too_large_;
};

struct ClickHouseOptions {
  std::string url = "http://127.0.0.1:8123";
  std::string user = "default";
  std::string password;
  long connect_timeout_ms = 2000;
  long timeout_ms = 15000;
  std::size_t max_response_bytes = std::size_t{512} << 20;  ///< a longer answer is refused (too_large)
};

/// One keep-alive connection on one libcurl handle, options set once (per request only the URL's query
/// string and the body change: every statement goes in the POST body, an INSERT's data after it). Not
/// thread-safe. Auth goes in X-ClickHouse-User / X-ClickHouse-Key headers; no "Expect: 100-continue".
class ClickHouseClient {
 public:
  explicit ClickHouseClient(ClickHouseOptions options);
  ~ClickHouseClient();
  ClickHouseClient(const ClickHouseClient&) = delete;
  ClickHouseClient& operator=(const ClickHouseClient&) = delete;

  /// Runs one statement and returns the answer. `params` ("a=1&b=2", no leading '?') go into the URL's query
  /// string (settings, query_id), after any the configured URL has. Throws ClickHouseError.
  std::string query(const std::string& sql, std::string_view params = {});
  /// The same, the answer written into `response` (cleared first, its capacity reused).
  void query_into(std::string_view sql, std::string& response, std::string_view params = {});
  /// Sends `body` as it is (for an INSERT: the statement, a newline, the data); the answer is discarded.
  void execute(std::string_view body, std::string_view params = {});

 private:
  void post(std::string_view body, std::string& response, std::string_view params);
  struct Impl;
  ClickHouseOptions options_;
  std::unique_ptr<Impl> impl_;
};

/// True when `name` matches [A-Za-z_][A-Za-z0-9_]*, the names the profiler puts into SQL unquoted.
bool is_identifier(const std::string& name);
/// Throws std::invalid_argument unless is_identifier(name).
void check_identifier(const std::string& name);

// ---- statements (every one throws std::invalid_argument for a database name that is not an identifier) ----

/// The feed: the rows of the batches in (after, upto] (no upper bound when nullopt) of latency_profile_1s,
/// per row ingest_batch_seq, end second, service, method, errors, exact max, floor, buckets, counts, FORMAT
/// RowBinary (parse_rollup_rowbinary). No GROUP BY: rows that are not merged yet are added up by the engine.
std::string feed_query(const std::string& database, std::uint64_t after, std::optional<std::uint64_t> upto);
/// The same columns for the rows whose end second is in [from, to), of the batches <= final_upto (all when
/// nullopt), markers left out.
std::string seconds_query(const std::string& database, std::optional<std::uint64_t> final_upto, std::int64_t from,
                          std::int64_t to);
/// "max(ingest_batch_seq), count()" above `after` (TSV).
std::string highest_batch_query(const std::string& database, std::uint64_t after);
/// "max end second, count()" from `from` on, of the batches <= final_upto (TSV).
std::string last_second_query(const std::string& database, std::optional<std::uint64_t> final_upto,
                              std::int64_t from);
/// "sum of the histogram counts" of one batch's rows (TSV).
std::string batch_requests_query(const std::string& database, std::uint64_t batch);
/// "count()" of projection_rebuilds (TSV).
std::string rebuilds_query(const std::string& database);
/// The (ts, service, method) rows latency_percentiles holds at ticks [from, to] (RowBinary).
std::string published_rows_query(const std::string& database, std::int64_t from, std::int64_t to);
/// max(ts), max(version), max(ingest_floor_seq), count() of latency_percentiles since now - 86400 (TSV).
std::string start_point_query(const std::string& database, std::int64_t now);
/// The newest active partition of latency_profile_1s (TSV, one line or none).
std::string newest_partition_query(const std::string& database);
/// The highest floor in one partition (a YYYYMMDD number) of latency_profile_1s (TSV).
std::string partition_floor_query(const std::string& database, std::uint32_t partition);
/// How many queries with the profiler's INSERT query id prefix the server runs (system.processes; TSV).
std::string running_inserts_query(const std::string& database);
/// "version, count()" of the given versions with ts in [min_ts, max_ts] (TSV).
std::string stored_counts_query(const std::string& database, const std::vector<std::uint64_t>& versions,
                                std::int64_t min_ts, std::int64_t max_ts);
/// The (ts, window_s, service, method) of the rows of one version with ts in [min_ts, max_ts] (RowBinary).
std::string stored_rows_query(const std::string& database, std::uint64_t version, std::int64_t min_ts,
                              std::int64_t max_ts);

/// The latency_percentiles columns the profiler writes, in the order of its RowBinary rows.
extern const char* const kPercentileColumns;
/// "INSERT INTO <database>.latency_percentiles (<kPercentileColumns>) FORMAT RowBinary".
std::string percentile_insert_statement(const std::string& database);
/// The RowBinary body for percentile_insert_statement (names byte for byte; RowBinary has no escapes).
std::string percentile_rows_rowbinary(const std::vector<PercentileRow>& rows);

/// The URL parameters every read carries: result limits that throw (max_result_bytes and a row bound
/// derived from it), max_execution_time (whole seconds, at least 1) and wait_end_of_query=1 (the answer is
/// complete before it is sent, so a limit hit late is an error status, not a truncated 200 answer), with
/// buffer_size twice the result bound (the answer is held in memory, not in a temporary file).
std::string read_params(std::size_t max_result_bytes, long max_execution_ms);

/// What the reads cost, accumulated.
struct ReadStats {
  std::size_t queries = 0;
  double http_ms = 0;   ///< round trips
  double parse_ms = 0;  ///< RowBinary answers -> rows
  std::size_t bytes = 0;
};

/// What latency_percentiles says at startup.
struct StartPoint {
  std::optional<std::int64_t> t_last;  ///< max(ts) over the last day; nullopt when it holds no row
  std::uint64_t v_last = 0;            ///< max(version)
  std::uint64_t f_prev = 0;            ///< max(ingest_floor_seq)
};

/// The Store on ClickHouse. A read refused for its size (ClickHouseError::too_large) is thrown as
/// ReadTooLarge; anything else as ClickHouseError. Every read carries read_params(); the feed's (a few
/// granules at the end of the batch order) also max_threads=1, which measured 1.5 instead of 3.7 ms of
/// ClickHouse's CPU per read (parallel reading of a few rows only costs threads).
class ClickHouseStore : public Store {
 public:
  ClickHouseStore(ClickHouseClient& client, std::string database, std::size_t max_result_bytes,
                  long max_execution_ms);
  void read_batches(std::uint64_t after, std::optional<std::uint64_t> upto, std::vector<RollupRow>& rows) override;
  std::optional<std::uint64_t> highest_batch(std::uint64_t after) override;
  void read_seconds(std::optional<std::uint64_t> final_upto, std::int64_t from, std::int64_t to,
                    std::vector<RollupRow>& rows) override;
  std::optional<std::int64_t> last_second(std::optional<std::uint64_t> final_upto, std::int64_t from) override;
  std::vector<std::pair<std::int64_t, Key>> published_rows(std::int64_t from, std::int64_t to) override;
  std::uint64_t batch_requests(std::uint64_t batch) override;
  std::uint64_t rebuilds() override;

  /// start_point_query, parsed.
  StartPoint start_point(std::int64_t now);
  /// The highest floor in the newest partition of latency_profile_1s (0 when it has none): a floor to start
  /// from when latency_percentiles has none (any value not above the true floor is safe).
  std::uint64_t newest_partition_floor();
  const ReadStats& stats() const noexcept { return stats_; }

 private:
  void read(const std::string& sql, bool small = false);
  std::vector<std::string> tsv_fields(const std::string& sql, bool small = false);
  ClickHouseClient& client_;
  std::string database_;
  std::string params_;        // every read
  std::string small_params_;  // reads of a few granules
  std::string answer_;
  ReadStats stats_;
};

/// The PercentileSink on ClickHouse (latency_percentiles, a Buffer in front of latency_percentiles_storage).
class ClickHouseSink : public PercentileSink {
 public:
  ClickHouseSink(ClickHouseClient& client, std::string database);
  void insert(std::uint64_t version, const std::vector<PercentileRow>& rows) override;
  std::size_t inserts_running() override;
  std::map<std::uint64_t, std::uint64_t> stored_counts(const std::vector<std::uint64_t>& versions,
                                                       std::int64_t min_ts, std::int64_t max_ts) override;
  std::vector<RowId> stored_rows(std::uint64_t version, std::int64_t min_ts, std::int64_t max_ts) override;

 private:
  ClickHouseClient& client_;
  std::string database_;
  std::string statement_;
  std::string body_;
  std::string answer_;
};

}  // namespace tailwatch
