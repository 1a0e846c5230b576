#pragma once

// Calls that wait a long time (an exec runs for as long as its command) served on gRPC's callback
// API, each on a thread of its own that lives exactly as long as the call. A sync server takes
// its calls' threads from one fixed pool: a tenant holding many long commands could fill it and
// make every other tenant's call wait or fail. Here a call's wait never takes a pooled thread;
// how many run at once is bounded by the per-tenant and per-sandbox exec caps instead.
//
// Use from a service that derives from the generated `WithCallbackMethod_<Method>` templates, so
// that only the long methods leave the sync pool.

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/synchronization/mutex.h"

namespace isorun {

// Initial-metadata key a runner sends (with the headers) once it has accepted an exec:stream call,
// before any output: the caller then knows the command was not refused. Lowercase, as gRPC wants.
inline constexpr std::string_view kExecStartedMetadata = "isorun-exec-started";

// Runs `body` on a new thread and finishes the call with its status.
inline grpc::ServerUnaryReactor* RunUnaryOnThread(grpc::CallbackServerContext* ctx,
                                                  std::function<grpc::Status()> body) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  std::thread([reactor, body = std::move(body)] { reactor->Finish(body()); }).detach();
  return reactor;
}

// A server stream written from a thread of its own, with blocking writes: Write() returns once
// the message is on its way (false when the client is gone), so a producer that blocks (a
// process's output) can drive it directly.
template <typename Message>
class ThreadWriteReactor final : public grpc::ServerWriteReactor<Message> {
 public:
  // What the producer thread sees of the stream.
  class Stream {
   public:
    explicit Stream(ThreadWriteReactor* r) : r_(r) {}
    bool Write(const Message& m) { return r_->BlockingWrite(m); }
    // Sends the response headers now (clients see the stream begin before any message).
    void SendHeaders() { r_->BlockingHeaders(); }
    // True once the client cancelled or went away.
    bool Cancelled() { return r_->IsCancelled(); }

   private:
    ThreadWriteReactor* r_;
  };

  // Starts `body` on a new thread; the call finishes with its status. The reactor deletes itself
  // when gRPC is done with the call and the thread has finished.
  static ThreadWriteReactor* Start(std::function<grpc::Status(Stream&)> body) {
    auto* r = new ThreadWriteReactor();
    std::thread([r, body = std::move(body)] {
      Stream stream(r);
      grpc::Status status = body(stream);
      {
        // gRPC completes an outstanding write (ok=false once the call is cancelled) before
        // the call can finish.
        absl::MutexLock lock(&r->mu_);
        r->mu_.Await(absl::Condition(
            +[](ThreadWriteReactor* x) { return !x->write_pending_ && !x->headers_pending_; }, r));
      }
      r->Finish(status);
      r->Release();  // the thread's reference
    }).detach();
    return r;
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    write_pending_ = false;
    if (!ok) broken_ = true;
  }
  void OnSendInitialMetadataDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    headers_pending_ = false;
    if (!ok) broken_ = true;
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
  }
  void OnDone() override { Release(); }  // gRPC's reference

 private:
  ThreadWriteReactor() = default;

  // Start* are called without the lock held, in case gRPC runs the reaction inline.
  bool BlockingWrite(const Message& m) {
    {
      absl::MutexLock lock(&mu_);
      if (broken_ || cancelled_ || write_pending_) return false;
      // The reactor's own copy: the write may outlive this call when the client goes away.
      message_ = m;
      write_pending_ = true;
    }
    this->StartWrite(&message_);
    absl::MutexLock lock(&mu_);
    // Wakes on completion, and on cancel (a write to a vanished client may never complete).
    mu_.Await(absl::Condition(
        +[](ThreadWriteReactor* r) { return !r->write_pending_ || r->cancelled_; }, this));
    return !broken_ && !cancelled_ && !write_pending_;
  }
  void BlockingHeaders() {
    {
      absl::MutexLock lock(&mu_);
      if (broken_ || cancelled_ || headers_pending_) return;
      headers_pending_ = true;
    }
    this->StartSendInitialMetadata();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](ThreadWriteReactor* r) { return !r->headers_pending_ || r->cancelled_; }, this));
  }
  bool IsCancelled() {
    absl::MutexLock lock(&mu_);
    return cancelled_ || broken_;
  }
  void Release() {
    bool last;
    {
      absl::MutexLock lock(&mu_);
      last = --refs_ == 0;
    }
    if (last) delete this;
  }

  absl::Mutex mu_;
  int refs_ ABSL_GUARDED_BY(mu_) = 2;  // the producer thread and gRPC
  bool write_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool headers_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  Message message_ ABSL_GUARDED_BY(mu_);  // the one write in flight
};

}  // namespace isorun
