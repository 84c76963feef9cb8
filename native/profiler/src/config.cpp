#include "tailwatch/config.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <set>

#include "tailwatch/clickhouse.h"

namespace tailwatch {

namespace {

constexpr std::uint32_t kMaxSeconds = 86400;

std::vector<std::uint32_t> parse_windows(const std::string& text, const std::string& what) {
  std::vector<std::uint32_t> windows;
  std::set<std::uint32_t> seen;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = text.find(',', start);
    const std::string part = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const std::uint32_t w = parse_duration_s(part, what);
    if (w == 0) throw UsageError(what + ": a window must be at least 1s");
    if (!seen.insert(w).second) throw UsageError(what + ": window " + part + " given twice");
    windows.push_back(w);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return windows;
}

std::int64_t parse_unix_time(const std::string& text, const std::string& what) {
  if (text.empty() || text.size() > 12 || !std::all_of(text.begin(), text.end(), [](char c) {
        return c >= '0' && c <= '9';
      })) {
    throw UsageError(what + ": expected unix seconds, got '" + text + "'");
  }
  const std::int64_t value = std::stoll(text);
  if (value > 4294967295LL) throw UsageError(what + ": beyond the range of ClickHouse DateTime");
  return value;
}

}  // namespace

EnvLookup process_env() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

std::uint32_t parse_duration_s(const std::string& text, const std::string& what) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  const std::string unit = text.substr(digits);
  std::uint64_t scale = 0;
  if (unit.empty() || unit == "s") {
    scale = 1;
  } else if (unit == "m") {
    scale = 60;
  } else if (unit == "h") {
    scale = 3600;
  }
  if (digits == 0 || digits > 9 || scale == 0) {
    throw UsageError(what + ": expected a duration in whole seconds like 5s, 2m or 1h, got '" + text + "'");
  }
  const std::uint64_t value = std::stoull(text.substr(0, digits)) * scale;
  if (value > kMaxSeconds) throw UsageError(what + ": '" + text + "' is longer than 24h");
  return static_cast<std::uint32_t>(value);
}

Config parse_config(const std::vector<std::string>& args, const EnvLookup& env) {
  Config config;
  // Environment first, flags override.
  struct Setting {
    const char* flag;
    const char* env;
    std::function<void(const std::string&, const std::string&)> apply;
  };
  const std::vector<Setting> settings = {
      {"--clickhouse-url", "TAILWATCH_CLICKHOUSE_URL",
       [&](const std::string& v, const std::string& what) {
         if (v.rfind("http://", 0) != 0 && v.rfind("https://", 0) != 0) {
           throw UsageError(what + ": expected an http:// or https:// URL, got '" + v + "'");
         }
         config.clickhouse_url = v;
       }},
      {"--user", "TAILWATCH_CLICKHOUSE_USER",
       [&](const std::string& v, const std::string& what) {
         if (v.empty()) throw UsageError(what + ": the user name must not be empty");
         config.user = v;
       }},
      {"--password", "TAILWATCH_CLICKHOUSE_PASSWORD", [&](const std::string& v, const std::string&) { config.password = v; }},
      {"--database", "TAILWATCH_CLICKHOUSE_DATABASE",
       [&](const std::string& v, const std::string& what) {
         if (!is_identifier(v)) throw UsageError(what + ": not a valid database name: '" + v + "'");
         config.database = v;
       }},
      {"--windows", "TAILWATCH_WINDOWS",
       [&](const std::string& v, const std::string& what) { config.windows_s = parse_windows(v, what); }},
      {"--tick", "TAILWATCH_TICK",
       [&](const std::string& v, const std::string& what) {
         const std::uint32_t tick = parse_duration_s(v, what);
         if (tick == 0) throw UsageError(what + ": the tick must be at least 1s");
         config.tick_s = tick;
       }},
      {"--settle", "TAILWATCH_SETTLE",
       [&](const std::string& v, const std::string& what) { config.settle_s = parse_duration_s(v, what); }},
      {"--correction-memory", "TAILWATCH_CORRECTION_MEMORY",
       [&](const std::string& v, const std::string& what) { config.correction_memory_s = parse_duration_s(v, what); }},
      {"--max-read-bytes", "TAILWATCH_MAX_READ_BYTES",
       [&](const std::string& v, const std::string& what) {
         if (v.empty() || v.size() > 15 || v.find_first_not_of("0123456789") != std::string::npos) {
           throw UsageError(what + ": expected a number of bytes, got '" + v + "'");
         }
         const std::uint64_t bytes = std::stoull(v);
         if (bytes < 4096) throw UsageError(what + ": at least 4096 bytes");
         config.max_read_bytes = static_cast<std::size_t>(bytes);
       }},
  };
  const std::string replaced =
      " was replaced by --settle (TAILWATCH_SETTLE): windows now count requests by completion second, rows "
      "are published once the wall clock passes a tick by the settle time and rewritten when late rows arrive";
  if (env("TAILWATCH_LATE_MARGIN")) throw UsageError("environment variable TAILWATCH_LATE_MARGIN" + replaced);
  for (const auto& setting : settings) {
    if (const auto value = env(setting.env)) setting.apply(*value, std::string("environment variable ") + setting.env);
  }

  bool insert_flag = false;
  for (std::size_t i = 1; i < args.size(); ++i) {
    std::string arg = args[i];
    std::optional<std::string> inline_value;
    if (const auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    auto boolean = [&](bool& target) {
      if (inline_value) throw UsageError("flag " + arg + " takes no value");
      target = true;
    };
    if (arg == "--once") {
      boolean(config.once);
      continue;
    }
    if (arg == "--json") {
      boolean(config.json);
      continue;
    }
    if (arg == "--insert") {
      boolean(insert_flag);
      continue;
    }
    if (arg == "--log-timing") {
      boolean(config.log_timing);
      continue;
    }
    if (arg == "--help" || arg == "-h") {
      boolean(config.help);
      continue;
    }
    auto value = [&]() -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= args.size()) throw UsageError("flag " + arg + " needs a value");
      return args[++i];
    };
    if (arg == "--late-margin") throw UsageError("flag --late-margin" + replaced);
    if (arg == "--now") {
      config.now = parse_unix_time(value(), "--now");
      continue;
    }
    const auto setting = std::find_if(settings.begin(), settings.end(), [&](const Setting& s) { return arg == s.flag; });
    if (setting == settings.end()) {
      throw UsageError("unknown " + std::string(arg.rfind("-", 0) == 0 ? "flag " : "argument ") + arg);
    }
    setting->apply(value(), arg);
  }
  if (config.json && !config.once) throw UsageError("--json needs --once");
  if (insert_flag && !config.json) throw UsageError("--insert is only for --once --json (the default inserts)");
  if (config.now && !config.once) throw UsageError("--now needs --once");
  if (config.log_timing && config.once) {
    throw UsageError("--log-timing is for the daemon (with --once, --json prints the timing)");
  }
  config.insert = !config.json || insert_flag;
  return config;
}

std::string usage() {
  return R"(usage: tailwatch-profiler [flags]

Rolling latency percentiles from ClickHouse's per-second histograms (latency_profile_1s) into
latency_percentiles, one row per window and (service, method) per tick; method "" is the whole service.
A window of w seconds at tick T counts the requests that completed in [T - w, T). Rows are versioned:
read the latest (argMax(col, version) ... GROUP BY ts, window_s, service, method).

  --clickhouse-url URL    HTTP interface (env TAILWATCH_CLICKHOUSE_URL, default http://127.0.0.1:8123)
  --user NAME             (env TAILWATCH_CLICKHOUSE_USER, default "default")
  --password SECRET       (env TAILWATCH_CLICKHOUSE_PASSWORD, default empty)
  --database NAME         (env TAILWATCH_CLICKHOUSE_DATABASE, default profiler)
  --windows LIST          window lengths (env TAILWATCH_WINDOWS, default 10,60,300; 5m style accepted)
  --tick DURATION         (env TAILWATCH_TICK, default 1s; whole seconds)
  --settle DURATION       tick T is published once the clock reaches T + settle (env TAILWATCH_SETTLE,
                          default 1s); rows that arrive later are corrected (replaces --late-margin)
  --correction-memory DURATION
                          per-second data held beyond the largest window for corrections; older ones
                          are reloaded from ClickHouse (env TAILWATCH_CORRECTION_MEMORY, default 300s)
  --max-read-bytes BYTES  result bound of every read; a larger read is split (env
                          TAILWATCH_MAX_READ_BYTES, default 67108864)
  --once                  compute the windows at one time from all rows (no feed), then exit
  --json                  with --once: print the snapshot as JSON, do not insert
  --insert                with --once --json: insert as well
  --now UNIX_SECONDS      with --once: evaluate as of this time
  --log-timing            daemon: after each tick, a JSON line with its timing on stderr
  --help                  this text

Flags win over environment variables. Exit status: 0 ok, 1 runtime error, 2 bad flag or value.
)";
}

}  // namespace tailwatch
