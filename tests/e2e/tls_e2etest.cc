// Mutual TLS between the services (services/kit/tls.h), with the real quota and lifecycle
// binaries and certificates made by openssl: clients without a certificate, or with one of
// another CA, are refused; each method admits only the identities of the call graph (a runner's
// certificate cannot call Sandboxes or Quotas); probes reach health on the plain-text health
// listener and nothing else there.

#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "isorun/v1/quotas.grpc.pb.h"
#include "isorun/v1/sandboxes.grpc.pb.h"
#include "tests/support/cluster.h"
#include "tests/support/test_database.h"

extern char** environ;

namespace isorun {
namespace {

using testing::PickFreePort;
using testing::TestDatabase;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

int Sh(const std::string& command) { return std::system(command.c_str()); }

// Channels of their own (no subchannel shared with an earlier one) that retry a refused connect
// within 100 ms instead of gRPC's default backoff of a second and more. The "min reconnect
// backoff" is the least time gRPC 1.51 gives a connection attempt, TLS handshake included
// (services/kit/server.cc): at 100 ms a loaded machine failed handshakes that were on their way.
std::shared_ptr<grpc::Channel> Connect(int port, std::shared_ptr<grpc::ChannelCredentials> creds) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), creds, args);
}

// A CA in DIR/NAME-ca.{crt,key}, and certificates DIR/ID.{crt,key} for identities it signs.
class Pki {
 public:
  Pki(std::string dir, std::string ca) : dir_(std::move(dir)), ca_(std::move(ca)) {
    EXPECT_EQ(Sh(absl::StrCat("cd ", dir_, " && openssl req -x509 -newkey ec -pkeyopt "
                              "ec_paramgen_curve:P-256 -nodes -keyout ",
                              ca_, "-ca.key -out ", ca_, "-ca.crt -days 2 -subj /CN=", ca_,
                              " >/dev/null 2>&1")),
              0);
  }
  // Writes ID.crt/ID.key (prefixed with the CA's name) with URI SAN isorun://ID and IP 127.0.0.1.
  void Issue(const std::string& id) {
    const std::string base = absl::StrCat(ca_, "-", id);
    EXPECT_EQ(Sh(absl::StrCat(
                  "cd ", dir_, " && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes",
                  " -keyout ", base, ".key -out ", base, ".csr -subj /CN=", id, " >/dev/null 2>&1",
                  " && printf 'subjectAltName=IP:127.0.0.1,URI:isorun://", id, "\\n' >", base,
                  ".ext && openssl x509 -req -in ", base, ".csr -CA ", ca_, "-ca.crt -CAkey ", ca_,
                  "-ca.key -CAcreateserial -days 2 -out ", base, ".crt -extfile ", base,
                  ".ext >/dev/null 2>&1")),
              0);
  }
  std::string Cert(const std::string& id) const { return absl::StrCat(dir_, "/", ca_, "-", id, ".crt"); }
  std::string Key(const std::string& id) const { return absl::StrCat(dir_, "/", ca_, "-", id, ".key"); }
  std::string CaCert() const { return absl::StrCat(dir_, "/", ca_, "-ca.crt"); }

  std::shared_ptr<grpc::Channel> Channel(const std::string& id, int port) const {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ReadFile(CaCert());
    options.pem_private_key = ReadFile(Key(id));
    options.pem_cert_chain = ReadFile(Cert(id));
    return Connect(port, grpc::SslCredentials(options));
  }
  // Server verified with this CA, but the client presents `other`'s certificate.
  std::shared_ptr<grpc::Channel> ChannelWithCertOf(const Pki& other, const std::string& id, int port) const {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ReadFile(CaCert());
    options.pem_private_key = ReadFile(other.Key(id));
    options.pem_cert_chain = ReadFile(other.Cert(id));
    return Connect(port, grpc::SslCredentials(options));
  }

 private:
  std::string dir_;
  std::string ca_;
};

pid_t Spawn(const std::string& binary, const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv_s = {binary};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return rc == 0 ? pid : 0;
}

grpc::Status Health(const std::shared_ptr<grpc::Channel>& channel, bool wait_for_ready = false) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(wait_for_ready);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(wait_for_ready ? 20 : 5));
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  grpc::CompletionQueue cq;
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  cq.Next(&tag, &ok);
  return status;
}

grpc::Status QuotaUsage(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::Quotas::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::GetUsageRequest req;
  req.set_tenant_id("ten_tlstest");
  v1::Usage resp;
  return stub->GetUsage(&ctx, req, &resp);
}

grpc::Status GetSandbox(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::Sandboxes::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::GetSandboxRequest req;
  req.set_tenant_id("ten_tlstest");
  req.set_id("sbx_doesnotexist");
  v1::Sandbox resp;
  return stub->GetSandbox(&ctx, req, &resp);
}

bool IsAuthFailure(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
         s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
         s.error_code() == grpc::StatusCode::UNAVAILABLE;
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/isorun-tls-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    pki_ = std::make_unique<Pki>(dir_, "good");
    rogue_ = std::make_unique<Pki>(dir_, "rogue");
    for (const char* id : {"gateway", "lifecycle", "quota", "scheduler", "runner"}) pki_->Issue(id);
    rogue_->Issue("gateway");
    quota_port_ = PickFreePort();
    quota_health_port_ = PickFreePort();
    lifecycle_port_ = PickFreePort();
    const std::string bin = testing::Cluster::BinDir();
    auto tls = [&](const std::string& id) {
      return std::vector<std::string>{absl::StrCat("--tls_cert_file=", pki_->Cert(id)),
                                      absl::StrCat("--tls_key_file=", pki_->Key(id)),
                                      absl::StrCat("--tls_ca_file=", pki_->CaCert())};
    };
    std::vector<std::string> quota_args = {absl::StrCat("--grpc_addr=127.0.0.1:", quota_port_),
                                           "--metrics_addr=",
                                           absl::StrCat("--database_url=", db_.url()),
                                           absl::StrCat("--health_addr=127.0.0.1:", quota_health_port_)};
    for (auto& a : tls("quota")) quota_args.push_back(a);
    quota_ = Spawn(bin + "/isorun-quota", quota_args, dir_ + "/quota.log");
    ASSERT_GT(quota_, 0);
    std::vector<std::string> lifecycle_args = {
        absl::StrCat("--grpc_addr=127.0.0.1:", lifecycle_port_), "--metrics_addr=",
        absl::StrCat("--database_url=", db_.url()),
        absl::StrCat("--quota_addr=127.0.0.1:", quota_port_),
        absl::StrCat("--scheduler_addr=127.0.0.1:", PickFreePort())};
    for (auto& a : tls("lifecycle")) lifecycle_args.push_back(a);
    lifecycle_ = Spawn(bin + "/isorun-lifecycle", lifecycle_args, dir_ + "/lifecycle.log");
    ASSERT_GT(lifecycle_, 0);
    // Up when health answers over TLS with a valid certificate.
    for (int port : {quota_port_, lifecycle_port_}) {
      auto channel = pki_->Channel("gateway", port);
      bool up = false;
      grpc::Status last;
      // Waits for the connection (the process may not listen yet).
      last = Health(channel, /*wait_for_ready=*/true);
      up = last.ok();
      int wstatus = 0;
      const bool quota_gone = waitpid(quota_, &wstatus, WNOHANG) == quota_;
      ASSERT_TRUE(up) << "no health answer on port " << port << ": " << last.error_code() << " "
                      << last.error_message() << (quota_gone ? " (quota exited, status " : "")
                      << (quota_gone ? std::to_string(wstatus) + ")" : "") << "\n"
                      << ReadFile(dir_ + "/quota.log") << ReadFile(dir_ + "/lifecycle.log");
    }
  }
  void TearDown() override {
    for (pid_t pid : {quota_, lifecycle_}) {
      if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
    }
    if (HasFailure()) {
      std::cerr << "kept " << dir_ << " (certificates and logs)\n";
    } else if (!dir_.empty()) {
      Sh("rm -rf " + dir_);
    }
  }

  TestDatabase db_;
  std::string dir_;
  std::unique_ptr<Pki> pki_, rogue_;
  int quota_port_ = 0, quota_health_port_ = 0, lifecycle_port_ = 0;
  pid_t quota_ = 0, lifecycle_ = 0;
};

TEST_F(TlsTest, ClientsWithoutAValidCertificateAreRefused) {
  auto plain = Connect(quota_port_, grpc::InsecureChannelCredentials());
  grpc::Status s = QuotaUsage(plain);
  EXPECT_TRUE(IsAuthFailure(s)) << s.error_code() << " " << s.error_message();
  s = Health(plain);
  EXPECT_FALSE(s.ok()) << "plain text reached the TLS port";

  // A certificate naming a trusted identity, but signed by another CA.
  auto rogue = pki_->ChannelWithCertOf(*rogue_, "gateway", lifecycle_port_);
  s = GetSandbox(rogue);
  EXPECT_TRUE(IsAuthFailure(s)) << s.error_code() << " " << s.error_message();
}

TEST_F(TlsTest, ARunnerCannotCallSandboxesOrQuotas) {
  grpc::Status s = GetSandbox(pki_->Channel("runner", lifecycle_port_));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  s = QuotaUsage(pki_->Channel("runner", quota_port_));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  // The quota service is not the gateway either.
  s = GetSandbox(pki_->Channel("quota", lifecycle_port_));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  // A runner may still be probed for health and probe others.
  EXPECT_TRUE(Health(pki_->Channel("runner", quota_port_)).ok());
}

TEST_F(TlsTest, TheCallGraphsIdentitiesGetThrough) {
  // The gateway reaches the lifecycle's handler (which finds no such sandbox).
  grpc::Status s = GetSandbox(pki_->Channel("gateway", lifecycle_port_));
  EXPECT_TRUE(s.error_code() == grpc::StatusCode::NOT_FOUND ||
              s.error_code() == grpc::StatusCode::INVALID_ARGUMENT)
      << s.error_code() << " " << s.error_message();
  // The lifecycle and the gateway read usage from quota.
  s = QuotaUsage(pki_->Channel("lifecycle", quota_port_));
  EXPECT_FALSE(IsAuthFailure(s)) << s.error_code() << " " << s.error_message();
  s = QuotaUsage(pki_->Channel("gateway", quota_port_));
  EXPECT_FALSE(IsAuthFailure(s)) << s.error_code() << " " << s.error_message();
}

TEST_F(TlsTest, ThePlainTextHealthListenerServesHealthAlone) {
  auto plain = Connect(quota_health_port_, grpc::InsecureChannelCredentials());
  EXPECT_TRUE(Health(plain).ok());
  grpc::Status s = QuotaUsage(plain);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << s.error_message();
}

}  // namespace
}  // namespace isorun
