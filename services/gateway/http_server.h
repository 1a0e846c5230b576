#pragma once

// A small HTTP/1.1 server on Boost.Beast for the public API: keep-alive, a thread per connection
// (handlers block: a create waits until its sandbox runs), a cap on connections (503 beyond),
// timeouts for idle and slow clients, a body size limit answered with 413 before the body is
// read, `Expect: 100-continue`, chunked streaming responses with client-disconnect detection,
// and a graceful stop. The handler owns everything about the answer; this only moves bytes.

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/gateway/http_types.h"

namespace isorun::gateway {

class HttpServer {
 public:
  struct Options {
    std::string address = "127.0.0.1:8080";  // "host:port"; port 0 picks one
    size_t max_body_bytes = 1 << 20;
    size_t max_header_bytes = size_t{16} * 1024;
    int max_connections = 2000;
    // Waiting for the head of the next request on a connection.
    absl::Duration idle_timeout = absl::Seconds(75);
    // Reading a body.
    absl::Duration read_timeout = absl::Seconds(30);
    // Writing a response, or one chunk of a stream. Also the TCP_USER_TIMEOUT of every
    // connection: data a client has not acknowledged for this long ends the connection.
    absl::Duration write_timeout = absl::Seconds(30);
    // TCP keep-alive probes after this much silence (then every 5 s, 3 unanswered end the
    // connection): a client whose host vanished without a FIN or a RST is noticed even while its
    // `exec:stream` waits for output, and the command is killed. Zero: no probes.
    absl::Duration keepalive_idle = absl::Seconds(15);
  };
  // Called on connection threads, concurrently. Exceptions become a 500.
  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(Options options, Handler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;

  // Stops accepting, closes idle connections, and lets requests in flight finish. After `grace`,
  // calls `on_grace_expired` (to cancel backend calls, say) and waits a little more. Returns
  // whether every connection thread finished; if not, the handler may still be running and the
  // process should exit without destroying what the handler uses.
  bool Stop(absl::Duration grace, const std::function<void()>& on_grace_expired = nullptr);

 private:
  struct State;
  explicit HttpServer(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

}  // namespace isorun::gateway
