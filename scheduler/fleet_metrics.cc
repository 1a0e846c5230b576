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
      free_cpu_(Single(registry, "isorun_scheduler_free_cpu_cores",
                       "Free CPU (cores) on schedulable (healthy, not draining) runners")),
      free_memory_(Single(registry, "isorun_scheduler_free_memory_bytes",
                          "Free memory (bytes) on schedulable runners")),
      free_slots_(Single(registry, "isorun_scheduler_free_sandbox_slots",
                         "Free sandbox slots on schedulable runners")),
      cap_cpu_(Single(registry, "isorun_scheduler_capacity_cpu_cores",
                      "CPU (cores) of schedulable runners")),
      cap_memory_(Single(registry, "isorun_scheduler_capacity_memory_bytes",
                         "Memory (bytes) of schedulable runners")),
      cap_slots_(Single(registry, "isorun_scheduler_capacity_sandbox_slots",
                        "Sandbox slots of schedulable runners")),
      alloc_cpu_(Single(registry, "isorun_scheduler_allocated_cpu_cores",
                        "CPU (cores) allocated to sandboxes on every runner")),
      alloc_memory_(Single(registry, "isorun_scheduler_allocated_memory_bytes",
                           "Memory (bytes) allocated to sandboxes on every runner")),
      alloc_slots_(Single(registry, "isorun_scheduler_allocated_sandbox_slots",
                          "Sandbox slots in use on every runner")),
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
  // Base units (Prometheus naming): cores and bytes, from the fleet's millis and MiB.
  auto cores = [](int64_t millis) { return static_cast<double>(millis) / 1000.0; };
  auto bytes = [](int64_t mib) { return static_cast<double>(mib) * 1048576.0; };
  free_cpu_.Set(cores(t.schedulable_free.cpu_millis));
  free_memory_.Set(bytes(t.schedulable_free.memory_mb));
  free_slots_.Set(static_cast<double>(t.schedulable_free.sandboxes));
  cap_cpu_.Set(cores(t.schedulable_capacity.cpu_millis));
  cap_memory_.Set(bytes(t.schedulable_capacity.memory_mb));
  cap_slots_.Set(static_cast<double>(t.schedulable_capacity.sandboxes));
  alloc_cpu_.Set(cores(t.allocated.cpu_millis));
  alloc_memory_.Set(bytes(t.allocated.memory_mb));
  alloc_slots_.Set(static_cast<double>(t.allocated.sandboxes));
  in_flight_.Set(static_cast<double>(t.pulls_in_flight));
  images_.Set(static_cast<double>(t.images));
}

}  // namespace isorun::scheduler
