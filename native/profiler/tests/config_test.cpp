#include "tailwatch/config.h"

#include <gtest/gtest.h>

#include <map>

using namespace tailwatch;

namespace {
EnvLookup env_of(std::map<std::string, std::string> values) {
  return [values](const std::string& name) -> std::optional<std::string> {
    const auto it = values.find(name);
    if (it == values.end()) return std::nullopt;
    return it->second;
  };
}
Config parse(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), "tailwatch-profiler");
  return parse_config(args, env_of(std::move(env)));
}
std::string error_of(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  try {
    parse(std::move(args), std::move(env));
  } catch (const UsageError& error) {
    return error.what();
  }
  return "";
}
}  // namespace

TEST(Config, Defaults) {
  const Config c = parse({});
  EXPECT_EQ(c.clickhouse_url, "http://127.0.0.1:8123");
  EXPECT_EQ(c.user, "default");
  EXPECT_EQ(c.password, "");
  EXPECT_EQ(c.database, "profiler");
  EXPECT_EQ(c.windows_s, (std::vector<std::uint32_t>{10, 60, 300}));
  EXPECT_EQ(c.tick_s, 1u);
  EXPECT_EQ(c.settle_s, 1u);
  EXPECT_EQ(c.correction_memory_s, 300u);
  EXPECT_EQ(c.max_read_bytes, std::size_t{64} << 20);
  EXPECT_FALSE(c.once);
  EXPECT_FALSE(c.json);
  EXPECT_TRUE(c.insert);
  EXPECT_FALSE(c.now.has_value());
}

TEST(Config, FlagsBothSpellings) {
  const Config c = parse({"--clickhouse-url", "http://h:1", "--user=u", "--password", "p w", "--database=db_1",
                          "--windows", "5s,1m,1h", "--tick=2s", "--settle", "0", "--correction-memory=10m",
                          "--max-read-bytes", "100000", "--once", "--json", "--now", "1700000000"});
  EXPECT_EQ(c.clickhouse_url, "http://h:1");
  EXPECT_EQ(c.user, "u");
  EXPECT_EQ(c.password, "p w");
  EXPECT_EQ(c.database, "db_1");
  EXPECT_EQ(c.windows_s, (std::vector<std::uint32_t>{5, 60, 3600}));
  EXPECT_EQ(c.tick_s, 2u);
  EXPECT_EQ(c.settle_s, 0u);
  EXPECT_EQ(c.correction_memory_s, 600u);
  EXPECT_EQ(c.max_read_bytes, 100000u);
  EXPECT_TRUE(c.once);
  EXPECT_TRUE(c.json);
  EXPECT_FALSE(c.insert) << "--once --json does not insert unless asked";
  EXPECT_EQ(*c.now, 1700000000);
  EXPECT_TRUE(parse({"--once", "--json", "--insert"}).insert);
  EXPECT_TRUE(parse({"--once"}).insert);
}

TEST(Config, EnvironmentAndFlagsWin) {
  const std::map<std::string, std::string> env{{"TAILWATCH_CLICKHOUSE_URL", "http://env:1"},
                                               {"TAILWATCH_CLICKHOUSE_USER", "envuser"},
                                               {"TAILWATCH_CLICKHOUSE_PASSWORD", "envpw"},
                                               {"TAILWATCH_CLICKHOUSE_DATABASE", "envdb"},
                                               {"TAILWATCH_WINDOWS", "30"},
                                               {"TAILWATCH_TICK", "3"},
                                               {"TAILWATCH_SETTLE", "7s"},
                                               {"TAILWATCH_CORRECTION_MEMORY", "1m"},
                                               {"TAILWATCH_MAX_READ_BYTES", "8192"}};
  const Config from_env = parse({}, env);
  EXPECT_EQ(from_env.clickhouse_url, "http://env:1");
  EXPECT_EQ(from_env.user, "envuser");
  EXPECT_EQ(from_env.password, "envpw");
  EXPECT_EQ(from_env.database, "envdb");
  EXPECT_EQ(from_env.windows_s, (std::vector<std::uint32_t>{30}));
  EXPECT_EQ(from_env.tick_s, 3u);
  EXPECT_EQ(from_env.settle_s, 7u);
  EXPECT_EQ(from_env.correction_memory_s, 60u);
  EXPECT_EQ(from_env.max_read_bytes, 8192u);
  const Config flags = parse({"--database", "flagdb", "--windows=10"}, env);
  EXPECT_EQ(flags.database, "flagdb");
  EXPECT_EQ(flags.windows_s, (std::vector<std::uint32_t>{10}));
  EXPECT_EQ(flags.user, "envuser");
}

TEST(Config, BadFlagsAndValues) {
  EXPECT_NE(error_of({"--bogus"}).find("unknown flag --bogus"), std::string::npos);
  EXPECT_NE(error_of({"stray"}).find("unknown argument stray"), std::string::npos);
  EXPECT_NE(error_of({"--database"}).find("needs a value"), std::string::npos);
  EXPECT_NE(error_of({"--database", "a;DROP"}).find("not a valid database name"), std::string::npos);
  EXPECT_NE(error_of({"--database", ""}).find("not a valid database name"), std::string::npos);
  EXPECT_NE(error_of({"--windows", "10,,60"}).find("--windows"), std::string::npos);
  EXPECT_NE(error_of({"--windows", "10,10"}).find("given twice"), std::string::npos);
  EXPECT_NE(error_of({"--windows", "0"}).find("at least 1s"), std::string::npos);
  EXPECT_NE(error_of({"--windows", "2d"}).find("--windows"), std::string::npos);
  EXPECT_NE(error_of({"--windows", "25h"}).find("longer than 24h"), std::string::npos);
  EXPECT_NE(error_of({"--tick", "0"}).find("at least 1s"), std::string::npos);
  EXPECT_NE(error_of({"--tick", "500ms"}).find("--tick"), std::string::npos);
  EXPECT_NE(error_of({"--tick", "-1"}).find("--tick"), std::string::npos);
  EXPECT_NE(error_of({"--settle", "x"}).find("--settle"), std::string::npos);
  EXPECT_NE(error_of({"--correction-memory", "2d"}).find("--correction-memory"), std::string::npos);
  EXPECT_NE(error_of({"--max-read-bytes", "4095"}).find("at least 4096"), std::string::npos);
  EXPECT_NE(error_of({"--max-read-bytes", "1e6"}).find("number of bytes"), std::string::npos);
  EXPECT_NE(error_of({"--clickhouse-url", "localhost:8123"}).find("http://"), std::string::npos);
  EXPECT_NE(error_of({"--user", ""}).find("must not be empty"), std::string::npos);
  EXPECT_NE(error_of({"--json"}).find("--json needs --once"), std::string::npos);
  EXPECT_NE(error_of({"--once", "--insert"}).find("--insert"), std::string::npos);
  EXPECT_NE(error_of({"--now", "1700000000"}).find("--now needs --once"), std::string::npos);
  EXPECT_NE(error_of({"--once", "--now", "-5"}).find("unix seconds"), std::string::npos);
  EXPECT_NE(error_of({"--once", "--now", "99999999999"}).find("DateTime"), std::string::npos);
  EXPECT_NE(error_of({"--once=1"}).find("takes no value"), std::string::npos);
  EXPECT_NE(error_of({"--once", "--log-timing"}).find("--log-timing is for the daemon"), std::string::npos);
  EXPECT_NE(error_of({}, {{"TAILWATCH_TICK", "soon"}}).find("environment variable TAILWATCH_TICK"),
            std::string::npos);
}

TEST(Config, TheLateMarginIsGoneAndSaysWhatReplacedIt) {
  for (const auto& args : {std::vector<std::string>{"--late-margin", "5s"}, std::vector<std::string>{"--late-margin=5s"},
                           std::vector<std::string>{"--late-margin"}}) {
    const std::string message = error_of(args);
    EXPECT_NE(message.find("--late-margin was replaced by --settle"), std::string::npos) << message;
  }
  const std::string message = error_of({}, {{"TAILWATCH_LATE_MARGIN", "5s"}});
  EXPECT_NE(message.find("TAILWATCH_LATE_MARGIN was replaced by --settle"), std::string::npos) << message;
}

TEST(Config, Durations) {
  EXPECT_EQ(parse_duration_s("5", "x"), 5u);
  EXPECT_EQ(parse_duration_s("5s", "x"), 5u);
  EXPECT_EQ(parse_duration_s("2m", "x"), 120u);
  EXPECT_EQ(parse_duration_s("1h", "x"), 3600u);
  EXPECT_EQ(parse_duration_s("0s", "x"), 0u);
  EXPECT_THROW(parse_duration_s("", "x"), UsageError);
  EXPECT_THROW(parse_duration_s("s", "x"), UsageError);
  EXPECT_THROW(parse_duration_s("1.5s", "x"), UsageError);
  EXPECT_THROW(parse_duration_s("99999999999", "x"), UsageError);
}
