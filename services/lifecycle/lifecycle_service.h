#pragma once

// gRPC adapter of isorun.v1.Sandboxes over Lifecycle.

#include "isorun/v1/public_urls.grpc.pb.h"
#include "isorun/v1/sandboxes.grpc.pb.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "services/lifecycle/lifecycle.h"

namespace isorun::lifecycle {

// Exec and ExecStream run on the callback API, each call on a thread of its own for as long as
// its command runs (kit/call_thread.h): long commands never hold threads of the pool the other
// methods share.
using LifecycleServiceBase = v1::Sandboxes::WithCallbackMethod_Exec<
    v1::Sandboxes::WithCallbackMethod_ExecStream<v1::Sandboxes::Service>>;

class LifecycleService final : public LifecycleServiceBase {
 public:
  LifecycleService(Lifecycle& lifecycle, prometheus::Registry& registry);

  grpc::Status CreateSandbox(grpc::ServerContext*, const v1::CreateSandboxRequest*,
                             v1::Sandbox*) override;
  grpc::Status GetSandbox(grpc::ServerContext*, const v1::GetSandboxRequest*,
                          v1::Sandbox*) override;
  grpc::Status ListSandboxes(grpc::ServerContext*, const v1::ListSandboxesRequest*,
                             v1::ListSandboxesResponse*) override;
  grpc::Status DestroySandbox(grpc::ServerContext*, const v1::DestroySandboxRequest*,
                              v1::DestroySandboxResponse*) override;
  grpc::Status SetTimeout(grpc::ServerContext*, const v1::SetTimeoutRequest*,
                          v1::Sandbox*) override;
  grpc::Status HibernateSandbox(grpc::ServerContext*, const v1::HibernateSandboxRequest*,
                                v1::Sandbox*) override;
  grpc::Status ResumeSandbox(grpc::ServerContext*, const v1::ResumeSandboxRequest*,
                             v1::Sandbox*) override;
  grpc::ServerUnaryReactor* Exec(grpc::CallbackServerContext*, const v1::ExecRequest*,
                                 v1::ExecResponse*) override;
  grpc::ServerWriteReactor<v1::ExecChunk>* ExecStream(grpc::CallbackServerContext*,
                                                      const v1::ExecRequest*) override;
  grpc::Status GetUsage(grpc::ServerContext*, const v1::GetUsageRequest*, v1::Usage*) override;
  grpc::Status SetNetwork(grpc::ServerContext*, const v1::SetNetworkRequest*,
                          v1::Sandbox*) override;
  grpc::Status GetNetworkLog(grpc::ServerContext*, const v1::GetNetworkLogRequest*,
                             v1::NetworkLog*) override;
  grpc::Status ListSandboxEvents(grpc::ServerContext*, const v1::ListSandboxEventsRequest*,
                                 v1::ListSandboxEventsResponse*) override;

 private:
  Lifecycle& lifecycle_;
  prometheus::Family<prometheus::Counter>& creates_;
  prometheus::Histogram& create_latency_;
  // exec and exec:stream calls this replica serves now (accepted or not yet decided).
  prometheus::Gauge& execs_running_;
};

// gRPC adapter of isorun.v1.PublicUrls (the gateway's public-URL proxy) over Lifecycle.
class PublicUrlsService final : public v1::PublicUrls::Service {
 public:
  explicit PublicUrlsService(Lifecycle& lifecycle) : lifecycle_(lifecycle) {}
  grpc::Status ResolvePublicId(grpc::ServerContext*, const v1::ResolvePublicIdRequest*,
                               v1::ResolvePublicIdResponse*) override;
  grpc::Status TouchSandboxes(grpc::ServerContext*, const v1::TouchSandboxesRequest*,
                              v1::TouchSandboxesResponse*) override;

 private:
  Lifecycle& lifecycle_;
};

}  // namespace isorun::lifecycle
