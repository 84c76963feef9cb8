// Command line and environment of tailwatch-profiler.
//
// Every flag has an environment variable; a flag given on the command line wins over the variable.
//   --clickhouse-url URL   TAILWATCH_CLICKHOUSE_URL       default http://127.0.0.1:8123
//   --user NAME            TAILWATCH_CLICKHOUSE_USER      default "default"
//   --password SECRET      TAILWATCH_CLICKHOUSE_PASSWORD  default ""
//   --database NAME        TAILWATCH_CLICKHOUSE_DATABASE  default "profiler" ([A-Za-z_][A-Za-z0-9_]*)
//   --windows LIST         TAILWATCH_WINDOWS              default 10,60,300 (durations, see below)
//   --tick DURATION        TAILWATCH_TICK                 default 1s (whole seconds, >= 1s)
//   --settle DURATION      TAILWATCH_SETTLE               default 1s (0s allowed): tick T is published once
//                                                         the wall clock reaches T + settle
//   --correction-memory DURATION TAILWATCH_CORRECTION_MEMORY default 300s (0s allowed): seconds of
//                                                         per-second data held beyond the largest window
//   --max-read-bytes BYTES TAILWATCH_MAX_READ_BYTES       default 67108864 (>= 4096): ClickHouse's
//                                                         max_result_bytes for every read; a larger read is
//                                                         split
//   --once                 compute the windows at one time from all rows, then exit
//   --json                 with --once: print the snapshot as JSON on stdout; no INSERT unless --insert
//   --insert               with --once --json: insert as well
//   --now UNIX_SECONDS     with --once: evaluate as of this time instead of the clock
//   --log-timing           daemon: after each tick, one JSON line on stderr with the tick's timing
//   --help                 usage on stdout, exit 0
// Durations are whole seconds: "5", "5s", "2m", "1h". Flags take their value as "--flag value" or
// "--flag=value". --late-margin and TAILWATCH_LATE_MARGIN (the old model) are refused with a message that
// names --settle.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace tailwatch {

/// A bad flag or value; what() is a complete message for the user.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Config {
  std::string clickhouse_url = "http://127.0.0.1:8123";
  std::string user = "default";
  std::string password;
  std::string database = "profiler";
  std::vector<std::uint32_t> windows_s{10, 60, 300};
  std::uint32_t tick_s = 1;
  std::uint32_t settle_s = 1;
  std::uint32_t correction_memory_s = 300;
  std::size_t max_read_bytes = std::size_t{64} << 20;
  bool once = false;
  bool json = false;
  bool insert = true;  ///< false for --once --json without --insert
  std::optional<std::int64_t> now;
  bool log_timing = false;  ///< daemon only: each tick's TickTiming as a JSON line on stderr
  bool help = false;
};

/// Reads an environment variable; returns nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;

/// The process environment.
EnvLookup process_env();

/// Parses argv (argv[0] is skipped) over the environment. Throws UsageError on any bad flag or value.
Config parse_config(const std::vector<std::string>& args, const EnvLookup& env);

/// Parses "5", "5s", "2m", "1h" to seconds. Throws UsageError (mentioning `what`) otherwise, or if the
/// result is > 86400 s.
std::uint32_t parse_duration_s(const std::string& text, const std::string& what);

/// The --help text.
std::string usage();

}  // namespace tailwatch
