#pragma once

// Exec leases: how many exec and exec:stream calls each tenant runs at once, counted in the memory
// of the tenant's quota replica (every lifecycle sends a tenant's leases to the same replica: the
// first up of its rendezvous order, services/kit/shard.h). A lease is taken before a command
// starts, renewed by its holder while the command runs and released when the call ends; one
// whose holder died (no renewals) lapses after its TTL, so a killed lifecycle's places come back
// within one TTL. Memory only, no Postgres: a replica that dies loses its table, and its tenants'
// holders register their running leases on the replica the tenants move to at their next
// renewal (Renew restores unknown leases).
//
// Thread-safe.

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace isorun::quota {

class ExecLeaseTable {
 public:
  struct Key {
    std::string tenant_id;
    std::string lease_id;
  };

  // The tenant's live leases after taking this one; RESOURCE_EXHAUSTED with reason EXEC_LIMIT
  // (limit, current, retry-after 1 s) when it already holds `limit`. Taking a lease it already
  // holds renews it.
  absl::StatusOr<int> Acquire(const Key& key, int limit, absl::Duration ttl, absl::Time now);
  // Moves the expiry of each lease to now + ttl, registering the ones not known here. Returns
  // how many were not known.
  int Renew(const std::vector<Key>& keys, absl::Duration ttl, absl::Time now);
  // Returns how many were held.
  int Release(const std::vector<Key>& keys);
  // Live leases of a tenant.
  int Running(const std::string& tenant_id, absl::Time now);
  // Drops lapsed leases of every tenant; returns how many.
  size_t Collect(absl::Time now);

 private:
  using Leases = std::map<std::string, absl::Time>;  // lease id -> expiry
  static size_t DropLapsed(Leases& leases, absl::Time now);

  absl::Mutex mu_;
  std::map<std::string, Leases> tenants_ ABSL_GUARDED_BY(mu_);
};

}  // namespace isorun::quota
