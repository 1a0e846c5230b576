#include "services/gateway/http_server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "services/gateway/render.h"
#include "services/gateway/strings.h"
#include "services/kit/log.h"
#include "services/kit/status.h"

namespace isorun::gateway {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

// What a connection thread is doing, for Stop(): only an idle connection is cut.
enum class Phase { kIdle, kBusy };

struct Connection {
  asio::io_context ioc;
  tcp::socket socket{ioc};
  std::optional<beast::tcp_stream> stream;
  Phase phase = Phase::kBusy;  // touched only on the connection's thread
};

std::chrono::steady_clock::duration Chrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(d);
}

// Runs one asynchronous operation to completion on the connection's own io_context (so that
// Beast's timeouts apply to what is otherwise a blocking, thread-per-connection flow).
template <typename Start>
beast::error_code RunOp(Connection& c, Start&& start) {
  beast::error_code result = asio::error::would_block;
  start([&result](beast::error_code ec, std::size_t) { result = ec; });
  c.ioc.restart();
  c.ioc.run();
  return result;
}

bool ParseAddress(const std::string& address, tcp::endpoint& out, std::string& error) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    error = "expected host:port";
    return false;
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  int port = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    error = "bad port";
    return false;
  }
  beast::error_code ec;
  asio::ip::address ip = host.empty() || host == "*"
                             ? asio::ip::address(asio::ip::address_v4::any())
                             : asio::ip::make_address(host, ec);
  if (ec) {
    // A name (localhost): resolve it.
    asio::io_context ioc;
    tcp::resolver resolver(ioc);
    auto results = resolver.resolve(host, std::to_string(port), ec);
    if (ec || results.empty()) {
      error = "cannot resolve " + host;
      return false;
    }
    out = results.begin()->endpoint();
    return true;
  }
  out = tcp::endpoint(ip, static_cast<unsigned short>(port));
  return true;
}

}  // namespace

struct HttpServer::State : std::enable_shared_from_this<State> {
  Options options;
  Handler handler;
  asio::io_context accept_ioc;
  tcp::acceptor acceptor{accept_ioc};
  std::thread accept_thread;
  int port = 0;

  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;                              // guarded by mu
  std::set<std::shared_ptr<Connection>> connections;  // guarded by mu

  void Accept();
  void OnAccepted(const std::shared_ptr<Connection>& conn);
  void Serve(const std::shared_ptr<Connection>& conn);
  bool ServeOne(Connection& c, beast::flat_buffer& buffer);
  void Reject(Connection& c, int status, std::string_view reason, std::string_view message);
  bool Write(Connection& c, HttpResponse& response, bool keep_alive);
  bool WriteStream(Connection& c, HttpResponse& response, bool keep_alive);
  void LingeringClose(Connection& c);
  bool Stopping() {
    std::lock_guard lock(mu);
    return stopping;
  }
};

void HttpServer::State::Accept() {
  auto conn = std::make_shared<Connection>();
  acceptor.async_accept(conn->socket, [self = shared_from_this(), conn](beast::error_code ec) {
    if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
    if (ec) {
      // Out of descriptors and the like: back off briefly rather than spin.
      LogWarn("accept failed", {{"error", ec.message()}});
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    } else {
      self->OnAccepted(conn);
    }
    self->Accept();
  });
}

void HttpServer::State::OnAccepted(const std::shared_ptr<Connection>& conn) {
  beast::error_code ec;
  conn->socket.set_option(tcp::no_delay(true), ec);
  // A vanished client (its host gone, no FIN or RST) shows as an error on the socket once the
  // probes or the unacknowledged data time out; a stream's watcher then kills the command.
  if (options.keepalive_idle > absl::ZeroDuration()) {
    const int fd = conn->socket.native_handle();
    const int on = 1, interval = 5, count = 3;
    const int idle = std::max(1, static_cast<int>(absl::ToInt64Seconds(options.keepalive_idle)));
    const unsigned user_timeout =
        static_cast<unsigned>(absl::ToInt64Milliseconds(options.write_timeout));
    (void)::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
  }
  std::unique_lock lock(mu);
  if (stopping) return;
  if (static_cast<int>(connections.size()) >= options.max_connections) {
    lock.unlock();
    // A fresh socket's send buffer takes this small answer without blocking.
    HttpResponse r =
        ErrorResponse(Error(absl::StatusCode::kUnavailable, "TOO_MANY_CONNECTIONS",
                            "the gateway has too many open connections; retry shortly"));
    http::response<http::string_body> res{http::status::service_unavailable, 11};
    res.set(http::field::content_type, "application/json");
    res.set(http::field::retry_after, "1");
    res.body() = r.body;
    res.keep_alive(false);
    res.prepare_payload();
    conn->socket.non_blocking(true, ec);
    http::write(conn->socket, res, ec);
    conn->socket.close(ec);
    return;
  }
  connections.insert(conn);
  lock.unlock();
  try {
    std::thread([self = shared_from_this(), conn] {
      self->Serve(conn);
      std::lock_guard lock(self->mu);
      self->connections.erase(conn);
      self->cv.notify_all();
    }).detach();
  } catch (const std::system_error& e) {
    LogError("cannot start a connection thread", {{"error", e.what()}});
    lock.lock();
    connections.erase(conn);
    cv.notify_all();
  }
}

void HttpServer::State::Serve(const std::shared_ptr<Connection>& conn) {
  Connection& c = *conn;
  c.stream.emplace(std::move(c.socket));
  beast::flat_buffer buffer;
  try {
    while (!Stopping() && ServeOne(c, buffer)) {
    }
  } catch (const std::exception& e) {
    LogError("connection failed", {{"error", e.what()}});
  }
  beast::error_code ec;
  c.stream->socket().shutdown(tcp::socket::shutdown_both, ec);
  c.stream->socket().close(ec);
}

void HttpServer::State::Reject(Connection& c, int status, std::string_view reason,
                               std::string_view message) {
  HttpResponse r =
      ErrorResponse(Error(absl::StatusCode::kInvalidArgument, reason, message), status);
  Write(c, r, /*keep_alive=*/false);
  LingeringClose(c);
}

// Serves one request; false when the connection should close.
bool HttpServer::State::ServeOne(Connection& c, beast::flat_buffer& buffer) {
  http::request_parser<http::string_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(options.max_header_bytes));
  parser.body_limit(options.max_body_bytes);

  c.phase = Phase::kIdle;
  c.stream->expires_after(Chrono(options.idle_timeout));
  beast::error_code ec = RunOp(c, [&](auto handler) {
    http::async_read_header(*c.stream, buffer, parser, std::move(handler));
  });
  c.phase = Phase::kBusy;
  if (ec == http::error::header_limit) {
    Reject(c, 431, "HEADERS_TOO_LARGE",
           Cat("the request head is larger than ", options.max_header_bytes, " bytes"));
    return false;
  }
  if (ec == http::error::body_limit) {
    // Content-Length over the limit is caught with the head.
  } else if (ec == http::error::end_of_stream || ec == asio::error::operation_aborted ||
             ec == beast::error::timeout || ec == asio::error::connection_reset ||
             ec == asio::error::eof) {
    return false;
  } else if (ec) {
    Reject(c, 400, "MALFORMED_REQUEST", Cat("malformed HTTP request: ", ec.message()));
    return false;
  }

  bool too_large = ec == http::error::body_limit ||
                   (parser.content_length() && *parser.content_length() > options.max_body_bytes);
  if (!too_large && !parser.is_done()) {
    auto expect = parser.get()[http::field::expect];
    if (absl::EqualsIgnoreCase(absl::string_view(expect.data(), expect.size()), "100-continue")) {
      http::response<http::empty_body> cont{http::status::continue_, 11};
      c.stream->expires_after(Chrono(options.write_timeout));
      if (RunOp(c, [&](auto handler) { http::async_write(*c.stream, cont, std::move(handler)); })) {
        return false;
      }
    }
    c.stream->expires_after(Chrono(options.read_timeout));
    ec = RunOp(
        c, [&](auto handler) { http::async_read(*c.stream, buffer, parser, std::move(handler)); });
    if (ec == http::error::body_limit) {
      too_large = true;
    } else if (ec == beast::error::timeout) {
      Reject(c, 408, "REQUEST_TIMEOUT", "the request body did not arrive in time");
      return false;
    } else if (ec) {
      if (ec != http::error::end_of_stream && ec != asio::error::eof &&
          ec != asio::error::connection_reset && ec != asio::error::operation_aborted) {
        Reject(c, 400, "MALFORMED_REQUEST", Cat("malformed HTTP request: ", ec.message()));
      }
      return false;
    }
  }

  const auto& msg = parser.get();
  HttpRequest request;
  request.method = std::string(msg.method_string());
  request.target = std::string(msg.target());
  for (const auto& field : msg) {
    request.headers.emplace_back(absl::AsciiStrToLower(absl::string_view(
                                     field.name_string().data(), field.name_string().size())),
                                 std::string(field.value()));
  }
  request.body_too_large = too_large;
  if (!too_large) request.body = std::move(parser.get().body());
  beast::error_code peer_ec;
  auto peer = c.stream->socket().remote_endpoint(peer_ec);
  if (!peer_ec) request.peer = Cat(peer.address().to_string(), ":", peer.port());
  const bool keep_alive = !too_large && msg.keep_alive();

  HttpResponse response;
  try {
    response = handler(request);
  } catch (const std::exception& e) {
    LogError("handler threw", {{"error", e.what()}});
    response = ErrorResponse(absl::InternalError("internal error"));
  } catch (...) {
    response = ErrorResponse(absl::InternalError("internal error"));
  }
  bool keep = keep_alive && !Stopping();
  bool ok = response.stream ? WriteStream(c, response, keep) : Write(c, response, keep);
  if (too_large) LingeringClose(c);
  return ok && keep;
}

bool HttpServer::State::Write(Connection& c, HttpResponse& response, bool keep_alive) {
  http::response<http::string_body> res;
  res.version(11);
  res.result(static_cast<unsigned>(response.status));
  if (!response.body.empty() && !response.content_type.empty()) {
    res.set(http::field::content_type, response.content_type);
  }
  for (const auto& [name, value] : response.headers) res.insert(name, value);
  res.keep_alive(keep_alive);
  if (response.status == 204 || response.status == 304 || response.status < 200) {
    // No body and, per RFC 9110, no Content-Length either (prepare_payload would add one).
    res.erase(http::field::content_type);
  } else {
    res.body() = std::move(response.body);
    res.prepare_payload();
  }
  c.stream->expires_after(Chrono(options.write_timeout));
  beast::error_code ec =
      RunOp(c, [&](auto handler) { http::async_write(*c.stream, res, std::move(handler)); });
  return !ec;
}

bool HttpServer::State::WriteStream(Connection& c, HttpResponse& response, bool keep_alive) {
  http::response<http::empty_body> head;
  head.version(11);
  head.result(static_cast<unsigned>(response.status));
  if (!response.content_type.empty()) head.set(http::field::content_type, response.content_type);
  for (const auto& [name, value] : response.headers) head.insert(name, value);
  head.keep_alive(keep_alive);
  head.chunked(true);
  http::response_serializer<http::empty_body> serializer{head};
  c.stream->expires_after(Chrono(options.write_timeout));
  if (RunOp(c, [&](auto handler) {
        http::async_write_header(*c.stream, serializer, std::move(handler));
      })) {
    if (response.on_client_gone) response.on_client_gone();
    return false;
  }

  // While the handler waits for output, nobody reads the socket: watch it for the client
  // hanging up, so the work behind the stream can stop at once.
  std::atomic<bool> finished{false};
  std::thread watcher;
  if (response.on_client_gone) {
    const int fd = c.stream->socket().native_handle();
    watcher = std::thread([&finished, &response, fd] {
      while (!finished.load()) {
        pollfd p{fd, POLLRDHUP, 0};
        if (poll(&p, 1, 100) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
          response.on_client_gone();
          return;
        }
      }
    });
  }
  bool failed = false;
  ChunkWriter write = [&](std::string_view data) {
    if (failed) return false;
    if (data.empty()) return true;  // an empty chunk would end the body
    c.stream->expires_after(Chrono(options.write_timeout));
    beast::error_code ec = RunOp(c, [&](auto handler) {
      asio::async_write(*c.stream, http::make_chunk(asio::const_buffer(data.data(), data.size())),
                        std::move(handler));
    });
    failed = static_cast<bool>(ec);
    return !failed;
  };
  try {
    response.stream(write);
  } catch (const std::exception& e) {
    LogError("stream handler threw", {{"error", e.what()}});
    failed = true;  // cannot tell the client after the head: cut the body short
  }
  finished = true;
  if (watcher.joinable()) watcher.join();
  if (failed) return false;
  c.stream->expires_after(Chrono(options.write_timeout));
  beast::error_code ec = RunOp(c, [&](auto handler) {
    asio::async_write(*c.stream, http::make_chunk_last(), std::move(handler));
  });
  return !ec;
}

// After answering a request whose body was not read: stop sending, then read and drop what the
// client still sends for a moment, so that closing does not reset the connection before the
// client has read the answer.
void HttpServer::State::LingeringClose(Connection& c) {
  beast::error_code ec;
  c.stream->socket().shutdown(tcp::socket::shutdown_send, ec);
  c.stream->expires_after(std::chrono::seconds(2));
  std::array<char, 16384> sink;
  size_t drained = 0;
  while (drained < 8 * options.max_body_bytes + (1 << 20)) {
    size_t n = 0;
    ec = RunOp(c, [&](auto handler) {
      c.stream->async_read_some(asio::buffer(sink), [&n, h = std::move(handler)](
                                                        beast::error_code e, size_t got) mutable {
        n = got;
        h(e, got);
      });
    });
    if (ec) break;
    drained += n;
  }
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(Options options, Handler handler) {
  auto state = std::make_shared<State>();
  state->options = std::move(options);
  state->handler = std::move(handler);
  tcp::endpoint endpoint;
  std::string error;
  if (!ParseAddress(state->options.address, endpoint, error)) {
    return absl::InvalidArgumentError(
        Cat("bad HTTP address \"", state->options.address, "\": ", error));
  }
  beast::error_code ec;
  state->acceptor.open(endpoint.protocol(), ec);
  if (!ec) state->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) state->acceptor.bind(endpoint, ec);
  if (!ec) state->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        Cat("cannot listen for HTTP on ", state->options.address, ": ", ec.message()));
  }
  state->port = state->acceptor.local_endpoint().port();
  state->Accept();
  state->accept_thread = std::thread([state] {
    try {
      state->accept_ioc.run();
    } catch (const std::exception& e) {
      LogError("HTTP acceptor stopped", {{"error", e.what()}});
    }
  });
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(state)));
}

HttpServer::~HttpServer() { Stop(absl::Seconds(5)); }

int HttpServer::port() const { return state_->port; }

bool HttpServer::Stop(absl::Duration grace, const std::function<void()>& on_grace_expired) {
  State& s = *state_;
  {
    std::lock_guard lock(s.mu);
    if (s.stopping) {
      // Already stopped (or stopping): just report.
      return s.connections.empty();
    }
    s.stopping = true;
  }
  asio::post(s.accept_ioc, [state = state_] {
    beast::error_code ec;
    state->acceptor.close(ec);
  });
  if (s.accept_thread.joinable()) s.accept_thread.join();

  std::unique_lock lock(s.mu);
  for (const auto& conn : s.connections) {
    // Runs on the connection's thread, at its next I/O: cuts it only while it waits for a
    // request; a busy one sees `stopping` after its answer and closes.
    asio::post(conn->ioc, [weak = std::weak_ptr<Connection>(conn)] {
      auto conn = weak.lock();
      if (conn && conn->phase == Phase::kIdle && conn->stream) {
        beast::error_code ec;
        conn->stream->socket().cancel(ec);
        conn->stream->cancel();
      }
    });
  }
  auto all_done = [&s] { return s.connections.empty(); };
  if (s.cv.wait_for(lock, absl::ToChronoNanoseconds(grace), all_done)) return true;
  lock.unlock();
  if (on_grace_expired) on_grace_expired();
  lock.lock();
  return s.cv.wait_for(lock, std::chrono::seconds(5), all_done);
}

}  // namespace isorun::gateway
