// When the daemon publishes (native/profiler/README.md, "Publication").
//
// Ticks are multiples of tick_s. Tick T is due once the wall clock reaches T + settle: the requests that
// completed before T have had `settle` seconds to reach ClickHouse (what arrives later is corrected). Every
// tick after the last published one up to the latest due one is published (the engine caps a catch-up).
// A wall clock that steps back must not stop the output: when the wall clock says no tick is due but more
// than tick_s + 1 seconds of monotonic time have passed since the last publication, the next tick
// (last + tick_s) is due anyway.
#pragma once

#include <cstdint>
#include <optional>

namespace tailwatch {

class TickSchedule {
 public:
  /// Throws std::invalid_argument for tick_s 0.
  TickSchedule(std::uint32_t tick_s, std::uint32_t settle_s);

  /// The latest tick due by the wall clock (unix seconds, fractional): floor to a tick of (wall - settle).
  std::int64_t wall_tick(double wall) const;

  struct Due {
    std::int64_t target = 0;    ///< publish every tick after `last` up to this one
    bool by_monotonic = false;  ///< the wall clock said none was due (it stepped back)
  };
  /// What is due now, given the last tick published, the wall clock, the monotonic clock (seconds) and the
  /// monotonic time of the last publication; nullopt when nothing is.
  std::optional<Due> due(std::int64_t last, double wall, double mono, double last_publication_mono) const;

  /// Seconds until due() can next return a tick (0 when one is due now): the earlier of the wall clock
  /// reaching last + tick_s + settle and the monotonic fallback.
  double wait(std::int64_t last, double wall, double mono, double last_publication_mono) const;

 private:
  std::int64_t tick_;
  std::int64_t settle_;
};

}  // namespace tailwatch
