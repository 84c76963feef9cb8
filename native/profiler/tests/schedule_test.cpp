#include "tailwatch/schedule.h"

#include <gtest/gtest.h>

using namespace tailwatch;

TEST(TickSchedule, ATickIsDueOnceTheClockPassesItBySettle) {
  const TickSchedule schedule(1, 2);
  EXPECT_EQ(schedule.wall_tick(1000.5), 998);
  EXPECT_FALSE(schedule.due(998, 1000.9, 50, 49.5));
  const auto due = schedule.due(998, 1001.0, 50, 49.5);
  ASSERT_TRUE(due);
  EXPECT_EQ(due->target, 999);
  EXPECT_FALSE(due->by_monotonic);
  EXPECT_EQ(schedule.due(990, 1001.2, 50, 49.5)->target, 999) << "every tick up to the latest due";
  EXPECT_NEAR(schedule.wait(998, 1000.25, 50, 49.5), 0.75, 1e-9);
  const TickSchedule five(5, 0);
  EXPECT_EQ(five.wall_tick(1003.9), 1000);
  EXPECT_EQ(five.due(995, 1004, 0, 0)->target, 1000);
  EXPECT_THROW(TickSchedule(0, 1), std::invalid_argument);
}

TEST(TickSchedule, AWallClockSteppingBackKeepsTicksComing) {
  // The daemon's loop, its clocks simulated: the wall clock steps back an hour at 1000.
  const TickSchedule schedule(1, 1);
  double wall = 990.2, mono = 10.2, last_mono = 10.2;
  std::int64_t last = 988;
  std::vector<std::int64_t> published;
  for (int i = 0; i < 200; ++i) {
    if (wall >= 1000 && wall < 1001) wall -= 3600;
    const auto due = schedule.due(last, wall, mono, last_mono);
    if (due) {
      for (std::int64_t t = last + 1; t <= due->target; ++t) published.push_back(t);
      last = due->target;
      last_mono = mono;
      continue;
    }
    const double wait = schedule.wait(last, wall, mono, last_mono);
    ASSERT_GT(wait, 0);
    ASSERT_LE(wait, 2.01) << "never asleep longer than the monotonic fallback";
    wall += wait;
    mono += wait;
  }
  ASSERT_GT(published.size(), 60u) << "ticks kept coming after the step";
  for (std::size_t i = 1; i < published.size(); ++i) ASSERT_EQ(published[i], published[i - 1] + 1);
  // After the step, one tick per 2 s of monotonic time (tick + 1).
  EXPECT_GE(published.back(), 1040);
}
