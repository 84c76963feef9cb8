// The JSON form of a latency_percentiles row (private): one definition for the INSERT body and the
// --once --json snapshot.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>

#include "tailwatch/rolling.h"

namespace tailwatch {

/// The latency_percentiles columns of `row` at time `now` (unix seconds).
nlohmann::json percentile_row(std::int64_t now, const WindowStats& row);

}  // namespace tailwatch
