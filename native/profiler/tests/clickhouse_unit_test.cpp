#include "tailwatch/clickhouse.h"

#include <gtest/gtest.h>


#include <cstring>

#include "rowbinary.h"

using namespace tailwatch;

TEST(ClickHouseSql, TheFeedReadsBatchesAboveTheFloorAndRefusesBadNames) {
  const std::string q = feed_query("profiler", 41, std::nullopt);
  EXPECT_EQ(q, "SELECT ingest_batch_seq, toUInt32(end_ts), service, method, errors, "
               "finalizeAggregation(duration_max_us), finalizeAggregation(ingest_floor_seq), histogramMap.bucket, "
               "histogramMap.count FROM profiler.latency_profile_1s WHERE ingest_batch_seq > 41 FORMAT RowBinary");
  EXPECT_NE(feed_query("p", 41, 90).find("WHERE ingest_batch_seq > 41 AND ingest_batch_seq <= 90 FORMAT"),
            std::string::npos);
  EXPECT_EQ(q.find("GROUP BY"), std::string::npos);
  EXPECT_THROW(feed_query("x; DROP TABLE y", 1, std::nullopt), std::invalid_argument);
  EXPECT_THROW(check_identifier("1abc"), std::invalid_argument);
  EXPECT_NO_THROW(check_identifier("_profiler_2"));
}

TEST(ClickHouseSql, ReloadsReadFinalBatchesByEndSecond) {
  EXPECT_NE(seconds_query("p", 41, 100, 106).find("FROM p.latency_profile_1s WHERE end_ts >= toDateTime(100) AND "
                                                 "end_ts < toDateTime(106) AND ingest_batch_seq <= 41 AND "
                                                 "service != '' FORMAT RowBinary"),
            std::string::npos);
  EXPECT_EQ(seconds_query("p", std::nullopt, 100, 106).find("ingest_batch_seq <="), std::string::npos);
  EXPECT_NE(seconds_query("p", std::nullopt, -5, 10).find("end_ts >= toDateTime(0)"), std::string::npos);
  EXPECT_NE(last_second_query("p", 7, 100).find("WHERE end_ts >= toDateTime(100) AND service != '' AND "
                                                "ingest_batch_seq <= 7"),
            std::string::npos);
  EXPECT_NE(highest_batch_query("p", 7).find("max(ingest_batch_seq), count() FROM p.latency_profile_1s WHERE "
                                             "ingest_batch_seq > 7"),
            std::string::npos);
}

TEST(ClickHouseSql, StartupAndInsertBookkeeping) {
  EXPECT_NE(start_point_query("p", 1700086400).find("max(ts)), max(version), max(ingest_floor_seq), count() FROM "
                                                    "p.latency_percentiles WHERE ts >= toDateTime(1700000000)"),
            std::string::npos);
  EXPECT_NE(newest_partition_query("p").find("database = 'p' AND table = 'latency_profile_1s' AND active ORDER BY "
                                             "partition DESC LIMIT 1"),
            std::string::npos);
  EXPECT_NE(partition_floor_query("p", 20261205).find("maxMerge(ingest_floor_seq) FROM p.latency_profile_1s WHERE "
                                                      "toYYYYMMDD(end_ts) = 20261205"),
            std::string::npos);
  EXPECT_NE(running_inserts_query("tw_db").find("WHERE substring(query_id, 1, 25) = 'tailwatch-profiler-tw_db-'"),
            std::string::npos);
  EXPECT_NE(stored_counts_query("p", {5, 6}, 100, 200)
                .find("SELECT version, count() FROM p.latency_percentiles WHERE version IN (5, 6) AND ts >= "
                      "toDateTime(100) AND ts <= toDateTime(200) GROUP BY version"),
            std::string::npos);
  EXPECT_NE(stored_rows_query("p", 5, 100, 200).find("SELECT toUInt32(ts), window_s, service, method FROM "
                                                     "p.latency_percentiles WHERE version = 5"),
            std::string::npos);
  EXPECT_NE(published_rows_query("p", 100, 200).find("WHERE ts >= toDateTime(100) AND ts <= toDateTime(200) GROUP BY "
                                                     "ts, service, method"),
            std::string::npos);
  EXPECT_NE(batch_requests_query("p", 57).find("SELECT sum(arraySum(histogramMap.count)) FROM p.latency_profile_1s "
                                               "WHERE ingest_batch_seq = 57 AND service != ''"),
            std::string::npos);
  EXPECT_EQ(rebuilds_query("p"), "SELECT count() FROM p.projection_rebuilds FORMAT TSV");
  const std::string params = read_params(1 << 20, 10000);
  for (const char* part : {"max_result_bytes=1048576", "result_overflow_mode=throw", "max_execution_time=10",
                           "wait_end_of_query=1", "max_result_rows=", "buffer_size=2097152"}) {
    EXPECT_NE(params.find(part), std::string::npos) << part;
  }
}

namespace {
/// One feed_query answer row, encoded the way ClickHouse writes RowBinary.
std::string rollup_row(std::uint64_t batch, std::uint32_t ts, const std::string& service, const std::string& method,
                       std::uint64_t errors, std::uint64_t max, std::uint64_t floor,
                       const std::vector<std::uint16_t>& buckets, const std::vector<std::uint64_t>& counts) {
  std::string out;
  put_u64(out, batch);
  put_u32(out, ts);
  put_string(out, service);
  put_string(out, method);
  put_u64(out, errors);
  put_u64(out, max);
  put_u64(out, floor);
  out.push_back(static_cast<char>(buckets.size()));
  for (const auto b : buckets) out.append(reinterpret_cast<const char*>(&b), 2);
  out.push_back(static_cast<char>(counts.size()));
  for (const auto c : counts) put_u64(out, c);
  return out;
}
std::vector<RollupRow> parse(const std::string& body) {
  std::vector<RollupRow> rows;
  parse_rollup_rowbinary(body, rows);
  return rows;
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

TEST(RowBinary, ParsesRollupRows) {
  const std::string name("cat\talog\0\xff", 10);  // any bytes: RowBinary has no escapes
  const std::string first = rollup_row(17, 1700000000, name, "/m", 2, 5000, 9, {5, 796}, {2, 1});
  const std::string body = first + rollup_row(18, 1700000001, "", "", 0, 0, 17, {}, {});
  const auto rows = parse(body);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].batch, 17u);
  EXPECT_EQ(rows[0].end_s, 1700000000);
  EXPECT_EQ(rows[0].service, name);
  EXPECT_EQ(rows[0].method, "/m");
  EXPECT_EQ(rows[0].errors, 2u);
  EXPECT_EQ(rows[0].max_us, 5000u);
  EXPECT_EQ(rows[0].floor, 9u);
  EXPECT_EQ(rows[0].buckets, (SparseHistogram{{5, 2}, {796, 1}}));
  EXPECT_EQ(rows[1].service, "") << "a floor marker";
  EXPECT_EQ(rows[1].floor, 17u);
  EXPECT_TRUE(rows[1].buckets.empty());
  EXPECT_TRUE(parse("").empty());
  // Every truncation of a valid answer is refused, never read past.
  for (std::size_t n = 1; n < body.size(); ++n) {
    bool boundary = false;
    try {
      parse(body.substr(0, n));
      boundary = true;
    } catch (const std::runtime_error&) {
    }
    EXPECT_EQ(boundary, n == first.size()) << n;
  }
  // Arrays of different lengths, a bucket out of range.
  EXPECT_THROW(parse(rollup_row(1, 1, "s", "m", 0, 1, 0, {1, 2}, {1})), std::runtime_error);
  EXPECT_THROW(parse(rollup_row(1, 1, "s", "m", 0, 1, 0, {static_cast<std::uint16_t>(kBucketCount)}, {1})),
               std::runtime_error);
}

TEST(RowBinary, ParsingIntoReusedRowsGivesWhatAFreshParseGives) {
  // Answers of changing shape parsed one after the other into one vector (as the daemon does, to reuse the
  // rows' buffers): more rows, fewer rows, longer and shorter names and arrays, none, a bad one.
  const std::vector<std::string> answers = {
      rollup_row(3, 10, "orders", "/orders.v1.OrderService/CreateOrder", 1, 900, 2, {5, 796, 900}, {2, 1, 7}) +
          rollup_row(3, 10, "s", "", 0, 0, 2, {}, {}),
      rollup_row(4, 11, "a-much-longer-service-name-than-before", "m", 0, 3, 3, {3}, {1}) +
          rollup_row(4, 11, "s", "/m", 4, 40, 3, {40, 41}, {1, 1}) + rollup_row(5, 12, "t", "/n", 0, 9, 3, {9}, {3}),
      rollup_row(6, 13, "x", "", 2, 2, 5, {2, 2, 2, 2}, {1, 1, 1, 1}),
      "",
      rollup_row(7, 14, "y", "/z", 0, 1, 6, {1}, {1}),
  };
  std::vector<RollupRow> reused;
  for (const auto& answer : answers) {
    parse_rollup_rowbinary(answer, reused);
    const auto fresh = parse(answer);
    ASSERT_EQ(reused.size(), fresh.size());
    for (std::size_t i = 0; i < fresh.size(); ++i) {
      EXPECT_EQ(reused[i].batch, fresh[i].batch);
      EXPECT_EQ(reused[i].end_s, fresh[i].end_s);
      EXPECT_EQ(reused[i].service, fresh[i].service);
      EXPECT_EQ(reused[i].method, fresh[i].method);
      EXPECT_EQ(reused[i].errors, fresh[i].errors);
      EXPECT_EQ(reused[i].max_us, fresh[i].max_us);
      EXPECT_EQ(reused[i].floor, fresh[i].floor);
      EXPECT_EQ(reused[i].buckets, fresh[i].buckets);
    }
  }
  EXPECT_THROW(parse_rollup_rowbinary(rollup_row(1, 1, "s", "m", 0, 1, 0, {1, 2}, {1}), reused), std::runtime_error);
}

TEST(RowBinary, ParsesPublishedRowsAndRowIds) {
  std::string body;
  put_u32(body, 100);
  put_string(body, "s");
  put_string(body, "");
  const auto published = parse_published_rowbinary(body);
  ASSERT_EQ(published.size(), 1u);
  EXPECT_EQ(published[0].first, 100);
  EXPECT_EQ(published[0].second, (Key{"s", ""}));
  std::string ids;
  put_u32(ids, 100);
  put_u32(ids, 60);
  put_string(ids, "s");
  put_string(ids, "m");
  const auto parsed = parse_row_ids_rowbinary(ids);
  ASSERT_EQ(parsed.size(), 1u);
  EXPECT_EQ(parsed[0], (RowId{100, 60, "s", "m"}));
  EXPECT_THROW(parse_row_ids_rowbinary(ids.substr(0, ids.size() - 1)), std::runtime_error);
}

TEST(ClickHouseSql, PercentileRowsAreRowBinaryInColumnOrder) {
  PercentileRow row;
  row.ts = 1700000000;
  row.stats.key = {"svc\"quote", std::string("/m\n\xff", 4)};
  row.stats.window_s = 60;
  row.stats.count = 120;
  row.stats.errors = 30;
  row.stats.rps = 2;
  row.stats.error_rate = 0.25;
  row.stats.p50_us = 7;
  row.stats.p99_us = 1234;
  row.stats.max_us = 99999;
  row.version = 1700000000123;
  row.floor = 77;
  const std::string body = percentile_rows_rowbinary({row, row});
  const std::size_t one = 4 + 4 + (1 + 9) + (1 + 4) + 8 + 8 + 8 + 8 + 6 * 8 + 8 + 8;
  ASSERT_EQ(body.size(), 2 * one);
  EXPECT_EQ(body.substr(0, one), body.substr(one));
  RowBinaryReader in(body);
  EXPECT_EQ(in.u32("ts"), 1700000000u);
  EXPECT_EQ(in.u32("window_s"), 60u);
  EXPECT_EQ(in.string("service"), "svc\"quote");
  EXPECT_EQ(in.string("method"), std::string("/m\n\xff", 4));
  EXPECT_EQ(in.u64("count"), 120u);
  EXPECT_EQ(in.u64("errors"), 30u);
  const auto f64 = [&](const char* what) {
    const std::uint64_t bits = in.u64(what);
    double value;
    std::memcpy(&value, &bits, 8);
    return value;
  };
  EXPECT_EQ(f64("rps"), 2.0);
  EXPECT_EQ(f64("error_rate"), 0.25);
  for (const std::uint64_t expected : {7u, 0u, 0u, 1234u, 0u, 99999u}) EXPECT_EQ(in.u64("p"), expected);
  EXPECT_EQ(in.u64("version"), 1700000000123u);
  EXPECT_EQ(in.u64("ingest_floor_seq"), 77u);
  const std::string statement = percentile_insert_statement("profiler");
  EXPECT_EQ(statement, std::string("INSERT INTO profiler.latency_percentiles (") + kPercentileColumns +
                           ") FORMAT RowBinary");
  EXPECT_NE(std::string(kPercentileColumns).find("max_us, version, ingest_floor_seq"), std::string::npos);
  EXPECT_THROW(percentile_insert_statement("a b"), std::invalid_argument);
}

TEST(ClickHouseClient, UnreachableServerIsAClickHouseError) {
  ClickHouseOptions options;
  options.url = "http://127.0.0.1:9";  // discard port: nothing listens
  options.connect_timeout_ms = 500;
  ClickHouseClient client(options);
  EXPECT_THROW(client.query("SELECT 1"), ClickHouseError);
  ClickHouseStore store(client, "profiler", 1 << 20, 1000);
  std::vector<RollupRow> rows;
  try {
    store.read_batches(0, std::nullopt, rows);
    FAIL() << "no error";
  } catch (const ReadTooLarge&) {
    FAIL() << "an unreachable server is not a read too large";
  } catch (const ClickHouseError& error) {
    EXPECT_FALSE(error.too_large());
  }
}
