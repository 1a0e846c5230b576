#pragma once

// The capacity view for dashboards, as JSON (served by the admin listener, admin_http.h):
//
//   {"generatedAt": RFC 3339,
//    "totals": {"runners": N, "runnersByState": {"HEALTHY": N, "UNHEALTHY": N, "LOST": N,
//                                                "DRAINING": N},
//               "cpuMillis": {"capacity", "allocated", "free"}, "memoryMb": {...},
//               "sandboxes": {...},
//               "schedulable": {"cpuMillisFree", "memoryMbFree", "sandboxesFree",
//                               "cpuMillisCapacity", "memoryMbCapacity", "sandboxesCapacity"},
//               "images": distinct images cached, "placements": N, "pullsInFlight": N},
//    "runners": [{"id", "name", "address", "region", "state", "draining", "lastHeartbeat",
//                 "heartbeatAgeSec",
//                 "cpuMillis": {"capacity", "allocated", "reserved", "free"}, "memoryMb": {...},
//                 "sandboxes": {"capacity", "allocated", "reserved", "free", "ids": [...]},
//                 "placements": {"warm", "cold"},
//                 "imageCache": {"budgetBytes", "usedBytes", "pulling": [...],
//                                "images": [{"digest", "sizeBytes", "refs", "lastUsed",
//                                            "sandboxes"}]}}]}
//
// `allocated` is what placements reserved plus what runs beyond them (see fleet.h); `free` is
// capacity - allocated, never below zero. Runners are sorted by name.

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "scheduler/fleet.h"

namespace isorun::scheduler {

struct CapacityJsonOptions {
  bool runners = true;  // false: totals only
  std::string runner;   // non-empty: only the runner of this name or id
  bool sandbox_ids = true;
};

std::string CapacityJson(const std::vector<RunnerStatus>& runners, const FleetTotals& totals,
                         absl::Time now, const CapacityJsonOptions& options = {});

}  // namespace isorun::scheduler
