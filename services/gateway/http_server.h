#pragma once

// The public API's HTTP/1.1 server: the kit's event-driven front end (services/kit/http_front.h,
// a few I/O threads holding every connection) with the handler on worker threads, since handlers
// block (a create waits until its sandbox runs). Idle, slow and kept-alive clients hold no
// thread, so 10,000 of them do not lock anyone out. Every read is bounded before the handler
// runs: the head (431), chunk lines and trailers (400), the body (413, answered by the handler
// before the body is read), slow heads and bodies (408). Per client address, before
// authentication: a cap on connections and on requests per second (429). Beyond
// `max_connections` in all: 503. Keep-alive, `Expect: 100-continue`, chunked streaming responses
// with client-disconnect detection, and a graceful stop.

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/gateway/http_types.h"
#include "services/kit/http_blocking.h"

namespace isorun::gateway {

class HttpServer {
 public:
  struct Options {
    std::string address = "127.0.0.1:8080";  // "host:port"; port 0 picks one
    size_t max_body_bytes = 1 << 20;
    size_t max_header_bytes = size_t{16} * 1024;
    int max_connections = 20000;
    // Waiting for the head of the next request on a connection.
    absl::Duration idle_timeout = absl::Seconds(75);
    // From a head's first byte to its end (never more than idle_timeout).
    absl::Duration head_timeout = absl::Seconds(15);
    // Each read of a body.
    absl::Duration read_timeout = absl::Seconds(30);
    // Writing a response, or one chunk of a stream. Also the TCP_USER_TIMEOUT of every
    // connection: data a client has not acknowledged for this long ends the connection.
    absl::Duration write_timeout = absl::Seconds(30);
    // TCP keep-alive probes after this much silence (then every 5 s, 3 unanswered end the
    // connection): a client whose host vanished without a FIN or a RST is noticed even while its
    // `exec:stream` waits for output, and the command is killed. Zero: no probes.
    absl::Duration keepalive_idle = absl::Seconds(15);
    absl::Duration keepalive_interval = absl::Seconds(5);
    int keepalive_probes = 3;
    int io_threads = 2;
    // Handlers running at once at most (each on a thread of its own while it runs).
    int max_handler_threads = 2048;
    // Per client address (0: no cap).
    int max_connections_per_client = 0;
    double max_requests_per_client_per_sec = 0;
  };
  // Called on worker threads, concurrently. Exceptions become a 500.
  using Handler = std::function<HttpResponse(const HttpRequest&)>;
  // Called on an I/O thread first: an answer that needs no blocking work, or nullopt.
  using FastPath = http::BlockingServer::FastPath;

  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(Options options, Handler handler,
                                                           FastPath fast_path = nullptr);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;
  int open_connections() const;

  // Stops accepting, closes idle connections, and lets requests in flight finish. After `grace`,
  // calls `on_grace_expired` (to cancel backend calls, say) and waits a little more. Returns
  // whether every request finished; if not, the handler may still be running and the process
  // should exit without destroying what the handler uses.
  bool Stop(absl::Duration grace, const std::function<void()>& on_grace_expired = nullptr);

 private:
  explicit HttpServer(std::unique_ptr<http::BlockingServer> server) : server_(std::move(server)) {}
  std::unique_ptr<http::BlockingServer> server_;
};

}  // namespace isorun::gateway
