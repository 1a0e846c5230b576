#pragma once

// Tenants managing their own API keys (GET, POST and DELETE /v1/keys) on accounts.api_keys, and
// the keys' last-use times.
//
// Rules:
// - Only a hash of a new key's secret is stored; the whole key exists once, in Create's answer.
// - A tenant always keeps one usable admin key: revoking its last unrevoked admin key is
//   FAILED_PRECONDITION (409, reason LAST_ADMIN_KEY). Revocations of one tenant are serialised
//   on its tenant row, so two admins revoking each other at once cannot both succeed.
// - Revocation is an UPDATE of revoked_at: the table's trigger NOTIFYs every gateway, whose key
//   cache (pg_key_store.h) fails the key's very next request.
// - Last use is recorded in memory (Touch, on every authenticated request) and written in one
//   batched UPDATE every `flush_interval` (and before List answers), never per request; the
//   trigger ignores last_used_at, so it evicts nothing from the caches.
//
// Thread-safe. One background thread for the flushes, owned by this object (Start/Stop).

#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/kit/pg.h"

namespace isorun::gateway {

struct KeyInfo {
  std::string key_id;
  std::string name;
  std::string role;    // "admin" or "sandbox"
  std::string region;
  std::string created_at;    // RFC 3339 UTC
  std::string last_used_at;  // empty: never used (or not flushed yet)
  std::string revoked_at;    // empty: not revoked
};

struct CreatedKey {
  KeyInfo info;
  std::string key;  // isr_<region>_<keyId>_<secret>: shown once
};

// Whether `role` is a role a key can have.
bool IsValidKeyRole(std::string_view role);

class PgKeyAdmin {
 public:
  struct Options {
    absl::Duration flush_interval = absl::Seconds(5);
  };
  // Registers the statements: construct before the pool's first query.
  PgKeyAdmin(PgPool& pool, Options options);
  explicit PgKeyAdmin(PgPool& pool) : PgKeyAdmin(pool, Options()) {}
  ~PgKeyAdmin();
  PgKeyAdmin(const PgKeyAdmin&) = delete;
  PgKeyAdmin& operator=(const PgKeyAdmin&) = delete;

  void Start();
  void Stop();  // flushes what is pending

  // The tenant's keys, revoked ones included, oldest first.
  absl::StatusOr<std::vector<KeyInfo>> List(const std::string& tenant_id);
  // `name`: 1-128 characters without control characters; `role` as IsValidKeyRole.
  absl::StatusOr<CreatedKey> Create(const std::string& tenant_id, const std::string& name,
                                    const std::string& role, const std::string& region);
  // NOT_FOUND for a key of another tenant or none; OK again for a revoked key.
  absl::Status Revoke(const std::string& tenant_id, const std::string& key_id);

  // Records a use of the key now (cheap: a map insert).
  void Touch(const std::string& key_id);
  // Writes the recorded uses.
  absl::Status Flush();

 private:
  void FlushLoop();

  PgPool& pool_;
  const Options options_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::Time> used_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace isorun::gateway
