#pragma once

// gRPC adapter of isorun.v1.Runner over a Driver.

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "isorun/v1/runner.grpc.pb.h"
#include "services/runner/driver.h"

namespace isorun::runner {

// Exec and ExecStream run on the callback API, each call on a thread of its own for as long as
// its command runs (kit/call_thread.h): long commands never take threads from the pool the other
// methods share, so one tenant's commands cannot hold up another tenant's.
using RunnerServiceBase = v1::Runner::WithCallbackMethod_Exec<
    v1::Runner::WithCallbackMethod_ExecStream<v1::Runner::Service>>;

class RunnerService final : public RunnerServiceBase {
 public:
  // `tunnel_address`: where this runner's tunnel listener is reached (GetRunnerInfo); empty: none.
  explicit RunnerService(Driver& driver, std::string tunnel_address = "")
      : driver_(driver), tunnel_address_(std::move(tunnel_address)) {}

  grpc::Status StartSandbox(grpc::ServerContext*, const v1::StartSandboxRequest*,
                            v1::StartSandboxResponse*) override;
  grpc::Status StopSandbox(grpc::ServerContext*, const v1::StopSandboxRequest*,
                           v1::StopSandboxResponse*) override;
  grpc::Status PauseSandbox(grpc::ServerContext*, const v1::PauseSandboxRequest*,
                            v1::PauseSandboxResponse*) override;
  grpc::Status UnpauseSandbox(grpc::ServerContext*, const v1::UnpauseSandboxRequest*,
                              v1::UnpauseSandboxResponse*) override;
  grpc::Status ListSandboxes(grpc::ServerContext*, const v1::ListRunnerSandboxesRequest*,
                             v1::ListRunnerSandboxesResponse*) override;
  grpc::ServerUnaryReactor* Exec(grpc::CallbackServerContext*, const v1::RunnerExecRequest*,
                                 v1::ExecResponse*) override;
  // Output chunks as they arrive, then one chunk with the exit code. A client that goes away
  // (cancels) kills the command.
  grpc::ServerWriteReactor<v1::ExecChunk>* ExecStream(grpc::CallbackServerContext*,
                                                      const v1::RunnerExecRequest*) override;
  grpc::Status PullImage(grpc::ServerContext*, const v1::PullImageRequest*,
                         v1::PullImageResponse*) override;
  grpc::Status ListPorts(grpc::ServerContext*, const v1::ListPortsRequest*,
                         v1::ListPortsResponse*) override;
  grpc::Status GetRunnerInfo(grpc::ServerContext*, const v1::GetRunnerInfoRequest*,
                             v1::GetRunnerInfoResponse*) override;
  grpc::Status SetSandboxNetwork(grpc::ServerContext*, const v1::SetSandboxNetworkRequest*,
                                 v1::SetSandboxNetworkResponse*) override;
  grpc::Status GetEgressLog(grpc::ServerContext*, const v1::GetEgressLogRequest*,
                            v1::GetEgressLogResponse*) override;
  // What a StartSandbox still running for the sandbox waits for: the pull of its image (with
  // bytes), else the container's start. NOT_FOUND when no start of it is running.
  grpc::Status GetStartProgress(grpc::ServerContext*, const v1::GetStartProgressRequest*,
                                v1::GetStartProgressResponse*) override;

 private:
  // A place among the calls running in one sandbox (RunnerExecRequest.max_running); freed when
  // destroyed. The runner is the one place that sees every exec of a sandbox, whichever lifecycle
  // replica sent it, so this count is exact.
  class ExecPlace {
   public:
    ExecPlace(RunnerService* service, std::string sandbox)
        : service_(service), sandbox_(std::move(sandbox)) {}
    ~ExecPlace();
    ExecPlace(const ExecPlace&) = delete;
    ExecPlace& operator=(const ExecPlace&) = delete;

   private:
    RunnerService* service_;
    std::string sandbox_;
  };
  // RESOURCE_EXHAUSTED with reason EXEC_LIMIT when the sandbox already runs `max_running` calls
  // (0: no cap).
  absl::StatusOr<std::unique_ptr<ExecPlace>> TakeExecPlace(const std::string& sandbox,
                                                           int max_running);

  Driver& driver_;
  absl::Mutex execs_mu_;
  std::map<std::string, int> execs_ ABSL_GUARDED_BY(execs_mu_);  // sandbox -> calls running
  absl::Mutex starting_mu_;
  // Sandbox id -> image of the StartSandbox calls running now (a retried start counts twice).
  std::multimap<std::string, std::string> starting_ ABSL_GUARDED_BY(starting_mu_);
  const std::string tunnel_address_;
};

}  // namespace isorun::runner
