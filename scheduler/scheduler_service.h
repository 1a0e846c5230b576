#pragma once

// gRPC adapter of isorun.v1.Scheduler over Fleet. Every method is on the sync thread pool except
// HeartbeatStream, a callback-API reactor: thousands of runners keep a stream open each, which
// must not hold a thread each. A heartbeat only touches Fleet's memory (no I/O), so running it in
// a reaction is fine.

#include <atomic>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "isorun/v1/scheduler.grpc.pb.h"
#include "prometheus/counter.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "scheduler/fleet.h"

namespace isorun::scheduler {

class SchedulerService final
    : public v1::Scheduler::WithCallbackMethod_HeartbeatStream<v1::Scheduler::Service> {
 public:
  // `leading`: whether this replica holds the leadership (scheduler/leader.h); while it is false
  // every method answers UNAVAILABLE so that clients retry on another replica. Null: always.
  // Heartbeat streams opened while leading stay open when the leadership is lost (the lock's
  // connection failed: the database may just be down, and this replica may win the lock back
  // with a live view) until `other_leads` says another replica holds the lock; then each ends at
  // its next message, so its runner moves to the leader.
  SchedulerService(Fleet& fleet, prometheus::Registry& registry, int heartbeat_interval_ms,
                   const std::atomic<bool>* leading = nullptr,
                   const std::atomic<bool>* other_leads = nullptr);

  // Placements since start, for the capacity history.
  int64_t placements_warm() const { return static_cast<int64_t>(warm_.Value()); }
  int64_t placements_cold() const { return static_cast<int64_t>(cold_.Value()); }
  int64_t capacity_refusals() const { return static_cast<int64_t>(no_capacity_.Value()); }
  // The same refusals by the region the placement asked for ("" when it named none).
  std::map<std::string, int64_t> capacity_refusals_by_region() const;

  grpc::Status RegisterRunner(grpc::ServerContext*, const v1::RegisterRunnerRequest*,
                              v1::RegisterRunnerResponse*) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest*,
                         v1::HeartbeatResponse*) override;
  grpc::ServerReadReactor<v1::HeartbeatRequest>* HeartbeatStream(grpc::CallbackServerContext*,
                                                                 v1::HeartbeatResponse*) override;
  grpc::Status Place(grpc::ServerContext*, const v1::PlaceRequest*, v1::Placement*) override;
  grpc::Status ReleasePlacement(grpc::ServerContext*, const v1::ReleasePlacementRequest*,
                                v1::ReleasePlacementResponse*) override;
  grpc::Status PlaceBatch(grpc::ServerContext*, const v1::PlaceBatchRequest*,
                          v1::PlaceBatchResponse*) override;
  grpc::Status ReleasePlacementBatch(grpc::ServerContext*, const v1::ReleasePlacementBatchRequest*,
                                     v1::ReleasePlacementBatchResponse*) override;
  grpc::Status GetPlacement(grpc::ServerContext*, const v1::GetPlacementRequest*,
                            v1::Placement*) override;
  grpc::Status ListRunners(grpc::ServerContext*, const v1::ListRunnersRequest*,
                           v1::ListRunnersResponse*) override;
  grpc::Status ListPlacements(grpc::ServerContext*, const v1::ListPlacementsRequest*,
                              v1::ListPlacementsResponse*) override;

 private:
  // Counts a placement outcome and fills `resp` when it is a placement.
  void Report(const std::string& sandbox_id, const std::string& region,
              const absl::StatusOr<PlacementResult>& result, v1::Placement* resp);

  bool Leading() const { return leading_ == nullptr || leading_->load(); }
  bool OtherLeads() const { return other_leads_ != nullptr && other_leads_->load(); }

  Fleet& fleet_;
  const int heartbeat_interval_ms_;
  const std::atomic<bool>* const leading_;
  const std::atomic<bool>* const other_leads_;
  prometheus::Family<prometheus::Counter>& placements_;
  prometheus::Counter& warm_;
  prometheus::Counter& cold_;
  prometheus::Counter& no_capacity_;
  prometheus::Histogram& latency_;
  mutable absl::Mutex refusals_mu_;
  std::map<std::string, int64_t> refusals_by_region_ ABSL_GUARDED_BY(refusals_mu_);
};

// The report a heartbeat message carries (shared by the unary and the streaming method).
HeartbeatReport ReportFromProto(const v1::HeartbeatRequest& request, uint64_t stream);
std::vector<CachedImage> ImagesFromProto(
    const google::protobuf::RepeatedPtrField<v1::CachedImage>& images);

}  // namespace isorun::scheduler
