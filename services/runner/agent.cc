#include "services/runner/agent.h"

#include "services/kit/log.h"

namespace isorun::runner {

Agent::Agent(std::shared_ptr<grpc::Channel> scheduler, Driver& driver, AgentOptions options)
    : stub_(v1::Scheduler::NewStub(std::move(scheduler))),
      driver_(driver),
      options_(std::move(options)) {}

Agent::~Agent() { Stop(); }

void Agent::Start() { thread_ = std::thread([this] { Run(); }); }

void Agent::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void Agent::FillImages(google::protobuf::RepeatedPtrField<v1::CachedImage>* out) {
  for (const auto& img : driver_.Images()) {
    auto* c = out->Add();
    c->set_digest(img.digest);
    c->set_size_bytes(img.size_bytes);
    for (const auto& ref : img.refs) c->add_refs(ref);
  }
}

bool Agent::Register() {
  v1::RegisterRunnerRequest req;
  req.set_name(options_.name);
  req.set_address(options_.address);
  req.set_region(options_.region);
  req.mutable_capacity()->set_cpu_millis(options_.cpu_millis);
  req.mutable_capacity()->set_memory_mb(options_.memory_mb);
  req.mutable_capacity()->set_sandboxes(options_.max_sandboxes);
  FillImages(req.mutable_images());
  for (auto& id : driver_.Sandboxes()) req.add_sandbox_ids(std::move(id));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::RegisterRunnerResponse resp;
  grpc::Status s = stub_->RegisterRunner(&ctx, req, &resp);
  if (!s.ok()) {
    LogWarn("registration failed", {{"error", s.error_message()}});
    return false;
  }
  runner_id_ = resp.runner_id();
  if (resp.heartbeat_interval_ms() > 0) interval_ms_ = resp.heartbeat_interval_ms();
  registered_ = true;
  LogInfo("registered", {{"runner_id", runner_id_}, {"name", options_.name}});
  return true;
}

void Agent::Run() {
  while (!stop_.HasBeenNotified()) {
    if (!registered_) {
      if (!Register()) {
        stop_.WaitForNotificationWithTimeout(absl::Milliseconds(500));
        continue;
      }
    } else {
      v1::HeartbeatRequest req;
      req.set_runner_id(runner_id_);
      FillImages(req.mutable_images());
      for (auto& id : driver_.Sandboxes()) req.add_sandbox_ids(std::move(id));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::HeartbeatResponse resp;
      grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        registered_ = false;
        continue;
      }
      if (!s.ok()) LogWarn("heartbeat failed", {{"error", s.error_message()}});
    }
    stop_.WaitForNotificationWithTimeout(absl::Milliseconds(interval_ms_));
  }
}

}  // namespace isorun::runner
