#include "scheduler/scheduler_service.h"

#include <chrono>
#include <functional>

#include "google/protobuf/util/time_util.h"
#include "services/kit/status.h"

namespace isorun::scheduler {
namespace {

void FillResources(const ResourceVector& r, v1::Resources* out) {
  out->set_cpu_millis(static_cast<int32_t>(r.cpu_millis));
  out->set_memory_mb(static_cast<int32_t>(r.memory_mb));
  out->set_sandboxes(static_cast<int32_t>(r.sandboxes));
}

ResourceVector FromProto(const v1::Resources& r) {
  return {r.cpu_millis(), r.memory_mb(), r.sandboxes()};
}

grpc::Status NotLeader() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      "this scheduler replica is not the leader; retry on another replica");
}

// One runner's heartbeat stream: reads until the runner goes away, applying each message to the
// fleet. Deletes itself when the call is done.
class HeartbeatReactor final : public grpc::ServerReadReactor<v1::HeartbeatRequest> {
 public:
  HeartbeatReactor(Fleet& fleet, std::function<bool()> moved)
      : fleet_(fleet), moved_(std::move(moved)), stream_(fleet.NewStreamId()) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the runner closed the stream, or the connection broke
      Finish(grpc::Status::OK);
      return;
    }
    if (moved_()) {  // another replica leads now: the runner reconnects to it
      Finish(NotLeader());
      return;
    }
    runner_id_ = request_.runner_id();
    absl::Status s = fleet_.Heartbeat(ReportFromProto(request_, stream_));
    if (!s.ok()) {
      Finish(ToGrpcStatus(s));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override {
    if (!runner_id_.empty()) fleet_.StreamEnded(runner_id_, stream_);
    delete this;
  }

 private:
  Fleet& fleet_;
  const std::function<bool()> moved_;
  const uint64_t stream_;
  v1::HeartbeatRequest request_;
  std::string runner_id_;
};

// A follower's answer to a heartbeat stream: refused at once, so the runner reconnects (to
// another replica) instead of heartbeating into a view nobody places from.
class RefusedStream final : public grpc::ServerReadReactor<v1::HeartbeatRequest> {
 public:
  explicit RefusedStream(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

std::vector<CachedImage> ImagesFromProto(
    const google::protobuf::RepeatedPtrField<v1::CachedImage>& images) {
  std::vector<CachedImage> out;
  out.reserve(static_cast<size_t>(images.size()));
  for (const auto& img : images) {
    CachedImage c;
    c.digest = img.digest();
    c.size_bytes = img.size_bytes();
    c.refs.assign(img.refs().begin(), img.refs().end());
    if (img.has_last_used()) {
      c.last_used = absl::FromUnixMicros(
          google::protobuf::util::TimeUtil::TimestampToMicroseconds(img.last_used()));
    }
    c.sandboxes = img.sandboxes();
    out.push_back(std::move(c));
  }
  return out;
}

HeartbeatReport ReportFromProto(const v1::HeartbeatRequest& req, uint64_t stream) {
  HeartbeatReport report;
  report.runner_id = req.runner_id();
  report.allocated = FromProto(req.allocated());
  if (!req.images_unchanged()) report.images = ImagesFromProto(req.images());
  if (!req.sandboxes_unchanged()) {
    report.sandbox_ids.emplace(req.sandbox_ids().begin(), req.sandbox_ids().end());
  }
  if (req.image_cache_used_bytes() > 0 || !req.images_unchanged()) {
    report.image_cache_used_bytes = req.image_cache_used_bytes();
  }
  if (req.has_capacity()) {
    ResourceVector c = FromProto(req.capacity());
    if (c.cpu_millis >= 0 && c.memory_mb >= 0 && c.sandboxes >= 0) report.capacity = c;
  }
  report.stream = stream;
  return report;
}

SchedulerService::SchedulerService(Fleet& fleet, prometheus::Registry& registry,
                                   int heartbeat_interval_ms, const std::atomic<bool>* leading,
                                   const std::atomic<bool>* other_leads)
    : fleet_(fleet),
      heartbeat_interval_ms_(heartbeat_interval_ms),
      leading_(leading),
      other_leads_(other_leads),
      placements_(prometheus::BuildCounter()
                      .Name("isorun_scheduler_placements_total")
                      .Help("Placement decisions by outcome")
                      .Register(registry)),
      warm_(placements_.Add({{"outcome", "warm"}})),
      cold_(placements_.Add({{"outcome", "cold"}})),
      no_capacity_(placements_.Add({{"outcome", "no_capacity"}})),
      latency_(
          prometheus::BuildHistogram()
              .Name("isorun_scheduler_placement_duration_seconds")
              .Help("Time to decide and record a placement")
              .Register(registry)
              .Add({}, prometheus::Histogram::BucketBoundaries{0.00001, 0.00005, 0.0001, 0.0005,
                                                               0.001, 0.005, 0.01, 0.05, 0.1})) {}

grpc::Status SchedulerService::RegisterRunner(grpc::ServerContext*,
                                              const v1::RegisterRunnerRequest* req,
                                              v1::RegisterRunnerResponse* resp) {
  if (!Leading()) return NotLeader();
  if (req->name().empty() || req->address().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "runner name and address are required");
  }
  if (req->capacity().cpu_millis() < 0 || req->capacity().memory_mb() < 0 ||
      req->capacity().sandboxes() < 0 || req->image_cache_bytes() < 0 ||
      req->image_cache_used_bytes() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "capacity cannot be negative");
  }
  RunnerView r;
  r.name = req->name();
  r.address = req->address();
  r.region = req->region();
  r.capacity = FromProto(req->capacity());
  r.images = ImagesFromProto(req->images());
  r.sandbox_ids.assign(req->sandbox_ids().begin(), req->sandbox_ids().end());
  r.image_cache_bytes = req->image_cache_bytes();
  r.image_cache_used_bytes = req->image_cache_used_bytes();
  auto id = fleet_.Register(std::move(r));
  if (!id.ok()) return ToGrpcStatus(id.status());
  resp->set_runner_id(*id);
  resp->set_heartbeat_interval_ms(heartbeat_interval_ms_);
  return grpc::Status::OK;
}

grpc::Status SchedulerService::Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                                         v1::HeartbeatResponse*) {
  if (!Leading()) return NotLeader();
  return ToGrpcStatus(fleet_.Heartbeat(ReportFromProto(*req, 0)));
}

grpc::ServerReadReactor<v1::HeartbeatRequest>* SchedulerService::HeartbeatStream(
    grpc::CallbackServerContext*, v1::HeartbeatResponse*) {
  if (!Leading()) return new RefusedStream(NotLeader());
  return new HeartbeatReactor(fleet_, [this] { return !Leading() && OtherLeads(); });
}

std::map<std::string, int64_t> SchedulerService::capacity_refusals_by_region() const {
  absl::MutexLock lock(&refusals_mu_);
  return refusals_by_region_;
}

void SchedulerService::Report(const std::string& sandbox_id, const std::string& region,
                              const absl::StatusOr<PlacementResult>& result,
                              v1::Placement* resp) {
  if (!result.ok()) {
    if (result.status().code() == absl::StatusCode::kResourceExhausted) {
      no_capacity_.Increment();
      // Regions are few (an operator's list): one entry each, never one per request.
      absl::MutexLock lock(&refusals_mu_);
      ++refusals_by_region_[region.size() <= 63 ? region : region.substr(0, 63)];
    }
    return;
  }
  (result->warm ? warm_ : cold_).Increment();
  resp->set_sandbox_id(sandbox_id);
  resp->set_runner_id(result->runner_id);
  resp->set_runner_name(result->runner_name);
  resp->set_runner_address(result->runner_address);
  resp->set_warm(result->warm);
}

grpc::Status SchedulerService::Place(grpc::ServerContext*, const v1::PlaceRequest* req,
                                     v1::Placement* resp) {
  if (!Leading()) return NotLeader();
  auto start = std::chrono::steady_clock::now();
  PlacementRequest request{req->image(), req->region(), req->request().cpu_millis(),
                           req->request().memory_mb()};
  auto result = fleet_.Place(req->sandbox_id(), request);
  latency_.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  Report(req->sandbox_id(), req->region(), result, resp);
  return ToGrpcStatus(result.status());
}

grpc::Status SchedulerService::ReleasePlacement(grpc::ServerContext*,
                                                const v1::ReleasePlacementRequest* req,
                                                v1::ReleasePlacementResponse* resp) {
  if (!Leading()) return NotLeader();
  auto released = fleet_.Release(req->sandbox_id());
  if (!released.ok()) return ToGrpcStatus(released.status());
  resp->set_released(*released);
  return grpc::Status::OK;
}

grpc::Status SchedulerService::PlaceBatch(grpc::ServerContext*, const v1::PlaceBatchRequest* req,
                                          v1::PlaceBatchResponse* resp) {
  if (!Leading()) return NotLeader();
  auto start = std::chrono::steady_clock::now();
  std::vector<Fleet::PlaceItem> items;
  for (const auto& item : req->items()) {
    items.push_back({item.sandbox_id(),
                     PlacementRequest{item.image(), item.region(), item.request().cpu_millis(),
                                      item.request().memory_mb()}});
  }
  auto results = fleet_.PlaceMany(items);
  latency_.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  for (size_t i = 0; i < results.size(); ++i) {
    v1::PlaceResult* out = resp->add_results();
    *out->mutable_status() = ToItemStatus(results[i].status());
    Report(items[i].sandbox_id, items[i].request.region, results[i], out->mutable_placement());
  }
  return grpc::Status::OK;
}

grpc::Status SchedulerService::ReleasePlacementBatch(grpc::ServerContext*,
                                                     const v1::ReleasePlacementBatchRequest* req,
                                                     v1::ReleasePlacementBatchResponse* resp) {
  if (!Leading()) return NotLeader();
  std::vector<std::string> ids;
  for (const auto& item : req->items()) ids.push_back(item.sandbox_id());
  for (const auto& released : fleet_.ReleaseMany(ids)) {
    v1::ReleasePlacementResult* out = resp->add_results();
    *out->mutable_status() = ToItemStatus(released.status());
    if (released.ok()) out->mutable_response()->set_released(*released);
  }
  return grpc::Status::OK;
}

grpc::Status SchedulerService::GetPlacement(grpc::ServerContext*,
                                            const v1::GetPlacementRequest* req,
                                            v1::Placement* resp) {
  if (!Leading()) return NotLeader();
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
  if (!Leading()) return NotLeader();
  for (const auto& s : fleet_.List()) {
    auto* out = resp->add_runners();
    out->set_runner_id(s.view.id);
    out->set_name(s.view.name);
    out->set_address(s.view.address);
    out->set_region(s.view.region);
    out->set_state(s.state);
    FillResources(s.view.capacity, out->mutable_capacity());
    FillResources(s.view.allocated, out->mutable_allocated());
    ResourceVector free = s.view.capacity - s.view.allocated;
    free.cpu_millis = std::max<int64_t>(0, free.cpu_millis);
    free.memory_mb = std::max<int64_t>(0, free.memory_mb);
    free.sandboxes = std::max<int64_t>(0, free.sandboxes);
    FillResources(free, out->mutable_free());
    FillResources(s.reserved, out->mutable_reserved());
    for (const auto& img : s.view.images) {
      auto* i = out->add_images();
      i->set_digest(img.digest);
      i->set_size_bytes(img.size_bytes);
      for (const auto& ref : img.refs) i->add_refs(ref);
      if (img.last_used != absl::InfinitePast()) {
        *i->mutable_last_used() = google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(
            absl::ToUnixMicros(img.last_used));
      }
      i->set_sandboxes(img.sandboxes);
    }
    for (const auto& id : s.view.sandbox_ids) out->add_sandbox_ids(id);
    out->set_image_cache_bytes(s.view.image_cache_bytes);
    out->set_image_cache_used_bytes(s.view.image_cache_used_bytes);
    *out->mutable_last_heartbeat() = google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(
        absl::ToUnixMicros(s.view.last_heartbeat));
    out->set_placements_warm(s.placements_warm);
    out->set_placements_cold(s.placements_cold);
  }
  return grpc::Status::OK;
}

grpc::Status SchedulerService::ListPlacements(grpc::ServerContext*,
                                              const v1::ListPlacementsRequest* req,
                                              v1::ListPlacementsResponse* resp) {
  if (!Leading()) return NotLeader();
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
