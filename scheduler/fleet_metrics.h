#pragma once

// Fleet gauges and pre-warm counters for /metrics (the placement counters and latency histogram
// live in SchedulerService):
//   isorun_scheduler_runners{state}                   runners by state
//   isorun_scheduler_free_cpu_cores                   free on schedulable runners
//   isorun_scheduler_free_memory_bytes                (healthy, not draining)
//   isorun_scheduler_free_sandbox_slots
//   isorun_scheduler_capacity_{cpu_cores,memory_bytes,sandbox_slots}   of schedulable runners
//   isorun_scheduler_allocated_{cpu_cores,memory_bytes,sandbox_slots}  on every runner
// Names carry base units (cores, bytes), as Prometheus and `promtool check metrics` want.
//   isorun_scheduler_prewarm_pulls_total{outcome=ok|failed}
//   isorun_scheduler_prewarm_pulls_in_flight
//   isorun_scheduler_cached_images                    distinct images cached anywhere

#include <map>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "scheduler/fleet.h"

namespace isorun::scheduler {

class FleetMetrics {
 public:
  explicit FleetMetrics(prometheus::Registry& registry);
  void Update(const FleetTotals& totals);
  prometheus::Counter& pulls_ok() { return pulls_ok_; }
  prometheus::Counter& pulls_failed() { return pulls_failed_; }

 private:
  prometheus::Family<prometheus::Gauge>& runners_;
  std::map<std::string, prometheus::Gauge*> by_state_;
  prometheus::Gauge& free_cpu_;
  prometheus::Gauge& free_memory_;
  prometheus::Gauge& free_slots_;
  prometheus::Gauge& cap_cpu_;
  prometheus::Gauge& cap_memory_;
  prometheus::Gauge& cap_slots_;
  prometheus::Gauge& alloc_cpu_;
  prometheus::Gauge& alloc_memory_;
  prometheus::Gauge& alloc_slots_;
  prometheus::Family<prometheus::Counter>& pulls_;
  prometheus::Counter& pulls_ok_;
  prometheus::Counter& pulls_failed_;
  prometheus::Gauge& in_flight_;
  prometheus::Gauge& images_;
};

}  // namespace isorun::scheduler
