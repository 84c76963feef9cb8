#include "tailwatch/schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace tailwatch {

TickSchedule::TickSchedule(std::uint32_t tick_s, std::uint32_t settle_s) : tick_(tick_s), settle_(settle_s) {
  if (tick_s == 0) throw std::invalid_argument("tick must be at least 1 s");
}

std::int64_t TickSchedule::wall_tick(double wall) const {
  const auto second = static_cast<std::int64_t>(std::floor(wall)) - settle_;
  const std::int64_t q = second / tick_;
  return (second % tick_ != 0 && second < 0 ? q - 1 : q) * tick_;
}

std::optional<TickSchedule::Due> TickSchedule::due(std::int64_t last, double wall, double mono,
                                                   double last_publication_mono) const {
  const std::int64_t by_wall = wall_tick(wall);
  if (by_wall > last) return Due{by_wall, false};
  if (mono - last_publication_mono > static_cast<double>(tick_ + 1)) return Due{last + tick_, true};
  return std::nullopt;
}

double TickSchedule::wait(std::int64_t last, double wall, double mono, double last_publication_mono) const {
  if (due(last, wall, mono, last_publication_mono)) return 0;
  const double by_wall = static_cast<double>(last + tick_ + settle_) - wall;
  // A little past the fallback's threshold, which is strict.
  const double by_mono = last_publication_mono + static_cast<double>(tick_ + 1) + 0.001 - mono;
  return std::max(0.0, std::min(by_wall, by_mono));
}

}  // namespace tailwatch
