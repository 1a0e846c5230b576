#include "scheduler/capacity_history.h"

#include <gtest/gtest.h>

#include <random>

namespace isorun::scheduler {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

// allocated(t) = start + per_hour * hours, sampled every `every` for `span`.
std::vector<std::pair<absl::Time, double>> Line(double start, double per_hour, absl::Duration span,
                                                absl::Duration every, double noise = 0,
                                                unsigned seed = 1) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> jitter(0, noise);
  std::vector<std::pair<absl::Time, double>> out;
  for (absl::Duration d = absl::ZeroDuration(); d <= span; d += every) {
    double v = start + per_hour * absl::ToDoubleHours(d);
    if (noise > 0) v += jitter(rng);
    out.emplace_back(kT0 + d, v);
  }
  return out;
}

TEST(Forecast, SteadyLinearGrowthRunsOutExactlyWhenTheLineMeetsCapacity) {
  // 100 slots, 40 allocated an hour ago, 60 now, +20/h: 2 hours left.
  auto f = ForecastExhaustion(Line(40, 20, absl::Hours(1), absl::Seconds(10)), 100);
  EXPECT_EQ(f.outcome, ResourceForecast::Outcome::kRunsOut);
  EXPECT_NEAR(f.slope_per_hour, 20, 1e-6);
  EXPECT_NEAR(f.level, 60, 1e-6);
  EXPECT_NEAR(absl::ToDoubleSeconds(f.time_left), 2 * 3600, 1.0);
  EXPECT_NEAR(f.r2, 1, 1e-9);
}

TEST(Forecast, OnlyTheRecentWindowCounts) {
  // Flat for 5 hours, then growing for the last hour: the old flat part must not dilute it.
  auto series = Line(10, 0, absl::Hours(5), absl::Minutes(1));
  for (auto [t, v] : Line(10, 30, absl::Hours(1), absl::Minutes(1))) {
    series.emplace_back(t + absl::Hours(5), v);
  }
  auto f = ForecastExhaustion(series, 100);
  ASSERT_EQ(f.outcome, ResourceForecast::Outcome::kRunsOut);
  EXPECT_NEAR(f.slope_per_hour, 30, 1e-6);
  EXPECT_NEAR(absl::ToDoubleHours(f.time_left), 2.0, 0.01);  // (100 - 40) / 30
}

TEST(Forecast, NoisyGrowthIsCloseAndFitIsImperfect) {
  auto f = ForecastExhaustion(Line(200, 100, absl::Hours(1), absl::Seconds(10), 15), 1000);
  ASSERT_EQ(f.outcome, ResourceForecast::Outcome::kRunsOut);
  EXPECT_NEAR(f.slope_per_hour, 100, 10);
  EXPECT_NEAR(absl::ToDoubleHours(f.time_left), 7.0, 0.5);  // (1000 - 300) / 100
  EXPECT_LT(f.r2, 1.0);
  EXPECT_GT(f.r2, 0.8);
}

TEST(Forecast, FlatOrShrinkingNeverRunsOut) {
  EXPECT_EQ(ForecastExhaustion(Line(50, 0, absl::Hours(1), absl::Minutes(1)), 100).outcome,
            ResourceForecast::Outcome::kNotRunningOut);
  auto shrinking = ForecastExhaustion(Line(80, -10, absl::Hours(1), absl::Minutes(1)), 100);
  EXPECT_EQ(shrinking.outcome, ResourceForecast::Outcome::kNotRunningOut);
  EXPECT_EQ(shrinking.time_left, absl::InfiniteDuration());
  // +1 slot a day on 10,000 free: beyond the 30-day horizon.
  EXPECT_EQ(ForecastExhaustion(Line(0, 1.0 / 24, absl::Hours(1), absl::Minutes(1)), 10000).outcome,
            ResourceForecast::Outcome::kNotRunningOut);
}

TEST(Forecast, FullIsExhaustedNow) {
  auto f = ForecastExhaustion(Line(100, 0, absl::Hours(1), absl::Minutes(1)), 100);
  EXPECT_EQ(f.outcome, ResourceForecast::Outcome::kExhausted);
  EXPECT_EQ(f.time_left, absl::ZeroDuration());
}

TEST(Forecast, TooLittleDataGivesNoForecast) {
  EXPECT_EQ(ForecastExhaustion({}, 100).outcome, ResourceForecast::Outcome::kInsufficientData);
  // Four points.
  EXPECT_EQ(ForecastExhaustion(Line(0, 50, absl::Minutes(30), absl::Minutes(10)), 100).outcome,
            ResourceForecast::Outcome::kInsufficientData);
  // Many points within one minute: too short a span to call a trend.
  EXPECT_EQ(ForecastExhaustion(Line(0, 50, absl::Minutes(1), absl::Seconds(1)), 100).outcome,
            ResourceForecast::Outcome::kInsufficientData);
}

CapacitySample Sample(const std::string& region, absl::Duration at, int64_t cpu, int64_t mem,
                      int64_t slots) {
  CapacitySample s;
  s.region = region;
  s.at = kT0 + at;
  s.capacity = {1000, 1000, 100};
  s.allocated = {cpu, mem, slots};
  return s;
}

TEST(Forecast, EachRegionAndTheFleetGetTheirEarliestResource) {
  std::vector<CapacitySample> samples;
  for (int m = 0; m <= 60; ++m) {
    absl::Duration at = absl::Minutes(m);
    // Fleet: slots grow 10/h from 50 (5 h left at the end: 60 -> 100 is 4 h), cpu flat.
    samples.push_back(Sample("", at, 100, 100, 50 + m / 6));
    // eu: memory grows 600/h from 100 (at 700 after an hour: 0.5 h left).
    samples.push_back(Sample("eu", at, 100, 100 + 10 * m, 10));
    // us: nothing grows.
    samples.push_back(Sample("us", at, 100, 100, 10));
  }
  auto forecasts = Forecast(samples, kT0 + absl::Hours(1));
  ASSERT_EQ(forecasts.size(), 3u);
  EXPECT_EQ(forecasts[0].region, "");
  EXPECT_EQ(forecasts[0].first_resource, "sandboxes");
  EXPECT_NEAR(absl::ToDoubleHours(forecasts[0].time_left), 4.0, 0.2);
  EXPECT_EQ(forecasts[1].region, "eu");
  EXPECT_EQ(forecasts[1].first_resource, "memory");
  EXPECT_NEAR(absl::ToDoubleHours(forecasts[1].time_left), 0.5, 0.01);
  EXPECT_EQ(forecasts[2].region, "us");
  EXPECT_EQ(forecasts[2].first_resource, "");
  EXPECT_EQ(forecasts[2].time_left, absl::InfiniteDuration());

  std::string json = ForecastJson(forecasts, kT0 + absl::Hours(1));
  EXPECT_NE(json.find("\"fleet\":{\"firstResource\":\"sandboxes\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"us\":{\"resources\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"outcome\":\"RUNS_OUT\""), std::string::npos) << json;
}

TEST(Summarize, FleetAndRegionsFromRunners) {
  auto runner = [](const std::string& name, const std::string& region, const std::string& state,
                   ResourceVector cap, ResourceVector alloc, std::vector<std::string> images) {
    RunnerStatus r;
    r.view.name = name;
    r.view.region = region;
    r.state = state;
    r.view.capacity = cap;
    r.view.allocated = alloc;
    r.reserved = alloc;
    for (auto& d : images) {
      CachedImage image;
      image.digest = d;
      r.view.images.push_back(image);
    }
    r.placements_warm = 3;
    r.placements_cold = 1;
    return r;
  };
  std::vector<RunnerStatus> runners = {
      runner("a", "eu", "HEALTHY", {4000, 8000, 10}, {1000, 2000, 2}, {"sha256:1", "sha256:2"}),
      runner("b", "eu", "DRAINING", {4000, 8000, 10}, {500, 500, 1}, {"sha256:2"}),
      runner("c", "us", "LOST", {4000, 8000, 10}, {0, 0, 0}, {"sha256:3"}),
  };
  auto samples = Summarize(runners, kT0);
  ASSERT_EQ(samples.size(), 3u);
  const CapacitySample& fleet = samples[0];
  EXPECT_EQ(fleet.region, "");
  EXPECT_EQ(fleet.runners_healthy, 1);
  EXPECT_EQ(fleet.runners_draining, 1);
  EXPECT_EQ(fleet.runners_lost, 1);
  EXPECT_EQ(fleet.capacity.cpu_millis, 8000) << "lost runners have no capacity";
  EXPECT_EQ(fleet.allocated.sandboxes, 3);
  EXPECT_EQ(fleet.free.cpu_millis, 3000) << "only schedulable runners' free counts";
  EXPECT_EQ(fleet.images, 3);
  EXPECT_EQ(fleet.placements_warm, 9);
  EXPECT_EQ(samples[1].region, "eu");
  EXPECT_EQ(samples[1].images, 2);
  EXPECT_EQ(samples[1].sandboxes, 3);
  EXPECT_EQ(samples[2].region, "us");
  EXPECT_EQ(samples[2].capacity.sandboxes, 0);
}

TEST(CounterDelta, CountsSinceThePreviousAndSurvivesARestart) {
  CapacityCounters d = CounterDelta({10, 5, 2, 7}, {4, 5, 0, 9});
  EXPECT_EQ(d.placements_warm, 6);
  EXPECT_EQ(d.placements_cold, 0);
  EXPECT_EQ(d.capacity_refusals, 2);
  EXPECT_EQ(d.pulls, 7) << "a counter that went back restarted";
}

}  // namespace
}  // namespace isorun::scheduler
