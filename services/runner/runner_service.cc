#include "services/runner/runner_service.h"

#include "absl/strings/str_cat.h"
#include "services/kit/call_thread.h"
#include "services/kit/status.h"
#include "services/runner/ports.h"

namespace isorun::runner {

grpc::Status RunnerService::StartSandbox(grpc::ServerContext*, const v1::StartSandboxRequest* req,
                                         v1::StartSandboxResponse* resp) {
  if (req->sandbox_id().empty() || req->image().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "sandbox id and image are required");
  }
  std::multimap<std::string, std::string>::iterator mine;
  {
    absl::MutexLock lock(&starting_mu_);
    mine = starting_.emplace(req->sandbox_id(), req->image());
  }
  auto result = driver_.Start(*req);
  {
    absl::MutexLock lock(&starting_mu_);
    starting_.erase(mine);
  }
  if (!result.ok()) return ToGrpcStatus(result.status());
  resp->set_image_digest(result->image_digest);
  resp->set_warm(result->warm);
  return grpc::Status::OK;
}

grpc::Status RunnerService::GetStartProgress(grpc::ServerContext*,
                                             const v1::GetStartProgressRequest* req,
                                             v1::GetStartProgressResponse* resp) {
  std::string image;
  {
    absl::MutexLock lock(&starting_mu_);
    auto it = starting_.find(req->sandbox_id());
    if (it == starting_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no start of that sandbox is running");
    }
    image = it->second;
  }
  auto pull = driver_.PullProgress(image);
  if (pull) {
    *resp->mutable_progress() = *std::move(pull);
  } else {
    resp->mutable_progress()->set_phase("STARTING");
  }
  return grpc::Status::OK;
}

grpc::Status RunnerService::StopSandbox(grpc::ServerContext*, const v1::StopSandboxRequest* req,
                                        v1::StopSandboxResponse* resp) {
  auto existed = driver_.Stop(req->sandbox_id());
  if (!existed.ok()) return ToGrpcStatus(existed.status());
  resp->set_existed(*existed);
  return grpc::Status::OK;
}

grpc::Status RunnerService::PauseSandbox(grpc::ServerContext*, const v1::PauseSandboxRequest* req,
                                         v1::PauseSandboxResponse*) {
  return ToGrpcStatus(driver_.Pause(req->sandbox_id()));
}

grpc::Status RunnerService::UnpauseSandbox(grpc::ServerContext*,
                                           const v1::UnpauseSandboxRequest* req,
                                           v1::UnpauseSandboxResponse*) {
  return ToGrpcStatus(driver_.Unpause(req->sandbox_id()));
}

grpc::Status RunnerService::ListSandboxes(grpc::ServerContext*,
                                          const v1::ListRunnerSandboxesRequest*,
                                          v1::ListRunnerSandboxesResponse* resp) {
  for (auto& id : driver_.Sandboxes()) resp->add_sandbox_ids(std::move(id));
  return grpc::Status::OK;
}

RunnerService::ExecPlace::~ExecPlace() {
  absl::MutexLock lock(&service_->execs_mu_);
  auto it = service_->execs_.find(sandbox_);
  if (it != service_->execs_.end() && --it->second <= 0) service_->execs_.erase(it);
}

absl::StatusOr<std::unique_ptr<RunnerService::ExecPlace>> RunnerService::TakeExecPlace(
    const std::string& sandbox, int max_running) {
  absl::MutexLock lock(&execs_mu_);
  int& running = execs_[sandbox];
  if (max_running > 0 && running >= max_running) {
    const int current = running;
    if (running == 0) execs_.erase(sandbox);
    return Error(absl::StatusCode::kResourceExhausted, "EXEC_LIMIT",
                 absl::StrCat("sandbox ", sandbox, " has ", current, " of ", max_running,
                              " exec calls running; wait for one to finish or retry later"),
                 max_running, current, 1);
  }
  ++running;
  return std::make_unique<ExecPlace>(this, sandbox);
}

grpc::ServerUnaryReactor* RunnerService::Exec(grpc::CallbackServerContext* ctx,
                                              const v1::RunnerExecRequest* req,
                                              v1::ExecResponse* resp) {
  return RunUnaryOnThread(ctx, [this, req, resp] {
    auto place = TakeExecPlace(req->sandbox_id(), req->max_running());
    if (!place.ok()) return ToGrpcStatus(place.status());
    auto result = driver_.Exec(req->sandbox_id(), req->exec());
    if (!result.ok()) return ToGrpcStatus(result.status());
    *resp = std::move(*result);
    return grpc::Status::OK;
  });
}

grpc::ServerWriteReactor<v1::ExecChunk>* RunnerService::ExecStream(
    grpc::CallbackServerContext* ctx, const v1::RunnerExecRequest* req) {
  using Reactor = ThreadWriteReactor<v1::ExecChunk>;
  return Reactor::Start([this, ctx, req](Reactor::Stream& stream) {
    auto place = TakeExecPlace(req->sandbox_id(), req->max_running());
    if (!place.ok()) return ToGrpcStatus(place.status());
    // Accepted: headers with the marker go out now, so the lifecycle can answer its caller's
    // start (a refusal above is an ordinary error status instead).
    ctx->AddInitialMetadata(std::string(kExecStartedMetadata), "1");
    stream.SendHeaders();
    auto code = driver_.ExecStream(
        req->sandbox_id(), req->exec(),
        [&stream](const v1::ExecChunk& chunk) { return stream.Write(chunk); },
        [&stream] { return stream.Cancelled(); });
    if (!code.ok()) return ToGrpcStatus(code.status());
    v1::ExecChunk last;
    last.set_exit_code(*code);
    stream.Write(last);
    return grpc::Status::OK;
  });
}

grpc::Status RunnerService::PullImage(grpc::ServerContext*, const v1::PullImageRequest* req,
                                      v1::PullImageResponse* resp) {
  if (req->image().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "image is required");
  }
  bool cached = false;
  for (const auto& img : driver_.Images()) {
    for (const auto& ref : img.refs) cached = cached || ref == req->image();
    cached = cached || img.digest == req->image();
  }
  auto info = driver_.Pull(req->image());
  if (!info.ok()) return ToGrpcStatus(info.status());
  resp->set_image_digest(info->digest);
  resp->set_size_bytes(info->size_bytes);
  for (const auto& ref : info->refs) resp->add_refs(ref);
  resp->set_already_cached(cached);
  return grpc::Status::OK;
}

grpc::Status RunnerService::ListPorts(grpc::ServerContext*, const v1::ListPortsRequest* req,
                                      v1::ListPortsResponse* resp) {
  const int pid = driver_.NetnsPid(req->sandbox_id());
  if (pid <= 0) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "no running sandbox " + req->sandbox_id() + " on this runner");
  }
  auto ports = ListeningPorts(pid);
  if (!ports.ok()) return ToGrpcStatus(ports.status());
  for (int p : *ports) resp->add_ports(p);
  return grpc::Status::OK;
}

grpc::Status RunnerService::GetRunnerInfo(grpc::ServerContext*, const v1::GetRunnerInfoRequest*,
                                          v1::GetRunnerInfoResponse* resp) {
  resp->set_tunnel_address(tunnel_address_);
  return grpc::Status::OK;
}

grpc::Status RunnerService::SetSandboxNetwork(grpc::ServerContext*,
                                              const v1::SetSandboxNetworkRequest* req,
                                              v1::SetSandboxNetworkResponse*) {
  return ToGrpcStatus(driver_.SetNetwork(req->sandbox_id(), req->network()));
}

grpc::Status RunnerService::GetEgressLog(grpc::ServerContext*, const v1::GetEgressLogRequest* req,
                                         v1::GetEgressLogResponse* resp) {
  auto entries = driver_.EgressLog(req->sandbox_id());
  if (!entries.ok()) return ToGrpcStatus(entries.status());
  for (auto& e : *entries) *resp->add_entries() = std::move(e);
  return grpc::Status::OK;
}

}  // namespace isorun::runner
