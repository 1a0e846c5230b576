#include "scheduler/fleet_metrics.h"

namespace isorun::scheduler {
namespace {

prometheus::Gauge& Single(prometheus::Registry& registry, const std::string& name,
                          const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

}  // namespace

FleetMetrics::FleetMetrics(prometheus::Registry& registry)
    : runners_(prometheus::BuildGauge()
                   .Name("isorun_scheduler_runners")
                   .Help("Runners by state (HEALTHY, UNHEALTHY, LOST, DRAINING)")
                   .Register(registry)),
      free_cpu_(Single(registry, "isorun_scheduler_free_cpu_millis",
                       "Free cpu millis on schedulable (healthy, not draining) runners")),
      free_memory_(Single(registry, "isorun_scheduler_free_memory_mb",
                          "Free memory MB on schedulable runners")),
      free_slots_(Single(registry, "isorun_scheduler_free_sandbox_slots",
                         "Free sandbox slots on schedulable runners")),
      cap_cpu_(Single(registry, "isorun_scheduler_capacity_cpu_millis",
                      "Cpu millis of schedulable runners")),
      cap_memory_(Single(registry, "isorun_scheduler_capacity_memory_mb",
                         "Memory MB of schedulable runners")),
      cap_slots_(Single(registry, "isorun_scheduler_capacity_sandbox_slots",
                        "Sandbox slots of schedulable runners")),
      pulls_(prometheus::BuildCounter()
                 .Name("isorun_scheduler_prewarm_pulls_total")
                 .Help("Image pulls started ahead of demand, by outcome")
                 .Register(registry)),
      pulls_ok_(pulls_.Add({{"outcome", "ok"}})),
      pulls_failed_(pulls_.Add({{"outcome", "failed"}})),
      in_flight_(
          Single(registry, "isorun_scheduler_prewarm_pulls_in_flight", "Pre-warm pulls in flight")),
      images_(Single(registry, "isorun_scheduler_cached_images",
                     "Distinct images cached on some runner")) {
  for (const char* state : {"HEALTHY", "UNHEALTHY", "LOST", "DRAINING"}) {
    by_state_[state] = &runners_.Add({{"state", state}});
  }
}

void FleetMetrics::Update(const FleetTotals& t) {
  for (const auto& [state, n] : t.runners_by_state) {
    auto it = by_state_.find(state);
    if (it != by_state_.end()) it->second->Set(static_cast<double>(n));
  }
  free_cpu_.Set(static_cast<double>(t.schedulable_free.cpu_millis));
  free_memory_.Set(static_cast<double>(t.schedulable_free.memory_mb));
  free_slots_.Set(static_cast<double>(t.schedulable_free.sandboxes));
  cap_cpu_.Set(static_cast<double>(t.schedulable_capacity.cpu_millis));
  cap_memory_.Set(static_cast<double>(t.schedulable_capacity.memory_mb));
  cap_slots_.Set(static_cast<double>(t.schedulable_capacity.sandboxes));
  in_flight_.Set(static_cast<double>(t.pulls_in_flight));
  images_.Set(static_cast<double>(t.images));
}

}  // namespace isorun::scheduler
