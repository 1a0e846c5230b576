#include "services/gateway/exec_stream.h"

#include "services/kit/status.h"

namespace isorun::gateway {

ExecStreamCall::ExecStreamCall(v1::Sandboxes::Stub& stub, std::unique_ptr<grpc::ClientContext> ctx,
                               v1::ExecRequest request)
    : ctx_(std::move(ctx)), request_(std::move(request)) {
  stub.async()->ExecStream(ctx_.get(), &request_, this);
  StartRead(&incoming_);
  AddHold();
  StartCall();
}

ExecStreamCall::~ExecStreamCall() {
  Cancel();
  ReleaseHold();
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return done_; });
}

void ExecStreamCall::Cancel() { ctx_->TryCancel(); }

void ExecStreamCall::ReleaseHold() {
  {
    std::lock_guard lock(mu_);
    if (hold_released_) return;
    hold_released_ = true;
  }
  RemoveHold();  // outside the lock: OnDone may run inline
}

void ExecStreamCall::OnReadInitialMetadataDone(bool ok) {
  std::lock_guard lock(mu_);
  // Without initial metadata the call failed: its reads end and WaitStarted reports the status.
  if (ok) metadata_done_ = true;
  cv_.notify_all();
}

void ExecStreamCall::OnReadDone(bool ok) {
  std::lock_guard lock(mu_);
  if (ok) {
    has_chunk_ = true;
    metadata_done_ = true;
  } else {
    reads_over_ = true;
  }
  cv_.notify_all();
}

void ExecStreamCall::OnDone(const grpc::Status& status) {
  std::lock_guard lock(mu_);
  status_ = status;
  done_ = true;
  reads_over_ = true;
  cv_.notify_all();
}

absl::Status ExecStreamCall::WaitStarted() {
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return metadata_done_ || has_chunk_ || reads_over_; });
    if (metadata_done_ || has_chunk_) return absl::OkStatus();
  }
  // The stream ended before it started: its status says why.
  grpc::Status status = Finish();
  if (status.ok()) return absl::OkStatus();  // an empty stream: nothing to send but the end
  return FromGrpcStatus(status);
}

bool ExecStreamCall::Next(v1::ExecChunk& out) {
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return has_chunk_ || reads_over_; });
    if (has_chunk_) {
      out = std::move(incoming_);
      incoming_.Clear();
      has_chunk_ = false;
    } else {
      lock.unlock();
      ReleaseHold();
      return false;
    }
  }
  // Outside the lock: a reaction may run inline. The hold keeps the call alive for it.
  StartRead(&incoming_);
  return true;
}

grpc::Status ExecStreamCall::Finish() {
  ReleaseHold();
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return done_; });
  return status_;
}

}  // namespace isorun::gateway
