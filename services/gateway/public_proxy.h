#pragma once

// The public-URL proxy: `Host: <port>-<publicId>.<publicDomain>` reaches <port> inside that
// sandbox. It runs on the kit's event-driven front end (services/kit/http_front.h); per client
// connection a ProxySession (public_proxy.cc) relays each request to a tunnel into the sandbox:
//
//   client --HTTP/1.1--> gateway --mutual TLS (or TCP + token), preamble--> runner tunnel
//     --netns socket--> port
//
// - The public id is resolved through the lifecycle (isorun.v1.PublicUrls, asynchronous, cached
//   for `resolve_ttl`; a tunnel that answers "no such sandbox" drops the entry at once).
// - A hibernated sandbox is resumed by the first hit (the lifecycle's ResumeSandbox: admitted like
//   any resume, so 429 at the tenant's limit), then served.
// - Bodies stream both ways piece by piece (bounded memory per connection), chunked encoding is
//   re-framed, a response of unknown length reaches HTTP/1.1 clients chunked (so their connection
//   stays open), `Upgrade` (WebSocket and others) switches to a byte relay until either side
//   closes.
// - Proxied traffic is activity for the idle timer: sandbox ids are collected and flushed to the
//   lifecycle in one call every `touch_interval` (never one write per request).
// - At most `max_connections_per_sandbox` tunnels per sandbox at once (429 beyond).

#include <grpcpp/channel.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "isorun/v1/public_urls.grpc.pb.h"
#include "isorun/v1/sandboxes.grpc.pb.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "services/kit/http_front.h"
#include "services/kit/tunnel_tls.h"

namespace isorun::gateway {

struct PublicProxyOptions {
  std::string public_domain = "localhost";
  // Sent in every tunnel's preamble when set ("-" otherwise); required when tunnel_tls is null.
  std::string tunnel_token;
  // Mutual TLS to the runners' tunnels (http::TunnelTlsContext(false)): the gateway presents its
  // certificate and accepts only a runner's. Null: plain TCP.
  std::shared_ptr<http::ssl::context> tunnel_tls;
  // What X-Forwarded-Proto says (https behind a TLS terminator).
  std::string forwarded_proto = "http";
  int max_connections_per_sandbox = 1000;
  absl::Duration resolve_ttl = absl::Seconds(2);
  absl::Duration touch_interval = absl::Seconds(5);
  absl::Duration tunnel_timeout = absl::Seconds(10);   // connect + the runner's answer
  absl::Duration response_timeout = absl::Minutes(5);  // each read of a response (head or body)
  absl::Duration resume_deadline = absl::Seconds(60);
};

// Splits "8080-0123...ef.localhost[:8081]" into port and public id; false when the host is not a
// public URL of `domain` (the label must be <1-65535>-<32 hex>).
bool ParsePublicHost(absl::string_view host, absl::string_view domain, int* port,
                     std::string* public_id);

class PublicProxy {
 public:
  PublicProxy(PublicProxyOptions options, std::shared_ptr<grpc::Channel> lifecycle,
              prometheus::Registry& registry);
  // Flushes the activity collected so far.
  ~PublicProxy();
  PublicProxy(const PublicProxy&) = delete;
  PublicProxy& operator=(const PublicProxy&) = delete;

  http::HandlerFactory Factory();
  const PublicProxyOptions& options() const { return options_; }

  // Used by the sessions (any thread; callbacks come on gRPC's threads).
  using Resolved = absl::StatusOr<std::shared_ptr<const v1::ResolvePublicIdResponse>>;
  // A fresh cached answer for `public_id`: true, with the answer and the time it expires.
  bool Cached(const std::string& public_id, absl::Time now, Resolved* out, absl::Time* expires);
  // Looks the public id up (cached answers included); `done` may run on this thread or another.
  void Resolve(const std::string& public_id, std::function<void(Resolved)> done);
  void Forget(const std::string& public_id);
  void Resume(const v1::Sandbox& sandbox, std::function<void(absl::StatusOr<v1::Sandbox>)> done);
  bool AcquireSlot(const std::string& sandbox_id);
  void ReleaseSlot(const std::string& sandbox_id);
  // Activity of one sandbox: an exchange (a request, or an upgraded connection for as long as it
  // stays open) Begin()s and End()s; both are activity, and so is every flush while one is
  // open. Atomics, so a request costs no lock; sessions keep the object of their sandbox.
  struct Activity {
    explicit Activity(std::string id) : sandbox_id(std::move(id)) {}
    void Begin() {
      if (!touched.load(std::memory_order_relaxed)) touched.store(true, std::memory_order_relaxed);
      open.fetch_add(1, std::memory_order_relaxed);
    }
    void End() {
      if (!touched.load(std::memory_order_relaxed)) touched.store(true, std::memory_order_relaxed);
      open.fetch_sub(1, std::memory_order_relaxed);
    }
    const std::string sandbox_id;
    std::atomic<bool> touched{false};
    std::atomic<int> open{0};
  };
  std::shared_ptr<Activity> ActivityOf(const std::string& sandbox_id);
  // Sends what was active since the last flush (and every sandbox with an exchange open).
  void FlushActivity();

  prometheus::Counter& requests_total() { return *requests_; }
  prometheus::Counter& errors_total(int status);

 private:
  void FlushLoop();

  const PublicProxyOptions options_;
  std::unique_ptr<v1::PublicUrls::Stub> urls_;
  std::unique_ptr<v1::Sandboxes::Stub> sandboxes_;

  struct CacheEntry {
    Resolved value;  // shared: a hit copies a pointer, not the sandbox message
    absl::Time expires;
  };
  absl::Mutex cache_mu_;
  absl::flat_hash_map<std::string, CacheEntry> cache_ ABSL_GUARDED_BY(cache_mu_);

  absl::Mutex slots_mu_;
  absl::flat_hash_map<std::string, int> slots_ ABSL_GUARDED_BY(slots_mu_);

  absl::Mutex touch_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Activity>> activities_
      ABSL_GUARDED_BY(touch_mu_);
  absl::flat_hash_set<std::string> retry_ ABSL_GUARDED_BY(touch_mu_);  // a flush that failed

  prometheus::Family<prometheus::Counter>& answers_;
  prometheus::Counter* requests_;
  prometheus::Counter* touches_;
  absl::Notification stop_;
  std::thread flusher_;
};

}  // namespace isorun::gateway
