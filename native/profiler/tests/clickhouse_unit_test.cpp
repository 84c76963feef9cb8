#include "tailwatch/clickhouse.h"

#include <gtest/gtest.h>


#include <cstring>

#include "rowbinary.h"

using namespace tailwatch;

TEST(ClickHouseSql, QueryReadsTheProfileRollupAndRefusesBadNames) {
  const std::string q = tick_query("profiler", 100, 106);
  EXPECT_NE(q.find("SELECT toUInt32(ts), service, method, errors, finalizeAggregation(duration_max_us), "
                   "histogramMap.bucket, histogramMap.count FROM profiler.latency_profile_1s WHERE "),
            std::string::npos);
  EXPECT_NE(q.find(" FORMAT RowBinary"),
            std::string::npos);
  EXPECT_NE(q.find("ts >= toDateTime(100) AND ts < toDateTime(106)"), std::string::npos);
  EXPECT_EQ(q.find("GROUP BY"), std::string::npos);
  EXPECT_THROW(tick_query("x; DROP TABLE y", 1, 2), std::invalid_argument);
  EXPECT_THROW(check_identifier("1abc"), std::invalid_argument);
  EXPECT_NO_THROW(check_identifier("_profiler_2"));
}

namespace {
/// One tick_query answer row, encoded the way ClickHouse writes RowBinary.
std::string profile_row(std::uint32_t ts, const std::string& service, const std::string& method,
                        std::uint64_t errors, std::uint64_t max, const std::vector<std::uint16_t>& buckets,
                        const std::vector<std::uint64_t>& counts) {
  std::string out;
  put_u32(out, ts);
  put_string(out, service);
  put_string(out, method);
  put_u64(out, errors);
  put_u64(out, max);
  out.push_back(static_cast<char>(buckets.size()));
  for (const auto b : buckets) out.append(reinterpret_cast<const char*>(&b), 2);
  out.push_back(static_cast<char>(counts.size()));
  for (const auto c : counts) put_u64(out, c);
  return out;
}
}  // namespace

TEST(RowBinary, WritesLittleEndianNumbersAndLeb128Strings) {
  std::string out;
  put_u32(out, 0x01020304);
  put_u64(out, 5);
  put_string(out, "");
  put_string(out, std::string(300, 'x'));
  ASSERT_EQ(out.size(), 4u + 8u + 1u + 2u + 300u);
  EXPECT_EQ(out.substr(0, 4), std::string("\x04\x03\x02\x01", 4));
  EXPECT_EQ(out[12], '\0');
  EXPECT_EQ(out.substr(13, 2), std::string("\xac\x02", 2));  // 300 = 0b10_0101100
  RowBinaryReader in(out);
  EXPECT_EQ(in.u32("a"), 0x01020304u);
  EXPECT_EQ(in.u64("b"), 5u);
  EXPECT_EQ(in.string("c"), "");
  EXPECT_EQ(in.string("d"), std::string(300, 'x'));
  EXPECT_TRUE(in.done());
  EXPECT_THROW(in.u16("past the end"), std::runtime_error);
  std::string overlong(11, '\x80');
  RowBinaryReader bad(overlong);
  EXPECT_THROW(bad.varint("x"), std::runtime_error);
}

TEST(RowBinary, ParsesProfileRows) {
  const std::string name("cat\talog\0\xff", 10);  // any bytes: RowBinary has no escapes
  const std::string body = profile_row(1700000000, name, "/m", 2, 5000, {5, 796}, {2, 1}) +
                           profile_row(1700000001, "s", "", 0, 0, {}, {});
  const auto rows = parse_profile_rowbinary(body);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].ts, 1700000000);
  EXPECT_EQ(rows[0].service, name);
  EXPECT_EQ(rows[0].method, "/m");
  EXPECT_EQ(rows[0].errors, 2u);
  EXPECT_EQ(rows[0].max_us, 5000u);
  EXPECT_EQ(rows[0].buckets, (SparseHistogram{{5, 2}, {796, 1}}));
  EXPECT_EQ(rows[1].method, "");
  EXPECT_TRUE(rows[1].buckets.empty());
  EXPECT_TRUE(parse_profile_rowbinary("").empty());
  // Every truncation of a valid answer is refused, never read past.
  for (std::size_t n = 1; n < body.size(); ++n) {
    const std::string cut = body.substr(0, n);
    bool boundary = false;
    try {
      parse_profile_rowbinary(cut);
      boundary = true;
    } catch (const std::runtime_error&) {
    }
    EXPECT_EQ(boundary, n == profile_row(1700000000, name, "/m", 2, 5000, {5, 796}, {2, 1}).size()) << n;
  }
  // Arrays of different lengths, a bucket out of range.
  EXPECT_THROW(parse_profile_rowbinary(profile_row(1, "s", "m", 0, 1, {1, 2}, {1})), std::runtime_error);
  EXPECT_THROW(
      parse_profile_rowbinary(profile_row(1, "s", "m", 0, 1, {static_cast<std::uint16_t>(kBucketCount)}, {1})),
      std::runtime_error);
}

TEST(RowBinary, ParsingIntoReusedRowsGivesWhatAFreshParseGives) {
  // Answers of changing shape parsed one after the other into one vector (as the daemon does, to reuse the
  // rows' buffers): more rows, fewer rows, longer and shorter names and arrays, none, a bad one.
  const std::vector<std::string> answers = {
      profile_row(10, "orders", "/orders.v1.OrderService/CreateOrder", 1, 900, {5, 796, 900}, {2, 1, 7}) +
          profile_row(10, "s", "", 0, 0, {}, {}),
      profile_row(11, "a-much-longer-service-name-than-before", "m", 0, 3, {3}, {1}) +
          profile_row(11, "s", "/m", 4, 40, {40, 41}, {1, 1}) + profile_row(12, "t", "/n", 0, 9, {9}, {3}),
      profile_row(13, "x", "", 2, 2, {2, 2, 2, 2}, {1, 1, 1, 1}),
      "",
      profile_row(14, "y", "/z", 0, 1, {1}, {1}),
  };
  std::vector<ProfileRow> reused;
  for (const auto& answer : answers) {
    parse_profile_rowbinary(answer, reused);
    const auto fresh = parse_profile_rowbinary(answer);
    ASSERT_EQ(reused.size(), fresh.size());
    for (std::size_t i = 0; i < fresh.size(); ++i) {
      EXPECT_EQ(reused[i].ts, fresh[i].ts);
      EXPECT_EQ(reused[i].service, fresh[i].service);
      EXPECT_EQ(reused[i].method, fresh[i].method);
      EXPECT_EQ(reused[i].errors, fresh[i].errors);
      EXPECT_EQ(reused[i].max_us, fresh[i].max_us);
      EXPECT_EQ(reused[i].buckets, fresh[i].buckets);
    }
  }
  EXPECT_THROW(parse_profile_rowbinary(profile_row(1, "s", "m", 0, 1, {1, 2}, {1}), reused), std::runtime_error);
}

TEST(ClickHouseSql, PercentileRowsAreRowBinaryInColumnOrder) {
  WindowStats row;
  row.key = {"svc\"quote", std::string("/m\n\xff", 4)};
  row.window_s = 60;
  row.count = 120;
  row.rps = 2;
  row.error_rate = 0.25;
  row.p50_us = 7;
  row.p99_us = 1234;
  row.max_us = 99999;
  const std::string body = percentile_rows_rowbinary(1700000000, {row, row});
  const std::size_t one = 4 + 4 + (1 + 9) + (1 + 4) + 8 + 8 + 8 + 6 * 8;
  ASSERT_EQ(body.size(), 2 * one);
  EXPECT_EQ(body.substr(0, one), body.substr(one));
  RowBinaryReader in(body);
  EXPECT_EQ(in.u32("ts"), 1700000000u);
  EXPECT_EQ(in.u32("window_s"), 60u);
  EXPECT_EQ(in.string("service"), "svc\"quote");
  EXPECT_EQ(in.string("method"), std::string("/m\n\xff", 4));
  EXPECT_EQ(in.u64("count"), 120u);
  const auto f64 = [&](const char* what) {
    const std::uint64_t bits = in.u64(what);
    double value;
    std::memcpy(&value, &bits, 8);
    return value;
  };
  EXPECT_EQ(f64("rps"), 2.0);
  EXPECT_EQ(f64("error_rate"), 0.25);
  for (const std::uint64_t expected : {7u, 0u, 0u, 1234u, 0u, 99999u}) EXPECT_EQ(in.u64("p"), expected);
  const std::string statement = percentile_insert_statement("profiler");
  EXPECT_EQ(statement, std::string("INSERT INTO profiler.latency_percentiles (") + kPercentileColumns +
                           ") FORMAT RowBinary");
  EXPECT_THROW(percentile_insert_statement("a b"), std::invalid_argument);
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
