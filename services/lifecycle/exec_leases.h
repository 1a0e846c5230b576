#pragma once

// The lifecycle's side of exec leases (quotas.proto, ExecLease): the cluster-wide cap on a
// tenant's running exec and exec:stream calls. Each call takes a lease from the tenant's quota
// replica before its command starts; a thread of this class renews the leases of running calls
// every third of their TTL and releases ended calls' leases as soon as they end (off the call's
// own path, so an exec answers without waiting for the release). A lifecycle that dies stops
// renewing, and its leases lapse within one TTL.
//
// Thread-safe.

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/lifecycle/backends.h"

namespace isorun::lifecycle {

class ExecLeases {
 public:
  // A lease held for one call; released (asynchronously) when destroyed.
  class Lease {
   public:
    ~Lease();
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

   private:
    friend class ExecLeases;
    Lease(ExecLeases* owner, std::string id) : owner_(owner), id_(std::move(id)) {}
    ExecLeases* owner_;
    std::string id_;
  };

  ExecLeases(Backends& backends, absl::Duration ttl);
  // Releases what is still held (best effort) and stops the thread.
  ~ExecLeases();

  // A lease, or RESOURCE_EXHAUSTED (EXEC_LIMIT) from the quota service, or another error when no
  // quota replica could answer (the caller decides what to do without the cluster-wide count).
  absl::StatusOr<std::unique_ptr<Lease>> Acquire(const std::string& tenant_id);

  // Leases this process holds now.
  int held();

 private:
  void End(const std::string& lease_id);
  void Run();
  // Sends `leases` grouped by tenant through `call`; returns the first error.
  static std::map<std::string, std::vector<v1::ExecLease>> ByTenant(
      const std::vector<v1::ExecLease>& leases);

  Backends& backends_;
  const absl::Duration ttl_;
  const std::string prefix_;  // unique per process: lease ids never collide between holders
  absl::Mutex mu_;
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, std::string> held_ ABSL_GUARDED_BY(mu_);  // lease id -> tenant
  std::vector<v1::ExecLease> ended_ ABSL_GUARDED_BY(mu_);         // to release
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace isorun::lifecycle
