#include "services/gateway/pg_key_store.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <pqxx/pqxx>

#include "services/kit/log.h"

namespace isorun::gateway {
namespace {

constexpr char kChannel[] = "isorun_api_keys";
constexpr char kFindKey[] = "gateway_find_api_key";

}  // namespace

class PgKeyStore::Receiver final : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection_base& conn, PgKeyStore* store)
      : pqxx::notification_receiver(conn, kChannel), store_(store) {}
  void operator()(const std::string& payload, int /*backend_pid*/) override {
    store_->Evict(payload);
  }

 private:
  PgKeyStore* store_;
};

PgKeyStore::PgKeyStore(PgPool& pool, Options options) : pool_(pool), options_(options) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::runtime_error("eventfd failed");
  pool_.Prepare(kFindKey,
                "SELECT tenant_id::text, region, secret_hash, revoked_at IS NOT NULL, role "
                "FROM accounts.api_keys WHERE key_id = $1");
}

PgKeyStore::~PgKeyStore() {
  Stop();
  close(wake_fd_);
}

void PgKeyStore::WakeListener() {
  uint64_t one = 1;
  // Fails only when the counter is saturated, which wakes the listener anyway.
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
}

void PgKeyStore::Start() {
  absl::MutexLock lock(&mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { ListenLoop(); });
}

void PgKeyStore::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  WakeListener();
  if (thread_.joinable()) thread_.join();
}

bool PgKeyStore::listening() const {
  absl::MutexLock lock(&mu_);
  return listening_;
}

bool PgKeyStore::WaitUntilListening(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto up = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return listening_; };
  return mu_.AwaitWithTimeout(absl::Condition(&up), timeout);
}

bool PgKeyStore::IsCached(const std::string& key_id) const {
  absl::MutexLock lock(&mu_);
  return cache_.contains(key_id);
}

int PgKeyStore::listener_backend_pid() const {
  absl::MutexLock lock(&mu_);
  return listener_pid_;
}

bool PgKeyStore::IsNegativeCached(const std::string& key_id) const {
  absl::MutexLock lock(&mu_);
  return negative_.contains(key_id);
}

void PgKeyStore::Evict(const std::string& payload) {
  absl::MutexLock lock(&mu_);
  // "+ID": a new key (migration 0013). Only an "unknown" entry of that id can be wrong now; a
  // lookup reading Postgres meanwhile must not cache "unknown" either.
  if (!payload.empty() && payload[0] == '+') {
    negative_.erase(payload.substr(1));
    ++negative_epoch_;
    return;
  }
  cache_.erase(payload);
  negative_.erase(payload);
  ++epoch_;
  ++negative_epoch_;
}

void PgKeyStore::SetListening(bool up, int fd, int pid) {
  absl::MutexLock lock(&mu_);
  cache_.clear();
  negative_.clear();
  ++epoch_;
  listening_ = up;
  listener_fd_ = up ? fd : -1;
  listener_pid_ = up ? pid : 0;
}

bool PgKeyStore::NotificationPending(int fd) const {
  // Poll first, then read the flag: the listener sets `draining_` before it consumes the socket
  // and clears it after the evictions, so an empty socket with the flag clear means every
  // notification that reached us has been applied.
  pollfd p{fd, POLLIN, 0};
  int ready = poll(&p, 1, 0);
  if (ready != 0) return true;  // data waiting, or an error: do not trust the cache
  return draining_.load();
}

bool PgKeyStore::AwaitBarrier() {
  uint64_t ticket;
  bool wake = false;
  {
    absl::MutexLock lock(&mu_);
    if (!listening_) return false;
    ticket = barrier_next_;
    if (barrier_wanted_ < ticket) {
      barrier_wanted_ = ticket;
      wake = true;
    }
  }
  if (wake) WakeListener();
  absl::MutexLock lock(&mu_);
  auto ready = [this, ticket]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return barrier_done_ >= ticket || !listening_ || stopping_;
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), options_.barrier_timeout);
  return barrier_done_ >= ticket && listening_;
}

absl::StatusOr<std::optional<StoredKey>> PgKeyStore::Find(const std::string& key_id) {
  // One time budget for the barrier and the read: a hung database answers 503 as soon as any
  // other call would.
  const absl::Time deadline = absl::Now() + pool_.options().call_timeout;
  // While the database is known to be down the cache cannot be confirmed (no barrier) nor a key
  // read: fail at once rather than wait for the barrier first.
  if (!pool_.Reachable()) {
    return absl::UnavailableError("the database is unreachable");
  }
  int fd;
  uint64_t epoch;
  uint64_t negative_epoch;
  bool listening;
  {
    absl::MutexLock lock(&mu_);
    fd = listener_fd_;
    epoch = epoch_;
    negative_epoch = negative_epoch_;
    listening = listening_;
  }
  if (listening) {
    // An unknown key id seen lately: no query. No barrier either: a key id nobody could know
    // before its key existed is never here (the INSERT's notification evicts it regardless).
    absl::MutexLock lock(&mu_);
    auto it = negative_.find(key_id);
    if (it != negative_.end()) {
      if (listening_ && absl::Now() < it->second) {
        ++negative_hits_;
        return std::optional<StoredKey>();
      }
      negative_.erase(it);
    }
  }
  bool cache_usable = false;
  if (listening) {
    bool present;
    {
      absl::MutexLock lock(&mu_);
      present = cache_.contains(key_id);
    }
    // A key not in the cache is read from Postgres anyway: no barrier needed for it.
    if (present) {
      cache_usable = options_.strict_revocation ? AwaitBarrier() : !NotificationPending(fd);
    }
  }
  if (cache_usable) {
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(key_id);
    if (it != cache_.end() && listening_ && absl::Now() < it->second.expires) {
      ++hits_;
      return std::optional<StoredKey>(it->second.key);
    }
    epoch = epoch_;
  }
  ++misses_;
  auto read = Read(key_id, deadline);
  if (!read.ok()) return read;
  if (!read->has_value()) {
    absl::MutexLock lock(&mu_);
    if (listening_ && negative_epoch_ == negative_epoch && options_.max_negative > 0) {
      if (negative_.size() >= options_.max_negative) negative_.clear();
      negative_[key_id] = absl::Now() + options_.negative_ttl;
    }
    return read;
  }
  absl::MutexLock lock(&mu_);
  // Cache only what no eviction raced with, and only while evictions can reach us.
  if (listening_ && epoch_ == epoch) {
    if (cache_.size() >= options_.max_entries) cache_.clear();
    cache_[key_id] = Entry{**read, absl::Now() + options_.entry_ttl};
  }
  return read;
}

absl::StatusOr<std::optional<StoredKey>> PgKeyStore::Read(const std::string& key_id,
                                                         absl::Time deadline) {
  std::optional<StoredKey> found;
  absl::Status status = pool_.TransactBefore(deadline, [&](pqxx::work& tx) {
    found.reset();
    pqxx::result r = tx.exec_prepared(kFindKey, key_id);
    if (!r.empty()) {
      StoredKey key;
      key.tenant_id = r[0][0].as<std::string>();
      key.region = r[0][1].as<std::string>();
      key.secret_hash = r[0][2].as<std::string>();
      key.revoked = r[0][3].as<bool>();
      key.role = r[0][4].as<std::string>();
      found = std::move(key);
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return found;
}

void PgKeyStore::ListenLoop() {
  absl::Duration backoff = absl::Milliseconds(100);
  auto stopping = [this] {
    absl::MutexLock lock(&mu_);
    return stopping_;
  };
  while (!stopping()) {
    try {
      std::unique_ptr<pqxx::connection> conn = pool_.OpenDedicated();
      Receiver receiver(*conn, this);  // issues LISTEN
      conn->get_notifs();
      // Marks the listener down before the connection (and its fd) goes away, on every exit.
      struct Down {
        PgKeyStore* store;
        ~Down() {
          store->draining_ = false;
          store->SetListening(false, -1, 0);
        }
      } down{this};
      const int fd = conn->sock();
      SetListening(true, fd, conn->backendpid());
      LogInfo("listening for API key changes", {{"channel", kChannel}});
      backoff = absl::Milliseconds(100);
      absl::Time last_activity = absl::Now();
      while (!stopping()) {
        pollfd p[2] = {{fd, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
        int ready = poll(p, 2, 250);
        if (ready < 0 && errno != EINTR) throw std::runtime_error("poll on the listener failed");
        if (ready > 0 && (p[1].revents & POLLIN) != 0) {
          uint64_t count;
          [[maybe_unused]] ssize_t n = read(wake_fd_, &count, sizeof(count));
        }
        uint64_t barrier = 0;
        {
          absl::MutexLock lock(&mu_);
          if (barrier_wanted_ >= barrier_next_) barrier = barrier_next_++;
        }
        bool ping = barrier != 0 || absl::Now() - last_activity >= options_.listener_ping;
        if ((p[0].revents & (POLLIN | POLLHUP | POLLERR)) == 0 && !ping) continue;
        draining_ = true;
        if (ping) {
          // A frozen server would hold the listener (and every barrier) forever.
          PgPool::Deadline bounded(pool_, *conn, absl::Now() + pool_.options().call_timeout);
          pqxx::nontransaction tx(*conn);
          tx.exec("SELECT 1");
          tx.commit();
        }
        conn->get_notifs();  // applies every notification that came before the answer
        draining_ = false;
        last_activity = absl::Now();
        if (barrier != 0) {
          ++barriers_;
          absl::MutexLock lock(&mu_);
          barrier_done_ = barrier;
        }
      }
    } catch (const std::exception& e) {
      LogWarn("API key listener down; key lookups bypass the cache",
              {{"error", e.what()}, {"retry_in", absl::FormatDuration(backoff)}});
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), backoff);
      backoff = std::min(backoff * 2, options_.reconnect_max_backoff);
    }
  }
}

}  // namespace isorun::gateway
