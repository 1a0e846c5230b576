#pragma once

// A hand-written fake of isorun.v1.Sandboxes for gateway tests: records every request, answers
// with a canned sandbox (or a status set with FailWith), and streams canned exec chunks.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "isorun/v1/sandboxes.grpc.pb.h"

namespace isorun::gateway {

class FakeLifecycle final : public v1::Sandboxes::Service {
 public:
  FakeLifecycle() {
    sandbox_.set_id("sbx_fake1");
    sandbox_.set_state(v1::RUNNING);
    sandbox_.set_image("busybox:1.36");
    sandbox_.set_cpu_millis(1000);
    sandbox_.set_memory_mb(512);
    sandbox_.set_timeout_sec(300);
    sandbox_.set_public_id("0123456789abcdef0123456789abcdef");
    sandbox_.mutable_created_at()->set_seconds(1700000000);
    sandbox_.mutable_expires_at()->set_seconds(1700000300);
    sandbox_.set_tenant_id("must-not-leak");
    sandbox_.set_runner_id("runner-must-not-leak");
    (*sandbox_.mutable_env())["SECRET"] = "env-must-not-leak";
  }

  // Every following call fails with `status` (OK restores the canned answers).
  void FailWith(grpc::Status status) {
    std::lock_guard lock(mu_);
    fail_ = std::move(status);
  }
  v1::Sandbox sandbox() {
    std::lock_guard lock(mu_);
    return sandbox_;
  }
  // Exec chunks to stream, then `end`; with `hang`, the stream then waits until cancelled.
  void SetStream(std::vector<v1::ExecChunk> chunks, grpc::Status end, bool hang = false) {
    std::lock_guard lock(mu_);
    chunks_ = std::move(chunks);
    stream_end_ = std::move(end);
    hang_ = hang;
  }
  bool stream_cancelled() const { return stream_cancelled_.load(); }

  // The last request of each kind, and how many calls there were.
  int calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }
  std::string last_method() {
    std::lock_guard lock(mu_);
    return last_method_;
  }
  std::string last_request_id() {
    std::lock_guard lock(mu_);
    return last_request_id_;
  }
  v1::CreateSandboxRequest last_create() {
    std::lock_guard lock(mu_);
    return create_;
  }
  v1::ListSandboxesRequest last_list() {
    std::lock_guard lock(mu_);
    return list_;
  }
  v1::ExecRequest last_exec() {
    std::lock_guard lock(mu_);
    return exec_;
  }
  v1::SetTimeoutRequest last_set_timeout() {
    std::lock_guard lock(mu_);
    return set_timeout_;
  }
  // tenant_id and id of the last call that names a sandbox.
  std::pair<std::string, std::string> last_target() {
    std::lock_guard lock(mu_);
    return target_;
  }

  grpc::Status CreateSandbox(grpc::ServerContext* ctx, const v1::CreateSandboxRequest* req,
                             v1::Sandbox* out) override {
    std::lock_guard lock(mu_);
    Record(ctx, "CreateSandbox");
    create_ = *req;
    target_ = {req->tenant_id(), ""};
    if (!fail_.ok()) return fail_;
    *out = sandbox_;
    return grpc::Status::OK;
  }
  grpc::Status GetSandbox(grpc::ServerContext* ctx, const v1::GetSandboxRequest* req,
                          v1::Sandbox* out) override {
    return SandboxCall(ctx, "GetSandbox", req->tenant_id(), req->id(), out);
  }
  grpc::Status ListSandboxes(grpc::ServerContext* ctx, const v1::ListSandboxesRequest* req,
                             v1::ListSandboxesResponse* out) override {
    std::lock_guard lock(mu_);
    Record(ctx, "ListSandboxes");
    list_ = *req;
    target_ = {req->tenant_id(), ""};
    if (!fail_.ok()) return fail_;
    *out->add_sandboxes() = sandbox_;
    out->set_next_page_token("next-1");
    return grpc::Status::OK;
  }
  grpc::Status DestroySandbox(grpc::ServerContext* ctx, const v1::DestroySandboxRequest* req,
                              v1::DestroySandboxResponse*) override {
    std::lock_guard lock(mu_);
    Record(ctx, "DestroySandbox");
    target_ = {req->tenant_id(), req->id()};
    return fail_;
  }
  grpc::Status SetTimeout(grpc::ServerContext* ctx, const v1::SetTimeoutRequest* req,
                          v1::Sandbox* out) override {
    {
      std::lock_guard lock(mu_);
      set_timeout_ = *req;
    }
    return SandboxCall(ctx, "SetTimeout", req->tenant_id(), req->id(), out);
  }
  grpc::Status HibernateSandbox(grpc::ServerContext* ctx, const v1::HibernateSandboxRequest* req,
                                v1::Sandbox* out) override {
    grpc::Status s = SandboxCall(ctx, "HibernateSandbox", req->tenant_id(), req->id(), out);
    out->set_state(v1::HIBERNATED);
    return s;
  }
  grpc::Status ResumeSandbox(grpc::ServerContext* ctx, const v1::ResumeSandboxRequest* req,
                             v1::Sandbox* out) override {
    return SandboxCall(ctx, "ResumeSandbox", req->tenant_id(), req->id(), out);
  }
  grpc::Status Exec(grpc::ServerContext* ctx, const v1::ExecRequest* req,
                    v1::ExecResponse* out) override {
    std::lock_guard lock(mu_);
    Record(ctx, "Exec");
    exec_ = *req;
    target_ = {req->tenant_id(), req->id()};
    if (!fail_.ok()) return fail_;
    out->set_exit_code(0);
    out->set_stdout("hello\n");
    out->set_stderr("");
    out->set_duration_ms(7);
    return grpc::Status::OK;
  }
  grpc::Status ExecStream(grpc::ServerContext* ctx, const v1::ExecRequest* req,
                          grpc::ServerWriter<v1::ExecChunk>* writer) override {
    std::vector<v1::ExecChunk> chunks;
    grpc::Status end;
    bool hang;
    {
      std::lock_guard lock(mu_);
      Record(ctx, "ExecStream");
      exec_ = *req;
      target_ = {req->tenant_id(), req->id()};
      if (!fail_.ok()) return fail_;
      chunks = chunks_;
      end = stream_end_;
      hang = hang_;
    }
    writer->SendInitialMetadata();
    for (const auto& chunk : chunks) writer->Write(chunk);
    if (hang) {
      while (!ctx->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      stream_cancelled_ = true;
      return grpc::Status::CANCELLED;
    }
    return end;
  }
  grpc::Status GetUsage(grpc::ServerContext* ctx, const v1::GetUsageRequest* req,
                        v1::Usage* out) override {
    std::lock_guard lock(mu_);
    Record(ctx, "GetUsage");
    target_ = {req->tenant_id(), ""};
    if (!fail_.ok()) return fail_;
    out->set_tenant_id(req->tenant_id());
    out->set_active_sandboxes(2);
    out->set_hibernated_sandboxes(1);
    out->mutable_limits()->set_max_concurrent(10);
    out->mutable_limits()->set_creates_per_sec(2);
    out->mutable_limits()->set_requests_per_sec(50);
    return grpc::Status::OK;
  }

 private:
  void Record(grpc::ServerContext* ctx, const std::string& method) {
    ++calls_;
    last_method_ = method;
    auto it = ctx->client_metadata().find("x-request-id");
    last_request_id_ =
        it == ctx->client_metadata().end() ? "" : std::string(it->second.data(), it->second.size());
  }
  grpc::Status SandboxCall(grpc::ServerContext* ctx, const std::string& method,
                           const std::string& tenant, const std::string& id, v1::Sandbox* out) {
    std::lock_guard lock(mu_);
    Record(ctx, method);
    target_ = {tenant, id};
    if (!fail_.ok()) return fail_;
    *out = sandbox_;
    return grpc::Status::OK;
  }

  std::mutex mu_;
  grpc::Status fail_;
  v1::Sandbox sandbox_;
  std::vector<v1::ExecChunk> chunks_;
  grpc::Status stream_end_;
  bool hang_ = false;
  std::atomic<bool> stream_cancelled_{false};
  int calls_ = 0;
  std::string last_method_;
  std::string last_request_id_;
  v1::CreateSandboxRequest create_;
  v1::ListSandboxesRequest list_;
  v1::ExecRequest exec_;
  v1::SetTimeoutRequest set_timeout_;
  std::pair<std::string, std::string> target_;
};

}  // namespace isorun::gateway
