// The lifecycle against real Postgres and the real quota, scheduler and runner services, served
// over real gRPC in this process (ports chosen by the OS). Failures are injected by wrapping the
// gRPC clients, so every compensation path is exercised against the real services' state.

#include "services/lifecycle/lifecycle.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "quotas/quota_service.h"
#include "quotas/quota_store.h"
#include "scheduler/fleet.h"
#include "scheduler/scheduler_service.h"
#include "scheduler/scheduler_store.h"
#include "services/kit/server.h"
#include "services/kit/status.h"
#include "services/runner/agent.h"
#include "services/runner/runner_service.h"
#include "services/runner/sim_driver.h"
#include "tests/support/eventually.h"
#include "tests/support/test_database.h"

namespace isorun::lifecycle {
namespace {

using testing::Eventually;

// Fails chosen steps. `after` variants perform the call first and then report failure, like a
// response lost on the wire.
class FaultyBackends final : public Backends {
 public:
  explicit FaultyBackends(Backends& real) : real_(real) {}
  std::atomic<bool> fail_admit{false}, fail_admit_after{false}, fail_place{false},
      fail_place_after{false}, fail_start_after{false}, fail_release{false}, fail_stop{false};

  absl::Status Admit(const std::string& t, const std::string& id) override {
    if (fail_admit) return absl::UnavailableError("injected: quota down");
    absl::Status s = real_.Admit(t, id);
    if (fail_admit_after && s.ok()) return absl::UnavailableError("injected: admit reply lost");
    return s;
  }
  // Runs before each Release and Unpause (the steps a hibernate and a resume can race on).
  std::function<void()> before_release, before_unpause;

  absl::Status Release(const std::string& t, const std::string& id) override {
    if (fail_release) return absl::UnavailableError("injected: quota down");
    if (before_release) before_release();
    return real_.Release(t, id);
  }
  absl::StatusOr<v1::Usage> GetUsage(const std::string& t) override { return real_.GetUsage(t); }
  absl::StatusOr<v1::Placement> Place(const v1::PlaceRequest& r) override {
    if (fail_place) return absl::UnavailableError("injected: scheduler down");
    auto p = real_.Place(r);
    if (fail_place_after && p.ok()) return absl::UnavailableError("injected: place reply lost");
    return p;
  }
  absl::Status ReleasePlacement(const std::string& id) override {
    return real_.ReleasePlacement(id);
  }
  std::function<void()> before_start;
  absl::StatusOr<v1::StartSandboxResponse> Start(const std::string& a,
                                                 const v1::StartSandboxRequest& r) override {
    if (before_start) before_start();
    auto s = real_.Start(a, r);
    if (fail_start_after && s.ok()) return absl::InternalError("injected: start reply lost");
    return s;
  }
  absl::Status Stop(const std::string& a, const std::string& id) override {
    if (fail_stop) return absl::UnavailableError("injected: runner down");
    return real_.Stop(a, id);
  }
  absl::Status Pause(const std::string& a, const std::string& id) override {
    return real_.Pause(a, id);
  }
  absl::Status SetNetwork(const std::string& a, const std::string& id,
                          const v1::NetworkPolicy& p) override {
    return real_.SetNetwork(a, id, p);
  }
  absl::StatusOr<std::vector<v1::EgressLogEntry>> EgressLog(const std::string& a,
                                                            const std::string& id) override {
    return real_.EgressLog(a, id);
  }
  absl::Status Unpause(const std::string& a, const std::string& id) override {
    if (before_unpause) before_unpause();
    return real_.Unpause(a, id);
  }
  absl::StatusOr<v1::ExecResponse> Exec(const std::string& a, const std::string& id,
                                        const v1::ExecRequest& r, int max_running) override {
    return real_.Exec(a, id, r, max_running);
  }
  absl::Status ExecStream(const std::string& a, const std::string& id, const v1::ExecRequest& r,
                          int max_running, const std::function<void()>& on_start,
                          const std::function<bool(const v1::ExecChunk&)>& on_chunk,
                          const std::function<bool()>& cancelled) override {
    return real_.ExecStream(a, id, r, max_running, on_start, on_chunk, cancelled);
  }
  absl::Status AcquireExecLease(const v1::ExecLease& l, absl::Duration ttl) override {
    return real_.AcquireExecLease(l, ttl);
  }
  absl::Status RenewExecLeases(const std::vector<v1::ExecLease>& l, absl::Duration ttl) override {
    return real_.RenewExecLeases(l, ttl);
  }
  absl::Status ReleaseExecLeases(const std::vector<v1::ExecLease>& l) override {
    return real_.ReleaseExecLeases(l);
  }
  absl::StatusOr<v1::ListReservationsResponse> ListReservations(int age,
                                                                const std::string& t) override {
    return real_.ListReservations(age, t);
  }
  absl::StatusOr<v1::ListPlacementsResponse> ListPlacements(int age,
                                                            const std::string& t) override {
    return real_.ListPlacements(age, t);
  }
  absl::StatusOr<v1::ListRunnersResponse> ListRunners() override { return real_.ListRunners(); }
  absl::StatusOr<std::vector<std::string>> RunnerSandboxes(const std::string& a) override {
    return real_.RunnerSandboxes(a);
  }
  absl::StatusOr<std::vector<int>> ListPorts(const std::string& a, const std::string& id,
                                             absl::Duration deadline) override {
    return real_.ListPorts(a, id, deadline);
  }
  absl::StatusOr<std::string> TunnelAddress(const std::string& a) override {
    return real_.TunnelAddress(a);
  }

 private:
  Backends& real_;
};

class LifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_ = std::make_unique<PgPool>(db_.url(), 24, Durability::kAsync);
    quota_store_ = std::make_unique<quota::QuotaStore>(*pool_);
    sched_store_ = std::make_unique<scheduler::SchedulerStore>(*pool_);
    sandbox_store_ = std::make_unique<SandboxStore>(*pool_);
    scheduler::FleetOptions fleet_options;
    fleet_options.policy.healthy_within = absl::Seconds(1);
    fleet_options.lost_after = absl::Seconds(2);
    fleet_ = std::make_unique<scheduler::Fleet>(*sched_store_, [] { return absl::Now(); },
                                                 fleet_options);
    ASSERT_TRUE(fleet_->Load().ok());
    quota_service_ = std::make_unique<quota::QuotaService>(*quota_store_, registry_);
    sched_service_ =
        std::make_unique<scheduler::SchedulerService>(*fleet_, registry_, 200);
    auto qs = StartGrpcServer("127.0.0.1:0", {quota_service_.get(), sched_service_.get()});
    ASSERT_TRUE(qs.ok());
    control_ = std::move(*qs);
    runner::SimOptions sim;
    sim.fail_images_containing = "broken";
    driver_ = std::make_unique<runner::SimDriver>(sim);
    runner_service_ = std::make_unique<runner::RunnerService>(*driver_);
    auto rs = StartGrpcServer("127.0.0.1:0", {runner_service_.get()});
    ASSERT_TRUE(rs.ok());
    runner_server_ = std::move(*rs);
    const std::string control_addr = "127.0.0.1:" + std::to_string(control_.port);
    StartRunner(3);
    grpc_backends_ = std::make_unique<GrpcBackends>(MakeChannel(control_addr),
                                                    MakeChannel(control_addr));
    faulty_ = std::make_unique<FaultyBackends>(*grpc_backends_);
    LifecycleOptions options;
    options.stuck_after_sec = 0;
    options.destroy_retry_after_sec = 0;
    options.orphan_grace_sec = 0;
    // A pass here waits for all of its runner work (nothing hangs), so its counts are complete.
    options.runner_pass_wait = absl::Seconds(60);
    lifecycle_ = std::make_unique<Lifecycle>(*sandbox_store_, *faulty_, options);
    tenant_ = CreateTenant("acme", 5);
    other_tenant_ = CreateTenant("other", 5);
  }

  void TearDown() override {
    if (agent_) agent_->Stop();
    if (runner_server_.server) runner_server_.server->Shutdown();
    if (control_.server) control_.server->Shutdown();
  }

  void StartRunner(int slots) {
    if (agent_) agent_->Stop();
    const std::string control_addr = "127.0.0.1:" + std::to_string(control_.port);
    agent_ = std::make_unique<runner::Agent>(
        MakeChannel(control_addr), *driver_,
        runner::AgentOptions{"runner-a", "127.0.0.1:" + std::to_string(runner_server_.port),
                             "local", 16000, 32768, slots});
    agent_->Start();
    for (int i = 0; i < 200 && !agent_->registered(); ++i) absl::SleepFor(absl::Milliseconds(10));
    ASSERT_TRUE(agent_->registered());
  }

  std::string CreateTenant(const std::string& name, int limit) {
    return db_.Scalar(
        "WITH t AS (INSERT INTO accounts.tenants (name) VALUES ('" + name +
        "') RETURNING id), l AS (INSERT INTO quota.limits (tenant_id, max_concurrent) "
        "SELECT id, " + std::to_string(limit) +
        " FROM t RETURNING tenant_id), u AS (INSERT INTO quota.usage (tenant_id) "
        "SELECT tenant_id FROM l RETURNING tenant_id) SELECT tenant_id FROM u");
  }

  v1::CreateSandboxRequest Req(const std::string& image = "busybox:1.36") {
    v1::CreateSandboxRequest r;
    r.set_tenant_id(tenant_);
    r.set_image(image);
    return r;
  }

  std::string Count(const std::string& sql) { return db_.Scalar(sql); }
  std::string Usage(const std::string& tenant) {
    return Count("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant + "'");
  }

  // Nothing is held anywhere: no reservation, no placement, no runner sandbox.
  void ExpectNothingHeld() {
    EXPECT_EQ(Count("SELECT count(*) FROM quota.reservations"), "0");
    EXPECT_EQ(Usage(tenant_), "0");
    EXPECT_EQ(Count("SELECT count(*) FROM scheduler.placements"), "0");
    EXPECT_TRUE(driver_->Sandboxes().empty());
    for (const auto& r : fleet_->List()) EXPECT_EQ(r.view.allocated.sandboxes, 0);
  }

  testing::TestDatabase db_;
  prometheus::Registry registry_;
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<quota::QuotaStore> quota_store_;
  std::unique_ptr<scheduler::SchedulerStore> sched_store_;
  std::unique_ptr<SandboxStore> sandbox_store_;
  std::unique_ptr<scheduler::Fleet> fleet_;
  std::unique_ptr<quota::QuotaService> quota_service_;
  std::unique_ptr<scheduler::SchedulerService> sched_service_;
  GrpcServer control_;
  std::unique_ptr<runner::SimDriver> driver_;
  std::unique_ptr<runner::RunnerService> runner_service_;
  GrpcServer runner_server_;
  std::unique_ptr<runner::Agent> agent_;
  std::unique_ptr<GrpcBackends> grpc_backends_;
  std::unique_ptr<FaultyBackends> faulty_;
  std::unique_ptr<Lifecycle> lifecycle_;
  std::string tenant_, other_tenant_;
};

std::string ReasonOf(const absl::Status& s) {
  auto d = ErrorDetailOf(s);
  return d ? d->reason() : "";
}

TEST_F(LifecycleTest, CreateRunsAndDestroyReleasesEverything) {
  auto sb = lifecycle_->Create(Req());
  ASSERT_TRUE(sb.ok()) << sb.status();
  EXPECT_EQ(sb->state(), v1::RUNNING);
  EXPECT_EQ(sb->image_digest().rfind("sha256:", 0), 0u);
  EXPECT_EQ(sb->timeout_sec(), 300);
  EXPECT_TRUE(sb->has_expires_at());
  EXPECT_EQ(sb->public_id().size(), 32u);
  EXPECT_EQ(Usage(tenant_), "1");
  EXPECT_EQ(Count("SELECT count(*) FROM scheduler.placements"), "1");
  EXPECT_EQ(driver_->Sandboxes().size(), 1u);
  EXPECT_EQ(Count("SELECT string_agg(to_state, ',' ORDER BY id) FROM lifecycle.sandbox_events"),
            "PENDING,STARTING,RUNNING");

  ASSERT_TRUE(lifecycle_->Destroy(tenant_, sb->id()).ok());
  ExpectNothingHeld();
  auto ended = lifecycle_->Get(tenant_, sb->id());
  ASSERT_TRUE(ended.ok());
  EXPECT_EQ(ended->state(), v1::DESTROYED);
  EXPECT_EQ(ended->end_reason(), v1::DELETED);
  EXPECT_TRUE(ended->has_ended_at());
  // Idempotent.
  EXPECT_TRUE(lifecycle_->Destroy(tenant_, sb->id()).ok());
  EXPECT_EQ(lifecycle_->Destroy(tenant_, "sbx_unknown").code(), absl::StatusCode::kNotFound);
}

// Each service connection keeps one plan per statement, made on its first use, typically while
// the tables are new (as here). No statement on the paths every sandbox takes may then read a whole table:
// it would cost more with every sandbox ever made.
TEST_F(LifecycleTest, NoStatementScansAHotTableOrWalksAStateIndex) {
  const std::set<std::string> hot = {"sandboxes", "sandbox_events", "idempotency_keys",
                                     "reservations", "usage", "placements"};
  // The partial indexes on state hold every row that was ever in those states until a vacuum:
  // only the reaper's and the reconciler's claims, which look for such rows, may walk them.
  const std::set<std::string> claims = {"lc_claim_expired", "lc_claim_stuck",
                                        "lc_take_over_orphans"};
  std::vector<std::string> scans;
  int explained = 0;
  absl::Status explain = pool_->Execute([&](pqxx::nontransaction& tx) {
    for (const auto& name : pool_->StatementNames()) tx.conn().prepare_now(name);
    for (const auto& st :
         tx.exec("SELECT name, cardinality(parameter_types) FROM pg_prepared_statements")) {
      const std::string name = st[0].as<std::string>();
      const std::vector<std::string> nulls(st[1].as<int>(), "NULL");
      const std::string args = nulls.empty() ? "" : "(" + absl::StrJoin(nulls, ", ") + ")";
      std::string plan;
      for (const auto& line : tx.exec("EXPLAIN EXECUTE " + name + args)) {
        absl::StrAppend(&plan, line[0].as<std::string>(), "\n");
      }
      ++explained;
      for (const auto& table : hot) {
        if (absl::StrContains(plan, "Seq Scan on " + table + " ")) {
          scans.push_back(name + " reads " + table + ":\n" + plan);
        }
      }
      if (claims.count(name) == 0 && (absl::StrContains(plan, "sandboxes_expiry") ||
                                      absl::StrContains(plan, "sandboxes_unsettled"))) {
        scans.push_back(name + " walks a partial index on state:\n" + plan);
      }
    }
    return absl::OkStatus();
  });
  ASSERT_TRUE(explain.ok()) << explain;
  EXPECT_GT(explained, 20);
  EXPECT_TRUE(scans.empty()) << absl::StrJoin(scans, "\n");
}

// Retention: ended sandboxes past their retention go, oldest first and a batch at a time, with
// their events and idempotency keys; live and recently ended ones stay. Env values go as soon as a
// sandbox ends (destroyed or failed), whatever the retention.
TEST_F(LifecycleTest, EndedSandboxesArePurgedAfterTheirRetentionWithEventsAndKeys) {
  auto make = [&](const std::string& key, const std::string& image = "busybox:1.36") {
    auto r = Req(image);
    r.set_idempotency_key(key);
    (*r.mutable_env())["SECRET"] = "s3cr3t-" + key;
    return lifecycle_->Create(r);
  };
  std::vector<std::string> ended;
  for (const char* key : {"old-1", "old-2", "recent"}) {
    auto sb = make(key);
    ASSERT_TRUE(sb.ok()) << sb.status();
    ASSERT_TRUE(lifecycle_->Destroy(tenant_, sb->id()).ok());
    ended.push_back(sb->id());
  }
  auto failed = make("failed", "broken:1.0");
  ASSERT_FALSE(failed.ok());
  const std::string failed_id =
      Count("SELECT id FROM lifecycle.sandboxes WHERE state = 'FAILED'");
  ASSERT_FALSE(failed_id.empty());
  auto live = make("live");
  ASSERT_TRUE(live.ok()) << live.status();

  // No ended sandbox keeps its env; the live one does.
  EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.sandboxes WHERE env <> '{}'"), "1");
  EXPECT_EQ(Count("SELECT env->>'SECRET' FROM lifecycle.sandboxes WHERE id = '" + live->id() +
                  "'"),
            "s3cr3t-live");

  // Two destroyed sandboxes and the failed one ended more than a day ago.
  db_.Scalar("UPDATE lifecycle.sandboxes SET ended_at = now() - interval '25 hours' WHERE id IN ('" +
             ended[0] + "', '" + ended[1] + "', '" + failed_id + "')");
  EXPECT_EQ(*sandbox_store_->PurgeEnded(absl::Hours(24), 2), 2);
  EXPECT_EQ(*sandbox_store_->PurgeEnded(absl::Hours(24), 2), 1);
  EXPECT_EQ(*sandbox_store_->PurgeEnded(absl::Hours(24), 2), 0);
  for (const std::string& id : {ended[0], ended[1], failed_id}) {
    EXPECT_EQ(lifecycle_->Get(tenant_, id).status().code(), absl::StatusCode::kNotFound) << id;
    EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.sandbox_events WHERE sandbox_id = '" + id + "'"),
              "0");
    EXPECT_EQ(
        Count("SELECT count(*) FROM lifecycle.idempotency_keys WHERE sandbox_id = '" + id + "'"),
        "0");
  }
  // The recently ended and the live sandbox stay, with their events and keys.
  for (const std::string& id : {ended[2], live->id()}) {
    EXPECT_TRUE(lifecycle_->Get(tenant_, id).ok()) << id;
    EXPECT_NE(Count("SELECT count(*) FROM lifecycle.sandbox_events WHERE sandbox_id = '" + id + "'"),
              "0");
    EXPECT_EQ(
        Count("SELECT count(*) FROM lifecycle.idempotency_keys WHERE sandbox_id = '" + id + "'"),
        "1");
  }
  // A longer retention keeps what a shorter one purges.
  db_.Scalar("UPDATE lifecycle.sandboxes SET ended_at = now() - interval '30 hours' WHERE id = '" +
             ended[2] + "'");
  EXPECT_EQ(*sandbox_store_->PurgeEnded(absl::Hours(72), 10), 0);
  EXPECT_EQ(*sandbox_store_->PurgeEnded(absl::Hours(24), 10), 1);

  // Idempotency keys go after 24 h even while their sandbox lives; the sandbox stays.
  db_.Scalar("UPDATE lifecycle.idempotency_keys SET created_at = now() - interval '25 hours'");
  EXPECT_EQ(*sandbox_store_->PurgeIdempotencyKeys(kIdempotencyRetention, 10), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.idempotency_keys"), "0");
  EXPECT_TRUE(lifecycle_->Get(tenant_, live->id()).ok());
  EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.sandboxes"), "1");
}

// Purges run beside creates: a batch holds only its own rows (SKIP LOCKED), and a backlog of
// thousands goes in batches of the given size.
TEST_F(LifecycleTest, APurgeBacklogGoesInSmallBatchesBesideCreates) {
  db_.Scalar(
      "INSERT INTO lifecycle.sandboxes (id, tenant_id, state, image, cpu_millis, memory_mb, "
      "timeout_sec, public_id, ended_at, end_reason) SELECT 'sbx_old' || g, '" + tenant_ +
      "', 'DESTROYED', 'busybox:1.36', 1000, 512, 300, 'pub_old' || g, "
      "now() - interval '48 hours', 'DELETED' FROM generate_series(1, 3000) g");
  std::atomic<bool> stop{false};
  std::atomic<int> creates{0}, failures{0};
  std::thread creator([&] {
    while (!stop) {
      auto sb = lifecycle_->Create(Req());
      if (!sb.ok()) {
        ++failures;
        continue;
      }
      ++creates;
      if (!lifecycle_->Destroy(tenant_, sb->id()).ok()) ++failures;
    }
  });
  int batches = 0, purged = 0;
  for (;;) {
    auto n = sandbox_store_->PurgeEnded(absl::Hours(24), 200);
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_LE(*n, 200);
    if (*n == 0) break;
    purged += *n;
    ++batches;
  }
  stop = true;
  creator.join();
  EXPECT_EQ(purged, 3000);
  EXPECT_GE(batches, 15);
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(creates.load(), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.sandboxes WHERE id LIKE 'sbx_old%'"), "0");
}

TEST_F(LifecycleTest, ExactlyLimitWinsWhenFiftyCreatesRaceForFive) {
  StartRunner(100);
  std::atomic<int> ok{0}, limited{0}, other{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&] {
      auto sb = lifecycle_->Create(Req());
      if (sb.ok()) {
        ++ok;
      } else if (ReasonOf(sb.status()) == "CONCURRENT_SANDBOX_LIMIT") {
        ++limited;
      } else {
        ++other;
        ADD_FAILURE() << sb.status();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 5);
  EXPECT_EQ(limited, 45);
  EXPECT_EQ(Usage(tenant_), "5");
  // Refused creates leave no rows behind.
  EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.sandboxes"), "5");
  EXPECT_EQ(Count("SELECT count(*) FROM scheduler.placements"), "5");
}

TEST_F(LifecycleTest, UnpinnedImagesAreRejectedBeforeAdmission) {
  faulty_->fail_admit = true;  // would surface if admission were attempted
  auto sb = lifecycle_->Create(Req("busybox:latest"));
  EXPECT_EQ(ReasonOf(sb.status()), "IMAGE_NOT_PINNED");
  EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.sandboxes"), "0");
  ExpectNothingHeld();
}

TEST_F(LifecycleTest, SlotIsFreeRightAfterDestroy) {
  db_.Scalar("UPDATE quota.limits SET max_concurrent = 1");
  for (int i = 0; i < 5; ++i) {
    auto sb = lifecycle_->Create(Req());
    ASSERT_TRUE(sb.ok()) << i << ": " << sb.status();
    EXPECT_EQ(ReasonOf(lifecycle_->Create(Req()).status()), "CONCURRENT_SANDBOX_LIMIT");
    ASSERT_TRUE(lifecycle_->Destroy(tenant_, sb->id()).ok());
  }
}

TEST_F(LifecycleTest, NoCapacityIs429CapacityAndReleasesTheSlot) {
  StartRunner(1);
  ASSERT_TRUE(lifecycle_->Create(Req()).ok());
  auto second = lifecycle_->Create(Req());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(second.status()), "CAPACITY");
  EXPECT_NE(second.status().message().find("capacity"), std::string::npos);
  EXPECT_EQ(Usage(tenant_), "1");
  EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.sandboxes"), "1");
}

TEST_F(LifecycleTest, NothingLeaksWhenAnyStepOfCreateFails) {
  struct Step {
    const char* name;
    std::atomic<bool>* flag;
  };
  for (Step step : {Step{"admit", &faulty_->fail_admit},
                    Step{"admit reply lost", &faulty_->fail_admit_after},
                    Step{"place", &faulty_->fail_place},
                    Step{"place reply lost", &faulty_->fail_place_after},
                    Step{"start reply lost", &faulty_->fail_start_after}}) {
    *step.flag = true;
    auto sb = lifecycle_->Create(Req());
    *step.flag = false;
    EXPECT_FALSE(sb.ok()) << step.name;
    SCOPED_TRACE(step.name);
    ExpectNothingHeld();
  }
  // A start the runner itself refuses: the sandbox is FAILED with the reason, nothing held.
  auto broken = lifecycle_->Create(Req("broken:1"));
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(broken.status().message().find("failed to start"), std::string::npos);
  ExpectNothingHeld();
  EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.sandboxes WHERE state = 'FAILED' AND "
                  "end_reason = 'START_FAILED' AND end_message LIKE '%failed to start%'"),
            "2");
  EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.sandboxes WHERE state <> 'FAILED'"), "0");
}

TEST_F(LifecycleTest, ReconcilerFinishesCreatesWhoseCompensationFailed) {
  // Quota is unreachable for the compensation too: the row must stay for the reconciler.
  faulty_->fail_place = true;
  faulty_->fail_release = true;
  EXPECT_FALSE(lifecycle_->Create(Req()).ok());
  faulty_->fail_place = false;
  faulty_->fail_release = false;
  EXPECT_EQ(Usage(tenant_), "1");
  auto counts = lifecycle_->ReconcileOnce();
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->creates_abandoned, 1);
  ExpectNothingHeld();
  EXPECT_EQ(Count("SELECT state FROM lifecycle.sandboxes"), "FAILED");
}

// A slot is released only once its sandbox no longer counts as admitted (STARTING or RUNNING):
// released while the row still counted, it would let the tenant's next create in above its
// limit, for as long as the row stays (with its runner unreachable, until the runner is lost).
TEST_F(LifecycleTest, AFailedOrAbandonedStartReleasesItsSlotOnlyOnceItNoLongerCounts) {
  // At every slot release: how many of the tenant's sandboxes counted as admitted.
  std::atomic<int> releases{0}, admitted_at_release{0};
  faulty_->before_release = [&] {
    ++releases;
    admitted_at_release += std::stoi(
        Count("SELECT count(*) FROM lifecycle.sandboxes WHERE tenant_id = '" + tenant_ +
              "' AND state IN ('STARTING', 'RUNNING')"));
  };
  auto admitted_without_slot = [&] {
    return Count("SELECT count(*) FROM lifecycle.sandboxes s WHERE state IN ('STARTING', "
                 "'RUNNING') AND NOT EXISTS (SELECT 1 FROM quota.reservations r WHERE "
                 "r.sandbox_id = s.id)");
  };

  // 1. A start whose answer was lost, with the runner unreachable for the compensation's stop.
  faulty_->fail_start_after = true;
  faulty_->fail_stop = true;
  EXPECT_FALSE(lifecycle_->Create(Req()).ok());
  faulty_->fail_start_after = false;
  EXPECT_EQ(admitted_without_slot(), "0");
  EXPECT_EQ(Count("SELECT state FROM lifecycle.sandboxes"), "FAILED");
  EXPECT_EQ(releases.load(), 1);
  EXPECT_EQ(admitted_at_release.load(), 0);
  // The container left behind goes once the runner answers again.
  auto counts = lifecycle_->ReconcileOnce();
  ASSERT_TRUE(counts.ok());
  EXPECT_FALSE(driver_->Sandboxes().empty()) << "stopped although the runner was unreachable";
  faulty_->fail_stop = false;
  // (A pass gives a runner whose lane is still busy from the last pass no check, and a pass
  // waits for its lanes only so long: on a loaded machine the stop may come a pass later.)
  int stopped = 0;
  ASSERT_TRUE(Eventually(
      [&] {
        counts = lifecycle_->ReconcileOnce();
        if (counts.ok()) stopped += counts->containers_stopped;
        return stopped > 0;
      },
      absl::Seconds(10)));
  EXPECT_EQ(stopped, 1);
  ExpectNothingHeld();

  // 2. A create abandoned while STARTING (its lifecycle died after the runner started it), with
  // the runner unreachable at the reconciler's first pass.
  auto sb = lifecycle_->Create(Req());
  ASSERT_TRUE(sb.ok()) << sb.status();
  db_.Scalar("UPDATE lifecycle.sandboxes SET state = 'STARTING' WHERE id = '" + sb->id() +
             "' RETURNING id");
  releases = 0;
  admitted_at_release = 0;
  faulty_->fail_stop = true;
  counts = lifecycle_->ReconcileOnce();
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->creates_abandoned, 1);
  EXPECT_EQ(admitted_without_slot(), "0");
  EXPECT_EQ(lifecycle_->Get(tenant_, sb->id())->state(), v1::FAILED);
  EXPECT_GE(releases.load(), 1);
  EXPECT_EQ(admitted_at_release.load(), 0);
  faulty_->fail_stop = false;
  ASSERT_TRUE(Eventually(
      [&] {
        EXPECT_TRUE(lifecycle_->ReconcileOnce().ok());
        return driver_->Sandboxes().empty();
      },
      absl::Seconds(10)));
  faulty_->before_release = nullptr;
  ExpectNothingHeld();
}

TEST_F(LifecycleTest, ReconcilerFinishesInterruptedDestroys) {
  auto sb = lifecycle_->Create(Req());
  ASSERT_TRUE(sb.ok());
  faulty_->fail_stop = true;
  ASSERT_TRUE(lifecycle_->Destroy(tenant_, sb->id()).ok());
  EXPECT_EQ(Usage(tenant_), "0") << "slot must be free when destroy returns";
  EXPECT_EQ(lifecycle_->Get(tenant_, sb->id())->state(), v1::DESTROYING);
  faulty_->fail_stop = false;
  auto counts = lifecycle_->ReconcileOnce();
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->destroys_finished, 1);
  ExpectNothingHeld();
  EXPECT_EQ(lifecycle_->Get(tenant_, sb->id())->state(), v1::DESTROYED);
}

TEST_F(LifecycleTest, IdleSandboxesAreReapedOnceEvenByTwoReapers) {
  StartRunner(10);
  auto req = Req();
  req.set_timeout_sec(1);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    auto sb = lifecycle_->Create(req);
    ASSERT_TRUE(sb.ok()) << sb.status();
    ids.push_back(sb->id());
  }
  auto kept = lifecycle_->Create(Req());
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*lifecycle_->ReapOnce(), 0);
  absl::SleepFor(absl::Milliseconds(1100));
  Lifecycle second(*sandbox_store_, *faulty_);
  std::atomic<int> reaped{0};
  std::thread a([&] { reaped += *lifecycle_->ReapOnce(); });
  std::thread b([&] { reaped += *second.ReapOnce(); });
  a.join();
  b.join();
  EXPECT_EQ(reaped, 4);
  for (const auto& id : ids) {
    auto sb = lifecycle_->Get(tenant_, id);
    EXPECT_EQ(sb->state(), v1::DESTROYED);
    EXPECT_EQ(sb->end_reason(), v1::IDLE_TIMEOUT);
  }
  EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.sandbox_events WHERE to_state = 'DESTROYED'"),
            "4");
  EXPECT_EQ(Usage(tenant_), "1");
  EXPECT_EQ(lifecycle_->Get(tenant_, kept->id())->state(), v1::RUNNING);
}

TEST_F(LifecycleTest, SetTimeoutMovesTheDeadline) {
  auto sb = lifecycle_->Create(Req());
  ASSERT_TRUE(sb.ok());
  auto updated = lifecycle_->SetTimeout(tenant_, sb->id(), 1);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->timeout_sec(), 1);
  EXPECT_LT(updated->expires_at().seconds(), sb->expires_at().seconds());
  EXPECT_EQ(lifecycle_->SetTimeout(tenant_, sb->id(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(lifecycle_->SetTimeout(other_tenant_, sb->id(), 10).status().code(),
            absl::StatusCode::kNotFound);
  absl::SleepFor(absl::Milliseconds(1100));
  EXPECT_EQ(*lifecycle_->ReapOnce(), 1);
  EXPECT_EQ(ReasonOf(lifecycle_->SetTimeout(tenant_, sb->id(), 10).status()),
            "SANDBOX_NOT_RUNNING");
}

TEST_F(LifecycleTest, PublicIdsResolveAndProxiedTrafficMovesDeadlines) {
  auto sb = lifecycle_->Create(Req());
  ASSERT_TRUE(sb.ok()) << sb.status();
  auto target = lifecycle_->ResolvePublicId(sb->public_id());
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->sandbox.id(), sb->id());
  EXPECT_EQ(target->sandbox.tenant_id(), tenant_);
  EXPECT_EQ(target->sandbox.state(), v1::RUNNING);
  EXPECT_FALSE(target->sandbox.runner_address().empty());
  EXPECT_EQ(target->tunnel_address, "");  // this runner has no tunnel listener
  EXPECT_EQ(lifecycle_->ResolvePublicId("0123456789abcdef0123456789abcdef").status().code(),
            absl::StatusCode::kNotFound);

  // Proxied traffic: one statement moves the deadlines of the running sandboxes named.
  auto shortened = lifecycle_->SetTimeout(tenant_, sb->id(), 2);
  ASSERT_TRUE(shortened.ok());
  absl::SleepFor(absl::Milliseconds(1100));
  auto touched = lifecycle_->TouchMany({sb->id(), "sbx_unknown"});
  ASSERT_TRUE(touched.ok()) << touched.status();
  EXPECT_EQ(*touched, 1);
  auto after = lifecycle_->Get(tenant_, sb->id());
  ASSERT_TRUE(after.ok());
  EXPECT_GT(after->expires_at().seconds() * 1000 + after->expires_at().nanos() / 1000000,
            shortened->expires_at().seconds() * 1000 + shortened->expires_at().nanos() / 1000000);

  // Ended: resolved with its state (the proxy answers 404); touching it changes nothing.
  ASSERT_TRUE(lifecycle_->Destroy(tenant_, sb->id()).ok());
  target = lifecycle_->ResolvePublicId(sb->public_id());
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(target->sandbox.state(), v1::DESTROYED);
  EXPECT_EQ(*lifecycle_->TouchMany({sb->id()}), 0);
}

TEST_F(LifecycleTest, OtherTenantsSeeNotFound) {
  auto sb = lifecycle_->Create(Req());
  ASSERT_TRUE(sb.ok());
  EXPECT_EQ(lifecycle_->Get(other_tenant_, sb->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(lifecycle_->Destroy(other_tenant_, sb->id()).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(lifecycle_->Hibernate(other_tenant_, sb->id()).status().code(),
            absl::StatusCode::kNotFound);
  ListQuery q;
  q.tenant_id = other_tenant_;
  EXPECT_TRUE(lifecycle_->List(q)->sandboxes.empty());
  EXPECT_EQ(lifecycle_->Get(tenant_, sb->id())->state(), v1::RUNNING);
}

TEST_F(LifecycleTest, HibernatedSandboxesDoNotCountAndResumeIsAdmitted) {
  db_.Scalar("UPDATE quota.limits SET max_concurrent = 1");
  auto a = lifecycle_->Create(Req());
  ASSERT_TRUE(a.ok());
  auto h = lifecycle_->Hibernate(tenant_, a->id());
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->state(), v1::HIBERNATED);
  EXPECT_FALSE(h->has_expires_at());
  EXPECT_TRUE(driver_->IsPaused(a->id()));
  EXPECT_EQ(Usage(tenant_), "0");
  auto usage = lifecycle_->GetUsage(tenant_);
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->active_sandboxes(), 0);
  EXPECT_EQ(usage->hibernated_sandboxes(), 1);
  // The freed slot can be used; then resume is over the limit.
  auto b = lifecycle_->Create(Req());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(ReasonOf(lifecycle_->Resume(tenant_, a->id()).status()), "CONCURRENT_SANDBOX_LIMIT");
  EXPECT_TRUE(driver_->IsPaused(a->id()));
  ASSERT_TRUE(lifecycle_->Destroy(tenant_, b->id()).ok());
  auto r = lifecycle_->Resume(tenant_, a->id());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state(), v1::RUNNING);
  EXPECT_FALSE(driver_->IsPaused(a->id()));
  EXPECT_EQ(Usage(tenant_), "1");
  // Resume of a running sandbox: no change.
  EXPECT_EQ(lifecycle_->Resume(tenant_, a->id())->state(), v1::RUNNING);
  EXPECT_EQ(Usage(tenant_), "1");
  // Exec on a hibernated sandbox: SANDBOX_NOT_RUNNING.
  ASSERT_TRUE(lifecycle_->Hibernate(tenant_, a->id()).ok());
  v1::ExecRequest exec;
  exec.set_tenant_id(tenant_);
  exec.set_id(a->id());
  exec.set_cmd("true");
  EXPECT_EQ(ReasonOf(lifecycle_->Exec(exec).status()), "SANDBOX_NOT_RUNNING");
  // Destroying a hibernated sandbox works and holds nothing.
  ASSERT_TRUE(lifecycle_->Destroy(tenant_, a->id()).ok());
  ExpectNothingHeld();
}

// The slot accounting a hibernate/resume race must keep: a RUNNING sandbox holds a slot, a
// HIBERNATED one none, and usage equals the reservations.
void ExpectSlotMatchesState(const std::string& tenant, const std::string& id,
                            SandboxState state, testing::TestDatabase& db) {
  const std::string held =
      db.Scalar("SELECT count(*) FROM quota.reservations WHERE sandbox_id = '" + id + "'");
  EXPECT_EQ(held, state == v1::RUNNING ? "1" : "0") << v1::SandboxState_Name(state);
  EXPECT_EQ(db.Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant + "'"),
            db.Scalar("SELECT count(*) FROM quota.reservations WHERE tenant_id = '" + tenant +
                      "'"));
}

TEST_F(LifecycleTest, HibernateAndResumeRacingNeverLeaveARunningSandboxWithoutASlot) {
  auto a = lifecycle_->Create(Req());
  ASSERT_TRUE(a.ok()) << a.status();
  for (int round = 0; round < 6; ++round) {
    // A resume arrives while the hibernate is between its pause and its slot release: the
    // resume must wait for the hibernate, not admit on the slot the hibernate is about to free.
    absl::Notification hibernate_releasing;
    std::atomic<bool> resume_done{false};
    faulty_->before_release = [&] {
      if (hibernate_releasing.HasBeenNotified()) return;
      hibernate_releasing.Notify();
      // Give the resume every chance to run to its end first (it cannot while the hibernate
      // holds the sandbox).
      for (int i = 0; i < 50 && !resume_done; ++i) absl::SleepFor(absl::Milliseconds(10));
    };
    std::thread resume([&] {
      hibernate_releasing.WaitForNotification();
      (void)lifecycle_->Resume(tenant_, a->id());
      resume_done = true;
    });
    auto h = lifecycle_->Hibernate(tenant_, a->id());
    ASSERT_TRUE(h.ok()) << h.status();
    resume.join();
    faulty_->before_release = nullptr;
    auto now = lifecycle_->Get(tenant_, a->id());
    ASSERT_TRUE(now.ok());
    // The resume came second: the sandbox runs, and holds its slot.
    EXPECT_EQ(now->state(), v1::RUNNING) << "round " << round;
    EXPECT_EQ(driver_->IsPaused(a->id()), false);
    ExpectSlotMatchesState(tenant_, a->id(), now->state(), db_);

    // The other order: a hibernate arrives while a resume is between its admission and its
    // unpause.
    ASSERT_TRUE(lifecycle_->Hibernate(tenant_, a->id()).ok());
    absl::Notification resume_unpausing;
    std::atomic<bool> hibernate_done{false};
    faulty_->before_unpause = [&] {
      if (resume_unpausing.HasBeenNotified()) return;
      resume_unpausing.Notify();
      for (int i = 0; i < 50 && !hibernate_done; ++i) absl::SleepFor(absl::Milliseconds(10));
    };
    std::thread hibernate([&] {
      resume_unpausing.WaitForNotification();
      (void)lifecycle_->Hibernate(tenant_, a->id());
      hibernate_done = true;
    });
    auto r = lifecycle_->Resume(tenant_, a->id());
    ASSERT_TRUE(r.ok()) << r.status();
    hibernate.join();
    faulty_->before_unpause = nullptr;
    now = lifecycle_->Get(tenant_, a->id());
    ASSERT_TRUE(now.ok());
    EXPECT_EQ(now->state(), v1::HIBERNATED) << "round " << round;
    EXPECT_TRUE(driver_->IsPaused(a->id()));
    ExpectSlotMatchesState(tenant_, a->id(), now->state(), db_);
    ASSERT_TRUE(lifecycle_->Resume(tenant_, a->id()).ok());
    ExpectSlotMatchesState(tenant_, a->id(), v1::RUNNING, db_);
  }
  ASSERT_TRUE(lifecycle_->Destroy(tenant_, a->id()).ok());
  ExpectNothingHeld();
}

TEST_F(LifecycleTest, HibernatedCapAndRetentionHold) {
  db_.Scalar("UPDATE quota.limits SET max_hibernated = 2, hibernation_retention_sec = 1 "
             "WHERE tenant_id = '" + tenant_ + "'");
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto sb = lifecycle_->Create(Req());
    ASSERT_TRUE(sb.ok()) << sb.status();
    ids.push_back(sb->id());
  }
  ASSERT_TRUE(lifecycle_->Hibernate(tenant_, ids[0]).ok());
  ASSERT_TRUE(lifecycle_->Hibernate(tenant_, ids[1]).ok());
  auto third = lifecycle_->Hibernate(tenant_, ids[2]);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted) << third.status();
  EXPECT_EQ(ReasonOf(third.status()), "HIBERNATED_SANDBOX_LIMIT");
  auto detail = ErrorDetailOf(third.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->limit(), 2);
  EXPECT_EQ(detail->current(), 2);
  // Refused before anything changed: still running, unpaused, holding its slot.
  EXPECT_EQ(lifecycle_->Get(tenant_, ids[2])->state(), v1::RUNNING);
  EXPECT_FALSE(driver_->IsPaused(ids[2]));
  EXPECT_EQ(Usage(tenant_), "1");
  auto usage = lifecycle_->GetUsage(tenant_);
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->limits().max_hibernated(), 2);
  EXPECT_EQ(usage->limits().max_concurrent_execs(), 32);
  EXPECT_EQ(usage->limits().hibernation_retention_sec(), 1);

  // Past the retention the reaper destroys them: HIBERNATION_EXPIRED, nothing held.
  absl::SleepFor(absl::Milliseconds(1200));
  auto reaped = lifecycle_->ReapOnce();
  ASSERT_TRUE(reaped.ok()) << reaped.status();
  EXPECT_EQ(*reaped, 2);
  for (int i = 0; i < 2; ++i) {
    auto sb = lifecycle_->Get(tenant_, ids[i]);
    ASSERT_TRUE(sb.ok());
    EXPECT_EQ(sb->state(), v1::DESTROYED);
    EXPECT_EQ(sb->end_reason(), v1::HIBERNATION_EXPIRED);
  }
  EXPECT_EQ(lifecycle_->Get(tenant_, ids[2])->state(), v1::RUNNING);
  // The cap has room again.
  EXPECT_TRUE(lifecycle_->Hibernate(tenant_, ids[2]).ok());
  ASSERT_TRUE(lifecycle_->Destroy(tenant_, ids[2]).ok());
  ExpectNothingHeld();
}

TEST_F(LifecycleTest, ListFiltersAndPages) {
  StartRunner(100);
  db_.Scalar("UPDATE quota.limits SET max_concurrent = 100");
  std::set<std::string> ids;
  for (int i = 0; i < 7; ++i) {
    auto req = Req();
    (*req.mutable_metadata())["team"] = i % 2 == 0 ? "red" : "blue";
    auto sb = lifecycle_->Create(req);
    ASSERT_TRUE(sb.ok());
    ids.insert(sb->id());
  }
  ListQuery q;
  q.tenant_id = tenant_;
  q.page_size = 3;
  std::set<std::string> seen;
  int pages = 0;
  do {
    auto page = lifecycle_->List(q);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& sb : page->sandboxes) EXPECT_TRUE(seen.insert(sb.id()).second);
    q.page_token = page->next_page_token;
    ++pages;
  } while (!q.page_token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, ids);

  ListQuery red;
  red.tenant_id = tenant_;
  red.metadata = {{"team", "red"}};
  auto reds = lifecycle_->List(red);
  ASSERT_TRUE(reds.ok());
  EXPECT_EQ(reds->sandboxes.size(), 4u);
  for (const auto& sb : reds->sandboxes) EXPECT_EQ(sb.metadata().at("team"), "red");

  ASSERT_TRUE(lifecycle_->Destroy(tenant_, *ids.begin()).ok());
  ListQuery live;
  live.tenant_id = tenant_;
  EXPECT_EQ(lifecycle_->List(live)->sandboxes.size(), 6u);
  ListQuery ended;
  ended.tenant_id = tenant_;
  ended.states = {v1::DESTROYED};
  EXPECT_EQ(lifecycle_->List(ended)->sandboxes.size(), 1u);

  ListQuery bad;
  bad.tenant_id = tenant_;
  bad.page_token = "garbage!";
  EXPECT_EQ(lifecycle_->List(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.page_token = "bm90IGEgdGltZXxzYnhf";  // "not a time|sbx_"
  EXPECT_EQ(lifecycle_->List(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(LifecycleTest, RacingIdempotentCreatesGiveOneSandboxAndOneSlot) {
  std::vector<std::thread> threads;
  std::vector<std::string> got(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto req = Req();
      req.set_idempotency_key("retry-me");
      auto sb = lifecycle_->Create(req);
      ASSERT_TRUE(sb.ok()) << sb.status();
      EXPECT_EQ(sb->state(), v1::RUNNING);
      got[i] = sb->id();
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& id : got) EXPECT_EQ(id, got[0]);
  EXPECT_EQ(Usage(tenant_), "1");
  EXPECT_EQ(Count("SELECT count(*) FROM lifecycle.sandboxes"), "1");
  // Another tenant's identical key is a different sandbox.
  auto req = Req();
  req.set_tenant_id(other_tenant_);
  req.set_idempotency_key("retry-me");
  auto theirs = lifecycle_->Create(req);
  ASSERT_TRUE(theirs.ok());
  EXPECT_NE(theirs->id(), got[0]);
}

TEST_F(LifecycleTest, AnIdempotentRetryWaitsForTheFirstCreateWithoutPollingPostgres) {
  // The first create is held inside the runner's start; a retry with its key arrives meanwhile.
  absl::Notification in_start, go_on;
  faulty_->before_start = [&] {
    if (in_start.HasBeenNotified()) return;
    in_start.Notify();
    go_on.WaitForNotificationWithTimeout(absl::Seconds(20));
  };
  auto req = Req();
  req.set_idempotency_key("slow-first");
  absl::StatusOr<Sandbox> first, retry;
  std::thread a([&] { first = lifecycle_->Create(req); });
  in_start.WaitForNotification();
  const int64_t gets_before = sandbox_store_->gets();
  std::thread b([&] { retry = lifecycle_->Create(req); });
  absl::SleepFor(absl::Milliseconds(1500));
  // 1.5 s of waiting without reading the row (polling every 20 ms would be some 75 reads).
  EXPECT_EQ(sandbox_store_->gets() - gets_before, 0);
  go_on.Notify();
  a.join();
  b.join();
  faulty_->before_start = nullptr;
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->id(), first->id());
  EXPECT_EQ(retry->state(), v1::RUNNING);
  EXPECT_EQ(Usage(tenant_), "1");
}

TEST_F(LifecycleTest, ReconcilerReleasesOrphanSlotsPlacementsAndContainers) {
  auto live = lifecycle_->Create(Req());
  ASSERT_TRUE(live.ok());
  // Leftovers of creates whose rows are gone (as after a crash and a lost asynchronous commit).
  ASSERT_TRUE(quota_store_->Admit(tenant_, "sbx_ghost1").ok());
  ASSERT_TRUE(fleet_->Place("sbx_ghost2", {"busybox:1.36", "local", 100, 64}).ok());
  v1::StartSandboxRequest start;
  start.set_sandbox_id("sbx_ghost3");
  start.set_image("busybox:1.36");
  ASSERT_TRUE(driver_->Start(start).ok());
  EXPECT_EQ(Usage(tenant_), "2");
  auto counts = lifecycle_->ReconcileOnce();
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(counts->reservations_released, 1);
  EXPECT_EQ(counts->placements_released, 1);
  EXPECT_EQ(counts->containers_stopped, 1);
  EXPECT_EQ(counts->sandboxes_lost, 0);
  // Usage equals the active sandboxes again; the live one is untouched.
  EXPECT_EQ(Usage(tenant_), "1");
  EXPECT_EQ(Count("SELECT count(*) FROM scheduler.placements"), "1");
  EXPECT_EQ(driver_->Sandboxes(), std::vector<std::string>{live->id()});
  EXPECT_EQ(lifecycle_->Get(tenant_, live->id())->state(), v1::RUNNING);
  // A second pass finds nothing.
  counts = lifecycle_->ReconcileOnce();
  EXPECT_EQ(counts->reservations_released + counts->placements_released +
                counts->containers_stopped + counts->sandboxes_lost,
            0);
}

// Lifecycle replicas run their reconcilers at once: every orphan is repaired exactly once
// between them, and the live sandbox is left alone.
TEST_F(LifecycleTest, TwoReconcilersInParallelRepairEachOrphanOnce) {
  StartRunner(40);
  db_.Scalar("UPDATE quota.limits SET max_concurrent = 100");
  auto live = lifecycle_->Create(Req());
  ASSERT_TRUE(live.ok());
  constexpr int kOrphans = 12;
  for (int i = 0; i < kOrphans; ++i) {
    const std::string n = std::to_string(i);
    ASSERT_TRUE(quota_store_->Admit(tenant_, "sbx_slot" + n).ok());
    ASSERT_TRUE(fleet_->Place("sbx_place" + n, {"busybox:1.36", "local", 100, 64}).ok());
    v1::StartSandboxRequest start;
    start.set_sandbox_id("sbx_box" + n);
    start.set_image("busybox:1.36");
    ASSERT_TRUE(driver_->Start(start).ok());
  }
  EXPECT_EQ(Usage(tenant_), std::to_string(kOrphans + 1));
  Lifecycle second(*sandbox_store_, *faulty_);
  std::atomic<int> slots{0}, placements{0}, containers{0}, lost{0};
  auto pass = [&](Lifecycle& l) {
    auto counts = l.ReconcileOnce();
    ASSERT_TRUE(counts.ok()) << counts.status();
    slots += counts->reservations_released;
    placements += counts->placements_released;
    containers += counts->containers_stopped;
    lost += counts->sandboxes_lost;
  };
  std::thread a([&] { pass(*lifecycle_); });
  std::thread b([&] { pass(second); });
  a.join();
  b.join();
  // Both may have sent the same release or stop (each is idempotent and answers OK the second
  // time), so the counts lie between one and two per orphan; what must hold is the state: the
  // usage went down by exactly one per orphan slot (a double release would take the live
  // sandbox's slot too), and only the live sandbox's slot, placement and container remain.
  for (int n : {slots.load(), placements.load(), containers.load()}) {
    EXPECT_GE(n, kOrphans);
    EXPECT_LE(n, 2 * kOrphans);
  }
  EXPECT_EQ(lost, 0);
  EXPECT_EQ(Usage(tenant_), "1");
  EXPECT_EQ(Count("SELECT count(*) FROM quota.reservations"), "1");
  EXPECT_EQ(Count("SELECT count(*) FROM scheduler.placements"), "1");
  EXPECT_EQ(driver_->Sandboxes(), std::vector<std::string>{live->id()});
  EXPECT_EQ(lifecycle_->Get(tenant_, live->id())->state(), v1::RUNNING);
}

TEST_F(LifecycleTest, SandboxesARunnerNoLongerHasAreLost) {
  auto sb = lifecycle_->Create(Req());
  ASSERT_TRUE(sb.ok());
  ASSERT_TRUE(*driver_->Stop(sb->id()));  // as if the runner restarted and lost it
  auto counts = lifecycle_->ReconcileOnce();
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->sandboxes_lost, 1);
  auto lost = lifecycle_->Get(tenant_, sb->id());
  EXPECT_EQ(lost->state(), v1::LOST);
  EXPECT_EQ(lost->end_reason(), v1::RUNNER_LOST);
  EXPECT_NE(lost->end_message().find("no longer has"), std::string::npos);
  ExpectNothingHeld();
}

TEST_F(LifecycleTest, SandboxesOfALostRunnerAreLostAndTheirSlotsReturn) {
  auto a = lifecycle_->Create(Req());
  auto b = lifecycle_->Create(Req());
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(lifecycle_->Hibernate(tenant_, b->id()).ok());
  EXPECT_EQ(Usage(tenant_), "1");
  agent_->Stop();  // the runner goes silent
  absl::SleepFor(absl::Milliseconds(2300));
  auto counts = lifecycle_->ReconcileOnce();
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->sandboxes_lost, 2);
  for (const auto& id : {a->id(), b->id()}) {
    auto sb = lifecycle_->Get(tenant_, id);
    EXPECT_EQ(sb->state(), v1::LOST);
    EXPECT_EQ(sb->end_reason(), v1::RUNNER_LOST);
    EXPECT_NE(sb->end_message().find("stopped answering"), std::string::npos);
  }
  EXPECT_EQ(Usage(tenant_), "0");
  EXPECT_EQ(Count("SELECT count(*) FROM scheduler.placements"), "0");
  // Deleting a lost sandbox answers as for any ended one.
  EXPECT_TRUE(lifecycle_->Destroy(tenant_, a->id()).ok());
}

// Two lifecycle replicas, each with its own connections and ReplicaSession.
struct Replica {
  Replica(const std::string& url, Backends& backends) : pool(url, 8, Durability::kAsync),
                                                        store(pool), session(pool) {
    EXPECT_TRUE(session.WaitUp(absl::Seconds(10)));
    store.SetOwner(session.id());
    LifecycleOptions options;
    options.session = &session;
    lifecycle = std::make_unique<Lifecycle>(store, backends, options);
  }
  PgPool pool;
  SandboxStore store;
  ReplicaSession session;
  std::unique_ptr<Lifecycle> lifecycle;
};

TEST_F(LifecycleTest, ARetryOnAnotherReplicaIsWokenByANotificationWithoutPolling) {
  Replica a(db_.url(), *faulty_), b(db_.url(), *grpc_backends_);
  ASSERT_NE(a.session.id(), b.session.id());
  // The first create (on A) is held inside the runner's start; its retry reaches B meanwhile.
  absl::Notification in_start, go_on;
  faulty_->before_start = [&] {
    if (in_start.HasBeenNotified()) return;
    in_start.Notify();
    go_on.WaitForNotificationWithTimeout(absl::Seconds(20));
  };
  auto req = Req();
  req.set_idempotency_key("slow-first-elsewhere");
  absl::StatusOr<Sandbox> first, retry;
  absl::Time first_done, retry_done;
  std::thread ta([&] {
    first = a.lifecycle->Create(req);
    first_done = absl::Now();
  });
  in_start.WaitForNotification();
  const int64_t gets_before = b.store.gets(), marks_before = b.store.marks();
  std::thread tb([&] {
    retry = b.lifecycle->Create(req);
    retry_done = absl::Now();
  });
  absl::SleepFor(absl::Milliseconds(1500));
  // 1.5 s of waiting: one statement marked the row awaited, and the row was never read again
  // (polling with backoff from 20 ms would have read it some ten times).
  EXPECT_EQ(b.store.gets() - gets_before, 0);
  EXPECT_EQ(b.store.marks() - marks_before, 1);
  EXPECT_EQ(b.session.notifications(), 0);
  go_on.Notify();
  ta.join();
  tb.join();
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->id(), first->id());
  EXPECT_EQ(retry->state(), v1::RUNNING);
  // Woken by the row's notification: one read after it.
  EXPECT_EQ(b.session.notifications(), 1);
  EXPECT_EQ(b.store.gets() - gets_before, 1);
  std::fprintf(stderr, "retry_answered_after_first_ms=%.1f\n",
               absl::ToDoubleMilliseconds(retry_done - first_done));
  EXPECT_LT(retry_done - first_done, absl::Seconds(2));
  // A create nobody waits for notifies nothing.
  ASSERT_TRUE(a.lifecycle->Create(Req()).ok());
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(b.session.notifications(), 1);
}

TEST_F(LifecycleTest, ACreateWhoseReplicaLostItsSessionIsFinishedByTheRetryOnce) {
  Replica a(db_.url(), *faulty_), b(db_.url(), *grpc_backends_);
  absl::Notification in_start, go_on;
  faulty_->before_start = [&] {
    if (in_start.HasBeenNotified()) return;
    in_start.Notify();
    go_on.WaitForNotificationWithTimeout(absl::Seconds(20));
  };
  auto req = Req();
  req.set_idempotency_key("orphaned");
  absl::StatusOr<Sandbox> first, retry;
  std::thread ta([&] { first = a.lifecycle->Create(req); });
  in_start.WaitForNotification();
  // A's session ends (as when its process dies): its lock goes, so B's retry takes the create
  // over and finishes it while A's own attempt is still under way.
  const int32_t a_id = a.session.id();
  db_.Scalar(absl::StrCat("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = "
                          "'advisory' AND classid = ", kReplicaLockSpace, " AND objid = ", a_id));
  ASSERT_TRUE(Eventually(
      [&] {
        return Count(absl::StrCat("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                  "AND classid = ", kReplicaLockSpace, " AND objid = ", a_id)) ==
               "0";
      },
      absl::Seconds(10)));
  retry = b.lifecycle->Create(req);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->state(), v1::RUNNING);
  EXPECT_EQ(Count("SELECT owner FROM lifecycle.sandboxes WHERE id = '" + retry->id() + "'"),
            std::to_string(b.session.id()));
  // A's attempt goes on and finds the create done: it answers the same sandbox and undoes
  // nothing.
  go_on.Notify();
  ta.join();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->id(), retry->id());
  EXPECT_EQ(first->state(), v1::RUNNING);
  EXPECT_EQ(Count("SELECT count(*) FROM quota.reservations"), "1");
  EXPECT_EQ(Usage(tenant_), "1");
  EXPECT_EQ(Count("SELECT count(*) FROM scheduler.placements"), "1");
  EXPECT_EQ(driver_->Sandboxes().size(), 1u);
  EXPECT_EQ(Count("SELECT state FROM lifecycle.sandboxes"), "RUNNING");
}

TEST_F(LifecycleTest, TheReconcilerFinishesACreateWhoseReplicaDiedAndNobodyRetries) {
  Replica a(db_.url(), *faulty_);
  auto b = std::make_unique<Replica>(db_.url(), *grpc_backends_);
  // A's create is held before its runner start; then A's session ends (as when its process
  // dies) and nobody retries: B's reconciler takes the create over and finishes it.
  absl::Notification in_start, go_on;
  faulty_->before_start = [&] {
    if (in_start.HasBeenNotified()) return;
    in_start.Notify();
    go_on.WaitForNotificationWithTimeout(absl::Seconds(20));
  };
  absl::StatusOr<Sandbox> first;
  std::thread ta([&] { first = a.lifecycle->Create(Req()); });
  in_start.WaitForNotification();
  const std::string id = Count("SELECT id FROM lifecycle.sandboxes");
  EXPECT_EQ(Count("SELECT state FROM lifecycle.sandboxes"), "STARTING");
  const int32_t a_id = a.session.id();
  db_.Scalar(absl::StrCat("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = "
                          "'advisory' AND classid = ", kReplicaLockSpace, " AND objid = ", a_id));
  // (Postgres drops A's lock once its backend has ended.)
  int taken = 0, abandoned = 0;
  ASSERT_TRUE(Eventually(
      [&] {
        auto counts = b->lifecycle->ReconcileOnce();
        EXPECT_TRUE(counts.ok()) << counts.status();
        if (counts.ok()) {
          taken += counts->creates_taken_over;
          abandoned += counts->creates_abandoned;
        }
        return taken > 0;
      },
      absl::Seconds(10)));
  EXPECT_EQ(taken, 1);
  EXPECT_EQ(abandoned, 0);
  ASSERT_TRUE(Eventually(
      [&] { return Count("SELECT state FROM lifecycle.sandboxes WHERE id = '" + id + "'") ==
                   "RUNNING"; },
      absl::Seconds(10)));
  b.reset();  // waits for its takeovers
  go_on.Notify();
  ta.join();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->id(), id);
  EXPECT_EQ(Usage(tenant_), "1");
  EXPECT_EQ(Count("SELECT count(*) FROM scheduler.placements"), "1");
  EXPECT_EQ(driver_->Sandboxes().size(), 1u);
}

}  // namespace
}  // namespace isorun::lifecycle
