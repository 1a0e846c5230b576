#include "services/lifecycle/lifecycle_service.h"

#include <chrono>

#include "services/kit/call_thread.h"
#include "services/kit/status.h"

namespace isorun::lifecycle {
namespace {

grpc::Status TenantRequired(const std::string& tenant_id) {
  if (tenant_id.empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "tenant_id is required");
  }
  return grpc::Status::OK;
}

grpc::Status Reply(const absl::StatusOr<Sandbox>& sb, v1::Sandbox* out) {
  if (!sb.ok()) return ToGrpcStatus(sb.status());
  *out = *sb;
  return grpc::Status::OK;
}

}  // namespace

LifecycleService::LifecycleService(Lifecycle& lifecycle, prometheus::Registry& registry)
    : lifecycle_(lifecycle),
      creates_(prometheus::BuildCounter()
                   .Name("isorun_lifecycle_creates_total")
                   .Help("Sandbox creates by outcome (gRPC code name)")
                   .Register(registry)),
      create_latency_(prometheus::BuildHistogram()
                          .Name("isorun_lifecycle_create_duration_seconds")
                          .Help("Time from create request to RUNNING (or failure)")
                          .Register(registry)
                          .Add({}, prometheus::Histogram::BucketBoundaries{
                                       0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                       1, 2.5, 5, 10, 30, 60})),
      execs_running_(prometheus::BuildGauge()
                         .Name("isorun_lifecycle_exec_calls_in_progress")
                         .Help("exec and exec:stream calls this replica is serving now")
                         .Register(registry)
                         .Add({})) {}

namespace {

// Counts a call in a gauge for as long as it lives.
struct InProgress {
  explicit InProgress(prometheus::Gauge& g) : gauge(g) { gauge.Increment(); }
  ~InProgress() { gauge.Decrement(); }
  prometheus::Gauge& gauge;
};

}  // namespace

grpc::Status LifecycleService::CreateSandbox(grpc::ServerContext*,
                                             const v1::CreateSandboxRequest* req,
                                             v1::Sandbox* resp) {
  if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
  auto start = std::chrono::steady_clock::now();
  auto sb = lifecycle_.Create(*req);
  create_latency_.Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  creates_.Add({{"outcome", std::string(CodeName(sb.status().code()))}}).Increment();
  return Reply(sb, resp);
}

grpc::Status LifecycleService::GetSandbox(grpc::ServerContext*, const v1::GetSandboxRequest* req,
                                          v1::Sandbox* resp) {
  if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
  return Reply(lifecycle_.GetWithUrls(req->tenant_id(), req->id()), resp);
}

grpc::Status LifecycleService::ListSandboxes(grpc::ServerContext*,
                                             const v1::ListSandboxesRequest* req,
                                             v1::ListSandboxesResponse* resp) {
  if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
  ListQuery q;
  q.tenant_id = req->tenant_id();
  for (int state : req->states()) q.states.push_back(static_cast<SandboxState>(state));
  for (const auto& [k, v] : req->metadata()) q.metadata.emplace_back(k, v);
  q.page_size = req->page_size();
  q.page_token = req->page_token();
  auto page = lifecycle_.List(q);
  if (!page.ok()) return ToGrpcStatus(page.status());
  for (auto& sb : page->sandboxes) *resp->add_sandboxes() = std::move(sb);
  resp->set_next_page_token(page->next_page_token);
  return grpc::Status::OK;
}

grpc::Status LifecycleService::DestroySandbox(grpc::ServerContext*,
                                              const v1::DestroySandboxRequest* req,
                                              v1::DestroySandboxResponse*) {
  if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
  return ToGrpcStatus(lifecycle_.Destroy(req->tenant_id(), req->id()));
}

grpc::Status LifecycleService::SetTimeout(grpc::ServerContext*, const v1::SetTimeoutRequest* req,
                                          v1::Sandbox* resp) {
  if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
  return Reply(lifecycle_.SetTimeout(req->tenant_id(), req->id(), req->timeout_sec()), resp);
}

grpc::Status LifecycleService::HibernateSandbox(grpc::ServerContext*,
                                                const v1::HibernateSandboxRequest* req,
                                                v1::Sandbox* resp) {
  if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
  return Reply(lifecycle_.Hibernate(req->tenant_id(), req->id()), resp);
}

grpc::Status LifecycleService::ResumeSandbox(grpc::ServerContext*,
                                             const v1::ResumeSandboxRequest* req,
                                             v1::Sandbox* resp) {
  if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
  return Reply(lifecycle_.Resume(req->tenant_id(), req->id()), resp);
}

grpc::ServerUnaryReactor* LifecycleService::Exec(grpc::CallbackServerContext* ctx,
                                                 const v1::ExecRequest* req,
                                                 v1::ExecResponse* resp) {
  return RunUnaryOnThread(ctx, [this, req, resp] {
    if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
    InProgress counted(execs_running_);
    auto result = lifecycle_.Exec(*req);
    if (!result.ok()) return ToGrpcStatus(result.status());
    *resp = std::move(*result);
    return grpc::Status::OK;
  });
}

grpc::ServerWriteReactor<v1::ExecChunk>* LifecycleService::ExecStream(
    grpc::CallbackServerContext*, const v1::ExecRequest* req) {
  using Reactor = ThreadWriteReactor<v1::ExecChunk>;
  return Reactor::Start([this, req](Reactor::Stream& stream) {
    if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
    InProgress counted(execs_running_);
    return ToGrpcStatus(lifecycle_.ExecStream(
        *req, [&stream](const v1::ExecChunk& chunk) { return stream.Write(chunk); },
        [&stream] { return stream.Cancelled(); },
        // Headers go out as soon as the command is accepted, so clients see the stream begin.
        [&stream] { stream.SendHeaders(); }));
  });
}

grpc::Status LifecycleService::GetUsage(grpc::ServerContext*, const v1::GetUsageRequest* req,
                                        v1::Usage* resp) {
  if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
  auto usage = lifecycle_.GetUsage(req->tenant_id());
  if (!usage.ok()) return ToGrpcStatus(usage.status());
  *resp = std::move(*usage);
  return grpc::Status::OK;
}

grpc::Status PublicUrlsService::ResolvePublicId(grpc::ServerContext*,
                                                const v1::ResolvePublicIdRequest* req,
                                                v1::ResolvePublicIdResponse* resp) {
  if (req->public_id().empty() || req->public_id().size() > 64) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "public_id is required");
  }
  auto target = lifecycle_.ResolvePublicId(req->public_id());
  if (!target.ok()) return ToGrpcStatus(target.status());
  *resp->mutable_sandbox() = std::move(target->sandbox);
  resp->mutable_sandbox()->clear_env();
  resp->set_tunnel_address(target->tunnel_address);
  return grpc::Status::OK;
}

grpc::Status PublicUrlsService::TouchSandboxes(grpc::ServerContext*,
                                               const v1::TouchSandboxesRequest* req,
                                               v1::TouchSandboxesResponse* resp) {
  if (req->sandbox_ids_size() > 100000) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "at most 100000 sandbox ids a call");
  }
  auto n = lifecycle_.TouchMany({req->sandbox_ids().begin(), req->sandbox_ids().end()});
  if (!n.ok()) return ToGrpcStatus(n.status());
  resp->set_touched(*n);
  return grpc::Status::OK;
}

grpc::Status LifecycleService::SetNetwork(grpc::ServerContext*, const v1::SetNetworkRequest* req,
                                          v1::Sandbox* resp) {
  if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
  return Reply(lifecycle_.SetNetwork(req->tenant_id(), req->id(), req->network()), resp);
}

grpc::Status LifecycleService::GetNetworkLog(grpc::ServerContext*,
                                             const v1::GetNetworkLogRequest* req,
                                             v1::NetworkLog* resp) {
  if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
  auto entries = lifecycle_.NetworkLog(req->tenant_id(), req->id());
  if (!entries.ok()) return ToGrpcStatus(entries.status());
  for (auto& e : *entries) *resp->add_entries() = std::move(e);
  return grpc::Status::OK;
}

grpc::Status LifecycleService::ListSandboxEvents(grpc::ServerContext*,
                                                 const v1::ListSandboxEventsRequest* req,
                                                 v1::ListSandboxEventsResponse* resp) {
  if (auto s = TenantRequired(req->tenant_id()); !s.ok()) return s;
  auto events =
      lifecycle_.ListEvents(req->tenant_id(), req->id(), req->page_size(), req->page_token());
  if (!events.ok()) return ToGrpcStatus(events.status());
  *resp = std::move(*events);
  return grpc::Status::OK;
}

}  // namespace isorun::lifecycle
