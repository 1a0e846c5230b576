#pragma once

// Which quota replica keeps a tenant's in-memory rate buckets. Gateways rank the replicas per
// tenant by rendezvous (highest random weight) hashing over the replicas' addresses and send the
// tenant's checks to the first one that is up, so every gateway with the same list meets at the
// same replica. When a replica leaves, only its tenants move (to their second choice, whose
// buckets start full); when it comes back they move back. FNV-1a: stable across processes,
// builds and machines.

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

namespace isorun {

inline uint64_t Fnv1a(std::string_view a, std::string_view b) {
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&h](std::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ULL;
    }
  };
  mix(a);
  mix(std::string_view("\0", 1));
  mix(b);
  // A final avalanche (from splitmix64): FNV alone ranks similar addresses alike.
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

// Indexes into `members`, the tenant's first choice first.
inline std::vector<int> RendezvousOrder(std::string_view tenant_id,
                                        const std::vector<std::string>& members) {
  std::vector<int> order(members.size());
  std::iota(order.begin(), order.end(), 0);
  std::vector<uint64_t> score(members.size());
  for (size_t i = 0; i < members.size(); ++i) score[i] = Fnv1a(tenant_id, members[i]);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return score[a] != score[b] ? score[a] > score[b] : a < b;
  });
  return order;
}

}  // namespace isorun
