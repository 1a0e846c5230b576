#include "services/kit/http_front.h"

#include <sys/resource.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <limits>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "services/kit/json.h"
#include "services/kit/log.h"

namespace isorun::http {
namespace {

std::chrono::steady_clock::duration Chrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(d);
}

// What an idle connection keeps of its read buffer: enough for a typical head, so 10,000 idle
// connections cost a few tens of MB, not max_buffer_bytes each.
constexpr size_t kIdleBufferBytes = 4096;
constexpr size_t kFirstRead = 1024;

}  // namespace

const char* CodeForStatus(int status) {
  switch (status) {
    case 400:
      return "INVALID_ARGUMENT";
    case 401:
      return "UNAUTHENTICATED";
    case 403:
      return "PERMISSION_DENIED";
    case 404:
      return "NOT_FOUND";
    case 408:
      return "DEADLINE_EXCEEDED";
    case 409:
      return "FAILED_PRECONDITION";
    case 413:
      return "INVALID_ARGUMENT";
    case 429:
      return "RESOURCE_EXHAUSTED";
    case 431:
      return "INVALID_ARGUMENT";
    case 499:
      return "CANCELLED";
    case 501:
      return "UNIMPLEMENTED";
    case 502:
      return "UNAVAILABLE";
    case 503:
      return "UNAVAILABLE";
    case 504:
      return "DEADLINE_EXCEEDED";
    default:
      return status >= 500 ? "INTERNAL" : "INVALID_ARGUMENT";
  }
}

std::string ErrorJson(int status, const std::string& reason, const std::string& message) {
  JsonWriter w;
  w.BeginObject().Key("error").BeginObject();
  w.Key("status").Int(status).Key("code").String(CodeForStatus(status));
  w.Key("reason").String(reason).Key("message").String(message);
  w.EndObject().EndObject();
  return w.Take();
}

StringResponse ErrorResponse(int status, const std::string& reason, const std::string& message,
                             unsigned version) {
  StringResponse r{static_cast<bhttp::status>(status), version};
  r.set(bhttp::field::content_type, "application/json");
  r.set(bhttp::field::cache_control, "no-store");
  r.body() = ErrorJson(status, reason, message);
  r.prepare_payload();
  return r;
}

Connection::Connection(Socket socket, FrontEndShared& shared,
                       std::unique_ptr<ConnectionHandler> handler)
    : executor_(socket.get_executor()),
      stream_(std::move(socket)),
      buffer_(shared.options.max_buffer_bytes),
      deadline_(executor_),
      shared_(shared),
      options_(shared.options),
      handler_(std::move(handler)) {
  beast::error_code ec;
  auto ep = stream_.socket().remote_endpoint(ec);
  if (!ec) {
    remote_ip_ = ep.address().to_string();
    remote_port_ = ep.port();
  }
  stream_.socket().set_option(tcp::no_delay(true), ec);
  if (options_.tcp_keepalive_idle > absl::ZeroDuration()) {
    const int fd = stream_.socket().native_handle();
    const int on = 1;
    const int interval =
        std::max(1, static_cast<int>(absl::ToInt64Seconds(options_.tcp_keepalive_interval)));
    const int count = std::max(1, options_.tcp_keepalive_probes);
    const int idle =
        std::max(1, static_cast<int>(absl::ToInt64Seconds(options_.tcp_keepalive_idle)));
    const unsigned user_timeout =
        static_cast<unsigned>(absl::ToInt64Milliseconds(options_.write_timeout));
    (void)::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
  }
}

Connection::~Connection() {
  if (counted_for_client_) shared_.limits.Close(remote_ip_);
  {
    absl::MutexLock lock(&shared_.mu);
    shared_.connections.erase(this);
  }
  shared_.open.fetch_sub(1);
}

std::string Connection::remote_peer() const { return absl::StrCat(remote_ip_, ":", remote_port_); }

void Connection::Start() {
  {
    absl::MutexLock lock(&shared_.mu);
    shared_.connections.emplace(this, weak_from_this());
  }
  asio::dispatch(executor_, [self = shared_from_this()] { self->ReadHead(); });
}

void Connection::Post(std::function<void()> fn) { asio::post(executor_, std::move(fn)); }

void Connection::ReadHead() {
  if (closed_) return;
  if (shared_.draining.load(std::memory_order_relaxed)) {
    Close();
    return;
  }
  parser_ = std::make_unique<RequestParser>();
  parser_->header_limit(static_cast<uint32_t>(options_.max_head_bytes));
  parser_->body_limit(std::numeric_limits<uint64_t>::max());  // handlers bound what they buffer
  // (not boost::none: Beast 1.74 compares a Content-Length with an empty optional as "over")
  if (buffer_.size() == 0 && buffer_.capacity() > kIdleBufferBytes) buffer_.shrink_to_fit();
  if (buffer_.size() > 0) {  // a pipelined request is already here
    OnFirstByte({}, 0);
    return;
  }
  idle_ = true;
  stream_.expires_after(Chrono(options_.idle_timeout));
  stream_.async_read_some(
      buffer_.prepare(kFirstRead),
      [self = shared_from_this()](beast::error_code ec, size_t n) { self->OnFirstByte(ec, n); });
}

void Connection::OnFirstByte(beast::error_code ec, size_t n) {
  idle_ = false;
  if (ec) {  // idle timeout, or the client went away between requests: nothing to answer
    Close();
    return;
  }
  buffer_.commit(n);
  stream_.expires_never();
  if (HeadBuffered(ec)) {
    OnHead(ec);
    return;
  }
  ArmDeadline(options_.head_timeout);
  bhttp::async_read_header(
      stream_, buffer_, *parser_,
      [self = shared_from_this()](beast::error_code ec, size_t) { self->OnHead(ec); });
}

bool Connection::HeadBuffered(beast::error_code& ec) {
  ec = {};
  const size_t used = parser_->put(buffer_.data(), ec);
  buffer_.consume(used);
  if (ec == bhttp::error::need_more) {
    ec = {};
    return false;
  }
  return ec || parser_->is_header_done();
}

void Connection::ArmDeadline(absl::Duration d) {
  timed_out_ = false;
  armed_ = true;
  deadline_.expires_after(Chrono(d));
  deadline_.async_wait([self = shared_from_this()](beast::error_code ec) {
    if (ec) return;  // disarmed
    self->timed_out_ = true;
    beast::error_code ignored;
    self->stream_.socket().cancel(ignored);
  });
}

void Connection::DisarmDeadline() {
  if (!armed_) return;
  armed_ = false;
  deadline_.cancel();
}

void Connection::OnHead(beast::error_code ec) {
  if (timed_out_) ec = beast::error::timeout;
  DisarmDeadline();
  timed_out_ = false;
  if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow) {
    Fail(431, "HEADERS_TOO_LARGE",
         absl::StrCat("the request head is larger than ", options_.max_head_bytes, " bytes"));
    return;
  }
  if (ec == beast::error::timeout) {
    Fail(408, "REQUEST_TIMEOUT", "the request head did not arrive in time");
    return;
  }
  if (ec && ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category() &&
      ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message) {
    Fail(400, "MALFORMED_REQUEST", absl::StrCat("malformed request: ", ec.message()));
    return;
  }
  if (ec) {
    Close();
    return;
  }
  stream_.expires_never();
  if (options_.max_requests_per_client_per_sec > 0) {
    absl::Duration wait;
    if (!shared_.limits.AllowRequest(remote_ip_, absl::Now(), &wait)) {
      Fail(429, "CLIENT_RATE_LIMIT",
           absl::StrCat("this address sent more than ", options_.max_requests_per_client_per_sec,
                        " requests a second; slow down"),
           wait);
      return;
    }
  }
  handler_->OnRequest(shared_from_this());
}

void Connection::ReadBody(size_t limit, std::function<void(beast::error_code, std::string)> done,
                          bool answer_too_large) {
  if (parser_->content_length() && *parser_->content_length() > limit) {
    if (answer_too_large) {
      Fail(413, "BODY_TOO_LARGE", absl::StrCat("the body is larger than ", limit, " bytes"));
    }
    done(bhttp::error::body_limit, "");
    return;
  }
  answer_too_large_ = answer_too_large;
  auto body = std::make_shared<std::string>();
  if (parser_->get()[bhttp::field::expect] == "100-continue" && !parser_->is_done()) {
    static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    stream_.expires_after(Chrono(options_.write_timeout));
    asio::async_write(stream_, asio::buffer(kContinue),
                      [self = shared_from_this(), limit, body, done = std::move(done)](
                          beast::error_code ec, size_t) mutable {
                        if (ec) {
                          self->Close();
                          done(ec, "");
                          return;
                        }
                        self->ReadBodySome(limit, body, std::move(done));
                      });
    return;
  }
  ReadBodySome(limit, body, std::move(done));
}

void Connection::ReadBodySome(size_t limit, std::shared_ptr<std::string> body,
                              std::function<void(beast::error_code, std::string)> done) {
  if (parser_->is_done()) {
    done({}, std::move(*body));
    return;
  }
  if (body->size() > limit) {
    if (answer_too_large_) {
      Fail(413, "BODY_TOO_LARGE", absl::StrCat("the body is larger than ", limit, " bytes"));
    }
    done(bhttp::error::body_limit, "");
    return;
  }
  constexpr size_t kPiece = 16 * 1024;
  const size_t old = body->size();
  body->resize(old + kPiece);
  parser_->get().body().data = body->data() + old;
  parser_->get().body().size = kPiece;
  ArmDeadline(options_.body_timeout);
  bhttp::async_read_some(
      stream_, buffer_, *parser_,
      [self = shared_from_this(), limit, body, old, done = std::move(done)](beast::error_code ec,
                                                                            size_t) mutable {
        self->DisarmDeadline();
        if (self->timed_out_) ec = beast::error::timeout;
        body->resize(old + kPiece - self->parser_->get().body().size);
        if (ec == bhttp::error::need_buffer) ec = {};
        if (ec == beast::error::timeout) {
          self->Fail(408, "REQUEST_TIMEOUT", "the request body did not arrive in time");
          done(ec, "");
          return;
        }
        if (ec == bhttp::error::buffer_overflow) {
          self->Fail(400, "MALFORMED_REQUEST", "a chunk line or the trailers are too long");
          done(ec, "");
          return;
        }
        if (ec && ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category() &&
            ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message) {
          self->Fail(400, "MALFORMED_REQUEST", absl::StrCat("malformed body: ", ec.message()));
          done(ec, "");
          return;
        }
        if (ec) {
          self->Close();
          done(ec, "");
          return;
        }
        self->ReadBodySome(limit, body, std::move(done));
      });
}

void Connection::Reply(StringResponse response, std::function<void()> written) {
  const bool keep = response.keep_alive() && parser_->get().keep_alive() && parser_->is_done() &&
                    !shared_.draining.load(std::memory_order_relaxed);
  response.keep_alive(keep);
  const unsigned code = response.result_int();
  if (code < 200 || code == 204 || code == 304) {
    response.erase(bhttp::field::content_length);  // RFC 9110: no body and no length
    response.body().clear();
  } else {
    response.prepare_payload();
  }
  auto msg = std::make_shared<StringResponse>(std::move(response));
  stream_.expires_after(Chrono(options_.write_timeout));
  bhttp::async_write(stream_, *msg,
                     [self = shared_from_this(), msg, keep, written = std::move(written)](
                         beast::error_code ec, size_t) {
                       if (written) written();
                       if (ec) {
                         self->Close();
                         return;
                       }
                       self->Finish(keep);
                     });
}

void Connection::Finish(bool keep_alive) {
  // A body the handler left unread would be taken for the next request: close instead.
  if (!keep_alive || !parser_->is_done()) {
    Close();
    return;
  }
  ReadHead();
}

void Connection::Close() {
  if (closed_) return;
  closed_ = true;
  idle_ = false;
  DisarmDeadline();
  deadline_.cancel();
  beast::error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  // A request still (partly) on the wire: drain it briefly, or the close would reset the
  // connection and the client could lose the answer it was sent.
  if (parser_ && !parser_->is_done() && (parser_->got_some() || buffer_.size() > 0)) {
    buffer_.consume(buffer_.size());
    stream_.expires_after(std::chrono::seconds(2));
    return Linger(0);
  }
  stream_.close();
}

void Connection::Linger(size_t drained) {
  constexpr size_t kMaxDrain = size_t{4} << 20;
  const size_t room = std::min<size_t>(4096, buffer_.max_size());
  stream_.async_read_some(buffer_.prepare(room), [self = shared_from_this(), drained](
                                                     beast::error_code ec, size_t n) {
    self->buffer_.consume(self->buffer_.size());
    if (ec || drained + n > kMaxDrain) {
      self->stream_.close();
      return;
    }
    self->Linger(drained + n);
  });
}

void Connection::CloseNow() {
  closed_ = true;
  idle_ = false;
  DisarmDeadline();
  stream_.close();
}

void Connection::Fail(int status, const std::string& reason, const std::string& message,
                      absl::Duration retry_after) {
  if (closed_) return;
  auto msg = std::make_shared<StringResponse>(ErrorResponse(status, reason, message));
  if (retry_after > absl::ZeroDuration()) {
    msg->set(bhttp::field::retry_after,
             std::to_string(std::max<int64_t>(1, absl::ToInt64Seconds(absl::Ceil(
                                                     retry_after, absl::Seconds(1))))));
  }
  msg->keep_alive(false);
  stream_.expires_after(Chrono(options_.write_timeout));
  bhttp::async_write(stream_, *msg, [self = shared_from_this(), msg](beast::error_code, size_t) {
    self->Close();
  });
}

FrontEnd::FrontEnd(FrontEndOptions options, HandlerFactory factory)
    : shared_(std::make_unique<FrontEndShared>(std::move(options))) {
  shared_->factory = std::move(factory);
  const int threads = std::max(1, shared_->options.threads);
  for (int i = 0; i < threads; ++i) {
    // Concurrency hint 1: one thread runs each, so asio skips waking others for every handler.
    contexts_.push_back(std::make_unique<asio::io_context>(1));
  }
  acceptor_ = std::make_unique<tcp::acceptor>(*contexts_.front());
  accept_retry_ = std::make_unique<asio::steady_timer>(*contexts_.front());
}

absl::StatusOr<std::unique_ptr<FrontEnd>> FrontEnd::Start(FrontEndOptions options,
                                                          HandlerFactory factory) {
  std::string host;
  int port = 0;
  if (!SplitHostPort(options.address, &host, &port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad listen address \"", options.address, "\": want host:port"));
  }
  std::unique_ptr<FrontEnd> fe(new FrontEnd(std::move(options), std::move(factory)));
  beast::error_code ec;
  auto ip = asio::ip::make_address(host.empty() || host == "*" ? "0.0.0.0" : host, ec);
  if (ec && host == "localhost") ip = asio::ip::make_address("127.0.0.1", ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("bad listen host \"", host, "\""));
  tcp::endpoint ep(ip, static_cast<uint16_t>(port));
  fe->acceptor_->open(ep.protocol(), ec);
  if (!ec) fe->acceptor_->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) fe->acceptor_->bind(ep, ec);
  if (!ec) fe->acceptor_->listen(4096, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", fe->shared_->options.address, ": ", ec.message()));
  }
  fe->port_ = fe->acceptor_->local_endpoint().port();
  fe->Accept();
  for (auto& ioc : fe->contexts_) {
    // A context with no connection yet would return from run() at once.
    fe->work_.push_back(asio::make_work_guard(*ioc));
    fe->threads_.emplace_back([ioc = ioc.get()] {
      // Handlers are not supposed to throw; one that does must not end the thread silently.
      while (true) {
        try {
          ioc->run();
          return;
        } catch (const std::exception& e) {
          LogError("HTTP front end handler threw", {{"error", e.what()}});
        }
      }
    });
  }
  return fe;
}

void FrontEnd::Accept() {
  asio::io_context& target = *contexts_[next_context_];
  next_context_ = (next_context_ + 1) % contexts_.size();
  acceptor_->async_accept(
      target, [this](beast::error_code ec, Socket socket) { OnAccept(ec, std::move(socket)); });
}

void FrontEnd::OnAccept(beast::error_code ec, Socket socket) {
  if (ec == asio::error::operation_aborted || !acceptor_->is_open()) return;
  if (ec) {
    // Out of descriptors (EMFILE) and the like: try again shortly rather than spin.
    accept_retry_->expires_after(std::chrono::milliseconds(50));
    accept_retry_->async_wait([this](beast::error_code ec) {
      if (!ec && acceptor_->is_open()) Accept();
    });
    return;
  }
  FrontEndShared& s = *shared_;
  if (s.open.fetch_add(1) >= s.options.max_connections) {
    s.open.fetch_sub(1);
    Refuse(socket, 503, "TOO_MANY_CONNECTIONS",
           "the server has too many open connections; retry shortly");
  } else {
    beast::error_code ignored;
    const auto peer = socket.remote_endpoint(ignored);
    const std::string ip = ignored ? std::string() : peer.address().to_string();
    if (s.limits.enabled() && !s.limits.Open(ip, absl::Now())) {
      s.open.fetch_sub(1);
      Refuse(socket, 429, "CLIENT_CONNECTION_LIMIT",
             absl::StrCat("this address has ", s.options.max_connections_per_client,
                          " connections open, the most allowed; close some or retry later"));
    } else {
      auto c = std::make_shared<Connection>(std::move(socket), s, s.factory());
      c->counted_for_client_ = s.limits.enabled();
      c->Start();
    }
  }
  Accept();
}

void FrontEnd::Refuse(Socket& socket, int status, const std::string& reason,
                      const std::string& message) {
  // A fresh socket's send buffer takes this small answer at once; nothing waits for it.
  StringResponse r = ErrorResponse(status, reason, message);
  r.set(bhttp::field::retry_after, "1");
  r.keep_alive(false);
  r.prepare_payload();
  std::ostringstream out;
  out << r;
  const std::string bytes = out.str();
  (void)::send(socket.native_handle(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  beast::error_code ignored;
  socket.shutdown(tcp::socket::shutdown_send, ignored);
  socket.close(ignored);
}

void FrontEnd::ForEachConnection(std::function<void(Connection&)> fn) {
  std::vector<std::shared_ptr<Connection>> live;
  {
    absl::MutexLock lock(&shared_->mu);
    live.reserve(shared_->connections.size());
    for (const auto& [raw, weak] : shared_->connections) {
      if (auto c = weak.lock()) live.push_back(std::move(c));
    }
  }
  for (auto& c : live) {
    c->Post([c, fn] { fn(*c); });
  }
}

void FrontEnd::Drain() {
  if (shared_->draining.exchange(true)) return;
  asio::post(acceptor_->get_executor(), [this] {
    beast::error_code ec;
    acceptor_->close(ec);
    accept_retry_->cancel();
  });
  ForEachConnection([](Connection& c) {
    if (c.idle()) c.Close();
  });
}

void FrontEnd::Stop() {
  if (stopped_) return;
  stopped_ = true;
  shared_->draining = true;
  asio::post(acceptor_->get_executor(), [this] {
    beast::error_code ec;
    acceptor_->close(ec);
    accept_retry_->cancel();
  });
  ForEachConnection([](Connection& c) { c.CloseNow(); });
  // After the closes posted above (each context runs its handlers in order).
  for (auto& ioc : contexts_) asio::post(*ioc, [ioc = ioc.get()] { ioc->stop(); });
  work_.clear();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

FrontEnd::~FrontEnd() { Stop(); }

long RaiseOpenFileLimit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &rl);
    (void)::getrlimit(RLIMIT_NOFILE, &rl);
  }
  return static_cast<long>(rl.rlim_cur);
}

bool SplitHostPort(const std::string& address, std::string* host, int* port) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos) return false;
  int p = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 || p > 65535) return false;
  std::string h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  *host = h;
  *port = p;
  return true;
}

}  // namespace isorun::http
