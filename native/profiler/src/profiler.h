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
  double read_ms = 0;     ///< both SELECTs, including parsing
  double compute_ms = 0;  ///< advance + snapshot
  double insert_ms = 0;
  std::size_t histogram_rows = 0;
  std::size_t max_rows = 0;
  std::int64_t from = 0, to = 0;  ///< seconds read
};

/// The --once --json document.
std::string snapshot_json(const Config& config, std::int64_t now, const std::vector<WindowStats>& rows,
                          const TickTiming& timing);

/// Runs the program; returns the exit status. Messages go to `err`, the JSON snapshot to `out`.
int run_profiler(const Config& config, std::ostream& out, std::ostream& err);

}  // namespace tailwatch
