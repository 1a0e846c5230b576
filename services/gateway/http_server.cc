#include "services/gateway/http_server.h"

#include <algorithm>

namespace isorun::gateway {

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(Options options, Handler handler,
                                                              FastPath fast_path) {
  http::BlockingServerOptions o;
  o.front.address = options.address;
  o.front.threads = options.io_threads;
  o.front.max_head_bytes = options.max_header_bytes;
  o.front.max_connections = options.max_connections;
  o.front.idle_timeout = options.idle_timeout;
  o.front.head_timeout = std::min(options.head_timeout, options.idle_timeout);
  o.front.body_timeout = options.read_timeout;
  o.front.write_timeout = options.write_timeout;
  o.front.tcp_keepalive_idle = options.keepalive_idle;
  o.front.tcp_keepalive_interval = options.keepalive_interval;
  o.front.tcp_keepalive_probes = options.keepalive_probes;
  o.front.max_connections_per_client = options.max_connections_per_client;
  o.front.max_requests_per_client_per_sec = options.max_requests_per_client_per_sec;
  o.max_body_bytes = options.max_body_bytes;
  o.max_workers = std::max(1, options.max_handler_threads);
  auto server = http::BlockingServer::Start(std::move(o), std::move(handler), std::move(fast_path));
  if (!server.ok()) return server.status();
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(*server)));
}

HttpServer::~HttpServer() { Stop(absl::Seconds(5)); }

int HttpServer::port() const { return server_->port(); }
int HttpServer::open_connections() const { return server_->open_connections(); }

bool HttpServer::Stop(absl::Duration grace, const std::function<void()>& on_grace_expired) {
  return server_->Stop(grace, on_grace_expired);
}

}  // namespace isorun::gateway
