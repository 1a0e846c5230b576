#include "services/lifecycle/replica_session.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/kit/log.h"

namespace isorun::lifecycle {
namespace {

constexpr char kChannel[] = "isorun_sandbox_settled";

}  // namespace

class ReplicaSession::Receiver final : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection_base& conn, ReplicaSession* session)
      : pqxx::notification_receiver(conn, kChannel), session_(session) {}
  void operator()(const std::string& payload, int /*backend_pid*/) override {
    session_->OnNotification(payload);
  }

 private:
  ReplicaSession* session_;
};

ReplicaSession::ReplicaSession(PgPool& pool, Options options)
    : pool_(pool), options_(options), thread_([this] { Run(); }) {}

ReplicaSession::~ReplicaSession() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

bool ReplicaSession::stopping() {
  absl::MutexLock lock(&mu_);
  return stop_;
}

bool ReplicaSession::WaitUp(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto up = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return id_ != 0; };
  return mu_.AwaitWithTimeout(absl::Condition(&up), timeout);
}

int32_t ReplicaSession::id() const {
  absl::MutexLock lock(&mu_);
  return id_;
}

int64_t ReplicaSession::notifications() const {
  absl::MutexLock lock(&mu_);
  return notifications_;
}

std::unique_ptr<ReplicaSession::Watch> ReplicaSession::WatchSettled(const std::string& sandbox_id) {
  std::unique_ptr<Watch> watch(new Watch(this, sandbox_id));
  absl::MutexLock lock(&mu_);
  watches_.emplace(sandbox_id, watch.get());
  return watch;
}

ReplicaSession::Watch::~Watch() {
  absl::MutexLock lock(&session_->mu_);
  auto [begin, end] = session_->watches_.equal_range(id_);
  for (auto it = begin; it != end; ++it) {
    if (it->second == this) {
      session_->watches_.erase(it);
      break;
    }
  }
}

ReplicaSession::Wake ReplicaSession::Watch::Wait(absl::Time deadline) {
  absl::MutexLock lock(&session_->mu_);
  auto woken = [this]() ABSL_SHARED_LOCKS_REQUIRED(session_->mu_) {
    return settled_ || restarted_;
  };
  session_->mu_.AwaitWithDeadline(absl::Condition(&woken), deadline);
  Wake wake = settled_ ? Wake::kSettled : restarted_ ? Wake::kRestarted : Wake::kTimeout;
  settled_ = restarted_ = false;
  return wake;
}

void ReplicaSession::OnNotification(const std::string& sandbox_id) {
  absl::MutexLock lock(&mu_);
  ++notifications_;
  auto [begin, end] = watches_.equal_range(sandbox_id);
  for (auto it = begin; it != end; ++it) it->second->settled_ = true;
}

void ReplicaSession::SetId(int32_t id) {
  absl::MutexLock lock(&mu_);
  id_ = id;
  for (auto& [sandbox, watch] : watches_) watch->restarted_ = true;
}

void ReplicaSession::Run() {
  absl::Duration backoff = absl::Milliseconds(100);
  while (!stopping()) {
    try {
      std::unique_ptr<pqxx::connection> conn = pool_.OpenDedicated();
      int32_t id = 0;
      {
        pqxx::nontransaction tx(*conn);
        // A fresh id: its lock is free unless the sequence went round all 2^31 ids.
        for (int tries = 0; id == 0 && tries < 100; ++tries) {
          const int32_t next =
              tx.exec("SELECT nextval('lifecycle.replica_ids')::integer")[0][0].as<int32_t>();
          if (tx.exec(absl::StrCat("SELECT pg_try_advisory_lock(", kReplicaLockSpace, ", ", next,
                                   ")"))[0][0]
                  .as<bool>()) {
            id = next;
          }
        }
      }
      if (id == 0) throw std::runtime_error("no free replica id");
      Receiver receiver(*conn, this);  // LISTEN
      conn->get_notifs();
      struct Down {
        ReplicaSession* session;
        ~Down() { session->SetId(0); }
      } down{this};
      if (options_.on_up) options_.on_up(id);
      SetId(id);
      LogInfo("replica session up", {{"replica_id", std::to_string(id)}, {"channel", kChannel}});
      backoff = absl::Milliseconds(100);
      absl::Time last_activity = absl::Now();
      while (!stopping()) {
        pollfd p{conn->sock(), POLLIN, 0};
        const int ready = poll(&p, 1, 250);
        if (ready < 0 && errno != EINTR) throw std::runtime_error("poll on the session failed");
        if (ready > 0) {
          conn->get_notifs();  // throws when the connection broke
          last_activity = absl::Now();
        } else if (absl::Now() - last_activity >= options_.ping_every) {
          pqxx::nontransaction tx(*conn);
          tx.exec("SELECT 1");
          conn->get_notifs();
          last_activity = absl::Now();
        }
      }
    } catch (const std::exception& e) {
      LogWarn("replica session down; creates in flight here may be taken over by other replicas",
              {{"error", e.what()}, {"retry_in", absl::FormatDuration(backoff)}});
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), backoff);
      backoff = std::min(backoff * 2, options_.reconnect_max_backoff);
    }
  }
}

}  // namespace isorun::lifecycle
