// The tailwatch-profiler program (private): --once, the daemon loop, their JSON.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "tailwatch/config.h"
#include "tailwatch/engine.h"

namespace tailwatch {

/// Where --once spent its time (the "timing" member of its JSON).
struct OnceTiming {
  double read_ms = 0;   ///< the reads, parsing included
  double http_ms = 0;   ///< their round trips
  double parse_ms = 0;  ///< their answers -> rows
  double compute_ms = 0;
  double insert_ms = 0;
  std::size_t response_bytes = 0;
  std::size_t rows = 0;            ///< latency_profile_1s rows read
  std::size_t histogram_rows = 0;  ///< their (bucket, count) entries
  std::size_t reads = 0;           ///< SELECTs
  std::size_t splits = 0;          ///< reads refused for their size and split
  std::int64_t from = 0, to = 0;   ///< end seconds read
};

/// The --once --json document: {"now", "database", "windows_s", "inserted", "version", "timing", "rows"};
/// each row has the latency_percentiles columns (version 0 when not inserted).
std::string snapshot_json(const Config& config, std::int64_t now, const std::vector<WindowStats>& rows,
                          std::uint64_t version, const OnceTiming& timing);

/// Runs the program; returns the exit status. Messages go to `err`, the JSON snapshot to `out`.
int run_profiler(const Config& config, std::ostream& out, std::ostream& err);

}  // namespace tailwatch
