#pragma once

// Postgres storage of the capacity history (scheduler.capacity_history and its 5-minute
// downsampled twin, migration 0009), and the recorder thread that writes a fleet snapshot every
// interval.
//
// Retention: raw snapshots older than `raw_retention` (a day) are folded into 5-minute buckets
// (gauges averaged, counts summed) and deleted, in one transaction, with the cut aligned to a
// bucket boundary so every bucket is folded whole, exactly once. Buckets older than
// `downsampled_retention` (30 days) are deleted. Reads (Query) take both tables and average or
// sum them again into the caller's step.
//
// Several scheduler replicas may record at once: a snapshot's time is truncated to the interval
// and inserted with ON CONFLICT DO NOTHING, so the fleet gets one row per interval.

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "scheduler/capacity_history.h"
#include "services/kit/pg.h"

namespace isorun::scheduler {

class CapacityHistoryStore {
 public:
  // Registers its statements: construct before the pool's first query.
  explicit CapacityHistoryStore(PgPool& pool);

  absl::Status Insert(const std::vector<CapacitySample>& samples);
  // Folds raw rows older than `raw_before` into 5-minute buckets; deletes buckets older than
  // `downsampled_before`. Returns the raw rows folded.
  absl::StatusOr<int64_t> Compact(absl::Time raw_before, absl::Time downsampled_before);
  // Samples in [from, to), bucketed by `step` (from `from`), every region; `region` non-empty:
  // that region and the fleet only.
  absl::StatusOr<std::vector<CapacitySample>> Query(absl::Time from, absl::Time to,
                                                    absl::Duration step,
                                                    const std::string& region = "");
  // Live sandboxes by runner and state. The lifecycle service owns sandboxes' states: this reads
  // its table (lifecycle.sandboxes, never written here) once a snapshot.
  absl::StatusOr<std::vector<SandboxStateCount>> CountSandboxes();

 private:
  PgPool& pool_;
};

class CapacityRecorder {
 public:
  struct Options {
    absl::Duration interval = absl::Seconds(10);
    absl::Duration raw_retention = absl::Hours(24);
    absl::Duration downsampled_retention = absl::Hours(24 * 30);
    absl::Duration compact_every = absl::Minutes(5);
  };
  // What a snapshot needs: the runners now, and the cumulative fleet counters.
  using RunnersFn = std::function<std::vector<RunnerStatus>()>;
  using CountersFn = std::function<CapacityCounters()>;
  // Live sandboxes by runner and state (CapacityHistoryStore::CountSandboxes); none: not counted.
  using StatesFn = std::function<absl::StatusOr<std::vector<SandboxStateCount>>()>;

  CapacityRecorder(CapacityHistoryStore& store, RunnersFn runners, CountersFn counters,
                   Options options, StatesFn states = nullptr);
  ~CapacityRecorder();
  CapacityRecorder(const CapacityRecorder&) = delete;
  CapacityRecorder& operator=(const CapacityRecorder&) = delete;

  void Start();
  void Stop();
  // Takes and stores one snapshot at `now` (the loop calls this; tests may too).
  absl::Status RecordOnce(absl::Time now);

 private:
  CapacityHistoryStore& store_;
  RunnersFn runners_;
  CountersFn counters_;
  StatesFn states_;
  const Options options_;
  // Touched only by the recording thread (or a test calling RecordOnce before Start).
  bool have_previous_ = false;
  CapacityCounters previous_fleet_;
  std::map<std::string, CapacityCounters> previous_regions_;
  absl::Time last_compact_ = absl::InfinitePast();
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace isorun::scheduler
