#pragma once

// Process bootstrap shared by the services: a gRPC server with the health checking service and
// reflection, a Prometheus /metrics endpoint, and an orderly shutdown on SIGINT/SIGTERM.

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace isorun {

struct GrpcServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;  // the bound port (useful with port 0)
  std::unique_ptr<grpc::Server> health_server;  // --health_addr's plain-text health listener
};

// Builds and starts a server on `address` ("host:port", port 0 picks one) serving `services`,
// plus grpc.health.v1.Health (all SERVING) and server reflection; with mutual TLS and per-method
// identity checks when the process has a certificate (services/kit/tls.h), and a plain-text
// health listener on --health_addr when set.
absl::StatusOr<GrpcServer> StartGrpcServer(const std::string& address,
                                           const std::vector<grpc::Service*>& services,
                                           int max_threads = 64);

// The metrics registry of this process and its HTTP listener.
class Metrics {
 public:
  // `address` "host:port"; empty means no listener (metrics still collected).
  explicit Metrics(const std::string& address);
  prometheus::Registry& registry() { return *registry_; }
  // The bound port, 0 when there is no listener.
  int port() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

// Blocks until SIGINT or SIGTERM arrives (the signals are blocked in every thread by
// BlockShutdownSignals(), which must run before any thread starts).
void BlockShutdownSignals();
int WaitForShutdownSignal();

// A client channel with sane defaults (keepalive, no proxies); mutual TLS when the process has a
// certificate (services/kit/tls.h). `address` is one "host:port", or a replica set: a
// comma-separated list of IPv4 "ip:port" or a gRPC target ("dns:///name:port", "ipv4:...") whose
// calls are spread round-robin and retried on another replica when one fails UNAVAILABLE.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);

// The gRPC target of an address as MakeChannel takes it ("a:1,b:2" -> "ipv4:a:1,b:2").
std::string ChannelTarget(const std::string& address);
// Whether `address` names several replicas (a list or a resolver target).
bool IsReplicaSet(const std::string& address);

}  // namespace isorun
