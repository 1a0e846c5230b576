#pragma once

// Serves handlers that block (a create waits until its sandbox runs; a stream writes for as long
// as its command runs) on the event-driven front end (http_front.h): the I/O threads read and
// bound each request (head, body) and write each answer; the handler runs on a pool of worker
// threads that grows with the requests in progress (never with the connections: 10,000 idle,
// slow or kept-alive clients hold no thread) and shrinks when they are idle. This is how the
// public API and the scheduler's admin routes are served.
//
// On top of the front end's bounds (head 431, chunk lines and trailers 400, slow head or body
// 408), a body over `max_body_bytes` is not read: the handler gets `body_too_large` (and answers
// 413) and the connection closes after it.

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/kit/http_front.h"

namespace isorun::http {

struct Request {
  std::string method;  // "GET"
  std::string target;  // "/v1/sandboxes?state=RUNNING"
  // Header names lowercased, in arrival order.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // The body was over the size limit and was not read: the handler answers 413.
  bool body_too_large = false;
  std::string peer;  // "127.0.0.1:53412", for logs

  // The first header of that (lowercase) name.
  std::optional<std::string_view> Header(std::string_view lowercase_name) const {
    for (const auto& [name, value] : headers) {
      if (name == lowercase_name) return std::string_view(value);
    }
    return std::nullopt;
  }
};

// Writes one chunk of a streamed body; false once the client is gone. Blocks until the chunk is
// written (so a slow client slows its stream down, and memory stays at one chunk).
using ChunkWriter = std::function<bool(std::string_view chunk)>;

struct Response {
  int status = 200;
  // Content-Type, unless the body is empty.
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // When set, the body is streamed with chunked transfer encoding instead of `body`: the server
  // sends the head, then calls this (on the worker thread) with a writer. `on_client_gone` runs
  // (on another thread) when the client closes its connection while the stream runs.
  std::function<void(const ChunkWriter& write)> stream;
  std::function<void()> on_client_gone;
};

struct BlockingServerOptions {
  FrontEndOptions front;
  size_t max_body_bytes = 1 << 20;
  // Worker threads running handlers at most; requests beyond wait in line (up to
  // `max_queued`, then 503). Threads idle for `worker_idle` end (down to `min_workers`).
  int max_workers = 2048;
  int min_workers = 4;
  int max_queued = 10000;
  absl::Duration worker_idle = absl::Seconds(30);
};

class BlockingServer {
 public:
  // Runs on a worker thread, concurrently with other requests. Exceptions become a 500.
  using Handler = std::function<Response(const Request&)>;
  // Runs on an I/O thread before a request is queued: an answer that needs no blocking work
  // (a cached /healthz), or nullopt. Must not block.
  using FastPath = std::function<std::optional<Response>(const Request&)>;

  static absl::StatusOr<std::unique_ptr<BlockingServer>> Start(BlockingServerOptions options,
                                                               Handler handler,
                                                               FastPath fast_path = nullptr);
  ~BlockingServer();
  BlockingServer(const BlockingServer&) = delete;
  BlockingServer& operator=(const BlockingServer&) = delete;

  int port() const;
  int open_connections() const;
  // Requests accepted whose answer is not written yet.
  int requests_in_progress() const;

  // Stops accepting, closes idle connections, and lets requests in progress finish (their
  // connections close after the answer). After `grace`, calls `on_grace_expired` (to cancel
  // backend calls, say) and waits 5 s more. Returns whether every request finished; if not, a
  // handler may still run, and the process should exit without destroying what it uses.
  bool Stop(absl::Duration grace, const std::function<void()>& on_grace_expired = nullptr);

  struct State;

 private:
  explicit BlockingServer(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

}  // namespace isorun::http
