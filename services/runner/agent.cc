#include "services/runner/agent.h"

#include <functional>

#include "google/protobuf/util/time_util.h"
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
  {
    absl::MutexLock lock(&stream_mu_);
    if (stream_ctx_ != nullptr) stream_ctx_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
}

int64_t Agent::FillImages(const std::vector<CachedImageInfo>& images,
                          google::protobuf::RepeatedPtrField<v1::CachedImage>* out) {
  int64_t used = 0;
  for (const auto& img : images) {
    used += img.size_bytes;
    if (out == nullptr) continue;
    auto* c = out->Add();
    c->set_digest(img.digest);
    c->set_size_bytes(img.size_bytes);
    for (const auto& ref : img.refs) c->add_refs(ref);
    if (img.last_used != absl::Time() && img.last_used != absl::InfinitePast()) {
      *c->mutable_last_used() = google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(
          absl::ToUnixMicros(img.last_used));
    }
    c->set_sandboxes(img.sandboxes);
  }
  return used;
}

void Agent::FillHeartbeat(v1::HeartbeatRequest* req, bool full) {
  req->set_runner_id(runner_id_);
  std::vector<CachedImageInfo> images = driver_.Images();
  std::vector<std::string> sandboxes = driver_.Sandboxes();
  req->mutable_allocated()->set_sandboxes(static_cast<int32_t>(sandboxes.size()));
  // What identifies the lists, not when images were last used: that alone is not worth sending.
  std::string key;
  for (const auto& img : images) {
    key += img.digest + '\n' + std::to_string(img.size_bytes) + '\n';
    for (const auto& ref : img.refs) key += ref + ' ';
    key += '\n';
  }
  const size_t images_hash = std::hash<std::string>()(key);
  key.clear();
  for (const auto& id : sandboxes) key += id + '\n';
  const size_t sandboxes_hash = std::hash<std::string>()(key);
  const bool images_changed = full || images_hash != images_hash_;
  req->set_image_cache_used_bytes(
      FillImages(images, images_changed ? req->mutable_images() : nullptr));
  req->set_images_unchanged(!images_changed);
  if (full) {
    req->mutable_capacity()->set_cpu_millis(options_.cpu_millis);
    req->mutable_capacity()->set_memory_mb(options_.memory_mb);
    req->mutable_capacity()->set_sandboxes(options_.max_sandboxes);
  }
  if (full || sandboxes_hash != sandboxes_hash_) {
    for (auto& id : sandboxes) req->add_sandbox_ids(std::move(id));
  } else {
    req->set_sandboxes_unchanged(true);
  }
  images_hash_ = images_hash;
  sandboxes_hash_ = sandboxes_hash;
}

bool Agent::Register() {
  v1::RegisterRunnerRequest req;
  req.set_name(options_.name);
  req.set_address(options_.address);
  req.set_region(options_.region);
  req.mutable_capacity()->set_cpu_millis(options_.cpu_millis);
  req.mutable_capacity()->set_memory_mb(options_.memory_mb);
  req.mutable_capacity()->set_sandboxes(options_.max_sandboxes);
  req.set_image_cache_bytes(options_.image_cache_bytes);
  req.set_image_cache_used_bytes(FillImages(driver_.Images(), req.mutable_images()));
  for (auto& id : driver_.Sandboxes()) req.add_sandbox_ids(std::move(id));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::RegisterRunnerResponse resp;
  grpc::Status s = stub_->RegisterRunner(&ctx, req, &resp);
  if (!s.ok()) {
    LogWarn("registration failed",
            {{"code", std::to_string(s.error_code())}, {"error", s.error_message()}});
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
    } else if (streaming_) {
      // Returns when the stream ends: reconnect soon, but not in a tight loop.
      if (StreamHeartbeats()) {
        stop_.WaitForNotificationWithTimeout(absl::Milliseconds(std::min(interval_ms_, 500)));
      }
      continue;
    } else {
      UnaryHeartbeat();
      if (!registered_) continue;
    }
    stop_.WaitForNotificationWithTimeout(absl::Milliseconds(interval_ms_));
  }
}

bool Agent::StreamHeartbeats() {
  grpc::ClientContext ctx;
  {
    absl::MutexLock lock(&stream_mu_);
    if (stop_.HasBeenNotified()) return true;
    stream_ctx_ = &ctx;
  }
  v1::HeartbeatResponse resp;
  auto writer = stub_->HeartbeatStream(&ctx, &resp);
  for (int n = 0; !stop_.HasBeenNotified(); ++n) {
    v1::HeartbeatRequest req;
    FillHeartbeat(&req, n % std::max(1, options_.full_report_every) == 0);
    if (!writer->Write(req)) break;
    stop_.WaitForNotificationWithTimeout(absl::Milliseconds(interval_ms_));
  }
  if (stop_.HasBeenNotified()) writer->WritesDone();
  grpc::Status s = writer->Finish();
  {
    absl::MutexLock lock(&stream_mu_);
    stream_ctx_ = nullptr;
  }
  if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
    registered_ = false;
  } else if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
    LogInfo("the scheduler has no heartbeat stream; heartbeating call by call");
    streaming_ = false;
    return false;
  } else if (!s.ok() && !stop_.HasBeenNotified()) {
    LogWarn("heartbeat stream ended", {{"error", s.error_message()}});
  }
  return true;
}

void Agent::UnaryHeartbeat() {
  v1::HeartbeatRequest req;
  FillHeartbeat(&req, true);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::HeartbeatResponse resp;
  grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
  if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
    registered_ = false;
    return;
  }
  if (!s.ok()) LogWarn("heartbeat failed", {{"error", s.error_message()}});
}

}  // namespace isorun::runner
