#pragma once

// One event-driven HTTP/1.1 front end (Boost.Beast's async API) for every HTTP listener of the
// control plane: the public-URL proxy now; the public API and the scheduler's admin routes are
// meant to move onto it. A few I/O threads drive every connection, each thread with an
// io_context of its own (as nginx's workers and Envoy's dispatchers): a connection is accepted
// onto one of them and all of its work runs on that thread, so no strand, no lock and no
// cross-thread wake-up sits on the path of a request, and no thread is held by an idle, slow or
// streaming client.
//
// What the front end guarantees before a handler sees anything:
// - Every read is bounded. The request head must fit in `max_head_bytes` (431 beyond); the read
//   buffer never grows past `max_buffer_bytes`, which bounds a chunk-size line with its
//   extensions and the trailers too (400 beyond); `ReadBody` bounds a buffered body (413).
// - Every read and write has a deadline: `idle_timeout` for the next request on a kept-alive
//   connection (closed quietly), `head_timeout` from the first byte of a head to its end (408),
//   `body_timeout` for each read of a body and `write_timeout` for each write.
// - At most `max_connections` connections; beyond it new ones get a 503 and are closed at once.
// - Per client address, before any handler (so before authentication): at most
//   `max_connections_per_client` connections (429 and closed beyond) and
//   `max_requests_per_client_per_sec` requests (a token bucket; 429 beyond).
//
// A handler gets a connection once per request head (OnRequest) and owns it until it calls
// Finish() or Reply(), which read the next head when the connection stays open. Handlers that
// stream (the proxy) use stream(), buffer() and parser() directly; every callback of theirs
// runs on the connection's thread (its executor(): other sockets a handler opens use it too).
// Work that blocks (Postgres, a unary gRPC call) runs elsewhere and comes back through Post().

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/kit/client_limits.h"

namespace isorun::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

// A connection's executor: its I/O thread's io_context (one thread runs it, so handlers bound to
// it never run concurrently). Streams use it directly rather than Beast's type-erased default
// executor, which costs a copy and a reference count per operation.
using Executor = asio::io_context::executor_type;
using Socket = tcp::socket::rebind_executor<Executor>::other;
using Stream = beast::basic_stream<tcp, Executor, beast::unlimited_rate_policy>;
using RequestParser = bhttp::request_parser<bhttp::buffer_body>;
using StringResponse = bhttp::response<bhttp::string_body>;

struct FrontEndOptions {
  std::string address = "127.0.0.1:0";  // "host:port"; port 0 picks one
  int threads = 2;  // I/O threads, each with its own io_context
  size_t max_head_bytes = size_t{16} * 1024;
  // The most a connection buffers of what it read and has not handed on (head, chunk lines,
  // trailers, pieces of a body). Also what an idle connection may keep allocated at most.
  size_t max_buffer_bytes = size_t{64} * 1024;
  int max_connections = 20000;
  absl::Duration idle_timeout = absl::Seconds(75);
  absl::Duration head_timeout = absl::Seconds(15);
  absl::Duration body_timeout = absl::Seconds(60);
  absl::Duration write_timeout = absl::Seconds(60);
  // TCP keep-alive probes after this much silence (then every tcp_keepalive_interval;
  // tcp_keepalive_probes unanswered end the connection), and a TCP_USER_TIMEOUT of write_timeout:
  // a client whose host vanished without a FIN or a RST shows as an error on its socket. Zero:
  // neither.
  absl::Duration tcp_keepalive_idle = absl::ZeroDuration();
  absl::Duration tcp_keepalive_interval = absl::Seconds(5);
  int tcp_keepalive_probes = 3;
  // Per client address (0: no cap). Loopback and private peers count like any other.
  int max_connections_per_client = 0;
  double max_requests_per_client_per_sec = 0;
  double client_request_burst = 0;  // 0: twice the rate
};

class Connection;
struct FrontEndShared;

// Per-connection state of a handler (the proxy keeps its upstream here). Created when a
// connection is accepted, destroyed when it closes; every call comes on the connection's thread.
class ConnectionHandler {
 public:
  virtual ~ConnectionHandler() = default;
  // A request head was read (the body, if any, is still on the wire). The handler answers and
  // then calls Finish/Reply, or Close.
  virtual void OnRequest(std::shared_ptr<Connection> connection) = 0;
};

using HandlerFactory = std::function<std::unique_ptr<ConnectionHandler>()>;

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Socket socket, FrontEndShared& shared, std::unique_ptr<ConnectionHandler> handler);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void Start();

  // The request being handled: head read, body (if any) not yet.
  RequestParser& parser() { return *parser_; }
  const bhttp::request<bhttp::buffer_body>& request() const { return parser_->get(); }
  Stream& stream() { return stream_; }
  beast::flat_buffer& buffer() { return buffer_; }
  const Executor& executor() const { return executor_; }
  const std::string& remote_ip() const { return remote_ip_; }
  std::string remote_peer() const;  // "ip:port" 
  const FrontEndOptions& options() const { return options_; }

  // Reads the whole body (at most `limit` bytes: 413 and closed beyond it, without reading it;
  // with `answer_too_large` false, `done` gets body_limit and the handler answers).
  void ReadBody(size_t limit, std::function<void(beast::error_code, std::string)> done,
                bool answer_too_large = true);
  // Writes `response` (Content-Length set here), then reads the next request when the request and
  // the response both allow keep-alive; closes otherwise. `written` runs after the write.
  void Reply(StringResponse response, std::function<void()> written = nullptr);
  // The handler wrote its answer itself: read the next request, or close.
  void Finish(bool keep_alive);
  // Closes; when a request body is left unread, first stops sending and drains what the client
  // still sends for a moment (bounded), so the close does not reset the connection under an
  // answer the client has not read yet.
  void Close();
  // Waiting for the first byte of a request (so it may be closed without cutting an answer).
  bool idle() const { return idle_; }
  // Runs `fn` on this connection's thread (from any thread).
  void Post(std::function<void()> fn);

 private:
  void ReadHead();
  void OnFirstByte(beast::error_code ec, size_t n);
  // Parses what the buffer holds: true when the whole head was there (the usual case: one read
  // brings a whole small request), so no deadline timer or further read is needed.
  bool HeadBuffered(beast::error_code& ec);
  void OnHead(beast::error_code ec);
  void ReadBodySome(size_t limit, std::shared_ptr<std::string> body,
                    std::function<void(beast::error_code, std::string)> done);
  // An answer the front end makes itself (400/408/413/429/431), then close.
  void Fail(int status, const std::string& reason, const std::string& message,
            absl::Duration retry_after = absl::ZeroDuration());
  void Linger(size_t drained);
  // Stop: closed at once, whatever is in flight.
  void CloseNow();
  friend class FrontEnd;
  // A read deadline that leaves the socket open (Beast's stream timeouts close it), so the
  // client still gets its 408: on expiry the pending read is cancelled and timed_out_ set.
  void ArmDeadline(absl::Duration d);
  void DisarmDeadline();

  Executor executor_;
  Stream stream_;
  beast::flat_buffer buffer_;
  std::unique_ptr<RequestParser> parser_;
  asio::steady_timer deadline_;
  bool timed_out_ = false;
  bool armed_ = false;
  FrontEndShared& shared_;
  const FrontEndOptions& options_;
  std::unique_ptr<ConnectionHandler> handler_;
  std::string remote_ip_;
  int remote_port_ = 0;
  bool counted_for_client_ = false;
  bool answer_too_large_ = true;
  bool idle_ = false;
  bool closed_ = false;
};

// What the front end and its connections share. Outlives every connection.
struct FrontEndShared {
  explicit FrontEndShared(FrontEndOptions o)
      : options(std::move(o)),
        limits(options.max_connections_per_client, options.max_requests_per_client_per_sec,
               options.client_request_burst) {}
  const FrontEndOptions options;
  HandlerFactory factory;
  std::atomic<int> open{0};
  std::atomic<bool> draining{false};  // keep-alive ends; no new connections
  ClientLimits limits;
  // Every live connection, so Drain and Stop can reach them.
  absl::Mutex mu;
  absl::flat_hash_map<Connection*, std::weak_ptr<Connection>> connections ABSL_GUARDED_BY(mu);
};

// An API error body of API.md: {"error": {"status", "code", "reason", "message"}}.
std::string ErrorJson(int status, const std::string& reason, const std::string& message);
// The gRPC code name API.md pairs with an HTTP status (404 -> NOT_FOUND, ...).
const char* CodeForStatus(int status);
StringResponse ErrorResponse(int status, const std::string& reason, const std::string& message,
                             unsigned version = 11);

class FrontEnd {
 public:
  static absl::StatusOr<std::unique_ptr<FrontEnd>> Start(FrontEndOptions options,
                                                         HandlerFactory factory);
  ~FrontEnd();
  FrontEnd(const FrontEnd&) = delete;
  FrontEnd& operator=(const FrontEnd&) = delete;

  int port() const { return port_; }
  int open_connections() const { return shared_->open.load(); }
  // Stops accepting, closes idle connections, and ends the others after their current answer.
  void Drain();
  // Stops accepting and ends every connection.
  void Stop();

 private:
  FrontEnd(FrontEndOptions options, HandlerFactory factory);
  void Accept();
  void OnAccept(beast::error_code ec, Socket socket);
  // Answers a connection that is not served (503 over capacity, 429 over its address's cap).
  static void Refuse(Socket& socket, int status, const std::string& reason,
                     const std::string& message);
  // Runs `fn` on the thread of every live connection.
  void ForEachConnection(std::function<void(Connection&)> fn);

  // Connections refer to what is shared: declared before the io_contexts, so it outlives the
  // handlers those destroy.
  std::unique_ptr<FrontEndShared> shared_;
  // One per I/O thread; the acceptor runs on the first and deals connections out in turn.
  std::vector<std::unique_ptr<asio::io_context>> contexts_;
  std::unique_ptr<tcp::acceptor> acceptor_;
  std::unique_ptr<asio::steady_timer> accept_retry_;  // after EMFILE and the like
  size_t next_context_ = 0;  // the acceptor's thread only
  std::vector<asio::executor_work_guard<Executor>> work_;
  std::vector<std::thread> threads_;
  int port_ = 0;
  bool stopped_ = false;
};

// Raises the soft limit of open files to the hard limit (10,000 connections need more than the
// usual 1,024). Returns the new soft limit.
long RaiseOpenFileLimit();

// host:port split; port 0 when absent or invalid.
bool SplitHostPort(const std::string& address, std::string* host, int* port);

}  // namespace isorun::http
