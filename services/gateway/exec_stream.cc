#include "services/gateway/exec_stream.h"

#include "services/kit/status.h"

namespace isorun::gateway {

ExecStreamCall::ExecStreamCall(v1::Sandboxes::Stub& stub, std::unique_ptr<grpc::ClientContext> ctx,
                               v1::ExecRequest request)
    : ctx_(std::move(ctx)), request_(std::move(request)) {
  stub.async()->ExecStream(ctx_.get(), &request_, this);
  StartRead(&incoming_);
  StartCall();
}

ExecStreamCall::~ExecStreamCall() {
  Cancel();
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return done_; });
}

void ExecStreamCall::Cancel() { ctx_->TryCancel(); }

void ExecStreamCall::OnReadInitialMetadataDone(bool ok) {
  std::lock_guard lock(mu_);
  // Without initial metadata the call failed: WaitStarted waits for OnDone instead.
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
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return metadata_done_ || has_chunk_ || done_; });
  if (metadata_done_ || has_chunk_ || status_.ok()) return absl::OkStatus();
  return FromGrpcStatus(status_);
}

bool ExecStreamCall::Next(v1::ExecChunk& out) {
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return has_chunk_ || reads_over_; });
    if (!has_chunk_) return false;
    out = std::move(incoming_);
    incoming_.Clear();
    has_chunk_ = false;
  }
  // Outside the lock: a reaction may run inline.
  StartRead(&incoming_);
  return true;
}

grpc::Status ExecStreamCall::Finish() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return done_; });
  return status_;
}

}  // namespace isorun::gateway
