#pragma once

// Caps per client address that an HTTP front end applies before anything else (before
// authentication): open connections, and requests per second with a token bucket. One hostile
// address then cannot take the connections or the request capacity everyone shares. Pure: time
// is an argument. Thread-safe.
//
// An address's bucket outlives its connections (a client that opens a connection per request
// must not get a full bucket each time); entries with no connection and a full bucket are
// dropped now and then, so the table stays bounded by the addresses active recently.

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace isorun::http {

class ClientLimits {
 public:
  // 0 for either cap: none. `burst` 0: twice the rate (at least 1).
  ClientLimits(int max_connections, double requests_per_sec, double burst = 0);

  bool enabled() const { return max_connections_ > 0 || rate_ > 0; }

  // A connection from `ip` opens: false (and nothing counted) beyond the cap.
  bool Open(const std::string& ip, absl::Time now);
  void Close(const std::string& ip);
  // A request from `ip`: false beyond its rate, with how long until one is allowed.
  bool AllowRequest(const std::string& ip, absl::Time now, absl::Duration* retry_after);

  size_t tracked() const;

 private:
  struct Entry {
    int connections = 0;
    double tokens = 0;
    absl::Time last;
  };
  Entry& Get(const std::string& ip, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Refill(Entry& e, absl::Time now) const;
  void SweepIfLarge(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_connections_;
  const double rate_;
  const double burst_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  size_t sweep_at_ ABSL_GUARDED_BY(mu_) = 4096;
};

}  // namespace isorun::http
