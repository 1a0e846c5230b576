#pragma once

// Postgres repository of sandboxes (schema `lifecycle`). Every state change is one guarded UPDATE
// (`WHERE state = ANY(expected)`) that also appends to `sandbox_events`, in one statement; a
// transition whose guard fails changes nothing and returns nullopt, so two actors racing on one
// sandbox (a user's delete and the reaper, two lifecycle replicas) can never both win.
// Concurrent calls of the hot steps (insert, every transition) are batched: one statement moves
// many sandboxes, each still guarded by its own expected state.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "isorun/v1/sandboxes.pb.h"
#include "services/kit/batcher.h"
#include "services/kit/pg.h"

namespace isorun::lifecycle {

using v1::Sandbox;
using v1::SandboxState;

std::string StateName(SandboxState state);
std::string EndReasonName(v1::EndReason reason);

struct ListQuery {
  std::string tenant_id;
  std::vector<SandboxState> states;  // empty: live states
  std::vector<std::pair<std::string, std::string>> metadata;
  int page_size = 50;
  std::string page_token;
};

struct ListPage {
  std::vector<Sandbox> sandboxes;
  std::string next_page_token;
};

// How long a create's Idempotency-Key is remembered (API.md: 24 h).
inline constexpr absl::Duration kIdempotencyRetention = absl::Hours(24);

// One row of lifecycle.sandbox_events, read for a sandbox's timeline.
struct EventRow {
  int64_t seq = 0;  // the row's id: events of one sandbox in the order they were written
  std::string from_state;  // "" for the first (PENDING)
  std::string to_state;
  std::string reason;
  absl::Time at;
};

struct EventPage {
  std::vector<EventRow> events;
  std::string end_message;  // the sandbox's, for its ENDED event
  std::string runner_id;    // the runner it was placed on, if any
  bool more = false;        // rows follow the last one returned
};

class SandboxStore {
 public:
  explicit SandboxStore(PgPool& pool);

  // Inserts a PENDING sandbox (and its idempotency key, if any). ALREADY_EXISTS when the tenant
  // already used that idempotency key within 24 h: `existing_id` then holds the first sandbox.
  absl::Status InsertPending(const v1::CreateSandboxRequest& request, const std::string& id,
                             const std::string& public_id, std::string* existing_id);

  // The lifecycle replica recorded as `owner` of the rows inserted from now on (its
  // ReplicaSession id; 0: none, the row's owner is NULL and only --stuck_after_sec repairs it).
  void SetOwner(int32_t owner) { owner_ = owner; }
  int32_t owner() const { return owner_.load(); }

  // An idempotent retry that is about to wait for sandbox `id` (of `tenant_id`) marks the row
  // awaited, so that leaving PENDING/STARTING (or being removed) notifies it (migration 0017).
  // nullopt when the row is not in flight (settled, gone, or another tenant's).
  struct InFlight {
    SandboxState state = v1::SANDBOX_STATE_UNSPECIFIED;
    int32_t owner = 0;         // 0: none recorded
    bool owner_alive = false;  // its replica still holds its advisory lock
  };
  absl::StatusOr<std::optional<InFlight>> MarkAwaited(const std::string& tenant_id,
                                                      const std::string& id);
  // How many MarkAwaited calls this store has served (tests: a waiting retry marks once).
  int64_t marks() const { return marks_.load(); }
  // Takes over a create in flight whose owner's replica is gone (its advisory lock is free):
  // owner := `owner`, in one guarded statement, so of several replicas trying at once one wins.
  // nullopt when the row is not in flight, has no owner, is already ours, or its owner lives.
  absl::StatusOr<std::optional<Sandbox>> TakeOver(const std::string& id, int32_t owner);
  // The reconciler's sweep of the same: up to `limit` rows, skipping rows others hold locked.
  absl::StatusOr<std::vector<Sandbox>> TakeOverOrphans(int32_t owner, int limit);

  // The sandbox id a tenant's idempotency key maps to (within 24 h), if any.
  absl::StatusOr<std::optional<std::string>> FindIdempotent(const std::string& tenant_id,
                                                            const std::string& key);

  absl::StatusOr<Sandbox> Get(const std::string& tenant_id, const std::string& id);
  // How many Get calls this store has served (tests: a waiting idempotent retry must not poll).
  int64_t gets() const { return gets_.load(); }
  // Without the tenant check: for internal loops (reaper, reconciler).
  absl::StatusOr<Sandbox> GetAny(const std::string& id);
  // By public id (the public-URL proxy), any state; NOT_FOUND when unknown.
  absl::StatusOr<Sandbox> GetByPublicId(const std::string& public_id);
  absl::StatusOr<ListPage> List(const ListQuery& query);
  absl::StatusOr<int> CountInState(const std::string& tenant_id, SandboxState state);
  // Records what a STARTING sandbox waits for (the first PULLING also appends a PULLING event).
  // Returns false when the sandbox is no longer STARTING (nothing changes then).
  absl::StatusOr<bool> SetStartProgress(const std::string& id, const v1::StartProgress& progress);
  // Up to `limit` events of the tenant's sandbox `id` after event `after_seq`, oldest first.
  // NOT_FOUND for an unknown id or another tenant's.
  absl::StatusOr<EventPage> ListEvents(const std::string& tenant_id, const std::string& id,
                                       int64_t after_seq, int limit);

  // Guarded transitions. nullopt: the sandbox was not in an expected state. The transitions the
  // control plane uses internally (to STARTING, FAILED, DESTROYING, DESTROYED, LOST) and
  // ClaimExpired return the sandbox without metadata, network and env; those a client sees in
  // full (to RUNNING, HIBERNATED, resumed) carry everything.
  absl::StatusOr<std::optional<Sandbox>> ToStarting(const std::string& id,
                                                    const std::string& runner_id,
                                                    const std::string& runner_address);
  absl::StatusOr<std::optional<Sandbox>> ToRunning(const std::string& id,
                                                   const std::string& image_digest);
  absl::StatusOr<std::optional<Sandbox>> ToFailed(const std::string& id,
                                                  const std::string& message);
  absl::StatusOr<std::optional<Sandbox>> ToDestroying(const std::string& tenant_id,
                                                      const std::string& id,
                                                      const std::vector<SandboxState>& from,
                                                      v1::EndReason reason);
  absl::StatusOr<std::optional<Sandbox>> ToDestroyed(const std::string& id);
  absl::StatusOr<std::optional<Sandbox>> ToHibernated(const std::string& id);
  absl::StatusOr<std::optional<Sandbox>> ToRunningFromHibernated(const std::string& id);

  absl::StatusOr<std::optional<Sandbox>> ToLost(const std::string& id, const std::string& message);

  struct RowState {
    SandboxState state = v1::SANDBOX_STATE_UNSPECIFIED;
    std::string runner_id;
    absl::Duration since_update;
  };
  // The state of each of `ids` that has a row.
  absl::StatusOr<std::map<std::string, RowState>> StatesOf(const std::vector<std::string>& ids);
  // RUNNING and HIBERNATED sandboxes placed on `runner_id`.
  absl::StatusOr<std::vector<Sandbox>> LiveOnRunner(const std::string& runner_id);

  // Removes a sandbox that was never acknowledged (its create was refused with 429), with its
  // events and idempotency key. Only PENDING or STARTING rows.
  absl::Status DeleteUnacknowledged(const std::string& id);

  // Sets timeoutSec; a running sandbox's deadline becomes now + timeout. nullopt if it has ended.
  absl::StatusOr<std::optional<Sandbox>> SetTimeout(const std::string& tenant_id,
                                                    const std::string& id, int timeout_sec);
  // Stores a running or hibernated sandbox's network profile. nullopt if it is in another state.
  absl::StatusOr<std::optional<Sandbox>> SetNetwork(const std::string& tenant_id,
                                                    const std::string& id,
                                                    const v1::NetworkPolicy& policy);
  // Activity: a running sandbox's deadline becomes now + its timeout.
  absl::Status Touch(const std::string& id);
  // The same for many sandboxes in one statement; returns how many running rows moved.
  absl::StatusOr<int> TouchMany(const std::vector<std::string>& ids);
  // Retention: deletes up to `limit` of the sandboxes that ended more than `retention` ago, oldest
  // first, with their events and idempotency keys; returns how many sandboxes went.
  absl::StatusOr<int> PurgeEnded(absl::Duration retention, int limit);
  // Deletes up to `limit` idempotency keys older than `retention`; returns how many.
  absl::StatusOr<int> PurgeIdempotencyKeys(absl::Duration retention, int limit);
  // Makes the sandbox's row, and every commit before it, durable (a synchronous commit).
  absl::Status Persist(const std::string& id);

  // Hibernate and resume of one sandbox, serialized with each other and with every other
  // transition by the row's lock, held from the first read to the commit (the runner and quota
  // calls in between included): a hibernate and a resume racing on one sandbox take turns, so a
  // slot is never released after a resume took it, nor released twice.
  class Locked {
   public:
    // The tenant's hibernated sandboxes, counted under a per-tenant lock held to the commit
    // (hibernates of one tenant take turns, so the cap is exact).
    absl::StatusOr<int> CountHibernated();
    // RUNNING -> HIBERNATED, kept until now + retention_sec. nullopt if it was not RUNNING.
    absl::StatusOr<std::optional<Sandbox>> Hibernate(int retention_sec);
    // HIBERNATED -> RUNNING, deadline now + timeoutSec. nullopt if it was not HIBERNATED.
    absl::StatusOr<std::optional<Sandbox>> Resume();
    // For a create's compensation under WithOwnedInFlight: removes the never acknowledged row
    // (with its events and idempotency key), or ends it FAILED (START_FAILED) with `message`.
    absl::Status DeleteUnacknowledged();
    absl::Status Fail(const std::string& message);

   private:
    friend class SandboxStore;
    Locked(pqxx::work& tx, std::string tenant_id, std::string id)
        : tx_(tx), tenant_id_(std::move(tenant_id)), id_(std::move(id)) {}
    pqxx::work& tx_;
    std::string tenant_id_, id_;
  };
  // Locks sandbox `id` of `tenant_id` and runs `fn` with it; commits (durably) when `fn` returns
  // OK, rolls back otherwise. NOT_FOUND for an unknown id or another tenant's. `fn` may run
  // again when the transaction is retried, so what it does must be idempotent.
  absl::Status WithLocked(const std::string& tenant_id, const std::string& id,
                          const std::function<absl::Status(const Sandbox&, Locked&)>& fn);

  // A create's compensation: runs `fn` holding the row's lock, only if the row is still in flight
  // (PENDING or STARTING) and `owner` owns it (0: no owner recorded), and commits durably when
  // `fn` returns OK. Returns whether `fn` ran. While it runs no other replica can take the create
  // over, and once it has run none will (the row is gone or ended, or still ours).
  absl::StatusOr<bool> WithOwnedInFlight(const std::string& id, int32_t owner,
                                         const std::function<absl::Status(const Sandbox&, Locked&)>& fn);

  // Moves up to `limit` hibernated sandboxes kept past their retention to DESTROYING (reason
  // HIBERNATION_EXPIRED), skipping rows another replica holds. Returns them.
  absl::StatusOr<std::vector<Sandbox>> ClaimRetentionExpired(int limit);

  // Moves up to `limit` running sandboxes whose deadline passed to DESTROYING (reason
  // IDLE_TIMEOUT), skipping rows another replica holds. Returns them.
  absl::StatusOr<std::vector<Sandbox>> ClaimExpired(int limit);
  // Sandboxes stuck in `state` for longer than `older_than_sec`; their updated_at is bumped so
  // another replica does not take them at the same time.
  absl::StatusOr<std::vector<Sandbox>> ClaimStuck(SandboxState state, int older_than_sec,
                                                  int limit);

 private:
  // One guarded transition: `params` fill the statement's per-row parameters r.p1, r.p2, ...
  struct TransitionCall {
    std::string id;
    std::vector<std::string> params;
  };
  using TransitionResult = absl::StatusOr<std::optional<Sandbox>>;
  using TransitionBatcher = Batcher<TransitionCall, TransitionResult>;
  // Concurrent transitions of one kind share a statement (see kit/batcher.h). `sql` defines the
  // moved rows as `s` (TransitionSql); `full`: callers read their JSON columns too; `fixed`: the
  // values of the parameters that follow the row arrays (TransitionFromSql's state).
  TransitionBatcher& AddTransition(const std::string& name, const std::string& sql,
                                   Durability durability, bool full,
                                   std::vector<std::string> fixed = {});
  std::vector<TransitionResult> RunTransitions(const std::string& name,
                                               const std::vector<std::string>& fixed,
                                               Durability durability, bool full,
                                               std::vector<TransitionCall>& calls);

  struct InsertCall {
    const v1::CreateSandboxRequest* request;
    std::string id;
    std::string public_id;
  };
  std::vector<absl::Status> RunInserts(std::vector<InsertCall>& calls);

  PgPool& pool_;
  std::atomic<int32_t> owner_{0};
  std::atomic<int64_t> gets_{0};
  std::atomic<int64_t> marks_{0};
  std::unique_ptr<Batcher<InsertCall, absl::Status>> inserts_;
  TransitionBatcher* to_starting_ = nullptr;
  TransitionBatcher* to_running_ = nullptr;
  TransitionBatcher* to_failed_ = nullptr;
  TransitionBatcher* running_to_destroying_ = nullptr;
  TransitionBatcher* to_destroying_ = nullptr;
  TransitionBatcher* to_destroyed_ = nullptr;
  TransitionBatcher* to_hibernated_ = nullptr;
  TransitionBatcher* to_resumed_ = nullptr;
  TransitionBatcher* to_lost_ = nullptr;
  std::vector<std::unique_ptr<TransitionBatcher>> transitions_;
};

}  // namespace isorun::lifecycle
