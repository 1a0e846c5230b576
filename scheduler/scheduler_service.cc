#include "scheduler/scheduler_service.h"

#include <chrono>

#include "google/protobuf/util/time_util.h"
#include "services/kit/status.h"

namespace isorun::scheduler {
namespace {

std::vector<std::string> ImageRefs(const google::protobuf::RepeatedPtrField<v1::CachedImage>& in) {
  std::vector<std::string> refs;
  for (const auto& img : in) {
    if (!img.digest().empty()) refs.push_back(img.digest());
    for (const auto& ref : img.refs()) refs.push_back(ref);
  }
  return refs;
}

void FillResources(const ResourceVector& r, v1::Resources* out) {
  out->set_cpu_millis(static_cast<int32_t>(r.cpu_millis));
  out->set_memory_mb(static_cast<int32_t>(r.memory_mb));
  out->set_sandboxes(static_cast<int32_t>(r.sandboxes));
}

}  // namespace

SchedulerService::SchedulerService(Fleet& fleet, prometheus::Registry& registry,
                                   int heartbeat_interval_ms)
    : fleet_(fleet),
      heartbeat_interval_ms_(heartbeat_interval_ms),
      placements_(prometheus::BuildCounter()
                      .Name("isorun_scheduler_placements_total")
                      .Help("Placement decisions by outcome")
                      .Register(registry)),
      warm_(placements_.Add({{"outcome", "warm"}})),
      cold_(placements_.Add({{"outcome", "cold"}})),
      no_capacity_(placements_.Add({{"outcome", "no_capacity"}})),
      latency_(prometheus::BuildHistogram()
                   .Name("isorun_scheduler_placement_duration_seconds")
                   .Help("Time to decide and record a placement")
                   .Register(registry)
                   .Add({}, prometheus::Histogram::BucketBoundaries{
                                0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05,
                                0.1})) {}

grpc::Status SchedulerService::RegisterRunner(grpc::ServerContext*,
                                              const v1::RegisterRunnerRequest* req,
                                              v1::RegisterRunnerResponse* resp) {
  if (req->name().empty() || req->address().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "runner name and address are required");
  }
  RunnerView r;
  r.name = req->name();
  r.address = req->address();
  r.region = req->region();
  r.capacity = {req->capacity().cpu_millis(), req->capacity().memory_mb(),
                req->capacity().sandboxes()};
  for (auto& ref : ImageRefs(req->images())) r.images.insert(ref);
  auto id = fleet_.Register(std::move(r));
  if (!id.ok()) return ToGrpcStatus(id.status());
  resp->set_runner_id(*id);
  resp->set_heartbeat_interval_ms(heartbeat_interval_ms_);
  return grpc::Status::OK;
}

grpc::Status SchedulerService::Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                                         v1::HeartbeatResponse*) {
  return ToGrpcStatus(fleet_.Heartbeat(req->runner_id(), ImageRefs(req->images())));
}

grpc::Status SchedulerService::Place(grpc::ServerContext*, const v1::PlaceRequest* req,
                                     v1::Placement* resp) {
  auto start = std::chrono::steady_clock::now();
  PlacementRequest request{req->image(), req->region(), req->request().cpu_millis(),
                           req->request().memory_mb()};
  auto result = fleet_.Place(req->sandbox_id(), request);
  latency_.Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (!result.ok()) {
    if (result.status().code() == absl::StatusCode::kResourceExhausted) no_capacity_.Increment();
    return ToGrpcStatus(result.status());
  }
  (result->warm ? warm_ : cold_).Increment();
  resp->set_sandbox_id(req->sandbox_id());
  resp->set_runner_id(result->runner_id);
  resp->set_runner_name(result->runner_name);
  resp->set_runner_address(result->runner_address);
  resp->set_warm(result->warm);
  return grpc::Status::OK;
}

grpc::Status SchedulerService::ReleasePlacement(grpc::ServerContext*,
                                                const v1::ReleasePlacementRequest* req,
                                                v1::ReleasePlacementResponse* resp) {
  auto released = fleet_.Release(req->sandbox_id());
  if (!released.ok()) return ToGrpcStatus(released.status());
  resp->set_released(*released);
  return grpc::Status::OK;
}

grpc::Status SchedulerService::GetPlacement(grpc::ServerContext*,
                                            const v1::GetPlacementRequest* req,
                                            v1::Placement* resp) {
  auto result = fleet_.Get(req->sandbox_id());
  if (!result.ok()) return ToGrpcStatus(result.status());
  resp->set_sandbox_id(req->sandbox_id());
  resp->set_runner_id(result->runner_id);
  resp->set_runner_name(result->runner_name);
  resp->set_runner_address(result->runner_address);
  resp->set_warm(result->warm);
  return grpc::Status::OK;
}

grpc::Status SchedulerService::ListRunners(grpc::ServerContext*, const v1::ListRunnersRequest*,
                                           v1::ListRunnersResponse* resp) {
  for (const auto& s : fleet_.List()) {
    auto* out = resp->add_runners();
    out->set_runner_id(s.view.id);
    out->set_name(s.view.name);
    out->set_address(s.view.address);
    out->set_region(s.view.region);
    out->set_state(s.state);
    FillResources(s.view.capacity, out->mutable_capacity());
    FillResources(s.view.allocated, out->mutable_allocated());
    for (const auto& ref : s.view.images) out->add_images()->set_digest(ref);
    *out->mutable_last_heartbeat() =
        google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(
            absl::ToUnixMicros(s.view.last_heartbeat));
    out->set_placements_warm(s.placements_warm);
    out->set_placements_cold(s.placements_cold);
  }
  return grpc::Status::OK;
}

grpc::Status SchedulerService::ListPlacements(grpc::ServerContext*,
                                              const v1::ListPlacementsRequest* req,
                                              v1::ListPlacementsResponse* resp) {
  int limit = req->page_size() <= 0 ? 500 : std::min(req->page_size(), 5000);
  auto rows = fleet_.ListPlacements(absl::Seconds(std::max(0, req->older_than_sec())),
                                    req->page_token(), limit);
  for (const auto& p : rows) {
    auto* out = resp->add_placements();
    out->set_sandbox_id(p.sandbox_id);
    out->set_runner_id(p.where.runner_id);
    out->set_runner_name(p.where.runner_name);
    out->set_runner_address(p.where.runner_address);
    out->set_warm(p.where.warm);
  }
  if (static_cast<int>(rows.size()) == limit) resp->set_next_page_token(rows.back().sandbox_id);
  return grpc::Status::OK;
}

}  // namespace isorun::scheduler
