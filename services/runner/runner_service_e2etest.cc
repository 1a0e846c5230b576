// The Runner gRPC service over the runc driver: in-process with a real gRPC client (streaming,
// cancellation, error details), and the isorun-runner binary as a process that is killed and
// restarted under its sandboxes.

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "isorun/v1/runner.grpc.pb.h"
#include "services/kit/server.h"
#include "services/kit/status.h"
#include "services/runner/fs_util.h"
#include "services/runner/runc_driver.h"
#include "services/runner/runc_test_env.h"
#include "services/runner/runner_service.h"
#include "services/runner/skopeo_fetcher.h"

namespace isorun::runner {
namespace {

std::string ReasonOf(const grpc::Status& s) {
  auto d = ErrorDetailOf(FromGrpcStatus(s));
  return d ? d->reason() : "";
}

v1::RunnerExecRequest ExecReq(const std::string& id, const std::string& cmd, int timeout = 0) {
  v1::RunnerExecRequest r;
  r.set_sandbox_id(id);
  r.mutable_exec()->set_cmd(cmd);
  r.mutable_exec()->set_timeout_sec(timeout);
  return r;
}

grpc::Status StartSandbox(v1::Runner::Stub& stub, const std::string& id, const std::string& image,
                          v1::StartSandboxResponse* resp) {
  grpc::ClientContext ctx;
  v1::StartSandboxRequest req;
  req.set_sandbox_id(id);
  req.set_image(image);
  req.set_cpu_millis(1000);
  req.set_memory_mb(256);
  return stub.StartSandbox(&ctx, req, resp);
}

class RunnerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ISORUN_REQUIRE_RUNC();
    auto registry = testing::TestRegistryAddress();
    ASSERT_TRUE(registry.ok()) << registry.status();
    dir_ = testing::MakeScratchDir("isorun-runner-svc-test");
    RuncOptions o;
    o.data_dir = dir_;
    o.registry = *registry;
    o.init_path = testing::SandboxInitPath();
    auto driver = RuncDriver::Create(o, fetcher_);
    ASSERT_TRUE(driver.ok()) << driver.status();
    driver_ = std::move(*driver);
    service_ = std::make_unique<RunnerService>(*driver_);
    auto server = StartGrpcServer("127.0.0.1:0", {service_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ = v1::Runner::NewStub(MakeChannel(absl::StrCat("127.0.0.1:", server_.port)));
  }
  void TearDown() override {
    if (server_.server) server_.server->Shutdown(std::chrono::system_clock::now());
    service_.reset();
    driver_.reset();
    testing::RemoveScratchDir(dir_);
  }

  std::string dir_;
  SkopeoFetcher fetcher_{testing::TestSkopeoOptions()};
  std::unique_ptr<RuncDriver> driver_;
  std::unique_ptr<RunnerService> service_;
  GrpcServer server_;
  std::unique_ptr<v1::Runner::Stub> stub_;
};

TEST_F(RunnerServiceTest, ExecStreamSendsChunksAsTheyComeThenTheExitCode) {
  v1::StartSandboxResponse started;
  ASSERT_TRUE(StartSandbox(*stub_, "sbx_s", "busybox:1.36", &started).ok());
  EXPECT_TRUE(absl::StartsWith(started.image_digest(), "sha256:"));
  grpc::ClientContext ctx;
  auto reader =
      stub_->ExecStream(&ctx, ExecReq("sbx_s", "echo one; sleep 1; echo two >&2; exit 5"));
  const absl::Time t0 = absl::Now();
  v1::ExecChunk chunk;
  std::vector<std::pair<absl::Duration, v1::ExecChunk>> got;
  while (reader->Read(&chunk)) got.emplace_back(absl::Now() - t0, chunk);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].second.stdout(), "one\n");
  EXPECT_LT(got[0].first, absl::Milliseconds(800));
  EXPECT_EQ(got[1].second.stderr(), "two\n");
  EXPECT_EQ(got[2].second.kind_case(), v1::ExecChunk::kExitCode);
  EXPECT_EQ(got[2].second.exit_code(), 5);
}

TEST_F(RunnerServiceTest, AClientThatGoesAwayKillsTheCommand) {
  v1::StartSandboxResponse started;
  ASSERT_TRUE(StartSandbox(*stub_, "sbx_c", "busybox:1.36", &started).ok());
  grpc::ClientContext ctx;
  auto reader = stub_->ExecStream(&ctx, ExecReq("sbx_c", "echo ready; sleep 109"));
  v1::ExecChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  EXPECT_EQ(chunk.stdout(), "ready\n");
  bool running = false;  // "ready" comes just before the shell starts the sleep
  for (int i = 0; i < 40 && !running; ++i) {
    running = !testing::HostPidsRunning("sleep 109").empty();
    if (!running) absl::SleepFor(absl::Milliseconds(25));
  }
  EXPECT_TRUE(running);
  ctx.TryCancel();
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  bool gone = false;
  for (int i = 0; i < 40 && !gone; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    gone = testing::HostPidsRunning("sleep 109").empty();
  }
  EXPECT_TRUE(gone) << "the command outlived its client";
}

TEST_F(RunnerServiceTest, ErrorsCarryTheirReasons) {
  v1::StartSandboxResponse started;
  grpc::Status missing = StartSandbox(*stub_, "sbx_x", "nope:9", &started);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(absl::StrContains(missing.error_message(), "nope:9"));
  ASSERT_TRUE(StartSandbox(*stub_, "sbx_e", "busybox:1.36", &started).ok());
  {
    grpc::ClientContext ctx;
    v1::ExecResponse resp;
    grpc::Status s = stub_->Exec(&ctx, ExecReq("sbx_e", "sleep 30", 1), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_EQ(ReasonOf(s), "EXEC_TIMEOUT");
  }
  {
    grpc::ClientContext ctx;
    v1::PauseSandboxRequest req;
    req.set_sandbox_id("sbx_e");
    v1::PauseSandboxResponse resp;
    ASSERT_TRUE(stub_->PauseSandbox(&ctx, req, &resp).ok());
  }
  for (bool stream : {false, true}) {
    grpc::ClientContext ctx;
    grpc::Status s;
    if (stream) {
      auto reader = stub_->ExecStream(&ctx, ExecReq("sbx_e", "true"));
      v1::ExecChunk chunk;
      while (reader->Read(&chunk)) {
      }
      s = reader->Finish();
    } else {
      v1::ExecResponse resp;
      s = stub_->Exec(&ctx, ExecReq("sbx_e", "true"), &resp);
    }
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << stream;
    EXPECT_EQ(ReasonOf(s), "SANDBOX_NOT_RUNNING") << stream;
  }
  grpc::ClientContext ctx;
  v1::ExecResponse resp;
  EXPECT_EQ(stub_->Exec(&ctx, ExecReq("sbx_unknown", "true"), &resp).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(RunnerServiceTest, PullImagePreWarmsTheCache) {
  for (bool again : {false, true}) {
    grpc::ClientContext ctx;
    v1::PullImageRequest req;
    req.set_image("fat:1.0");
    v1::PullImageResponse resp;
    grpc::Status s = stub_->PullImage(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(absl::StartsWith(resp.image_digest(), "sha256:"));
    EXPECT_GT(resp.size_bytes(), 40 << 20);
    EXPECT_EQ(resp.already_cached(), again);
  }
  v1::StartSandboxResponse started;
  ASSERT_TRUE(StartSandbox(*stub_, "sbx_fat", "fat:1.0", &started).ok());
  EXPECT_TRUE(started.warm());
  grpc::ClientContext ctx;
  v1::PullImageRequest req;
  req.set_image("nope:3");
  v1::PullImageResponse resp;
  EXPECT_EQ(stub_->PullImage(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

// The isorun-runner binary: killed with SIGKILL under its sandboxes, then started again.
class RunnerProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ISORUN_REQUIRE_RUNC();
    auto registry = testing::TestRegistryAddress();
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = *registry;
    dir_ = testing::MakeScratchDir("isorun-runner-proc-test");
    port_ = testing::FreeLoopbackPort();
  }
  void TearDown() override {
    StopRunner(SIGTERM);
    testing::RemoveScratchDir(dir_);
  }
  void StartRunner() {
    const std::string bin = std::string(ISORUN_RUNNER_BIN);
    const std::string log = dir_ + "/runner.log";
    std::vector<std::string> args = {
        bin,
        "--driver=runc",
        "--data_dir=" + dir_,
        "--registry=" + registry_,
        "--insecure_registries=" + registry_,
        absl::StrCat("--grpc_addr=127.0.0.1:", port_),
        "--metrics_addr=",
        // No sandbox networks here (the egress tests cover them): no range to share with other
        // runners of this host, and never the host's resolver.
        "--sandbox_network=",
        absl::StrCat("--scheduler_addr=127.0.0.1:", testing::FreeLoopbackPort())};
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    // Wait for the port before making the channel: a channel that meets a refused connection
    // backs off (1 s and growing), which would dominate this test.
    const absl::Time t0 = absl::Now();
    while (!testing::LoopbackPortOpen(port_)) {
      ASSERT_EQ(::waitpid(pid_, nullptr, WNOHANG), 0) << "runner exited: " << *ReadFile(log);
      ASSERT_LT(absl::Now() - t0, absl::Seconds(20)) << "runner did not listen: " << *ReadFile(log);
      absl::SleepFor(absl::Milliseconds(10));
    }
    grpc::ChannelArguments channel_args;
    channel_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stub_ = v1::Runner::NewStub(grpc::CreateCustomChannel(
        absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials(), channel_args));
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ListRunnerSandboxesResponse resp;
    grpc::Status st = stub_->ListSandboxes(&ctx, {}, &resp);
    if (st.ok()) {
      std::printf("runner serving after %.0f ms\n", absl::ToDoubleMilliseconds(absl::Now() - t0));
      return;
    }
    FAIL() << "runner did not serve: " << st.error_message() << "\n" << *ReadFile(log);
  }
  void StopRunner(int sig) {
    if (pid_ <= 0) return;
    // Close our channel first: gRPC 1.51's Server::Shutdown waits out its deadline (5 s in
    // main.cc) while an idle client connection stays open.
    stub_.reset();
    const absl::Time t0 = absl::Now();
    ::kill(pid_, sig);
    ::waitpid(pid_, nullptr, 0);
    pid_ = 0;
    std::printf("runner stopped (signal %d) in %.0f ms\n", sig,
                absl::ToDoubleMilliseconds(absl::Now() - t0));
  }
  std::vector<std::string> Listed() {
    grpc::ClientContext ctx;
    v1::ListRunnerSandboxesResponse resp;
    EXPECT_TRUE(stub_->ListSandboxes(&ctx, {}, &resp).ok());
    std::vector<std::string> out(resp.sandbox_ids().begin(), resp.sandbox_ids().end());
    std::sort(out.begin(), out.end());
    return out;
  }
  std::string Run(const std::string& id, const std::string& cmd) {
    grpc::ClientContext ctx;
    v1::ExecResponse resp;
    grpc::Status s = stub_->Exec(&ctx, ExecReq(id, cmd), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.stdout();
  }

  std::string registry_, dir_;
  int port_ = 0;
  pid_t pid_ = 0;
  std::unique_ptr<v1::Runner::Stub> stub_;
};

TEST_F(RunnerProcessTest, AKilledRunnerComesBackWithItsSandboxesAndItsCache) {
  StartRunner();
  v1::StartSandboxResponse first;
  grpc::Status s = StartSandbox(*stub_, "sbx_p1", "busybox:1.36", &first);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(first.warm());
  Run("sbx_p1", "echo before > /root/f");
  StopRunner(SIGKILL);
  StartRunner();
  EXPECT_EQ(Listed(), std::vector<std::string>{"sbx_p1"});
  EXPECT_EQ(Run("sbx_p1", "cat /root/f"), "before\n");
  v1::StartSandboxResponse second;
  ASSERT_TRUE(StartSandbox(*stub_, "sbx_p2", "busybox:1.36", &second).ok());
  EXPECT_TRUE(second.warm()) << "the cache survived the restart";
  EXPECT_EQ(second.image_digest(), first.image_digest());
  // A graceful stop leaves the sandboxes running too (the lifecycle decides their fate).
  StopRunner(SIGTERM);
  StartRunner();
  EXPECT_EQ(Listed(), (std::vector<std::string>{"sbx_p1", "sbx_p2"}));
  for (const char* id : {"sbx_p1", "sbx_p2"}) {
    grpc::ClientContext ctx;
    v1::StopSandboxRequest req;
    req.set_sandbox_id(id);
    v1::StopSandboxResponse resp;
    ASSERT_TRUE(stub_->StopSandbox(&ctx, req, &resp).ok());
    EXPECT_TRUE(resp.existed());
  }
  EXPECT_TRUE(Listed().empty());
}

}  // namespace
}  // namespace isorun::runner
