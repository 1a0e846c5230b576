#pragma once

// The scheduler's admin HTTP listener (--admin_http_addr, loopback by default): the capacity view
// for dashboards and operators. It has no authentication, so it must only be reachable by admins:
// keep it on loopback or a private interface (in Kubernetes: no Service exposes it beyond the
// cluster's admin network). Routes:
//   GET /capacity             every runner and fleet totals (capacity_json.h)
//   GET /capacity?summary=1   totals only
//   GET /capacity?runner=X    one runner (by name or id)
//   GET /capacity?sandboxes=0 without the sandbox id lists
//   GET /healthz              "ok"
//
// Served by the kit's event-driven front end (services/kit/http_blocking.h): one I/O thread and a
// few handler threads, keep-alive, heads and bodies of at most 16 KiB (431 and 413 beyond), reads
// and writes that time out after 5 s (408), at most 1,000 connections.

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace isorun::scheduler {

struct AdminRequest {
  std::string method;
  std::string path;
  std::map<std::string, std::string> query;
};

struct AdminResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

class AdminHttpServer {
 public:
  using Handler = std::function<AdminResponse(const AdminRequest&)>;

  // `address` is "host:port" (port 0 picks one).
  static absl::StatusOr<std::unique_ptr<AdminHttpServer>> Start(const std::string& address,
                                                                Handler handler);
  ~AdminHttpServer();
  AdminHttpServer(const AdminHttpServer&) = delete;
  AdminHttpServer& operator=(const AdminHttpServer&) = delete;

  int port() const { return port_; }
  void Stop();

 private:
  struct Impl;
  explicit AdminHttpServer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

// Splits "a=1&b=x%20y" into a map (percent-decoding, '+' as space).
std::map<std::string, std::string> ParseQuery(const std::string& query);

}  // namespace isorun::scheduler
