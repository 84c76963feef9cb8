#include "tailwatch/clickhouse.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tsv.h"

using namespace tailwatch;

TEST(Tsv, SplitsAndUnescapes) {
  const auto fields = split_tsv_line("1700000000\tcat\\talog\tx\\\\y\\n\\'\\0z\t\\x41");
  ASSERT_EQ(fields.size(), 4u);
  EXPECT_EQ(fields[0], "1700000000");
  EXPECT_EQ(fields[1], "cat\talog");
  EXPECT_EQ(fields[2], std::string("x\\y\n'\0z", 7));
  EXPECT_EQ(fields[3], "A");
  EXPECT_EQ(split_tsv_line("").size(), 1u);
  EXPECT_EQ(split_tsv_line("a\t").size(), 2u);
  EXPECT_THROW(split_tsv_line("a\\"), std::runtime_error);
  EXPECT_THROW(split_tsv_line("a\\q"), std::runtime_error);
  EXPECT_THROW(split_tsv_line("\\x4"), std::runtime_error);
}

TEST(Tsv, ParsesBodies) {
  EXPECT_TRUE(parse_tsv("").empty());
  const auto rows = parse_tsv("1\ta\n2\tb\n");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1][1], "b");
  EXPECT_EQ(parse_uint_field("18446744073709551615", "x"), 18446744073709551615ULL);
  EXPECT_THROW(parse_uint_field("18446744073709551616", "x"), std::runtime_error);
  EXPECT_THROW(parse_uint_field("-1", "x"), std::runtime_error);
  EXPECT_THROW(parse_uint_field("", "x"), std::runtime_error);
}

TEST(ClickHouseSql, QueryReadsTheProfileRollupAndRefusesBadNames) {
  const std::string q = tick_query("profiler", 100, 106);
  EXPECT_NE(q.find("SELECT toUInt32(ts), service, method, errors, finalizeAggregation(duration_max_us), "
                   "histogramMap.bucket, histogramMap.count FROM profiler.latency_profile_1s WHERE "),
            std::string::npos);
  EXPECT_NE(q.find("ts >= toDateTime(100) AND ts < toDateTime(106)"), std::string::npos);
  EXPECT_EQ(q.find("GROUP BY"), std::string::npos);
  EXPECT_THROW(tick_query("x; DROP TABLE y", 1, 2), std::invalid_argument);
  EXPECT_THROW(check_identifier("1abc"), std::invalid_argument);
  EXPECT_NO_THROW(check_identifier("_profiler_2"));
}

TEST(Tsv, ParsesArrays) {
  EXPECT_TRUE(parse_uint_array("[]", "x").empty());
  EXPECT_EQ(parse_uint_array("[7]", "x"), std::vector<unsigned long long>{7});
  EXPECT_EQ(parse_uint_array("[1,22,18446744073709551615]", "x"),
            (std::vector<unsigned long long>{1, 22, 18446744073709551615ULL}));
  for (const char* bad : {"", "[", "]", "1,2", "[1,]", "[,1]", "[1,,2]", "[1 ,2]", "[-1]", "[1,2", "[a]"}) {
    EXPECT_THROW(parse_uint_array(bad, "x"), std::runtime_error) << bad;
  }
}

TEST(Tsv, ParsesProfileRows) {
  const auto rows = parse_profile_tsv(
      "1700000000\tcat\\talog\t/m\t2\t5000\t[5,796]\t[2,1]\n"
      "1700000001\ts\t\t0\t0\t[]\t[]\n");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].ts, 1700000000);
  EXPECT_EQ(rows[0].service, "cat\talog");
  EXPECT_EQ(rows[0].method, "/m");
  EXPECT_EQ(rows[0].errors, 2u);
  EXPECT_EQ(rows[0].max_us, 5000u);
  EXPECT_EQ(rows[0].buckets, (SparseHistogram{{5, 2}, {796, 1}}));
  EXPECT_EQ(rows[1].method, "");
  EXPECT_TRUE(rows[1].buckets.empty());
  EXPECT_TRUE(parse_profile_tsv("").empty());
  // Arrays of different lengths, a bucket out of range, a missing field.
  EXPECT_THROW(parse_profile_tsv("1\ts\tm\t0\t1\t[1,2]\t[1]\n"), std::runtime_error);
  EXPECT_THROW(parse_profile_tsv("1\ts\tm\t0\t1\t[" + std::to_string(kBucketCount) + "]\t[1]\n"),
               std::runtime_error);
  EXPECT_THROW(parse_profile_tsv("1\ts\tm\t0\t1\t[1]\n"), std::runtime_error);
}

TEST(ClickHouseSql, PercentileRowsAreOneJsonObjectPerLine) {
  WindowStats row;
  row.key = {"svc\"quote", "/m\n"};
  row.window_s = 60;
  row.count = 120;
  row.rps = 2;
  row.p99_us = 1234;
  const std::string body = percentile_rows_json(1700000000, {row, row});
  ASSERT_EQ(std::count(body.begin(), body.end(), '\n'), 2);
  const auto first = nlohmann::json::parse(body.substr(0, body.find('\n')));
  EXPECT_EQ(first["ts"], 1700000000);
  EXPECT_EQ(first["service"], "svc\"quote");
  EXPECT_EQ(first["method"], "/m\n");
  EXPECT_EQ(first["window_s"], 60);
  EXPECT_EQ(first["p99_us"], 1234);
  EXPECT_EQ(first.size(), 13u);
}

TEST(ClickHouseClient, UnreachableServerIsAClickHouseError) {
  ClickHouseOptions options;
  options.url = "http://127.0.0.1:9";  // discard port: nothing listens
  options.connect_timeout_ms = 500;
  ClickHouseClient client(options);
  EXPECT_THROW(client.query("SELECT 1"), ClickHouseError);
  ClickHouseSource source(client, "profiler");
  EXPECT_THROW(source.fetch(1, 2), ClickHouseError);
}
