#include "scheduler/capacity_history.h"

#include <algorithm>
#include <cmath>

#include "absl/container/flat_hash_set.h"
#include "services/kit/json.h"

namespace isorun::scheduler {
namespace {

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

int64_t Delta(int64_t now, int64_t before) { return now >= before ? now - before : now; }

const char* OutcomeName(ResourceForecast::Outcome o) {
  switch (o) {
    case ResourceForecast::Outcome::kInsufficientData:
      return "INSUFFICIENT_DATA";
    case ResourceForecast::Outcome::kNotRunningOut:
      return "NOT_RUNNING_OUT";
    case ResourceForecast::Outcome::kExhausted:
      return "EXHAUSTED";
    case ResourceForecast::Outcome::kRunsOut:
      return "RUNS_OUT";
  }
  return "INSUFFICIENT_DATA";
}

void WriteNumber(JsonWriter& w, double v) {
  if (std::isfinite(v) && std::fabs(v) < 9e15 && v == std::trunc(v)) {
    w.Int(static_cast<int64_t>(v));
  } else if (std::isfinite(v)) {
    w.Double(std::round(v * 1000) / 1000);
  } else {
    w.Null();
  }
}

void WriteTimeLeft(JsonWriter& w, absl::Duration left, absl::Time now) {
  if (left == absl::InfiniteDuration()) return;
  w.Key("secondsLeft").Int(absl::ToInt64Seconds(left));
  w.Key("exhaustsAt").String(Rfc3339(now + left));
}

void WriteTriple(JsonWriter& w, const char* key, int64_t capacity, int64_t allocated,
                 int64_t free) {
  w.Key(key).BeginObject();
  w.Key("capacity").Int(capacity).Key("allocated").Int(allocated).Key("free").Int(free);
  w.EndObject();
}

void WriteStates(JsonWriter& w, const CapacitySample& s) {
  w.Key("sandboxesByState").BeginObject();
  w.Key("PENDING").Int(s.sandboxes_pending).Key("STARTING").Int(s.sandboxes_starting);
  w.Key("RUNNING").Int(s.sandboxes_running).Key("HIBERNATED").Int(s.sandboxes_hibernated);
  w.Key("DESTROYING").Int(s.sandboxes_destroying);
  w.EndObject();
}

void WritePoint(JsonWriter& w, const CapacitySample& s) {
  w.BeginObject();
  w.Key("time").String(Rfc3339(s.at));
  w.Key("runners").BeginObject();
  w.Key("healthy").Int(s.runners_healthy).Key("unhealthy").Int(s.runners_unhealthy);
  w.Key("lost").Int(s.runners_lost).Key("draining").Int(s.runners_draining);
  w.EndObject();
  WriteTriple(w, "cpuMillis", s.capacity.cpu_millis, s.allocated.cpu_millis, s.free.cpu_millis);
  WriteTriple(w, "memoryMb", s.capacity.memory_mb, s.allocated.memory_mb, s.free.memory_mb);
  WriteTriple(w, "sandboxSlots", s.capacity.sandboxes, s.allocated.sandboxes, s.free.sandboxes);
  w.Key("sandboxes").Int(s.sandboxes).Key("cachedImages").Int(s.images);
  WriteStates(w, s);
  w.Key("placementsWarm").Int(s.placements_warm).Key("placementsCold").Int(s.placements_cold);
  w.Key("capacityRefusals").Int(s.capacity_refusals).Key("pulls").Int(s.pulls);
  w.EndObject();
}

}  // namespace

void AddSandboxStates(const std::vector<SandboxStateCount>& counts,
                      const std::map<std::string, std::string>& runner_regions,
                      std::vector<CapacitySample>& samples) {
  auto add = [](CapacitySample& s, const std::string& state, int64_t n) {
    if (state == "PENDING") s.sandboxes_pending += n;
    if (state == "STARTING") s.sandboxes_starting += n;
    if (state == "RUNNING") s.sandboxes_running += n;
    if (state == "HIBERNATED") s.sandboxes_hibernated += n;
    if (state == "DESTROYING") s.sandboxes_destroying += n;
  };
  for (const SandboxStateCount& c : counts) {
    auto region = runner_regions.find(c.runner_id);
    for (CapacitySample& s : samples) {
      if (s.region.empty() || (region != runner_regions.end() && s.region == region->second)) {
        add(s, c.state, c.count);
      }
    }
  }
}

std::vector<CapacitySample> Summarize(const std::vector<RunnerStatus>& runners, absl::Time at) {
  std::map<std::string, CapacitySample> by_region;
  std::map<std::string, absl::flat_hash_set<std::string>> images;
  CapacitySample fleet;
  absl::flat_hash_set<std::string> fleet_images;
  auto add = [](CapacitySample& s, const RunnerStatus& r) {
    const std::string& st = r.state;
    if (st == "HEALTHY") ++s.runners_healthy;
    if (st == "UNHEALTHY") ++s.runners_unhealthy;
    if (st == "LOST") ++s.runners_lost;
    if (st == "DRAINING") ++s.runners_draining;
    if (st != "LOST") {
      s.capacity += r.view.capacity;
      s.allocated += r.view.allocated;
    }
    if (st == "HEALTHY") {
      ResourceVector free = r.view.capacity - r.view.allocated;
      s.free.cpu_millis += std::max<int64_t>(0, free.cpu_millis);
      s.free.memory_mb += std::max<int64_t>(0, free.memory_mb);
      s.free.sandboxes += std::max<int64_t>(0, free.sandboxes);
    }
    s.sandboxes += r.reserved.sandboxes;
    s.placements_warm += r.placements_warm;
    s.placements_cold += r.placements_cold;
  };
  for (const RunnerStatus& r : runners) {
    CapacitySample& s = by_region[r.view.region];
    add(s, r);
    add(fleet, r);
    for (const CachedImage& img : r.view.images) {
      images[r.view.region].insert(img.digest);
      fleet_images.insert(img.digest);
    }
  }
  std::vector<CapacitySample> out;
  fleet.at = at;
  fleet.images = static_cast<int64_t>(fleet_images.size());
  out.push_back(fleet);
  for (auto& [region, s] : by_region) {
    s.at = at;
    s.region = region.empty() ? "default" : region;
    s.images = static_cast<int64_t>(images[region].size());
    out.push_back(s);
  }
  return out;
}

CapacityCounters CounterDelta(const CapacityCounters& now, const CapacityCounters& previous) {
  return {Delta(now.placements_warm, previous.placements_warm),
          Delta(now.placements_cold, previous.placements_cold),
          Delta(now.capacity_refusals, previous.capacity_refusals),
          Delta(now.pulls, previous.pulls)};
}

ResourceForecast ForecastExhaustion(const std::vector<std::pair<absl::Time, double>>& series,
                                    double capacity, const ForecastOptions& options) {
  ResourceForecast f;
  f.capacity = capacity;
  if (series.empty()) return f;
  absl::Time newest = series.front().first;
  for (const auto& [t, v] : series) newest = std::max(newest, t);
  const absl::Time start = newest - options.window;
  // Times relative to the newest sample, in hours, to keep the sums well conditioned.
  std::vector<std::pair<double, double>> pts;
  double oldest = 0;
  for (const auto& [t, v] : series) {
    if (t < start) continue;
    double x = absl::ToDoubleHours(t - newest);
    pts.emplace_back(x, v);
    oldest = std::min(oldest, x);
  }
  f.points = static_cast<int>(pts.size());
  if (f.points < options.min_points || -oldest < absl::ToDoubleHours(options.min_span)) return f;
  double n = static_cast<double>(pts.size()), sx = 0, sy = 0;
  for (const auto& [x, y] : pts) {
    sx += x;
    sy += y;
  }
  const double mx = sx / n, my = sy / n;
  double sxx = 0, sxy = 0, syy = 0;
  for (const auto& [x, y] : pts) {
    sxx += (x - mx) * (x - mx);
    sxy += (x - mx) * (y - my);
    syy += (y - my) * (y - my);
  }
  if (sxx <= 0) return f;
  const double slope = sxy / sxx;       // per hour
  const double level = my - slope * mx;  // fitted value at x = 0 (the newest sample)
  f.slope_per_hour = slope;
  f.level = level;
  f.r2 = syy > 0 ? std::clamp(sxy * sxy / (sxx * syy), 0.0, 1.0) : 1.0;
  if (level >= capacity) {
    f.outcome = ResourceForecast::Outcome::kExhausted;
    f.time_left = absl::ZeroDuration();
    return f;
  }
  if (slope <= 0) {
    f.outcome = ResourceForecast::Outcome::kNotRunningOut;
    return f;
  }
  const double hours = (capacity - level) / slope;
  if (hours > absl::ToDoubleHours(options.horizon)) {
    f.outcome = ResourceForecast::Outcome::kNotRunningOut;
    return f;
  }
  f.outcome = ResourceForecast::Outcome::kRunsOut;
  f.time_left = absl::Seconds(std::ceil(hours * 3600));
  return f;
}

std::vector<RegionForecast> Forecast(const std::vector<CapacitySample>& samples, absl::Time now,
                                     const ForecastOptions& options) {
  std::map<std::string, std::vector<const CapacitySample*>> by_region;
  for (const CapacitySample& s : samples) {
    if (s.at <= now) by_region[s.region].push_back(&s);
  }
  std::vector<RegionForecast> out;
  for (auto& [region, list] : by_region) {
    std::sort(list.begin(), list.end(),
              [](const CapacitySample* a, const CapacitySample* b) { return a->at < b->at; });
    RegionForecast rf;
    rf.region = region;
    const CapacitySample& newest = *list.back();
    struct Resource {
      const char* name;
      int64_t ResourceVector::*field;
    };
    for (Resource res : {Resource{"cpu", &ResourceVector::cpu_millis},
                         Resource{"memory", &ResourceVector::memory_mb},
                         Resource{"sandboxes", &ResourceVector::sandboxes}}) {
      std::vector<std::pair<absl::Time, double>> series;
      for (const CapacitySample* s : list) {
        series.emplace_back(s->at, static_cast<double>(s->allocated.*res.field));
      }
      ResourceForecast f =
          ForecastExhaustion(series, static_cast<double>(newest.capacity.*res.field), options);
      f.resource = res.name;
      if (f.time_left < rf.time_left) {
        rf.time_left = f.time_left;
        rf.first_resource = f.resource;
      }
      rf.resources.push_back(f);
    }
    out.push_back(std::move(rf));
  }
  // The fleet first.
  std::stable_sort(out.begin(), out.end(), [](const RegionForecast& a, const RegionForecast& b) {
    return a.region.empty() && !b.region.empty();
  });
  return out;
}

std::string ForecastJson(const std::vector<RegionForecast>& forecasts, absl::Time now) {
  JsonWriter w;
  w.BeginObject();
  w.Key("generatedAt").String(Rfc3339(now));
  w.Key("method").String(
      "least-squares line through the last hour of allocated cpu, memory and sandbox slots; "
      "time left = (capacity - fitted level now) / slope; the earliest resource wins");
  auto write = [&](const RegionForecast& rf) {
    w.BeginObject();
    if (!rf.first_resource.empty()) w.Key("firstResource").String(rf.first_resource);
    WriteTimeLeft(w, rf.time_left, now);
    w.Key("resources").BeginArray();
    for (const ResourceForecast& f : rf.resources) {
      w.BeginObject();
      w.Key("resource").String(f.resource).Key("outcome").String(OutcomeName(f.outcome));
      w.Key("capacity");
      WriteNumber(w, f.capacity);
      w.Key("allocated");
      WriteNumber(w, f.level);
      w.Key("slopePerHour");
      WriteNumber(w, f.slope_per_hour);
      w.Key("r2");
      WriteNumber(w, f.r2);
      w.Key("points").Int(f.points);
      WriteTimeLeft(w, f.time_left, now);
      w.EndObject();
    }
    w.EndArray();
    w.EndObject();
  };
  bool fleet = false;
  for (const RegionForecast& rf : forecasts) {
    if (rf.region.empty()) {
      w.Key("fleet");
      write(rf);
      fleet = true;
    }
  }
  if (!fleet) w.Key("fleet").Null();
  w.Key("regions").BeginObject();
  for (const RegionForecast& rf : forecasts) {
    if (rf.region.empty()) continue;
    w.Key(rf.region);
    write(rf);
  }
  w.EndObject();
  w.EndObject();
  return w.Take();
}

std::string HistoryJson(const std::vector<CapacitySample>& samples, absl::Time from, absl::Time to,
                        absl::Duration step) {
  std::map<std::string, std::vector<const CapacitySample*>> by_region;
  for (const CapacitySample& s : samples) by_region[s.region].push_back(&s);
  for (auto& [region, list] : by_region) {
    std::sort(list.begin(), list.end(),
              [](const CapacitySample* a, const CapacitySample* b) { return a->at < b->at; });
  }
  JsonWriter w;
  w.BeginObject();
  w.Key("from").String(Rfc3339(from)).Key("to").String(Rfc3339(to));
  w.Key("stepSec").Int(absl::ToInt64Seconds(step));
  w.Key("fleet").BeginArray();
  for (const CapacitySample* s : by_region[""]) WritePoint(w, *s);
  w.EndArray();
  w.Key("regions").BeginObject();
  for (const auto& [region, list] : by_region) {
    if (region.empty()) continue;
    w.Key(region).BeginArray();
    for (const CapacitySample* s : list) WritePoint(w, *s);
    w.EndArray();
  }
  w.EndObject();
  w.EndObject();
  return w.Take();
}

}  // namespace isorun::scheduler
