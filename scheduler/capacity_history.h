#pragma once

// Capacity history for operators: what a fleet snapshot holds, how the scheduler's runner list
// becomes one (for the whole fleet and for each region), and the forecast of when capacity runs
// out. Pure: no I/O, no clock (times are arguments), so tests drive it with synthetic series.
//
// Forecast method (ForecastExhaustion):
//   For each resource (cpu, memory, sandbox slots) take the samples of the recent window (by
//   default the last hour) of `allocated`, and fit a straight line allocated(t) = a + b*t by
//   ordinary least squares. The trend is the slope b; the level now is the fitted line at the
//   newest sample (less noisy than the last raw value). With capacity C (the newest sample's):
//     - fewer than `min_points` samples, or spanning less than `min_span`: no forecast
//       ("insufficient data");
//     - level >= C: exhausted now (0 s);
//     - b <= 0, or growth so slow that it would take longer than `horizon` (30 days): "not
//       running out" (no time);
//     - otherwise the time left is (C - level) / b.
//   The fleet's answer is the earliest of its resources; each region gets its own. A straight
//   line is deliberately simple: it answers "at the current growth, when do we hit the wall",
//   reacts within one window to a change of trend, and cannot invent seasonality it has not
//   seen. `r2` (coefficient of determination) says how well the line fits, so a dashboard can
//   show low-confidence forecasts as such.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "scheduler/fleet.h"

namespace isorun::scheduler {

// One region (region "" is the whole fleet) at one time. Gauges are values at `at` (for
// downsampled rows: averages over the bucket); the four counters count events since the previous
// snapshot (downsampled: sums).
struct CapacitySample {
  absl::Time at;
  std::string region;
  int64_t runners_healthy = 0;
  int64_t runners_unhealthy = 0;
  int64_t runners_lost = 0;
  int64_t runners_draining = 0;
  ResourceVector capacity;   // of runners not lost
  ResourceVector allocated;  // on runners not lost
  ResourceVector free;       // on schedulable (healthy, not draining) runners
  int64_t sandboxes = 0;     // placements
  int64_t images = 0;        // distinct images cached
  // Live sandboxes by state, as the lifecycle's rows say (PENDING ones have no runner yet, so
  // they count in the fleet only).
  int64_t sandboxes_pending = 0;
  int64_t sandboxes_starting = 0;
  int64_t sandboxes_running = 0;
  int64_t sandboxes_hibernated = 0;
  int64_t sandboxes_destroying = 0;
  // Counters (events in the interval).
  int64_t placements_warm = 0;
  int64_t placements_cold = 0;
  int64_t capacity_refusals = 0;  // placements refused for want of capacity (429 CAPACITY)
  int64_t pulls = 0;              // pre-warm pulls finished
};

// Cumulative counters the recorder turns into per-interval counts.
struct CapacityCounters {
  int64_t placements_warm = 0;
  int64_t placements_cold = 0;
  int64_t capacity_refusals = 0;
  int64_t pulls = 0;
  // capacity_refusals by the region the placement asked for.
  std::map<std::string, int64_t> region_refusals = {};
};

// Live sandboxes of one state on one runner ("" = not placed yet).
struct SandboxStateCount {
  std::string runner_id;
  std::string state;
  int64_t count = 0;
};

// Adds the counts to the samples: to the fleet's, and to the region of each runner (a runner
// absent from `runner_regions` counts in the fleet only).
void AddSandboxStates(const std::vector<SandboxStateCount>& counts,
                      const std::map<std::string, std::string>& runner_regions,
                      std::vector<CapacitySample>& samples);

// The fleet (region "") first, then each region in name order, with gauges filled and the
// warm/cold counters cumulative per region (from the runners' own counts).
std::vector<CapacitySample> Summarize(const std::vector<RunnerStatus>& runners, absl::Time at);

// Turns cumulative counters into the counts since `previous` (a counter that went backwards
// restarted: its count is its value).
CapacityCounters CounterDelta(const CapacityCounters& now, const CapacityCounters& previous);

struct ForecastOptions {
  absl::Duration window = absl::Hours(1);
  int min_points = 5;
  absl::Duration min_span = absl::Minutes(2);
  absl::Duration horizon = absl::Hours(24 * 30);
};

struct ResourceForecast {
  std::string resource;  // "cpu", "memory", "sandboxes"
  enum class Outcome { kInsufficientData, kNotRunningOut, kExhausted, kRunsOut };
  Outcome outcome = Outcome::kInsufficientData;
  double capacity = 0;
  double level = 0;            // fitted allocated now
  double slope_per_hour = 0;   // growth of allocated per hour
  double r2 = 0;               // fit quality, 0..1
  absl::Duration time_left = absl::InfiniteDuration();  // kRunsOut (and 0 for kExhausted)
  int points = 0;
};

// One resource's series: (time, allocated) with the capacity at the newest sample.
ResourceForecast ForecastExhaustion(const std::vector<std::pair<absl::Time, double>>& allocated,
                                    double capacity, const ForecastOptions& options = {});

struct RegionForecast {
  std::string region;  // "" = the fleet
  std::vector<ResourceForecast> resources;
  // The earliest resource to run out: its name, or empty.
  std::string first_resource;
  absl::Duration time_left = absl::InfiniteDuration();
};

// Forecasts every region found in `samples` (any order; the newest window per region is used).
std::vector<RegionForecast> Forecast(const std::vector<CapacitySample>& samples, absl::Time now,
                                     const ForecastOptions& options = {});

// {"generatedAt", "method", "fleet": {...}, "regions": {"name": {...}}} with, per region,
// {"firstResource"?, "secondsLeft"?, "exhaustsAt"?, "resources": [{"resource", "outcome",
// "capacity", "allocated", "slopePerHour", "r2", "points", "secondsLeft"?, "exhaustsAt"?}]}.
std::string ForecastJson(const std::vector<RegionForecast>& forecasts, absl::Time now);

// {"from", "to", "stepSec", "fleet": [points], "regions": {"name": [points]}}, a point being
// {"time", "runners": {"healthy", "unhealthy", "lost", "draining"}, "cpuMillis": {"capacity",
// "allocated", "free"}, "memoryMb": {...}, "sandboxSlots": {...}, "sandboxes", "cachedImages",
// "sandboxesByState": {"PENDING", "STARTING", "RUNNING", "HIBERNATED", "DESTROYING"},
// "placementsWarm", "placementsCold", "capacityRefusals", "pulls"}.
std::string HistoryJson(const std::vector<CapacitySample>& samples, absl::Time from, absl::Time to,
                        absl::Duration step);

}  // namespace isorun::scheduler
