#pragma once

// The services the lifecycle calls: quota, scheduler and runners. An interface so tests can wrap
// the real gRPC clients and inject a failure at any step; production uses GrpcBackends.

#include <grpcpp/channel.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "isorun/v1/quotas.grpc.pb.h"
#include "isorun/v1/runner.grpc.pb.h"
#include "isorun/v1/scheduler.grpc.pb.h"
#include "services/kit/batcher.h"

namespace isorun::lifecycle {

class Backends {
 public:
  virtual ~Backends() = default;
  // Quota.
  virtual absl::Status Admit(const std::string& tenant_id, const std::string& sandbox_id) = 0;
  virtual absl::Status Release(const std::string& tenant_id, const std::string& sandbox_id) = 0;
  virtual absl::StatusOr<v1::Usage> GetUsage(const std::string& tenant_id) = 0;
  // Exec leases (quotas.proto), each sent to the tenant's quota replica. RESOURCE_EXHAUSTED
  // (EXEC_LIMIT) when the tenant holds its cap; UNIMPLEMENTED from a backend without them.
  virtual absl::Status AcquireExecLease(const v1::ExecLease& lease, absl::Duration ttl) {
    return absl::UnimplementedError("no exec leases");
  }
  // All of one tenant.
  virtual absl::Status RenewExecLeases(const std::vector<v1::ExecLease>& leases,
                                       absl::Duration ttl) {
    return absl::UnimplementedError("no exec leases");
  }
  virtual absl::Status ReleaseExecLeases(const std::vector<v1::ExecLease>& leases) {
    return absl::UnimplementedError("no exec leases");
  }
  // Scheduler.
  virtual absl::StatusOr<v1::Placement> Place(const v1::PlaceRequest& request) = 0;
  virtual absl::Status ReleasePlacement(const std::string& sandbox_id) = 0;
  // Runner at `address`.
  virtual absl::StatusOr<v1::StartSandboxResponse> Start(const std::string& address,
                                                         const v1::StartSandboxRequest& request) = 0;
  virtual absl::Status Stop(const std::string& address, const std::string& sandbox_id) = 0;
  virtual absl::Status Pause(const std::string& address, const std::string& sandbox_id) = 0;
  virtual absl::Status Unpause(const std::string& address, const std::string& sandbox_id) = 0;
  virtual absl::Status SetNetwork(const std::string& address, const std::string& sandbox_id,
                                  const v1::NetworkPolicy& policy) = 0;
  virtual absl::StatusOr<std::vector<v1::EgressLogEntry>> EgressLog(
      const std::string& address, const std::string& sandbox_id) = 0;
  // `max_running`: the runner refuses (EXEC_LIMIT) when the sandbox already runs that many calls.
  virtual absl::StatusOr<v1::ExecResponse> Exec(const std::string& address,
                                                const std::string& sandbox_id,
                                                const v1::ExecRequest& request,
                                                int max_running) = 0;
  // Streams a command's output: `on_start` runs once the runner accepted the call (before any
  // output; not at all when it refused), `on_chunk` gets each chunk (the last carries the exit
  // code) and returns false to stop; `cancelled` is polled so a client that went away kills the
  // command.
  virtual absl::Status ExecStream(const std::string& address, const std::string& sandbox_id,
                                  const v1::ExecRequest& request, int max_running,
                                  const std::function<void()>& on_start,
                                  const std::function<bool(const v1::ExecChunk&)>& on_chunk,
                                  const std::function<bool()>& cancelled) = 0;
  // For the reconciler.
  virtual absl::StatusOr<v1::ListReservationsResponse> ListReservations(
      int older_than_sec, const std::string& page_token) = 0;
  virtual absl::StatusOr<v1::ListPlacementsResponse> ListPlacements(
      int older_than_sec, const std::string& page_token) = 0;
  virtual absl::StatusOr<v1::ListRunnersResponse> ListRunners() = 0;
  virtual absl::StatusOr<std::vector<std::string>> RunnerSandboxes(const std::string& address) = 0;
  // Public URLs: the ports a sandbox listens on now, and where its runner's tunnel listens.
  // What the runner's StartSandbox of the sandbox, still running, waits for. NOT_FOUND when none
  // runs there.
  virtual absl::StatusOr<v1::StartProgress> StartProgress(const std::string& address,
                                                          const std::string& sandbox_id,
                                                          absl::Duration deadline) {
    return absl::UnimplementedError("no start progress");
  }
  virtual absl::StatusOr<std::vector<int>> ListPorts(const std::string& address,
                                                     const std::string& sandbox_id,
                                                     absl::Duration deadline) {
    return absl::UnimplementedError("no port listing");
  }
  virtual absl::StatusOr<std::string> TunnelAddress(const std::string& address) {
    return absl::UnimplementedError("no tunnel");
  }
};

struct BackendDeadlines {
  absl::Duration quota = absl::Seconds(5);
  absl::Duration scheduler = absl::Seconds(5);
  absl::Duration start = absl::Seconds(100);  // a cold image pull included
  absl::Duration runner = absl::Seconds(30);
};

class GrpcBackends final : public Backends {
 public:
  // `quota_replicas`: the quota replicas' addresses when --quota_addr is a list (exec leases go
  // to a tenant's rendezvous choice among them); empty: every quota call goes through `quota`.
  GrpcBackends(std::shared_ptr<grpc::Channel> quota, std::shared_ptr<grpc::Channel> scheduler,
               BackendDeadlines deadlines = {}, std::vector<std::string> quota_replicas = {});

  absl::Status Admit(const std::string& tenant_id, const std::string& sandbox_id) override;
  absl::Status Release(const std::string& tenant_id, const std::string& sandbox_id) override;
  absl::StatusOr<v1::Usage> GetUsage(const std::string& tenant_id) override;
  absl::Status AcquireExecLease(const v1::ExecLease& lease, absl::Duration ttl) override;
  absl::Status RenewExecLeases(const std::vector<v1::ExecLease>& leases,
                               absl::Duration ttl) override;
  absl::Status ReleaseExecLeases(const std::vector<v1::ExecLease>& leases) override;
  absl::StatusOr<v1::Placement> Place(const v1::PlaceRequest& request) override;
  absl::Status ReleasePlacement(const std::string& sandbox_id) override;
  absl::StatusOr<v1::StartSandboxResponse> Start(const std::string& address,
                                                 const v1::StartSandboxRequest& request) override;
  absl::Status Stop(const std::string& address, const std::string& sandbox_id) override;
  absl::Status Pause(const std::string& address, const std::string& sandbox_id) override;
  absl::Status Unpause(const std::string& address, const std::string& sandbox_id) override;
  absl::Status SetNetwork(const std::string& address, const std::string& sandbox_id,
                          const v1::NetworkPolicy& policy) override;
  absl::StatusOr<std::vector<v1::EgressLogEntry>> EgressLog(const std::string& address,
                                                            const std::string& sandbox_id) override;
  absl::StatusOr<v1::ExecResponse> Exec(const std::string& address, const std::string& sandbox_id,
                                        const v1::ExecRequest& request, int max_running) override;
  absl::Status ExecStream(const std::string& address, const std::string& sandbox_id,
                          const v1::ExecRequest& request, int max_running,
                          const std::function<void()>& on_start,
                          const std::function<bool(const v1::ExecChunk&)>& on_chunk,
                          const std::function<bool()>& cancelled) override;
  absl::StatusOr<v1::ListReservationsResponse> ListReservations(
      int older_than_sec, const std::string& page_token) override;
  absl::StatusOr<v1::ListPlacementsResponse> ListPlacements(
      int older_than_sec, const std::string& page_token) override;
  absl::StatusOr<v1::ListRunnersResponse> ListRunners() override;
  absl::StatusOr<std::vector<std::string>> RunnerSandboxes(const std::string& address) override;
  absl::StatusOr<std::vector<int>> ListPorts(const std::string& address,
                                             const std::string& sandbox_id,
                                             absl::Duration deadline) override;
  absl::StatusOr<v1::StartProgress> StartProgress(const std::string& address,
                                                  const std::string& sandbox_id,
                                                  absl::Duration deadline) override;
  absl::StatusOr<std::string> TunnelAddress(const std::string& address) override;

 private:
  v1::Runner::Stub& RunnerAt(const std::string& address);
  std::vector<absl::Status> AdmitBatch(std::vector<v1::AdmitRequest>& items);
  std::vector<absl::Status> ReleaseBatch(std::vector<v1::ReleaseRequest>& items);
  std::vector<absl::StatusOr<v1::Placement>> PlaceBatch(std::vector<v1::PlaceRequest>& items);
  std::vector<absl::Status> ReleasePlacementBatch(std::vector<v1::ReleasePlacementRequest>& items);

  // Runs `call` on the tenant's quota replica: the first of its rendezvous order whose channel
  // is not failing, the next on UNAVAILABLE, within the quota deadline.
  grpc::Status OnTenantReplica(
      const std::string& tenant_id,
      const std::function<grpc::Status(v1::Quotas::Stub&, grpc::ClientContext&)>& call);

  std::unique_ptr<v1::Quotas::Stub> quota_;
  const std::vector<std::string> quota_names_;
  std::vector<std::shared_ptr<grpc::Channel>> quota_channels_;
  std::vector<std::unique_ptr<v1::Quotas::Stub>> quota_stubs_;
  std::unique_ptr<v1::Scheduler::Stub> scheduler_;
  const BackendDeadlines deadlines_;
  absl::Mutex mu_;
  struct RunnerChannel {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::Runner::Stub> stub;
  };
  std::map<std::string, RunnerChannel> runners_ ABSL_GUARDED_BY(mu_);
  // Concurrent admissions, releases and placements travel together: one RPC (and one statement
  // on the other side) for all the calls that queued while the previous batch was in flight.
  Batcher<v1::AdmitRequest, absl::Status> admits_;
  Batcher<v1::ReleaseRequest, absl::Status> releases_;
  Batcher<v1::PlaceRequest, absl::StatusOr<v1::Placement>> places_;
  Batcher<v1::ReleasePlacementRequest, absl::Status> placement_releases_;
};

}  // namespace isorun::lifecycle
