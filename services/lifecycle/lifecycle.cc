#include "services/lifecycle/lifecycle.h"

#include <algorithm>
#include <set>
#include <thread>

#include "absl/synchronization/notification.h"

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "services/kit/egress_policy.h"
#include "services/kit/ids.h"
#include "services/kit/image_policy.h"
#include "services/kit/log.h"
#include "services/kit/status.h"
#include "services/lifecycle/validate.h"

namespace isorun::lifecycle {
namespace {

bool IsEnded(SandboxState s) { return s == v1::DESTROYED || s == v1::FAILED || s == v1::LOST; }

absl::Status NotRunning(const Sandbox& sb) {
  return Error(absl::StatusCode::kFailedPrecondition, "SANDBOX_NOT_RUNNING",
               absl::StrCat("sandbox ", sb.id(), " is ", StateName(sb.state()),
                            IsEnded(sb.state()) ? "" : "; resume it first"));
}

// Keeps the first error of several best-effort steps.
void Keep(absl::Status& first, absl::Status next) {
  if (first.ok() && !next.ok()) first = std::move(next);
}

}  // namespace

Lifecycle::Lifecycle(SandboxStore& store, Backends& backends, LifecycleOptions options)
    : store_(store),
      backends_(backends),
      options_(std::move(options)),
      leases_(backends, options_.exec_lease_ttl),
      lanes_(64, options_.runner_cool_off) {}

Lifecycle::~Lifecycle() {
  absl::MutexLock lock(&redrives_mu_);
  auto none = [this]() ABSL_SHARED_LOCKS_REQUIRED(redrives_mu_) { return redrives_ == 0; };
  redrives_mu_.Await(absl::Condition(&none));
}

absl::StatusOr<v1::Limits> Lifecycle::LimitsOf(const std::string& tenant_id) {
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&limits_mu_);
    auto it = limits_.find(tenant_id);
    if (it != limits_.end() && now - it->second.fetched < options_.limits_ttl) {
      return it->second.limits;
    }
  }
  auto usage = backends_.GetUsage(tenant_id);
  if (!usage.ok()) {
    if (usage.status().code() == absl::StatusCode::kNotFound) return usage.status();
    // The quota service cannot answer: exec and hibernate keep working with the last limits
    // known, or the defaults (admission itself never fails open; this only sizes the caps).
    LogWarn("tenant limits unavailable; using the last known or the defaults",
            {{"tenant", tenant_id}, {"error", std::string(usage.status().message())}});
    absl::MutexLock lock(&limits_mu_);
    auto it = limits_.find(tenant_id);
    if (it != limits_.end()) return it->second.limits;
    v1::Limits defaults;
    defaults.set_max_concurrent_execs(32);
    defaults.set_max_hibernated(10);
    defaults.set_hibernation_retention_sec(7 * 24 * 3600);
    return defaults;
  }
  absl::MutexLock lock(&limits_mu_);
  if (limits_.size() > 100000) limits_.clear();  // bounded: an entry is cheap to fetch again
  limits_[tenant_id] = CachedLimits{usage->limits(), now};
  return usage->limits();
}

absl::StatusOr<Sandbox> Lifecycle::Create(const v1::CreateSandboxRequest& request) {
  auto normalized = NormalizeCreate(request);
  if (!normalized.ok()) return normalized.status();
  // Before any quota or placement work: a registry off the operator's list is never contacted.
  if (!ImageRegistryAllowed(normalized->image(), options_.registries)) {
    return Error(absl::StatusCode::kInvalidArgument, "IMAGE_REGISTRY_NOT_ALLOWED",
                 absl::StrCat("image '", normalized->image(),
                              "' names a registry this cluster does not pull from; use an "
                              "image of an allowed registry (or an unqualified name)"));
  }
  // A retry loop only for idempotent creates whose first attempt vanished (it was refused and
  // its row removed) while this one waited for it.
  for (int attempt = 0; attempt < 3; ++attempt) {
    bool retry = false;
    auto result = CreateOnce(*normalized, &retry);
    if (!retry) return result;
  }
  return absl::AbortedError("create raced with itself; retry");
}

absl::StatusOr<Sandbox> Lifecycle::CreateOnce(const v1::CreateSandboxRequest& req, bool* retry) {
  const std::string& tenant = req.tenant_id();
  if (!req.idempotency_key().empty()) {
    auto existing = store_.FindIdempotent(tenant, req.idempotency_key());
    if (!existing.ok()) return existing.status();
    if (existing->has_value()) {
      auto settled = WaitSettled(tenant, **existing);
      if (settled.status().code() == absl::StatusCode::kNotFound) *retry = true;
      return settled;
    }
  }
  const std::string id = NewSandboxId();
  // The owner the row records (InsertPending reads the same value).
  const int32_t owner = store_.owner();
  std::string existing_id;
  absl::Status inserted = store_.InsertPending(req, id, NewPublicId(), &existing_id);
  if (inserted.code() == absl::StatusCode::kAlreadyExists && !existing_id.empty()) {
    auto settled = WaitSettled(tenant, existing_id);
    if (settled.status().code() == absl::StatusCode::kNotFound) *retry = true;
    return settled;
  }
  if (!inserted.ok()) return inserted;
  return Drive(req, id, owner, nullptr);
}

absl::StatusOr<Sandbox> Lifecycle::Redrive(const Sandbox& row) {
  v1::CreateSandboxRequest req;
  req.set_tenant_id(row.tenant_id());
  req.set_image(row.image());
  req.set_cpu_millis(row.cpu_millis());
  req.set_memory_mb(row.memory_mb());
  req.set_disk_mb(row.disk_mb());
  *req.mutable_env() = row.env();
  *req.mutable_network() = row.network();
  LogInfo("taking over a create whose replica is gone",
          {{"sandbox", row.id()}, {"state", StateName(row.state())}});
  const int32_t owner = options_.session != nullptr ? options_.session->id() : 0;
  return Drive(req, row.id(), owner,
               row.state() == v1::STARTING && !row.runner_address().empty() ? &row : nullptr);
}

absl::StatusOr<Sandbox> Lifecycle::Drive(const v1::CreateSandboxRequest& req,
                                         const std::string& id, int32_t owner,
                                         const Sandbox* placed) {
  const std::string& tenant = req.tenant_id();
  // Retries of this create in this process wait for it on creating_cv_ (WaitSettled).
  {
    absl::MutexLock lock(&creating_mu_);
    creating_.insert(id);
  }
  struct Settled {
    Lifecycle* self;
    std::string id;
    ~Settled() {
      absl::MutexLock lock(&self->creating_mu_);
      self->creating_.erase(id);
      self->creating_cv_.SignalAll();
    }
  } settled_guard{this, id};

  Sandbox pending;
  pending.set_id(id);
  pending.set_tenant_id(tenant);

  // Undoes a create, under the row's lock and only while this replica still drives it (one
  // taken over by another replica is left to it):
  // - a start that failed (`fail_message` not empty) is ended FAILED first and released after
  //   the commit: released while the row still counted as admitted, its slot would let the
  //   tenant's next create in above its limit. What the release misses (or a crash right after
  //   the commit leaves), the reconciler's orphan passes release: an ended sandbox holds nothing.
  // - a refused create (PENDING, never started) is released, then its never acknowledged row
  //   removed; when the release fails the row stays for the reconciler.
  auto compensate = [&](const std::function<absl::Status()>& undo,
                        const std::string& fail_message) {
    absl::Status outcome;
    auto ran = store_.WithOwnedInFlight(
        id, owner, [&](const Sandbox&, SandboxStore::Locked& locked) -> absl::Status {
          if (!fail_message.empty()) return locked.Fail(fail_message);
          outcome = undo();
          return outcome.ok() ? locked.DeleteUnacknowledged() : absl::OkStatus();
        });
    if (!ran.ok()) {
      outcome = ran.status();
    } else if (*ran && !fail_message.empty()) {
      outcome = undo();
    }
    if (!outcome.ok()) {
      LogWarn("create compensation incomplete; the reconciler will finish it",
              {{"sandbox", id}, {"error", std::string(outcome.message())}});
    }
  };
  // A guarded transition found the row elsewhere: a destroy raced with the create (undo what it
  // took, as the destroy may have released before we took), or another replica took it over (it
  // drives the create now; undo nothing). Returns the row when it is RUNNING.
  auto lost_row = [&](const std::string& runner_address,
                      const char* what) -> absl::StatusOr<Sandbox> {
    auto now = store_.GetAny(id);
    if (now.ok() && now->state() == v1::RUNNING) return *now;
    if (now.ok() && (now->state() == v1::PENDING || now->state() == v1::STARTING)) {
      return Error(absl::StatusCode::kUnavailable, "UNAVAILABLE",
                   absl::StrCat("sandbox ", id,
                                " is being created by another replica; retry with the same "
                                "Idempotency-Key"));
    }
    Sandbox sb = pending;
    (void)Compensate(sb, runner_address);
    return absl::AbortedError(absl::StrCat("sandbox ", id, " was destroyed while it ", what));
  };

  // 1. Admission (again, for a create taken over: a no-op when it happened).
  if (absl::Status s = backends_.Admit(tenant, id); !s.ok()) {
    // A refusal took nothing; any other error may hide an admission that happened.
    const bool refused = s.code() == absl::StatusCode::kResourceExhausted;
    compensate([&] { return refused ? absl::OkStatus() : backends_.Release(tenant, id); }, "");
    return s;
  }

  // 2. Placement.
  std::string runner_address;
  Sandbox starting_row;
  bool cold = false;  // placed on a runner without the image (unknown for a create taken over)
  v1::PlaceRequest place;
  place.set_sandbox_id(id);
  place.set_tenant_id(tenant);
  place.set_image(req.image());
  place.set_region(options_.region);
  place.mutable_request()->set_cpu_millis(req.cpu_millis());
  place.mutable_request()->set_memory_mb(req.memory_mb());
  if (placed != nullptr) {
    // A STARTING create taken over: its placement is asked for again (Place is idempotent), as
    // anything that believed the create over may have released it. Started without it, the
    // sandbox would run in no runner slot. Unless the very same placement is still there (or a
    // new one on the same runner), the create ends FAILED, and what it holds is released, the
    // first runner told to stop. An error that is not an answer leaves the row as it is: the
    // reconciler ends it after --stuck_after_sec.
    auto placement = backends_.Place(place);
    if (!placement.ok() && placement.status().code() != absl::StatusCode::kResourceExhausted) {
      return placement.status();
    }
    if (!placement.ok() || placement->runner_id() != placed->runner_id()) {
      const std::string why =
          placement.ok() ? "its runner slot was released before it was taken over"
                         : std::string(placement.status().message());
      compensate([&] { return Compensate(*placed, placed->runner_address()); },
                 "the create was interrupted and could not be finished: " + why);
      return Error(absl::StatusCode::kUnavailable, "START_FAILED",
                   absl::StrCat("sandbox ", id, " could not be started: ", why));
    }
    runner_address = placed->runner_address();
    starting_row = *placed;
  } else {
    auto placement = backends_.Place(place);
    if (!placement.ok()) {
      compensate([&] { return Compensate(pending, ""); }, "");
      return placement.status();
    }
    auto starting = store_.ToStarting(id, placement->runner_id(), placement->runner_address());
    if (!starting.ok()) {
      // The commit may have happened (an answer lost past the database deadline): the row may
      // be STARTING, and a slot released under it would let the tenant's next create in above
      // its limit. Everything stays held; the reconciler fails the row first, then releases.
      return starting.status();
    }
    if (!starting->has_value()) return lost_row("", "was created");
    runner_address = placement->runner_address();
    cold = !placement->warm();
    starting_row = **starting;
  }

  // 3. Start on the runner.
  v1::StartSandboxRequest start;
  start.set_sandbox_id(id);
  start.set_image(req.image());
  start.set_cpu_millis(req.cpu_millis());
  start.set_memory_mb(req.memory_mb());
  start.set_disk_mb(req.disk_mb());
  *start.mutable_env() = req.env();
  *start.mutable_network() = req.network();
  // A cold start may pull for a while: meanwhile the sandbox shows what it waits for.
  absl::Notification start_done;
  std::thread watcher;
  if (cold && options_.start_progress_interval > absl::ZeroDuration()) {
    watcher = std::thread([this, &id, &runner_address, &start_done] {
      WatchStart(id, runner_address, start_done);
    });
  }
  auto started = backends_.Start(runner_address, start);
  start_done.Notify();
  if (watcher.joinable()) watcher.join();
  if (!started.ok()) {
    // The runner's reasons (IMAGE_NOT_FOUND, ...) come with messages of ours; anything else is
    // the runner's or runc's own text, which stays in the logs.
    auto runner_detail = ErrorDetailOf(started.status());
    const bool ours = runner_detail && !runner_detail->reason().empty();
    std::string message =
        ours ? absl::StrCat("sandbox failed to start: ", started.status().message())
             : "sandbox failed to start on its runner";
    if (!ours) {
      LogWarn("sandbox failed to start", {{"sandbox", id},
                                          {"error", std::string(started.status().message())}});
    }
    compensate([&] { return Compensate(starting_row, runner_address); }, message);
    // The runner's reason (IMAGE_NOT_FOUND, say) stays; only the message gains context.
    if (ours) {
      return Error(started.status().code(), runner_detail->reason(), message,
                   runner_detail->limit(), runner_detail->current(),
                   runner_detail->retry_after_sec());
    }
    return Error(started.status().code(), "START_FAILED", message);
  }

  // 4. RUNNING, durably. The guard fails only if the sandbox was destroyed meanwhile (or another
  // replica took the create over and finished it).
  auto running = store_.ToRunning(id, started->image_digest());
  if (!running.ok()) {
    // The commit may have happened: the row is RUNNING (and will idle out holding what it should)
    // or still STARTING (the reconciler compensates it). Undoing here could orphan a RUNNING row.
    return running.status();
  }
  if (!running->has_value()) return lost_row(runner_address, "started");
  return **running;
}

void Lifecycle::WatchStart(const std::string& id, const std::string& address,
                           absl::Notification& done) {
  v1::StartProgress last;
  bool first = true;
  // The first question goes at once: the runner may already be pulling.
  do {
    auto progress = backends_.StartProgress(address, id, absl::Milliseconds(300));
    if (progress.ok() && (first || progress->phase() != last.phase() ||
                          progress->pull_bytes_done() != last.pull_bytes_done() ||
                          progress->pull_bytes_total() != last.pull_bytes_total())) {
      if (done.HasBeenNotified()) return;
      auto moved = store_.SetStartProgress(id, *progress);
      if (!moved.ok()) {
        LogWarn("cannot record a start's progress",
                {{"sandbox", id}, {"error", std::string(moved.status().message())}});
      } else if (!*moved) {
        return;  // no longer starting
      }
      last = *progress;
      first = false;
    } else if (progress.status().code() == absl::StatusCode::kUnimplemented) {
      return;  // an older runner: nothing to show
    }
  } while (!done.WaitForNotificationWithTimeout(options_.start_progress_interval));
}

absl::StatusOr<Sandbox> Lifecycle::WaitSettled(const std::string& tenant_id,
                                               const std::string& id) {
  const absl::Time deadline = absl::Now() + options_.idempotent_wait;
  absl::Duration pause = absl::Milliseconds(20);
  auto pending_error = [&] {
    return Error(absl::StatusCode::kDeadlineExceeded, "IDEMPOTENT_CREATE_PENDING",
                 absl::StrCat("the first create with this Idempotency-Key (sandbox ", id,
                              ") has not finished yet; retry later"));
  };
  while (true) {
    {
      // The first create runs in this process: wait for it to end, without asking Postgres.
      absl::MutexLock lock(&creating_mu_);
      auto done = [this, &id]() ABSL_SHARED_LOCKS_REQUIRED(creating_mu_) {
        return creating_.count(id) == 0;
      };
      while (!done() && absl::Now() < deadline) {
        creating_cv_.WaitWithDeadline(&creating_mu_, deadline);
      }
    }
    ReplicaSession* session = options_.session;
    const int32_t me = session != nullptr ? session->id() : 0;
    if (me != 0) {
      // Another replica runs (or ran) it. Watch first, then mark the row awaited: its way out of
      // PENDING/STARTING then notifies us, and no notification can fall between the two.
      auto watch = session->WatchSettled(id);
      auto in_flight = store_.MarkAwaited(tenant_id, id);
      if (!in_flight.ok()) return in_flight.status();
      if (!in_flight->has_value()) return store_.Get(tenant_id, id);  // settled (or gone)
      if ((*in_flight)->owner != 0 && !(*in_flight)->owner_alive) {
        // Its replica died: this retry finishes the create (unless another got there first).
        auto taken = store_.TakeOver(id, me);
        if (!taken.ok()) return taken.status();
        if (taken->has_value()) return Redrive(**taken);
        continue;
      }
      if (absl::Now() > deadline) return pending_error();
      // Woken by the row's notification, by the session going down or up (look again), or by
      // the deadline. The driver's death is not notified: the reconciler of a live replica takes
      // such a create over and finishes it, which notifies.
      if (watch->Wait(deadline) == ReplicaSession::Wake::kSettled) {
        auto sb = store_.Get(tenant_id, id);
        if (!sb.ok() || (sb->state() != v1::PENDING && sb->state() != v1::STARTING)) return sb;
      }
      continue;
    }
    // Without a session (or while it is down): look at the row, less and less often.
    auto sb = store_.Get(tenant_id, id);
    if (!sb.ok()) return sb.status();
    if (sb->state() != v1::PENDING && sb->state() != v1::STARTING) return sb;
    if (absl::Now() > deadline) return pending_error();
    absl::SleepFor(pause);
    pause = std::min(pause * 2, absl::Milliseconds(500));
  }
}

absl::Status Lifecycle::Compensate(const Sandbox& sb, const std::string& runner_address) {
  absl::Status first;
  if (!runner_address.empty()) Keep(first, StopOn(runner_address, sb.id()));
  Keep(first, backends_.ReleasePlacement(sb.id()));
  Keep(first, backends_.Release(sb.tenant_id(), sb.id()));
  return first;
}

absl::StatusOr<Sandbox> Lifecycle::Get(const std::string& tenant_id, const std::string& id) {
  return store_.Get(tenant_id, id);
}

absl::StatusOr<Sandbox> Lifecycle::GetWithUrls(const std::string& tenant_id,
                                               const std::string& id) {
  auto sb = store_.Get(tenant_id, id);
  if (!sb.ok() || sb->state() != v1::RUNNING || sb->runner_address().empty() ||
      options_.public_url_template.empty()) {
    return sb;
  }
  auto ports = backends_.ListPorts(sb->runner_address(), id, options_.ports_deadline);
  if (!ports.ok()) return sb;  // the sandbox answers without `urls` rather than not at all
  for (int port : *ports) {
    (*sb->mutable_urls())[std::to_string(port)] = absl::StrReplaceAll(
        options_.public_url_template,
        {{"{port}", std::to_string(port)}, {"{publicId}", sb->public_id()}});
  }
  return sb;
}

absl::StatusOr<PublicTarget> Lifecycle::ResolvePublicId(const std::string& public_id) {
  auto sb = store_.GetByPublicId(public_id);
  if (!sb.ok()) return sb.status();
  PublicTarget target;
  const std::string runner = sb->runner_address();
  target.sandbox = std::move(*sb);
  if (runner.empty()) return target;
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&tunnels_mu_);
    auto it = tunnels_.find(runner);
    if (it != tunnels_.end() && now - it->second.second < absl::Seconds(30)) {
      target.tunnel_address = it->second.first;
      return target;
    }
  }
  auto tunnel = backends_.TunnelAddress(runner);
  if (!tunnel.ok()) return tunnel.status();
  {
    absl::MutexLock lock(&tunnels_mu_);
    tunnels_[runner] = {*tunnel, now};
  }
  target.tunnel_address = *tunnel;
  return target;
}

absl::StatusOr<int> Lifecycle::TouchMany(const std::vector<std::string>& ids) {
  if (ids.empty()) return 0;
  return store_.TouchMany(ids);
}

absl::StatusOr<ListPage> Lifecycle::List(const ListQuery& query) {
  ListQuery q = query;
  if (q.page_size <= 0) q.page_size = 50;
  if (q.page_size > 1000) {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                 "pageSize must be from 1 to 1000");
  }
  return store_.List(q);
}

namespace {

// Event page tokens: web-safe base64 of "ev1:<last event's row id>", checked strictly.
std::string EventPageToken(int64_t seq) {
  return absl::WebSafeBase64Escape(absl::StrCat("ev1:", seq));
}

absl::StatusOr<int64_t> ParseEventPageToken(const std::string& token) {
  auto invalid = [] {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                 "pageToken is not a token this API returned");
  };
  std::string raw;
  if (token.size() > 64 || !absl::WebSafeBase64Unescape(token, &raw)) return invalid();
  int64_t seq = 0;
  if (!absl::StartsWith(raw, "ev1:") || !absl::SimpleAtoi(raw.substr(4), &seq) || seq < 0 ||
      absl::StrCat("ev1:", seq) != raw) {
    return invalid();
  }
  return seq;
}

// What a row of sandbox_events means for a reader of the timeline.
std::string EventKind(const EventRow& e) {
  if (e.to_state == "PENDING") return "CREATED";
  if (e.to_state == "STARTING") return e.from_state == "STARTING" ? e.reason : "PLACED";
  if (e.to_state == "RUNNING") return e.from_state == "HIBERNATED" ? "RESUMED" : "STARTED";
  if (e.to_state == "HIBERNATED") return "HIBERNATED";
  if (e.to_state == "DESTROYING") return "DESTROYING";
  if (e.to_state == "DESTROYED" || e.to_state == "FAILED" || e.to_state == "LOST") return "ENDED";
  return e.to_state;
}

}  // namespace

absl::StatusOr<v1::ListSandboxEventsResponse> Lifecycle::ListEvents(const std::string& tenant_id,
                                                                    const std::string& id,
                                                                    int page_size,
                                                                    const std::string& page_token) {
  if (page_size == 0) page_size = 50;
  if (page_size < 1 || page_size > 1000) {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                 "pageSize must be from 1 to 1000");
  }
  int64_t after = 0;
  if (!page_token.empty()) {
    auto seq = ParseEventPageToken(page_token);
    if (!seq.ok()) return seq.status();
    after = *seq;
  }
  auto page = store_.ListEvents(tenant_id, id, after, page_size);
  if (!page.ok()) return page.status();
  v1::ListSandboxEventsResponse out;
  for (const EventRow& row : page->events) {
    v1::SandboxEvent* e = out.add_events();
    *e->mutable_time() =
        google::protobuf::util::TimeUtil::MicrosecondsToTimestamp(absl::ToUnixMicros(row.at));
    e->set_kind(EventKind(row));
    SandboxState state = v1::SANDBOX_STATE_UNSPECIFIED;
    v1::SandboxState_Parse(row.to_state, &state);
    e->set_state(state);
    const std::string kind = e->kind();
    if (kind == "DESTROYING" || kind == "ENDED") e->set_reason(row.reason);
    if (kind == "ENDED" && (row.to_state == "FAILED" || row.to_state == "LOST")) {
      e->set_message(page->end_message);
    }
  }
  if (page->more && !page->events.empty()) {
    out.set_next_page_token(EventPageToken(page->events.back().seq));
  }
  return out;
}

absl::Status Lifecycle::Destroy(const std::string& tenant_id, const std::string& id) {
  // The common case in one statement: a live sandbox of this tenant moves to DESTROYING.
  auto moved = store_.ToDestroying(tenant_id, id,
                                   {v1::PENDING, v1::STARTING, v1::RUNNING, v1::HIBERNATED},
                                   v1::DELETED);
  if (!moved.ok()) return moved.status();
  if (moved->has_value()) return FinishDestroy(**moved);
  // Unknown (or another tenant's), already ended, or already being destroyed.
  auto sb = store_.Get(tenant_id, id);
  if (!sb.ok()) return sb.status();
  if (IsEnded(sb->state())) return absl::OkStatus();
  return FinishDestroy(*sb);
}

absl::Status Lifecycle::FinishDestroy(const Sandbox& sb) {
  // The slot first: the tenant may create again as soon as this returns.
  if (absl::Status s = backends_.Release(sb.tenant_id(), sb.id()); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("sandbox ", sb.id(),
                                               " is being destroyed but its slot is not yet "
                                               "released: ",
                                               s.message(), "; retry the delete"));
  }
  if (!sb.runner_address().empty()) {
    if (absl::Status s = StopOn(sb.runner_address(), sb.id()); !s.ok()) {
      // The slot is free; the container and placement wait for the reconciler.
      LogWarn("runner stop failed; will retry",
              {{"sandbox", sb.id()}, {"error", std::string(s.message())}});
      // The DESTROYING transition and the slot's release committed asynchronously; the caller
      // is about to be told the sandbox is gone, which must survive a database crash.
      return store_.Persist(sb.id());
    }
  }
  if (absl::Status s = backends_.ReleasePlacement(sb.id()); !s.ok()) {
    LogWarn("placement release failed; will retry",
            {{"sandbox", sb.id()}, {"error", std::string(s.message())}});
    return store_.Persist(sb.id());
  }
  auto done = store_.ToDestroyed(sb.id());
  if (!done.ok()) return done.status();
  return absl::OkStatus();
}

absl::StatusOr<Sandbox> Lifecycle::SetTimeout(const std::string& tenant_id, const std::string& id,
                                              int timeout_sec) {
  if (absl::Status s = CheckTimeout(timeout_sec); !s.ok()) return s;
  auto updated = store_.SetTimeout(tenant_id, id, timeout_sec);
  if (!updated.ok()) return updated.status();
  if (updated->has_value()) return **updated;
  auto sb = store_.Get(tenant_id, id);
  if (!sb.ok()) return sb.status();
  return NotRunning(*sb);
}

absl::StatusOr<Sandbox> Lifecycle::Hibernate(const std::string& tenant_id, const std::string& id) {
  auto limits = LimitsOf(tenant_id);
  if (!limits.ok()) return limits.status();
  Sandbox result;
  // Everything under the row's lock (sandbox_store.h, Locked): a resume racing with this waits
  // for it, and sees the slot already released.
  absl::Status s = store_.WithLocked(tenant_id, id, [&](const Sandbox& sb,
                                                        SandboxStore::Locked& locked) {
    if (sb.state() == v1::HIBERNATED) {
      result = sb;
      return absl::OkStatus();
    }
    if (sb.state() != v1::RUNNING) return NotRunning(sb);
    auto hibernated = locked.CountHibernated();
    if (!hibernated.ok()) return hibernated.status();
    if (*hibernated >= limits->max_hibernated()) {
      return Error(absl::StatusCode::kResourceExhausted, "HIBERNATED_SANDBOX_LIMIT",
                   absl::StrCat("tenant has ", *hibernated, " of ", limits->max_hibernated(),
                                " hibernated sandboxes; destroy or resume one first"),
                   limits->max_hibernated(), *hibernated, 60);
    }
    if (absl::Status s = backends_.Pause(sb.runner_address(), id); !s.ok()) return s;
    // Hibernated sandboxes do not count against the concurrent limit. Released before the
    // commit, so a resume (which waits for the row) admits afresh.
    if (absl::Status s = backends_.Release(tenant_id, id); !s.ok()) {
      (void)backends_.Unpause(sb.runner_address(), id);
      return s;
    }
    auto moved = locked.Hibernate(limits->hibernation_retention_sec() > 0
                                      ? limits->hibernation_retention_sec()
                                      : 7 * 24 * 3600);
    if (!moved.ok()) return moved.status();
    if (!moved->has_value()) return absl::AbortedError("sandbox changed state while locked");
    result = **moved;
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return result;
}

absl::StatusOr<Sandbox> Lifecycle::Resume(const std::string& tenant_id, const std::string& id) {
  Sandbox result;
  absl::Status s = store_.WithLocked(tenant_id, id, [&](const Sandbox& sb,
                                                        SandboxStore::Locked& locked) {
    if (sb.state() == v1::RUNNING) {
      result = sb;
      return absl::OkStatus();
    }
    if (sb.state() != v1::HIBERNATED) return NotRunning(sb);
    // Resume is admitted like a create: it can get 429.
    if (absl::Status s = backends_.Admit(tenant_id, id); !s.ok()) return s;
    if (absl::Status s = backends_.Unpause(sb.runner_address(), id); !s.ok()) {
      (void)backends_.Release(tenant_id, id);
      return s;
    }
    auto moved = locked.Resume();
    if (!moved.ok()) return moved.status();
    if (!moved->has_value()) return absl::AbortedError("sandbox changed state while locked");
    result = **moved;
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return result;
}

absl::StatusOr<Sandbox> Lifecycle::SetNetwork(const std::string& tenant_id, const std::string& id,
                                              v1::NetworkPolicy policy) {
  if (absl::Status s = NormalizeNetworkPolicy(policy); !s.ok()) return s;
  auto sb = store_.Get(tenant_id, id);
  if (!sb.ok()) return sb.status();
  if (sb->state() != v1::RUNNING && sb->state() != v1::HIBERNATED) return NotRunning(*sb);
  if (absl::Status s = backends_.SetNetwork(sb->runner_address(), id, policy); !s.ok()) {
    if (s.code() == absl::StatusCode::kNotFound) return NotRunning(*sb);
    return s;
  }
  auto updated = store_.SetNetwork(tenant_id, id, policy);
  if (!updated.ok()) return updated.status();
  if (updated->has_value()) return **updated;
  auto now = store_.Get(tenant_id, id);
  if (!now.ok()) return now.status();
  return NotRunning(*now);
}

absl::StatusOr<std::vector<v1::EgressLogEntry>> Lifecycle::NetworkLog(const std::string& tenant_id,
                                                                      const std::string& id) {
  auto sb = store_.Get(tenant_id, id);
  if (!sb.ok()) return sb.status();
  if (sb->state() != v1::RUNNING && sb->state() != v1::HIBERNATED) {
    return std::vector<v1::EgressLogEntry>{};
  }
  auto entries = backends_.EgressLog(sb->runner_address(), id);
  if (entries.status().code() == absl::StatusCode::kNotFound) {
    return std::vector<v1::EgressLogEntry>{};
  }
  return entries;
}

absl::StatusOr<Sandbox> Lifecycle::SandboxForExec(const v1::ExecRequest& request) {
  auto sb = store_.Get(request.tenant_id(), request.id());
  if (!sb.ok()) return sb.status();
  if (sb->state() != v1::RUNNING) return NotRunning(*sb);
  if (request.cmd().empty()) {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT", "cmd is required");
  }
  if (!request.cwd().empty() && request.cwd().front() != '/') {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                 "cwd must be an absolute path");
  }
  if (PathUnderProc(request.cwd())) {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                 "cwd must not be /proc or below it");
  }
  if (request.timeout_sec() < 0 || request.timeout_sec() > kMaxTimeoutSec) {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                 absl::StrCat("timeoutSec must be from 1 to ", kMaxTimeoutSec));
  }
  return sb;
}

absl::StatusOr<Lifecycle::ExecPlace> Lifecycle::BeginExec(const v1::ExecRequest& request,
                                                          const Sandbox& sb) {
  ExecPlace place;
  auto lease = leases_.Acquire(request.tenant_id());
  int local_cap = 0;  // the cluster-wide lease holds the place: no cap of this process's own
  if (lease.ok()) {
    place.lease = std::move(*lease);
  } else if (lease.status().code() == absl::StatusCode::kResourceExhausted) {
    return lease.status();
  } else {
    // No quota replica could count the call: cap on this process's own calls rather than not
    // at all (with N lifecycle replicas a tenant may then run up to N times its cap).
    auto limits = LimitsOf(request.tenant_id());
    if (!limits.ok()) return limits.status();
    local_cap = std::max(1, limits->max_concurrent_execs());
    LogWarn("exec lease unavailable; capping on this replica's own count",
            {{"tenant", request.tenant_id()}, {"error", std::string(lease.status().message())}});
  }
  auto ticket = execs_.Begin(request.tenant_id(), request.id(), local_cap, sb.timeout_sec());
  if (!ticket.ok()) return ticket.status();
  place.ticket = std::move(*ticket);
  return place;
}

absl::StatusOr<v1::ExecResponse> Lifecycle::Exec(const v1::ExecRequest& request) {
  auto sb = SandboxForExec(request);
  if (!sb.ok()) return sb.status();
  auto place = BeginExec(request, *sb);
  if (!place.ok()) return place.status();
  // Running a command is activity: the idle deadline moves before it, while it runs
  // (TouchActiveExecs) and after it.
  (void)store_.Touch(request.id());
  v1::ExecRequest exec = request;
  if (exec.timeout_sec() == 0) exec.set_timeout_sec(30);
  auto result =
      backends_.Exec(sb->runner_address(), request.id(), exec, options_.max_execs_per_sandbox);
  (void)store_.Touch(request.id());
  return result;
}

absl::Status Lifecycle::ExecStream(const v1::ExecRequest& request,
                                   const std::function<bool(const v1::ExecChunk&)>& on_chunk,
                                   const std::function<bool()>& cancelled,
                                   const std::function<void()>& on_start) {
  auto sb = SandboxForExec(request);
  if (!sb.ok()) return sb.status();
  // A running command is activity: TouchActiveExecs pushes the deadline forward while it runs.
  auto place = BeginExec(request, *sb);
  if (!place.ok()) return place.status();
  (void)store_.Touch(request.id());
  // The caller's stream starts once the runner accepted the command (it may refuse: the
  // sandbox's cap), so a refusal is an ordinary error answer.
  absl::Status s =
      backends_.ExecStream(sb->runner_address(), request.id(), request,
                           options_.max_execs_per_sandbox, on_start, on_chunk, cancelled);
  (void)store_.Touch(request.id());
  return s;
}

absl::StatusOr<v1::Usage> Lifecycle::GetUsage(const std::string& tenant_id) {
  auto usage = backends_.GetUsage(tenant_id);
  if (!usage.ok()) return usage.status();
  auto hibernated = store_.CountInState(tenant_id, v1::HIBERNATED);
  if (!hibernated.ok()) return hibernated.status();
  usage->set_hibernated_sandboxes(*hibernated);
  return usage;
}

void Lifecycle::TouchActiveExecs() {
  for (const auto& id : execs_.DueForTouch(absl::Now())) (void)store_.Touch(id);
}

absl::Status Lifecycle::StopOn(const std::string& runner_address, const std::string& id) {
  return lanes_.Call(runner_address, [&] { return backends_.Stop(runner_address, id); });
}

void Lifecycle::OnLanes(const std::vector<Sandbox>& sandboxes,
                        std::function<void(const Sandbox&)> each,
                        std::vector<RunnerLanes::Done>& done) {
  std::map<std::string, std::vector<Sandbox>> by_runner;
  for (const auto& sb : sandboxes) by_runner[sb.runner_address()].push_back(sb);
  for (auto& [runner, group] : by_runner) {
    done.push_back(lanes_.Submit(runner, [each, group = std::move(group)] {
      for (const auto& sb : group) each(sb);
    }));
  }
}

absl::StatusOr<int> Lifecycle::ReapOnce(int limit) {
  // Claimed rows are DESTROYING: whatever is not finished here is the reconciler's to retry.
  // Each runner's destroys run on its own lane, so one that does not answer delays only its own.
  std::vector<RunnerLanes::Done> done;
  auto kept = store_.ClaimRetentionExpired(limit);
  if (!kept.ok()) return kept.status();
  OnLanes(
      *kept,
      [this](const Sandbox& sb) {
        LogInfo("hibernation retention expired",
                {{"sandbox", sb.id()}, {"tenant", sb.tenant_id()}});
        if (absl::Status s = FinishDestroy(sb); !s.ok()) {
          LogWarn("destroy after hibernation expiry incomplete; will retry",
                  {{"sandbox", sb.id()}, {"error", std::string(s.message())}});
        }
      },
      done);
  auto expired = store_.ClaimExpired(limit);
  if (!expired.ok()) {
    RunnerLanes::WaitAll(done, absl::Now() + options_.runner_pass_wait);
    return expired.status();
  }
  OnLanes(
      *expired,
      [this](const Sandbox& sb) {
        LogInfo("idle timeout", {{"sandbox", sb.id()}, {"tenant", sb.tenant_id()}});
        if (absl::Status s = FinishDestroy(sb); !s.ok()) {
          LogWarn("destroy after idle timeout incomplete; will retry",
                  {{"sandbox", sb.id()}, {"error", std::string(s.message())}});
        }
      },
      done);
  RunnerLanes::WaitAll(done, absl::Now() + options_.runner_pass_wait);
  return static_cast<int>(expired->size() + kept->size());
}

// Counts and the first error of the lane jobs of one reconcile pass (jobs still running when
// the pass stops waiting add theirs to a tally nobody reads any more).
struct Lifecycle::PassTally {
  absl::Mutex mu;
  LoopCounts counts ABSL_GUARDED_BY(mu);
  absl::Status first_error ABSL_GUARDED_BY(mu);
  void Add(const LoopCounts& c, const absl::Status& s) {
    absl::MutexLock lock(&mu);
    counts.destroys_finished += c.destroys_finished;
    counts.creates_taken_over += c.creates_taken_over;
    counts.creates_abandoned += c.creates_abandoned;
    counts.reservations_released += c.reservations_released;
    counts.placements_released += c.placements_released;
    counts.containers_stopped += c.containers_stopped;
    counts.sandboxes_lost += c.sandboxes_lost;
    Keep(first_error, s);
  }
};

absl::StatusOr<LoopCounts> Lifecycle::ReconcileOnce(int limit) {
  auto tally = std::make_shared<PassTally>();
  std::vector<RunnerLanes::Done> done;
  // Creates whose replica died: finished here, each on a thread of its own (a start may take as
  // long as an image pull), before the stuck ones below would be failed.
  if (options_.session != nullptr && options_.session->id() != 0) {
    auto taken = store_.TakeOverOrphans(options_.session->id(), limit);
    if (!taken.ok()) return taken.status();
    LoopCounts c;
    for (const Sandbox& row : *taken) {
      ++c.creates_taken_over;
      {
        absl::MutexLock lock(&redrives_mu_);
        ++redrives_;
      }
      std::thread([this, row] {
        auto result = Redrive(row);
        if (!result.ok()) {
          LogWarn("create taken over did not finish",
                  {{"sandbox", row.id()}, {"error", std::string(result.status().message())}});
        }
        absl::MutexLock lock(&redrives_mu_);
        --redrives_;
      }).detach();
    }
    tally->Add(c, absl::OkStatus());
  }
  // Runners still busy from an earlier pass (or the reaper) are not given a runner check now;
  // this pass's own jobs on a runner run before its check, in order, on its lane.
  const std::set<std::string> busy = lanes_.BusyRunners();
  auto destroying = store_.ClaimStuck(v1::DESTROYING, options_.destroy_retry_after_sec, limit);
  if (!destroying.ok()) return destroying.status();
  // Not queued behind a busy lane (a silent runner's would pile up a retry per pass): a later
  // pass claims them again.
  std::erase_if(*destroying,
                [&](const Sandbox& sb) { return busy.count(sb.runner_address()) > 0; });
  OnLanes(
      *destroying,
      [this, tally](const Sandbox& sb) {
        LoopCounts c;
        if (FinishDestroy(sb).ok()) ++c.destroys_finished;
        tally->Add(c, absl::OkStatus());
      },
      done);
  for (SandboxState state : {v1::PENDING, v1::STARTING}) {
    auto stuck = store_.ClaimStuck(state, options_.stuck_after_sec, limit);
    if (!stuck.ok()) {
      RunnerLanes::WaitAll(done, absl::Now() + options_.runner_pass_wait);
      return stuck.status();
    }
    // FAILED first, here, then what it holds, on its runner's lane (as a failed start does, see
    // CreateOnce): a slot freed under a row that still counts as admitted would let the tenant
    // exceed its limit, and a create that finished meanwhile (RUNNING now) keeps its container
    // and slot. Whatever the compensation cannot release now, the orphan passes release.
    std::vector<Sandbox> abandoned;
    LoopCounts c;
    for (const auto& sb : *stuck) {
      auto failed = store_.ToFailed(
          sb.id(), absl::StrCat("create did not finish within ", options_.stuck_after_sec,
                                " s (its lifecycle process stopped or a service was down)"));
      if (!failed.ok() || !failed->has_value()) continue;
      ++c.creates_abandoned;
      LogInfo("abandoned create repaired", {{"sandbox", sb.id()}});
      abandoned.push_back(sb);
    }
    tally->Add(c, absl::OkStatus());
    OnLanes(
        abandoned,
        [this](const Sandbox& sb) {
          if (absl::Status s = Compensate(sb, sb.runner_address()); !s.ok()) {
            LogWarn("abandoned create's compensation incomplete; the orphan passes will finish it",
                    {{"sandbox", sb.id()}, {"error", std::string(s.message())}});
          }
        },
        done);
  }
  absl::Status first_error;
  LoopCounts counts;
  Keep(first_error, ReleaseOrphanReservations(counts));
  Keep(first_error, ReleaseOrphanPlacements(tally, done));
  Keep(first_error, ReconcileRunners(counts, tally, busy, done));
  RunnerLanes::WaitAll(done, absl::Now() + options_.runner_pass_wait);
  tally->Add(counts, first_error);
  absl::MutexLock lock(&tally->mu);
  if (!tally->first_error.ok()) {
    LogWarn("reconcile pass incomplete", {{"error", std::string(tally->first_error.message())}});
  }
  return tally->counts;
}

namespace {

// A slot is held by sandboxes that are (or may still become) active.
bool HoldsSlot(SandboxState s) {
  return s == v1::PENDING || s == v1::STARTING || s == v1::RUNNING || s == v1::DESTROYING;
}

// A placement is held until the sandbox has ended.
bool HoldsPlacement(SandboxState s) { return !IsEnded(s); }

}  // namespace

absl::Status Lifecycle::ReleaseOrphanReservations(LoopCounts& counts) {
  std::string token;
  do {
    auto page = backends_.ListReservations(options_.orphan_grace_sec, token);
    if (!page.ok()) return page.status();
    std::vector<std::string> ids;
    for (const auto& r : page->reservations()) ids.push_back(r.sandbox_id());
    auto states = store_.StatesOf(ids);
    if (!states.ok()) return states.status();
    for (const auto& r : page->reservations()) {
      auto it = states->find(r.sandbox_id());
      if (it != states->end() && HoldsSlot(it->second.state)) continue;
      if (backends_.Release(r.tenant_id(), r.sandbox_id()).ok()) {
        ++counts.reservations_released;
        LogInfo("released an orphan slot", {{"sandbox", r.sandbox_id()}, {"tenant", r.tenant_id()}});
      }
    }
    token = page->next_page_token();
  } while (!token.empty());
  return absl::OkStatus();
}

absl::Status Lifecycle::ReleaseOrphanPlacements(std::shared_ptr<PassTally> tally,
                                                 std::vector<RunnerLanes::Done>& done) {
  std::string token;
  // Per runner: the orphans found on every page, stopped and released on the runner's lane.
  std::map<std::string, std::vector<std::pair<std::string, std::string>>> by_runner;
  do {
    auto page = backends_.ListPlacements(options_.orphan_grace_sec, token);
    if (!page.ok()) return page.status();
    std::vector<std::string> ids;
    for (const auto& p : page->placements()) ids.push_back(p.sandbox_id());
    auto states = store_.StatesOf(ids);
    if (!states.ok()) return states.status();
    for (const auto& p : page->placements()) {
      auto it = states->find(p.sandbox_id());
      if (it != states->end() && HoldsPlacement(it->second.state)) continue;
      by_runner[p.runner_address()].emplace_back(p.sandbox_id(), p.runner_name());
    }
    token = page->next_page_token();
  } while (!token.empty());
  for (auto& [runner, orphans] : by_runner) {
    auto job = [this, tally, runner = runner, orphans = std::move(orphans)] {
      LoopCounts c;
      for (const auto& [id, name] : orphans) {
        // Whatever may run there goes first, then the reservation of its resources.
        if (!StopOn(runner, id).ok()) continue;
        if (backends_.ReleasePlacement(id).ok()) {
          ++c.placements_released;
          LogInfo("released an orphan placement", {{"sandbox", id}, {"runner", name}});
        }
      }
      tally->Add(c, absl::OkStatus());
    };
    done.push_back(lanes_.Submit(runner, std::move(job)));
  }
  return absl::OkStatus();
}

void Lifecycle::MarkLost(const Sandbox& sb, const std::string& why, LoopCounts& counts) {
  auto lost = store_.ToLost(sb.id(), why);
  if (!lost.ok() || !lost->has_value()) return;
  ++counts.sandboxes_lost;
  LogWarn("sandbox lost", {{"sandbox", sb.id()}, {"why", why}});
  // Best effort: the orphan passes repeat these until they succeed.
  (void)backends_.Release(sb.tenant_id(), sb.id());
  (void)backends_.ReleasePlacement(sb.id());
}

absl::Status Lifecycle::ReconcileRunners(LoopCounts& counts, std::shared_ptr<PassTally> tally,
                                          const std::set<std::string>& busy,
                                          std::vector<RunnerLanes::Done>& done) {
  auto runners = backends_.ListRunners();
  if (!runners.ok()) return runners.status();
  for (const auto& runner : runners->runners()) {
    if (runner.state() == "LOST") {
      auto live = store_.LiveOnRunner(runner.runner_id());
      if (!live.ok()) return live.status();
      for (const auto& sb : *live) {
        MarkLost(sb, absl::StrCat("runner ", runner.name(), " stopped answering"), counts);
      }
      continue;
    }
    if (runner.state() != "HEALTHY" && runner.state() != "DRAINING") continue;
    // A runner whose lane is still busy (its calls wait out their deadline) is checked at a
    // later pass; the others are checked in parallel, each on its own lane.
    if (busy.count(runner.address()) > 0) continue;
    done.push_back(lanes_.Submit(runner.address(), [this, tally, runner] {
      LoopCounts c;
      absl::Status s = ReconcileRunner(runner, c);
      tally->Add(c, s);
    }));
  }
  return absl::OkStatus();
}

absl::Status Lifecycle::ReconcileRunner(const v1::RunnerInfo& runner, LoopCounts& counts) {
  absl::StatusOr<std::vector<std::string>> on_runner;
  absl::Status called = lanes_.Call(runner.address(), [&] {
    on_runner = backends_.RunnerSandboxes(runner.address());
    return on_runner.status();
  });
  if (!called.ok()) return called;
  std::set<std::string> present(on_runner->begin(), on_runner->end());
  // Containers no live sandbox of this runner owns: stop them.
  auto states = store_.StatesOf(*on_runner);
  if (!states.ok()) return states.status();
  for (const auto& id : *on_runner) {
    auto it = states->find(id);
    bool owned = it != states->end() && HoldsPlacement(it->second.state) &&
                 it->second.runner_id == runner.runner_id();
    bool young = it != states->end() &&
                 it->second.since_update < absl::Seconds(options_.orphan_grace_sec);
    // No row at all: the create that started it is gone (rows are written before starts).
    if (owned || (young && it->second.state != v1::DESTROYED && it->second.state != v1::FAILED &&
                  it->second.state != v1::LOST)) {
      continue;
    }
    if (StopOn(runner.address(), id).ok()) {
      ++counts.containers_stopped;
      LogInfo("stopped a container no sandbox owns", {{"sandbox", id}, {"runner", runner.name()}});
    }
  }
  // Sandboxes the runner no longer has (it restarted, or the container died): LOST.
  auto live = store_.LiveOnRunner(runner.runner_id());
  if (!live.ok()) return live.status();
  auto live_states = store_.StatesOf([&] {
    std::vector<std::string> ids;
    for (const auto& sb : *live) ids.push_back(sb.id());
    return ids;
  }());
  if (!live_states.ok()) return live_states.status();
  for (const auto& sb : *live) {
    if (present.count(sb.id()) > 0) continue;
    auto it = live_states->find(sb.id());
    if (it == live_states->end() ||
        it->second.since_update < absl::Seconds(options_.orphan_grace_sec)) {
      continue;
    }
    MarkLost(sb, absl::StrCat("runner ", runner.name(), " no longer has this sandbox"), counts);
  }
  return absl::OkStatus();
}

}  // namespace isorun::lifecycle
