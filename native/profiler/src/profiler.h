// The tailwatch-profiler program (private): one tick, the daemon loop, the JSON snapshot.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "tailwatch/config.h"
#include "tailwatch/rolling.h"

namespace tailwatch {

struct TickTiming {
  double read_ms = 0;     ///< the SELECT, including parsing (http_ms + parse_ms, nearly)
  double http_ms = 0;     ///< the SELECT's round trip
  double parse_ms = 0;    ///< its answer -> rows
  double compute_ms = 0;  ///< advance + snapshot
  double insert_ms = 0;
  std::size_t response_bytes = 0;
  std::size_t rows = 0;            ///< latency_profile_1s rows read (one per second, key and unmerged part)
  std::size_t histogram_rows = 0;  ///< (bucket, count) entries read
  std::int64_t from = 0, to = 0;   ///< seconds read
};

/// The --once --json document.
std::string snapshot_json(const Config& config, std::int64_t now, const std::vector<WindowStats>& rows,
                          const TickTiming& timing);

/// Runs the program; returns the exit status. Messages go to `err`, the JSON snapshot to `out`.
int run_profiler(const Config& config, std::ostream& out, std::ostream& err);

}  // namespace tailwatch
