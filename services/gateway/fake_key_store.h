#pragma once

// An in-memory KeyStore for tests: keys added with AddKey, revoked with Revoke, and a switch
// that makes every lookup fail as if Postgres were down.

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "services/gateway/auth.h"
#include "services/kit/api_key.h"

namespace isorun::gateway {

class FakeKeyStore final : public KeyStore {
 public:
  // A new key of `region` for `tenant`; returns the full key text.
  std::string AddKey(const std::string& tenant, const std::string& region = "local") {
    ApiKey key = NewApiKey(region);
    std::lock_guard lock(mu_);
    keys_[key.key_id] = StoredKey{tenant, region, HashSecret(key.secret), false};
    return key.ToString();
  }
  void Revoke(const std::string& key_text) {
    std::lock_guard lock(mu_);
    keys_[ParseApiKey(key_text)->key_id].revoked = true;
  }
  void SetUnavailable(bool down) {
    std::lock_guard lock(mu_);
    down_ = down;
  }
  // Every lookup throws (a bug stand-in: the gateway must answer 500, not crash).
  void SetThrow(bool on) {
    std::lock_guard lock(mu_);
    throw_ = on;
  }
  int lookups() {
    std::lock_guard lock(mu_);
    return lookups_;
  }

  absl::StatusOr<std::optional<StoredKey>> Find(const std::string& key_id) override {
    std::lock_guard lock(mu_);
    ++lookups_;
    if (throw_) throw std::runtime_error("key store exploded");
    if (down_) return absl::UnavailableError("database unavailable: connection refused");
    auto it = keys_.find(key_id);
    if (it == keys_.end()) return std::optional<StoredKey>();
    return std::optional<StoredKey>(it->second);
  }

 private:
  std::mutex mu_;
  std::map<std::string, StoredKey> keys_;
  bool down_ = false;
  bool throw_ = false;
  int lookups_ = 0;
};

}  // namespace isorun::gateway
