#pragma once

// A client call of Sandboxes.ExecStream that a blocking HTTP thread can drive: it tells whether
// the stream started (so a refused exec becomes an ordinary 404/409 error answer, not a 200 with
// an error line), then hands over chunks one at a time (the next read starts only when the
// previous chunk was taken, so a slow HTTP client slows the stream instead of filling memory).
//
// Built on the callback API because the blocking API cannot tell "initial metadata arrived" from
// "the call failed before sending any". The lifecycle service should send initial metadata once
// the command has started (ServerWriter::SendInitialMetadata) so clients see the headers at once;
// otherwise they come with the first output.

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <mutex>

#include "absl/status/status.h"
#include "isorun/v1/sandboxes.grpc.pb.h"

namespace isorun::gateway {

class ExecStreamCall final : public grpc::ClientReadReactor<v1::ExecChunk> {
 public:
  // Starts the call. `ctx` is configured by the caller (deadline, metadata) and owned here.
  ExecStreamCall(v1::Sandboxes::Stub& stub, std::unique_ptr<grpc::ClientContext> ctx,
                 v1::ExecRequest request);
  // Cancels the call if it still runs and waits for it to end.
  ~ExecStreamCall() override;
  ExecStreamCall(const ExecStreamCall&) = delete;
  ExecStreamCall& operator=(const ExecStreamCall&) = delete;

  // Blocks until the stream is established (OK) or the call has failed (its status).
  absl::Status WaitStarted();
  // The next chunk; false at the end of the stream (then Finish() says how it ended).
  bool Next(v1::ExecChunk& out);
  // Blocks until the call is over; its status.
  grpc::Status Finish();
  // Cancels the call (client gone, shutdown). Thread-safe.
  void Cancel();
  grpc::ClientContext& context() { return *ctx_; }

  void OnReadInitialMetadataDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  std::unique_ptr<grpc::ClientContext> ctx_;
  v1::ExecRequest request_;
  v1::ExecChunk incoming_;  // written by the library between StartRead and OnReadDone

  // std::mutex and not absl::Mutex: the destructor runs as soon as OnDone has signalled, and
  // a std::mutex may be destroyed once the waiter holds it.
  // Reads are started from the HTTP thread, outside reactions, so the call is held open
  // (AddHold) until this side is done with it; without the hold gRPC may finish the call while
  // no read is pending and a later StartRead would touch a dead call.
  void ReleaseHold();

  std::mutex mu_;
  std::condition_variable cv_;
  bool metadata_done_ = false;  // guarded by mu_
  bool has_chunk_ = false;      // guarded by mu_
  bool reads_over_ = false;     // guarded by mu_
  bool hold_released_ = false;  // guarded by mu_
  bool done_ = false;           // guarded by mu_
  grpc::Status status_;         // guarded by mu_
};

}  // namespace isorun::gateway
