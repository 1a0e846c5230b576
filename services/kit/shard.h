#pragma once

// Which quota replica owns a tenant's in-memory rate buckets. Gateways route each tenant's rate
// checks to its owner and replicas refuse tenants they do not own, so every replica count gives
// one answer per tenant. FNV-1a: stable across processes, builds and machines.

#include <cstdint>
#include <string_view>

namespace isorun {

inline int ShardFor(std::string_view tenant_id, int shard_count) {
  if (shard_count <= 1) return 0;
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : tenant_id) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return static_cast<int>(h % static_cast<uint64_t>(shard_count));
}

}  // namespace isorun
