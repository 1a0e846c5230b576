// The gRPC adapter in process, with a real client on a port the OS picks.

#include "scheduler/scheduler_service.h"

#include <gtest/gtest.h>

#include "services/kit/server.h"
#include "services/kit/status.h"

namespace isorun::scheduler {
namespace {

template <typename Pred>
bool Eventually(Pred pred, absl::Duration timeout = absl::Seconds(5)) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return pred();
}

class SchedulerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FleetOptions options;
    options.policy.healthy_within = absl::Seconds(5);
    fleet_ = std::make_unique<Fleet>(
        store_, [] { return absl::Now(); }, options);
    service_ = std::make_unique<SchedulerService>(*fleet_, registry_, 100);
    auto server = StartGrpcServer("127.0.0.1:0", {service_.get()});
    ASSERT_TRUE(server.ok());
    server_ = std::move(*server);
    stub_ = v1::Scheduler::NewStub(MakeChannel("127.0.0.1:" + std::to_string(server_.port)));
  }
  void TearDown() override { server_.server->Shutdown(); }

  std::string Register(const std::string& name) {
    v1::RegisterRunnerRequest req;
    req.set_name(name);
    req.set_address("10.0.0.1:7101");
    req.set_region("local");
    req.mutable_capacity()->set_cpu_millis(4000);
    req.mutable_capacity()->set_memory_mb(8192);
    req.mutable_capacity()->set_sandboxes(4);
    req.set_image_cache_bytes(1 << 30);
    auto* img = req.add_images();
    img->set_digest("sha256:bb");
    img->set_size_bytes(5 << 20);
    img->add_refs("busybox:1.36");
    grpc::ClientContext ctx;
    v1::RegisterRunnerResponse resp;
    EXPECT_TRUE(stub_->RegisterRunner(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.heartbeat_interval_ms(), 100);
    return resp.runner_id();
  }

  std::map<std::string, v1::RunnerInfo> Runners() {
    grpc::ClientContext ctx;
    v1::ListRunnersResponse resp;
    EXPECT_TRUE(stub_->ListRunners(&ctx, {}, &resp).ok());
    std::map<std::string, v1::RunnerInfo> out;
    for (const auto& r : resp.runners()) out[r.runner_id()] = r;
    return out;
  }

  absl::StatusOr<v1::Placement> Place(const std::string& sandbox, const std::string& image) {
    v1::PlaceRequest req;
    req.set_sandbox_id(sandbox);
    req.set_image(image);
    req.set_region("local");
    req.mutable_request()->set_cpu_millis(1000);
    req.mutable_request()->set_memory_mb(1024);
    grpc::ClientContext ctx;
    v1::Placement resp;
    grpc::Status s = stub_->Place(&ctx, req, &resp);
    if (!s.ok()) return FromGrpcStatus(s);
    return resp;
  }

  MemoryFleetStore store_;
  prometheus::Registry registry_;
  std::unique_ptr<Fleet> fleet_;
  std::unique_ptr<SchedulerService> service_;
  GrpcServer server_;
  std::unique_ptr<v1::Scheduler::Stub> stub_;
};

TEST_F(SchedulerServiceTest, HeartbeatStreamCarriesChangesAndItsEndMakesTheRunnerUnschedulable) {
  const std::string id = Register("a");
  grpc::ClientContext ctx;
  v1::HeartbeatResponse resp;
  auto stream = stub_->HeartbeatStream(&ctx, &resp);
  v1::HeartbeatRequest hb;
  hb.set_runner_id(id);
  hb.mutable_allocated()->set_sandboxes(1);
  auto* img = hb.add_images();
  img->set_digest("sha256:app");
  img->add_refs("app:1");
  hb.add_sandbox_ids("sbx_1");
  ASSERT_TRUE(stream->Write(hb));
  ASSERT_TRUE(Eventually([&] { return Runners()[id].images_size() == 1; }));
  EXPECT_EQ(Runners()[id].images(0).digest(), "sha256:app");
  // Unchanged lists may be left out: what the scheduler knows stays.
  v1::HeartbeatRequest small;
  small.set_runner_id(id);
  small.set_images_unchanged(true);
  small.set_sandboxes_unchanged(true);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(stream->Write(small));
  absl::SleepFor(absl::Milliseconds(100));
  auto info = Runners()[id];
  EXPECT_EQ(info.state(), "HEALTHY");
  EXPECT_EQ(info.images_size(), 1);
  EXPECT_EQ(info.sandbox_ids_size(), 1);
  auto p = Place("s1", "app:1");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->warm());
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_TRUE(stream->Finish().ok());
  ASSERT_TRUE(Eventually([&] { return Runners()[id].state() == "UNHEALTHY"; }))
      << "a runner whose stream ended gets nothing until it is heard from again";
  EXPECT_EQ(Place("s2", "app:1").status().code(), absl::StatusCode::kResourceExhausted);
  grpc::ClientContext unary_ctx;
  ASSERT_TRUE(stub_->Heartbeat(&unary_ctx, small, &resp).ok());
  EXPECT_EQ(Runners()[id].state(), "HEALTHY");
}

TEST_F(SchedulerServiceTest, AnUnknownRunnerIsToldToRegisterAgain) {
  grpc::ClientContext ctx;
  v1::HeartbeatResponse resp;
  auto stream = stub_->HeartbeatStream(&ctx, &resp);
  v1::HeartbeatRequest hb;
  hb.set_runner_id("rn_nobody");
  stream->Write(hb);
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(SchedulerServiceTest, ListRunnersReportsCapacityImagesAndFreeResources) {
  const std::string id = Register("a");
  ASSERT_TRUE(Place("s1", "busybox:1.36").ok());
  auto info = Runners()[id];
  EXPECT_EQ(info.name(), "a");
  EXPECT_EQ(info.state(), "HEALTHY");
  EXPECT_EQ(info.capacity().sandboxes(), 4);
  EXPECT_EQ(info.allocated().sandboxes(), 1);
  EXPECT_EQ(info.reserved().cpu_millis(), 1000);
  EXPECT_EQ(info.free().cpu_millis(), 3000);
  EXPECT_EQ(info.free().sandboxes(), 3);
  EXPECT_EQ(info.image_cache_bytes(), 1 << 30);
  ASSERT_EQ(info.images_size(), 1);
  EXPECT_EQ(info.images(0).size_bytes(), 5 << 20);
  EXPECT_EQ(info.placements_warm(), 1);
}

TEST_F(SchedulerServiceTest, BadInputIsRefused) {
  v1::RegisterRunnerRequest req;
  req.set_name("x");
  req.set_address("a:1");
  req.mutable_capacity()->set_sandboxes(-1);
  grpc::ClientContext ctx;
  v1::RegisterRunnerResponse resp;
  EXPECT_EQ(stub_->RegisterRunner(&ctx, req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Place("", "busybox:1.36").status().code(), absl::StatusCode::kInvalidArgument);
}

// A follower replica (not holding the leader lock) refuses every method with UNAVAILABLE, which
// clients retry on another replica; once it leads it serves.
TEST(SchedulerFollower, RefusesUntilItLeadsThenServes) {
  MemoryFleetStore store;
  Fleet fleet(store, [] { return absl::Now(); }, FleetOptions{});
  prometheus::Registry registry;
  std::atomic<bool> leading{false};
  SchedulerService service(fleet, registry, 100, &leading);
  auto server = StartGrpcServer("127.0.0.1:0", {&service});
  ASSERT_TRUE(server.ok());
  auto stub = v1::Scheduler::NewStub(MakeChannel("127.0.0.1:" + std::to_string(server->port)));
  auto list = [&] {
    grpc::ClientContext ctx;
    v1::ListRunnersResponse resp;
    return stub->ListRunners(&ctx, {}, &resp).error_code();
  };
  auto place = [&] {
    grpc::ClientContext ctx;
    v1::PlaceRequest req;
    req.set_sandbox_id("sbx_1");
    req.set_image("busybox:1.36");
    v1::Placement resp;
    return stub->Place(&ctx, req, &resp).error_code();
  };
  EXPECT_EQ(list(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(place(), grpc::StatusCode::UNAVAILABLE);
  {
    // A heartbeat stream is refused at once, so the runner reconnects elsewhere.
    grpc::ClientContext ctx;
    v1::HeartbeatResponse resp;
    auto writer = stub->HeartbeatStream(&ctx, &resp);
    v1::HeartbeatRequest hb;
    hb.set_runner_id("r1");
    writer->Write(hb);
    writer->WritesDone();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  leading = true;
  EXPECT_EQ(list(), grpc::StatusCode::OK);
  EXPECT_EQ(place(), grpc::StatusCode::RESOURCE_EXHAUSTED);  // served: no runner has room
  server->server->Shutdown();
}

}  // namespace
}  // namespace isorun::scheduler
