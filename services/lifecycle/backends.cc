#include "services/lifecycle/backends.h"

#include <grpcpp/client_context.h>

#include <thread>

#include "absl/synchronization/notification.h"

#include "absl/strings/str_cat.h"
#include "services/kit/call_thread.h"
#include "services/kit/server.h"
#include "services/kit/shard.h"
#include "services/kit/status.h"

namespace isorun::lifecycle {
namespace {

void SetDeadline(grpc::ClientContext& ctx, absl::Duration d) {
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::microseconds(absl::ToInt64Microseconds(d)));
}

// Names the callee in errors that did not come from its domain (unreachable, deadline).
absl::Status Wrap(const grpc::Status& s, const char* who) {
  absl::Status status = FromGrpcStatus(s);
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
      s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    // Keep the callee's detail (an exec timeout's EXEC_TIMEOUT, say); only the message gains
    // the name of who failed.
    auto detail = ErrorDetailOf(status);
    std::string message = absl::StrCat(who, ": ", std::string(status.message()));
    if (detail) {
      return Error(status.code(), detail->reason(), message, detail->limit(), detail->current(),
                   detail->retry_after_sec(), detail->has_rate() ? &detail->rate() : nullptr);
    }
    return absl::Status(status.code(), message);
  }
  return status;
}

}  // namespace

GrpcBackends::GrpcBackends(std::shared_ptr<grpc::Channel> quota,
                           std::shared_ptr<grpc::Channel> scheduler, BackendDeadlines deadlines,
                           std::vector<std::string> quota_replicas)
    : quota_(v1::Quotas::NewStub(quota)),
      quota_names_(std::move(quota_replicas)),
      scheduler_(v1::Scheduler::NewStub(scheduler)),
      deadlines_(deadlines),
      admits_([this](auto& items) { return AdmitBatch(items); }),
      releases_([this](auto& items) { return ReleaseBatch(items); }),
      places_([this](auto& items) { return PlaceBatch(items); }),
      placement_releases_([this](auto& items) { return ReleasePlacementBatch(items); }) {
  for (const auto& name : quota_names_) {
    quota_channels_.push_back(MakeChannel(name));
    quota_stubs_.push_back(v1::Quotas::NewStub(quota_channels_.back()));
  }
}

grpc::Status GrpcBackends::OnTenantReplica(
    const std::string& tenant_id,
    const std::function<grpc::Status(v1::Quotas::Stub&, grpc::ClientContext&)>& call) {
  const absl::Time give_up = absl::Now() + deadlines_.quota;
  if (quota_stubs_.empty()) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(give_up));
    return call(*quota_, ctx);
  }
  // The same order as the gateways' rate checks (kit/shard.h): every lifecycle meets the
  // tenant's leases on one replica. Replicas whose channel already failed come last.
  std::vector<int> tries, down;
  for (int i : RendezvousOrder(tenant_id, quota_names_)) {
    (quota_channels_[i]->GetState(true) == GRPC_CHANNEL_TRANSIENT_FAILURE ? down : tries)
        .push_back(i);
  }
  tries.insert(tries.end(), down.begin(), down.end());
  grpc::Status s;
  for (int i : tries) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(give_up));
    s = call(*quota_stubs_[i], ctx);
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE || absl::Now() >= give_up) break;
  }
  return s;
}

absl::Status GrpcBackends::AcquireExecLease(const v1::ExecLease& lease, absl::Duration ttl) {
  v1::AcquireExecLeaseRequest req;
  *req.mutable_lease() = lease;
  req.set_ttl_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(ttl)));
  v1::AcquireExecLeaseResponse resp;
  return Wrap(OnTenantReplica(lease.tenant_id(),
                              [&](v1::Quotas::Stub& stub, grpc::ClientContext& ctx) {
                                return stub.AcquireExecLease(&ctx, req, &resp);
                              }),
              "quota service");
}

absl::Status GrpcBackends::RenewExecLeases(const std::vector<v1::ExecLease>& leases,
                                           absl::Duration ttl) {
  if (leases.empty()) return absl::OkStatus();
  v1::RenewExecLeasesRequest req;
  for (const auto& l : leases) *req.add_leases() = l;
  req.set_ttl_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(ttl)));
  v1::RenewExecLeasesResponse resp;
  return Wrap(OnTenantReplica(leases.front().tenant_id(),
                              [&](v1::Quotas::Stub& stub, grpc::ClientContext& ctx) {
                                return stub.RenewExecLeases(&ctx, req, &resp);
                              }),
              "quota service");
}

absl::Status GrpcBackends::ReleaseExecLeases(const std::vector<v1::ExecLease>& leases) {
  if (leases.empty()) return absl::OkStatus();
  v1::ReleaseExecLeasesRequest req;
  for (const auto& l : leases) *req.add_leases() = l;
  v1::ReleaseExecLeasesResponse resp;
  return Wrap(OnTenantReplica(leases.front().tenant_id(),
                              [&](v1::Quotas::Stub& stub, grpc::ClientContext& ctx) {
                                return stub.ReleaseExecLeases(&ctx, req, &resp);
                              }),
              "quota service");
}

v1::Runner::Stub& GrpcBackends::RunnerAt(const std::string& address) {
  RunnerChannel* runner = nullptr;
  {
    absl::MutexLock lock(&mu_);
    runner = &runners_[address];
    if (!runner->stub) {
      runner->channel = MakeChannel(address);
      runner->stub = v1::Runner::NewStub(runner->channel);
    }
  }
  // A runner that restarted leaves its channel failing fast until the next reconnect attempt;
  // wait a moment for it rather than failing the call (a runner that is really gone fails after
  // this wait, and the scheduler stops placing on it once its heartbeats stop).
  if (runner->channel->GetState(true) != GRPC_CHANNEL_READY) {
    runner->channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  return *runner->stub;
}

absl::Status GrpcBackends::Admit(const std::string& tenant_id, const std::string& sandbox_id) {
  v1::AdmitRequest req;
  req.set_tenant_id(tenant_id);
  req.set_sandbox_id(sandbox_id);
  return admits_.Call(std::move(req));
}

absl::Status GrpcBackends::Release(const std::string& tenant_id, const std::string& sandbox_id) {
  v1::ReleaseRequest req;
  req.set_tenant_id(tenant_id);
  req.set_sandbox_id(sandbox_id);
  return releases_.Call(std::move(req));
}

namespace {

// Runs one batch RPC and hands each item its own outcome. A callee that predates the batch RPC
// (UNIMPLEMENTED, during a rolling upgrade) gets the items one by one through `one`.
template <typename Item, typename Out, typename BatchReq, typename BatchResp, typename CallBatch,
          typename CallOne, typename Convert>
std::vector<Out> RunBatch(std::vector<Item>& items, absl::Duration deadline, const char* who,
                          CallBatch call_batch, CallOne call_one, Convert convert) {
  BatchReq req;
  for (auto& item : items) *req.add_items() = std::move(item);
  BatchResp resp;
  // Every batch item is idempotent per sandbox id, so a batch that failed UNAVAILABLE as a whole
  // (a replica died, the scheduler's leadership is moving) is sent again until the deadline:
  // the channel's own retries (kit MakeChannel) give up within a second, a leader election may
  // take a few.
  const absl::Time give_up = absl::Now() + deadline;
  absl::Duration backoff = absl::Milliseconds(50);
  grpc::Status s;
  while (true) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, std::max(absl::Milliseconds(1), give_up - absl::Now()));
    resp.Clear();
    s = call_batch(&ctx, req, &resp);
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE || absl::Now() + backoff >= give_up) {
      break;
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Milliseconds(400));
  }
  std::vector<Out> out;
  if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
    for (const auto& item : req.items()) out.push_back(call_one(item));
    return out;
  }
  if (s.ok() && resp.results_size() != req.items_size()) {
    s = grpc::Status(grpc::StatusCode::INTERNAL,
                     absl::StrCat(who, " answered ", resp.results_size(), " results for ",
                                  req.items_size(), " items"));
  }
  for (int i = 0; i < req.items_size(); ++i) {
    if (!s.ok()) {
      out.push_back(Wrap(s, who));
      continue;
    }
    const auto& result = resp.results(i);
    absl::Status item = FromItemStatus(result.status());
    if (!item.ok()) {
      out.push_back(Wrap(ToGrpcStatus(item), who));
    } else {
      out.push_back(convert(result));
    }
  }
  return out;
}

}  // namespace

std::vector<absl::Status> GrpcBackends::AdmitBatch(std::vector<v1::AdmitRequest>& items) {
  return RunBatch<v1::AdmitRequest, absl::Status, v1::AdmitBatchRequest, v1::AdmitBatchResponse>(
      items, deadlines_.quota, "quota service",
      [&](grpc::ClientContext* ctx, const auto& req, auto* resp) {
        return quota_->AdmitBatch(ctx, req, resp);
      },
      [&](const v1::AdmitRequest& one) {
        grpc::ClientContext ctx;
        SetDeadline(ctx, deadlines_.quota);
        v1::AdmitResponse resp;
        return Wrap(quota_->Admit(&ctx, one, &resp), "quota service");
      },
      [](const v1::AdmitResult&) { return absl::OkStatus(); });
}

std::vector<absl::Status> GrpcBackends::ReleaseBatch(std::vector<v1::ReleaseRequest>& items) {
  return RunBatch<v1::ReleaseRequest, absl::Status, v1::ReleaseBatchRequest,
                  v1::ReleaseBatchResponse>(
      items, deadlines_.quota, "quota service",
      [&](grpc::ClientContext* ctx, const auto& req, auto* resp) {
        return quota_->ReleaseBatch(ctx, req, resp);
      },
      [&](const v1::ReleaseRequest& one) {
        grpc::ClientContext ctx;
        SetDeadline(ctx, deadlines_.quota);
        v1::ReleaseResponse resp;
        return Wrap(quota_->Release(&ctx, one, &resp), "quota service");
      },
      [](const v1::ReleaseResult&) { return absl::OkStatus(); });
}

std::vector<absl::StatusOr<v1::Placement>> GrpcBackends::PlaceBatch(
    std::vector<v1::PlaceRequest>& items) {
  return RunBatch<v1::PlaceRequest, absl::StatusOr<v1::Placement>, v1::PlaceBatchRequest,
                  v1::PlaceBatchResponse>(
      items, deadlines_.scheduler, "scheduler",
      [&](grpc::ClientContext* ctx, const auto& req, auto* resp) {
        return scheduler_->PlaceBatch(ctx, req, resp);
      },
      [&](const v1::PlaceRequest& one) -> absl::StatusOr<v1::Placement> {
        grpc::ClientContext ctx;
        SetDeadline(ctx, deadlines_.scheduler);
        v1::Placement resp;
        grpc::Status s = scheduler_->Place(&ctx, one, &resp);
        if (!s.ok()) return Wrap(s, "scheduler");
        return resp;
      },
      [](const v1::PlaceResult& r) -> absl::StatusOr<v1::Placement> { return r.placement(); });
}

std::vector<absl::Status> GrpcBackends::ReleasePlacementBatch(
    std::vector<v1::ReleasePlacementRequest>& items) {
  return RunBatch<v1::ReleasePlacementRequest, absl::Status, v1::ReleasePlacementBatchRequest,
                  v1::ReleasePlacementBatchResponse>(
      items, deadlines_.scheduler, "scheduler",
      [&](grpc::ClientContext* ctx, const auto& req, auto* resp) {
        return scheduler_->ReleasePlacementBatch(ctx, req, resp);
      },
      [&](const v1::ReleasePlacementRequest& one) {
        grpc::ClientContext ctx;
        SetDeadline(ctx, deadlines_.scheduler);
        v1::ReleasePlacementResponse resp;
        return Wrap(scheduler_->ReleasePlacement(&ctx, one, &resp), "scheduler");
      },
      [](const v1::ReleasePlacementResult&) { return absl::OkStatus(); });
}

absl::StatusOr<v1::Usage> GrpcBackends::GetUsage(const std::string& tenant_id) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadlines_.quota);
  v1::GetUsageRequest req;
  req.set_tenant_id(tenant_id);
  v1::Usage resp;
  grpc::Status s = quota_->GetUsage(&ctx, req, &resp);
  if (!s.ok()) return Wrap(s, "quota service");
  return resp;
}

absl::StatusOr<v1::Placement> GrpcBackends::Place(const v1::PlaceRequest& request) {
  return places_.Call(request);
}

absl::Status GrpcBackends::ReleasePlacement(const std::string& sandbox_id) {
  v1::ReleasePlacementRequest req;
  req.set_sandbox_id(sandbox_id);
  return placement_releases_.Call(std::move(req));
}

absl::StatusOr<v1::StartSandboxResponse> GrpcBackends::Start(
    const std::string& address, const v1::StartSandboxRequest& request) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadlines_.start);
  v1::StartSandboxResponse resp;
  grpc::Status s = RunnerAt(address).StartSandbox(&ctx, request, &resp);
  if (!s.ok()) return Wrap(s, "runner");
  return resp;
}

absl::Status GrpcBackends::Stop(const std::string& address, const std::string& sandbox_id) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadlines_.runner);
  v1::StopSandboxRequest req;
  req.set_sandbox_id(sandbox_id);
  v1::StopSandboxResponse resp;
  return Wrap(RunnerAt(address).StopSandbox(&ctx, req, &resp), "runner");
}

absl::Status GrpcBackends::Pause(const std::string& address, const std::string& sandbox_id) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadlines_.runner);
  v1::PauseSandboxRequest req;
  req.set_sandbox_id(sandbox_id);
  v1::PauseSandboxResponse resp;
  return Wrap(RunnerAt(address).PauseSandbox(&ctx, req, &resp), "runner");
}

absl::Status GrpcBackends::SetNetwork(const std::string& address, const std::string& sandbox_id,
                                      const v1::NetworkPolicy& policy) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadlines_.runner);
  v1::SetSandboxNetworkRequest req;
  req.set_sandbox_id(sandbox_id);
  *req.mutable_network() = policy;
  v1::SetSandboxNetworkResponse resp;
  return Wrap(RunnerAt(address).SetSandboxNetwork(&ctx, req, &resp), "runner");
}

absl::StatusOr<std::vector<v1::EgressLogEntry>> GrpcBackends::EgressLog(
    const std::string& address, const std::string& sandbox_id) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadlines_.runner);
  v1::GetEgressLogRequest req;
  req.set_sandbox_id(sandbox_id);
  v1::GetEgressLogResponse resp;
  if (absl::Status s = Wrap(RunnerAt(address).GetEgressLog(&ctx, req, &resp), "runner"); !s.ok()) {
    return s;
  }
  return std::vector<v1::EgressLogEntry>(resp.entries().begin(), resp.entries().end());
}

absl::Status GrpcBackends::Unpause(const std::string& address, const std::string& sandbox_id) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadlines_.runner);
  v1::UnpauseSandboxRequest req;
  req.set_sandbox_id(sandbox_id);
  v1::UnpauseSandboxResponse resp;
  return Wrap(RunnerAt(address).UnpauseSandbox(&ctx, req, &resp), "runner");
}

absl::StatusOr<v1::ExecResponse> GrpcBackends::Exec(const std::string& address,
                                                    const std::string& sandbox_id,
                                                    const v1::ExecRequest& request,
                                                    int max_running) {
  grpc::ClientContext ctx;
  // The command's own timeout plus slack for the round trip.
  SetDeadline(ctx, absl::Seconds(request.timeout_sec() > 0 ? request.timeout_sec() : 30) +
                       absl::Seconds(10));
  v1::RunnerExecRequest req;
  req.set_sandbox_id(sandbox_id);
  *req.mutable_exec() = request;
  req.set_max_running(max_running);
  v1::ExecResponse resp;
  grpc::Status s = RunnerAt(address).Exec(&ctx, req, &resp);
  if (!s.ok()) return Wrap(s, "runner");
  return resp;
}

absl::Status GrpcBackends::ExecStream(const std::string& address, const std::string& sandbox_id,
                                      const v1::ExecRequest& request, int max_running,
                                      const std::function<void()>& on_start,
                                      const std::function<bool(const v1::ExecChunk&)>& on_chunk,
                                      const std::function<bool()>& cancelled) {
  grpc::ClientContext ctx;
  if (request.timeout_sec() > 0) {
    SetDeadline(ctx, absl::Seconds(request.timeout_sec()) + absl::Seconds(10));
  }
  v1::RunnerExecRequest req;
  req.set_sandbox_id(sandbox_id);
  *req.mutable_exec() = request;
  req.set_max_running(max_running);
  // The reader blocks in Read(); a watcher cancels the call when our own caller goes away.
  absl::Notification done;
  std::thread watcher([&] {
    while (!done.WaitForNotificationWithTimeout(absl::Milliseconds(100))) {
      if (cancelled()) {
        ctx.TryCancel();
        return;
      }
    }
  });
  auto reader = RunnerAt(address).ExecStream(&ctx, req);
  // The runner sends its headers, marked, once it has accepted the call (a refusal comes as the
  // call's status, without them); a runner of an older version sends them with its first chunk.
  reader->WaitForInitialMetadata();
  bool started = ctx.GetServerInitialMetadata().count(
                     grpc::string_ref(kExecStartedMetadata.data(), kExecStartedMetadata.size())) > 0;
  if (started) on_start();
  v1::ExecChunk chunk;
  bool stopped = false;
  while (reader->Read(&chunk)) {
    if (!started) {
      started = true;
      on_start();
    }
    if (!on_chunk(chunk)) {
      stopped = true;
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status s = reader->Finish();
  done.Notify();
  watcher.join();
  if (stopped || cancelled()) return absl::CancelledError("the client went away");
  if (!s.ok()) return Wrap(s, "runner");
  return absl::OkStatus();
}

absl::StatusOr<v1::ListReservationsResponse> GrpcBackends::ListReservations(
    int older_than_sec, const std::string& page_token) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadlines_.quota);
  v1::ListReservationsRequest req;
  req.set_older_than_sec(older_than_sec);
  req.set_page_token(page_token);
  v1::ListReservationsResponse resp;
  grpc::Status s = quota_->ListReservations(&ctx, req, &resp);
  if (!s.ok()) return Wrap(s, "quota service");
  return resp;
}

absl::StatusOr<v1::ListPlacementsResponse> GrpcBackends::ListPlacements(
    int older_than_sec, const std::string& page_token) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadlines_.scheduler);
  v1::ListPlacementsRequest req;
  req.set_older_than_sec(older_than_sec);
  req.set_page_token(page_token);
  v1::ListPlacementsResponse resp;
  grpc::Status s = scheduler_->ListPlacements(&ctx, req, &resp);
  if (!s.ok()) return Wrap(s, "scheduler");
  return resp;
}

absl::StatusOr<v1::ListRunnersResponse> GrpcBackends::ListRunners() {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadlines_.scheduler);
  v1::ListRunnersResponse resp;
  grpc::Status s = scheduler_->ListRunners(&ctx, v1::ListRunnersRequest(), &resp);
  if (!s.ok()) return Wrap(s, "scheduler");
  return resp;
}

absl::StatusOr<std::vector<std::string>> GrpcBackends::RunnerSandboxes(const std::string& address) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, absl::Seconds(5));
  v1::ListRunnerSandboxesResponse resp;
  grpc::Status s = RunnerAt(address).ListSandboxes(&ctx, v1::ListRunnerSandboxesRequest(), &resp);
  if (!s.ok()) return Wrap(s, "runner");
  return std::vector<std::string>(resp.sandbox_ids().begin(), resp.sandbox_ids().end());
}

absl::StatusOr<std::vector<int>> GrpcBackends::ListPorts(const std::string& address,
                                                         const std::string& sandbox_id,
                                                         absl::Duration deadline) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadline);
  v1::ListPortsRequest req;
  req.set_sandbox_id(sandbox_id);
  v1::ListPortsResponse resp;
  grpc::Status s = RunnerAt(address).ListPorts(&ctx, req, &resp);
  if (!s.ok()) return Wrap(s, "runner");
  return std::vector<int>(resp.ports().begin(), resp.ports().end());
}

absl::StatusOr<v1::StartProgress> GrpcBackends::StartProgress(const std::string& address,
                                                              const std::string& sandbox_id,
                                                              absl::Duration deadline) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, deadline);
  v1::GetStartProgressRequest req;
  req.set_sandbox_id(sandbox_id);
  v1::GetStartProgressResponse resp;
  grpc::Status s = RunnerAt(address).GetStartProgress(&ctx, req, &resp);
  if (!s.ok()) return Wrap(s, "runner");
  return resp.progress();
}

absl::StatusOr<std::string> GrpcBackends::TunnelAddress(const std::string& address) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, absl::Seconds(2));
  v1::GetRunnerInfoResponse resp;
  grpc::Status s = RunnerAt(address).GetRunnerInfo(&ctx, v1::GetRunnerInfoRequest(), &resp);
  if (!s.ok()) return Wrap(s, "runner");
  return resp.tunnel_address();
}

}  // namespace isorun::lifecycle
