#include "services/kit/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "services/kit/tls.h"

ABSL_FLAG(std::string, health_addr, "",
          "host:port of a plain-text gRPC listener that serves grpc.health.v1 (and reflection) "
          "alone, for probes that cannot present a client certificate when TLS is on; empty: none");

namespace isorun {

absl::StatusOr<GrpcServer> StartGrpcServer(const std::string& address,
                                           const std::vector<grpc::Service*>& services,
                                           int max_threads) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  if (absl::Status tls = LoadTls(); !tls.ok()) return tls;
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default: a second server on a port in use would start and silently
  // take part of its connections. A port in use is an error instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  GrpcServer out;
  builder.AddListeningPort(address, GrpcServerCredentials(), &out.port);
  for (grpc::Service* service : services) builder.RegisterService(service);
  grpc::ResourceQuota quota("isorun");
  quota.SetMaxThreads(max_threads);
  builder.SetResourceQuota(quota);
  // A sync server thread that finishes a call exits when more than MAX_POLLERS threads are
  // waiting for calls (2 by default), and a new one is made when none is waiting: with calls that
  // wait on other services, that is a thread made and destroyed per call. Idle threads are cheap.
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, max_threads);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  out.server = builder.BuildAndStart();
  if (!out.server || out.port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", address));
  }
  out.server->GetHealthCheckService()->SetServingStatus(true);
  const std::string health_addr = absl::GetFlag(FLAGS_health_addr);
  if (!health_addr.empty()) {
    // A server of its own: the services above are not registered on it, so plain text reaches
    // nothing but health (and the reflection plugin every server gets).
    grpc::ServerBuilder health;
    health.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    int health_port = 0;
    health.AddListeningPort(health_addr, grpc::InsecureServerCredentials(), &health_port);
    out.health_server = health.BuildAndStart();
    if (!out.health_server || health_port == 0) {
      out.server->Shutdown();
      return absl::UnavailableError(absl::StrCat("cannot listen for gRPC health on ", health_addr));
    }
    out.health_server->GetHealthCheckService()->SetServingStatus(true);
  }
  return out;
}

Metrics::Metrics(const std::string& address) : registry_(std::make_shared<prometheus::Registry>()) {
  if (!address.empty()) {
    exposer_ = std::make_unique<prometheus::Exposer>(address);
    exposer_->RegisterCollectable(registry_);
  }
}

int Metrics::port() const {
  if (!exposer_) return 0;
  auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports[0];
}

void BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForShutdownSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

std::string ChannelTarget(const std::string& address) {
  if (address.find(',') == std::string::npos) return address;
  std::string out = "ipv4:";
  for (absl::string_view part : absl::StrSplit(address, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    if (out.size() > 5) out += ',';
    out.append(part.data(), part.size());
  }
  return out;
}

bool IsReplicaSet(const std::string& address) {
  return address.find(',') != std::string::npos || absl::StartsWith(address, "dns:") ||
         absl::StartsWith(address, "ipv4:") || absl::StartsWith(address, "ipv6:");
}

// For a replica set: round_robin over every address, and gRPC's retry layer repeats a call that
// failed UNAVAILABLE (a replica that died, or a scheduler follower refusing) on the next replica,
// up to five attempts within the call's deadline. Commands (Exec, ExecStream) are not repeated
// once a replica has seen them: running a command twice is not the caller's intent. Nor is the
// runners' long-lived heartbeat stream: the retry layer would keep every message it sent for a
// replay (the agent reconnects by itself). gRPC still repeats any call that never left this
// process (its transparent retries).
constexpr char kReplicaServiceConfig[] = R"json({
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [
    {"name": [{}],
     "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "0.4s",
                     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}},
    {"name": [{"service": "isorun.v1.Sandboxes", "method": "Exec"},
              {"service": "isorun.v1.Sandboxes", "method": "ExecStream"},
              {"service": "isorun.v1.Scheduler", "method": "HeartbeatStream"}]}
  ]
})json";

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  args.SetMaxReceiveMessageSize(64 << 20);
  // Peers here are a few services on a private network: when one restarts, reconnect within a
  // second or so instead of gRPC's default backoff that grows to two minutes, during which every
  // call on the channel fails at once. The first retry comes after 100 ms (initial backoff), the
  // later ones at most a second apart. The "min reconnect backoff" is not a backoff at all in
  // gRPC 1.51: it is the least time a connection attempt (TCP connect, TLS and HTTP/2 handshake)
  // is given (its subchannel's min_connect_timeout; the default is 20 s). At 100 ms a busy or
  // briefly stopped peer failed a fresh channel's first calls with UNAVAILABLE ("tcp handshaker
  // shutdown") although it was up; a second is still short for a peer that drops packets, whose
  // calls then end by their own deadlines.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  if (IsReplicaSet(address)) {
    args.SetServiceConfigJSON(kReplicaServiceConfig);
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 1);
    if (address.find(',') != std::string::npos) {
      // An ipv4: list's authority would be the whole list, which no certificate names: use the
      // first replica's host (every replica's certificate names the addresses it serves on).
      std::string first = address.substr(0, address.find(','));
      first = std::string(absl::StripAsciiWhitespace(first));
      args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, first.substr(0, first.rfind(':')));
    }
  } else {
    // One peer: our callers decide what to retry (creates compensate, idempotent calls are
    // retried by their loops); gRPC's own retry layer only added a per-call cost.
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  }
  // Mutual TLS when the process has an identity (services/kit/tls.h), else plain text.
  return grpc::CreateCustomChannel(ChannelTarget(address), GrpcChannelCredentials(), args);
}

}  // namespace isorun
