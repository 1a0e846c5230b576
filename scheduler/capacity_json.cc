#include "scheduler/capacity_json.h"

#include <algorithm>

#include "services/kit/json.h"

namespace isorun::scheduler {
namespace {

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

void Dimension(JsonWriter& w, const char* name, int64_t capacity, int64_t allocated,
               const int64_t* reserved) {
  w.Key(name).BeginObject();
  w.Key("capacity").Int(capacity).Key("allocated").Int(allocated);
  if (reserved != nullptr) w.Key("reserved").Int(*reserved);
  w.Key("free").Int(std::max<int64_t>(0, capacity - allocated));
}

}  // namespace

std::string CapacityJson(const std::vector<RunnerStatus>& runners, const FleetTotals& totals,
                         absl::Time now, const CapacityJsonOptions& options) {
  JsonWriter w;
  w.BeginObject();
  w.Key("generatedAt").String(Rfc3339(now));
  w.Key("totals").BeginObject();
  int64_t count = 0;
  for (const auto& [state, n] : totals.runners_by_state) count += n;
  w.Key("runners").Int(count);
  w.Key("runnersByState").BeginObject();
  for (const auto& [state, n] : totals.runners_by_state) w.Key(state).Int(n);
  w.EndObject();
  w.Key("cpuMillis").BeginObject().Key("capacity").Int(totals.capacity.cpu_millis);
  w.Key("allocated").Int(totals.allocated.cpu_millis).Key("free").Int(totals.free.cpu_millis);
  w.EndObject();
  w.Key("memoryMb").BeginObject().Key("capacity").Int(totals.capacity.memory_mb);
  w.Key("allocated").Int(totals.allocated.memory_mb).Key("free").Int(totals.free.memory_mb);
  w.EndObject();
  w.Key("sandboxes").BeginObject().Key("capacity").Int(totals.capacity.sandboxes);
  w.Key("allocated").Int(totals.allocated.sandboxes).Key("free").Int(totals.free.sandboxes);
  w.EndObject();
  w.Key("schedulable").BeginObject();
  w.Key("cpuMillisFree").Int(totals.schedulable_free.cpu_millis);
  w.Key("memoryMbFree").Int(totals.schedulable_free.memory_mb);
  w.Key("sandboxesFree").Int(totals.schedulable_free.sandboxes);
  w.Key("cpuMillisCapacity").Int(totals.schedulable_capacity.cpu_millis);
  w.Key("memoryMbCapacity").Int(totals.schedulable_capacity.memory_mb);
  w.Key("sandboxesCapacity").Int(totals.schedulable_capacity.sandboxes);
  w.EndObject();
  w.Key("images").Int(totals.images);
  w.Key("placements").Int(totals.placements);
  w.Key("pullsInFlight").Int(totals.pulls_in_flight);
  w.EndObject();

  if (options.runners) {
    w.Key("runners").BeginArray();
    for (const auto& r : runners) {
      const RunnerView& v = r.view;
      if (!options.runner.empty() && options.runner != v.name && options.runner != v.id) continue;
      w.BeginObject();
      w.Key("id").String(v.id).Key("name").String(v.name).Key("address").String(v.address);
      w.Key("region")
          .String(v.region)
          .Key("state")
          .String(r.state)
          .Key("draining")
          .Bool(v.draining);
      if (v.last_heartbeat == absl::InfinitePast()) {
        w.Key("lastHeartbeat").Null().Key("heartbeatAgeSec").Null();
      } else {
        w.Key("lastHeartbeat").String(Rfc3339(v.last_heartbeat));
        w.Key("heartbeatAgeSec").Double(absl::ToDoubleSeconds(now - v.last_heartbeat));
      }
      Dimension(w, "cpuMillis", v.capacity.cpu_millis, v.allocated.cpu_millis,
                &r.reserved.cpu_millis);
      w.EndObject();
      Dimension(w, "memoryMb", v.capacity.memory_mb, v.allocated.memory_mb, &r.reserved.memory_mb);
      w.EndObject();
      Dimension(w, "sandboxes", v.capacity.sandboxes, v.allocated.sandboxes, &r.reserved.sandboxes);
      if (options.sandbox_ids) {
        w.Key("ids").BeginArray();
        for (const auto& id : v.sandbox_ids) w.String(id);
        w.EndArray();
      }
      w.EndObject();
      w.Key("placements").BeginObject().Key("warm").Int(r.placements_warm);
      w.Key("cold").Int(r.placements_cold).EndObject();
      w.Key("imageCache").BeginObject();
      w.Key("budgetBytes").Int(v.image_cache_bytes).Key("usedBytes").Int(v.image_cache_used_bytes);
      w.Key("pulling").BeginArray();
      for (const auto& p : r.pulling) w.String(p);
      w.EndArray();
      w.Key("images").BeginArray();
      for (const auto& img : v.images) {
        w.BeginObject().Key("digest").String(img.digest).Key("sizeBytes").Int(img.size_bytes);
        w.Key("refs").BeginArray();
        for (const auto& ref : img.refs) w.String(ref);
        w.EndArray().Key("lastUsed");
        if (img.last_used == absl::InfinitePast()) {
          w.Null();
        } else {
          w.String(Rfc3339(img.last_used));
        }
        w.Key("sandboxes").Int(img.sandboxes).EndObject();
      }
      w.EndArray();
      w.EndObject();
      w.EndObject();
    }
    w.EndArray();
  }
  w.EndObject();
  return w.Take();
}

}  // namespace isorun::scheduler
