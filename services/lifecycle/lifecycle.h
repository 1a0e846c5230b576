#pragma once

// The sandbox lifecycle: create, destroy, timeouts, hibernate/resume, and the background loops
// (idle reaper, reconciler). Domain code: no gRPC server types here (Backends hides the clients).
//
// Create: validate -> PENDING row -> quota admission -> placement -> STARTING -> runner start ->
// RUNNING (a durable commit) -> the caller is answered. Any failure compensates in reverse order
// (stop on the runner, release the placement, release the slot) and either removes the never
// acknowledged row (refusals: 429) or marks it FAILED with the reason (start failures). When the
// compensation itself cannot finish, the row stays PENDING/STARTING and the reconciler finishes
// it once it is older than `stuck_after`: nothing is leaked even if this process dies mid-way.
//
// With a ReplicaSession, each PENDING/STARTING row records the replica that drives it (its
// `owner`); when that replica dies (its session lock is gone), the next idempotent retry of the
// create, or else the reconciler of any replica, takes the row over with one guarded update and
// drives the remaining steps itself (admission, placement and the runner's start are idempotent
// per sandbox id), so the create ends RUNNING instead of FAILED. A create compensates only under
// its row's lock and while it still owns the row, so two drivers never undo each other's work.
//
// Thread-safe: all state is in Postgres; methods may run concurrently.

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "services/lifecycle/backends.h"
#include "services/lifecycle/exec_leases.h"
#include "services/lifecycle/exec_tracker.h"
#include "services/lifecycle/replica_session.h"
#include "services/lifecycle/runner_lanes.h"
#include "services/lifecycle/sandbox_store.h"

namespace isorun::lifecycle {

struct LifecycleOptions {
  std::string region = "local";
  // PENDING/STARTING rows older than this are abandoned creates: compensated and FAILED.
  int stuck_after_sec = 120;
  // DESTROYING rows older than this are retried (a destroy interrupted by a crash or an
  // unreachable runner).
  int destroy_retry_after_sec = 10;
  // Reservations and placements whose sandbox is gone, and sandboxes a runner no longer has, are
  // repaired once they are at least this old (younger ones may belong to a create in flight).
  int orphan_grace_sec = 30;
  // Registry hosts (lowercase host:port) images may name; unqualified names (the configured
  // registry) are always allowed. See kit/image_policy.h.
  std::vector<std::string> registries;
  // How long an idempotent retry waits for the first create to settle.
  absl::Duration idempotent_wait = absl::Minutes(2);
  // Most exec and exec:stream calls running at once in one sandbox, counted by its runner (the
  // tenant's own cap, maxConcurrentExecs, is counted by the quota service with exec leases).
  int max_execs_per_sandbox = 16;
  // An exec lease lapses this long after its last renewal (renewed every third of it while its
  // command runs): the bound on how long a killed lifecycle's calls keep their places.
  absl::Duration exec_lease_ttl = absl::Seconds(10);
  // How long a tenant's limits (from the quota service) are reused.
  absl::Duration limits_ttl = absl::Seconds(2);
  // The public URL of a sandbox port: "{port}" and "{publicId}" are replaced. Empty: GetSandbox
  // leaves `urls` out.
  std::string public_url_template;
  // How long GetSandbox waits for the runner's port listing before answering without `urls`.
  absl::Duration ports_deadline = absl::Milliseconds(300);
  // While a create waits for a cold start (the scheduler placed it on a runner without its
  // image), the runner is asked this often what the start waits for (a pull, with bytes), and
  // the answer is written to the sandbox's row; 0 turns it off.
  absl::Duration start_progress_interval = absl::Milliseconds(250);
  // The reaper and the reconciler work on each runner in a lane of its own (runner_lanes.h);
  // a pass waits this long at most for its lanes, then goes on (unfinished work continues on
  // its lane; a runner that does not answer holds up only its own lane).
  absl::Duration runner_pass_wait = absl::Seconds(1);
  // After a runner call ran out its deadline (DEADLINE_EXCEEDED), further calls to that runner
  // fail at once for this long (runner_lanes.h).
  absl::Duration runner_cool_off = absl::Seconds(5);
  // This replica's presence in Postgres (owner of its creates in flight; notifications that wake
  // idempotent retries). nullptr: rows get no owner (only --stuck_after_sec repairs a create
  // whose process died) and a retry served by another replica looks at the row with backoff.
  ReplicaSession* session = nullptr;
};

// What the public-URL proxy needs to reach a sandbox.
struct PublicTarget {
  Sandbox sandbox;
  std::string tunnel_address;
};

struct LoopCounts {
  int destroys_finished = 0;
  int creates_abandoned = 0;
  int reservations_released = 0;
  int placements_released = 0;
  int containers_stopped = 0;
  int sandboxes_lost = 0;
  int creates_taken_over = 0;
};

class Lifecycle {
 public:
  Lifecycle(SandboxStore& store, Backends& backends, LifecycleOptions options = {});
  // Waits for the creates this replica took over to finish.
  ~Lifecycle();

  absl::StatusOr<Sandbox> Create(const v1::CreateSandboxRequest& request);
  absl::StatusOr<Sandbox> Get(const std::string& tenant_id, const std::string& id);
  // Get, plus `urls`: the ports a running sandbox listens on now with their public URLs (asked
  // of its runner with a short deadline; left out when the runner does not answer in time).
  absl::StatusOr<Sandbox> GetWithUrls(const std::string& tenant_id, const std::string& id);
  // The public-URL proxy's lookup: the sandbox a public id names (any state) and its runner's
  // tunnel address.
  absl::StatusOr<PublicTarget> ResolvePublicId(const std::string& public_id);
  // Proxied traffic: each running sandbox of `ids` gets deadline = now + timeoutSec.
  absl::StatusOr<int> TouchMany(const std::vector<std::string>& ids);
  absl::StatusOr<ListPage> List(const ListQuery& query);
  // The sandbox's events, oldest first: `page_size` 1-1000 (0: 50), `page_token` as returned.
  // NOT_FOUND for an unknown id or another tenant's.
  absl::StatusOr<v1::ListSandboxEventsResponse> ListEvents(const std::string& tenant_id,
                                                           const std::string& id, int page_size,
                                                           const std::string& page_token);
  // OK for an ended sandbox (idempotent). The slot is released before this returns OK.
  absl::Status Destroy(const std::string& tenant_id, const std::string& id);
  absl::StatusOr<Sandbox> SetTimeout(const std::string& tenant_id, const std::string& id,
                                     int timeout_sec);
  absl::StatusOr<Sandbox> Hibernate(const std::string& tenant_id, const std::string& id);
  absl::StatusOr<Sandbox> Resume(const std::string& tenant_id, const std::string& id);
  // Replaces the network profile of a running or hibernated sandbox: on its runner first (at
  // once), then in its row. INVALID_ARGUMENT for a bad profile (nothing changes);
  // SANDBOX_NOT_RUNNING for a sandbox that is not running or hibernated.
  absl::StatusOr<Sandbox> SetNetwork(const std::string& tenant_id, const std::string& id,
                                     v1::NetworkPolicy policy);
  // Recent connection attempts; empty for a sandbox that is not (or no longer) on a runner.
  absl::StatusOr<std::vector<v1::EgressLogEntry>> NetworkLog(const std::string& tenant_id,
                                                             const std::string& id);
  absl::StatusOr<v1::ExecResponse> Exec(const v1::ExecRequest& request);
  // Streams output as it comes. No default timeout; the sandbox counts as active (its idle
  // deadline keeps moving) while the command runs; `cancelled` returning true kills the command.
  // `on_start` runs once the request is accepted, before any output.
  absl::Status ExecStream(const v1::ExecRequest& request,
                          const std::function<bool(const v1::ExecChunk&)>& on_chunk,
                          const std::function<bool()>& cancelled,
                          const std::function<void()>& on_start = [] {});
  absl::StatusOr<v1::Usage> GetUsage(const std::string& tenant_id);

  // One pass of the idle reaper: destroys running sandboxes whose deadline passed, and
  // hibernated ones kept past their tenant's retention (HIBERNATION_EXPIRED).
  absl::StatusOr<int> ReapOnce(int limit = 100);
  // Moves the deadline of sandboxes with exec calls running here, so that a command longer than
  // the sandbox's timeoutSec is never reaped mid-run. Call about every 250 ms.
  void TouchActiveExecs();
  // One pass of the reconciler: finishes interrupted destroys and abandoned creates; releases
  // slots and placements whose sandbox is gone; stops containers no live sandbox owns; marks LOST
  // the sandboxes of lost runners and those a runner no longer has. Every repair is idempotent,
  // so replicas may reconcile at the same time.
  absl::StatusOr<LoopCounts> ReconcileOnce(int limit = 100);

 private:
  absl::StatusOr<Sandbox> CreateOnce(const v1::CreateSandboxRequest& request, bool* retry);
  // Until `done`: asks the runner at `address` what the start of `id` waits for, and records
  // each change in the sandbox's row (see LifecycleOptions::start_progress_interval).
  void WatchStart(const std::string& id, const std::string& address, absl::Notification& done);
  // The steps of a create after its PENDING row exists: admission, placement (unless `placed`,
  // the row of a STARTING create taken over), runner start, RUNNING. `owner`: the row's owner,
  // under which compensations run (SandboxStore::WithOwnedInFlight).
  absl::StatusOr<Sandbox> Drive(const v1::CreateSandboxRequest& req, const std::string& id,
                                int32_t owner, const Sandbox* placed);
  // Finishes a create taken over from a replica that died (its row, as TakeOver returned it).
  absl::StatusOr<Sandbox> Redrive(const Sandbox& row);
  // The running sandbox an exec request names, once the request is valid.
  absl::StatusOr<Sandbox> SandboxForExec(const v1::ExecRequest& request);
  absl::StatusOr<Sandbox> WaitSettled(const std::string& tenant_id, const std::string& id);
  // Releases everything a create may have taken. OK when all of it is released.
  absl::Status Compensate(const Sandbox& sb, const std::string& runner_address);
  // The steps after DESTROYING: slot, runner, placement, DESTROYED.
  absl::Status FinishDestroy(const Sandbox& sb);
  struct PassTally;
  // Stop on a runner, through its lanes' cool-off.
  absl::Status StopOn(const std::string& runner_address, const std::string& id);
  // Runs `each` for every sandbox, in order per runner, each runner on its own lane.
  void OnLanes(const std::vector<Sandbox>& sandboxes, std::function<void(const Sandbox&)> each,
               std::vector<RunnerLanes::Done>& done);
  absl::Status ReleaseOrphanReservations(LoopCounts& counts);
  absl::Status ReleaseOrphanPlacements(std::shared_ptr<PassTally> tally,
                                       std::vector<RunnerLanes::Done>& done);
  absl::Status ReconcileRunners(LoopCounts& counts, std::shared_ptr<PassTally> tally,
                                const std::set<std::string>& busy,
                                std::vector<RunnerLanes::Done>& done);
  absl::Status ReconcileRunner(const v1::RunnerInfo& runner, LoopCounts& counts);
  // LOST, then its slot and placement released.
  void MarkLost(const Sandbox& sb, const std::string& why, LoopCounts& counts);

  // Places under the tenant's exec cap (a quota lease; this process's own count when no quota
  // replica answers) and activity tracking for one call. EXEC_LIMIT beyond the cap.
  struct ExecPlace {
    std::unique_ptr<ExecLeases::Lease> lease;
    std::unique_ptr<ExecTracker::Ticket> ticket;
  };
  absl::StatusOr<ExecPlace> BeginExec(const v1::ExecRequest& request, const Sandbox& sb);

  // The tenant's limits from the quota service, reused for options_.limits_ttl.
  absl::StatusOr<v1::Limits> LimitsOf(const std::string& tenant_id);

  SandboxStore& store_;
  Backends& backends_;
  const LifecycleOptions options_;
  // Runner gRPC address -> its tunnel address, and when that was learned. A runner's tunnel
  // address changes only when it restarts with other flags, so entries live a while.
  absl::Mutex tunnels_mu_;
  std::map<std::string, std::pair<std::string, absl::Time>> tunnels_ ABSL_GUARDED_BY(tunnels_mu_);
  ExecTracker execs_;
  ExecLeases leases_;
  absl::Mutex limits_mu_;
  struct CachedLimits {
    v1::Limits limits;
    absl::Time fetched;
  };
  std::map<std::string, CachedLimits> limits_ ABSL_GUARDED_BY(limits_mu_);
  // Creates running in this process, by sandbox id: an idempotent retry of one waits on the
  // condition variable instead of polling Postgres.
  absl::Mutex creating_mu_;
  absl::CondVar creating_cv_;
  std::set<std::string> creating_ ABSL_GUARDED_BY(creating_mu_);
  // Creates the reconciler took over, running on threads of their own.
  absl::Mutex redrives_mu_;
  int redrives_ ABSL_GUARDED_BY(redrives_mu_) = 0;
  // Last: destroyed first, waiting for the jobs that use the members above.
  RunnerLanes lanes_;
};

}  // namespace isorun::lifecycle
