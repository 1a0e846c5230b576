#include "services/gateway/public_proxy.h"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/gateway/render.h"
#include "services/kit/byte_relay.h"
#include "services/kit/log.h"
#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using ResponseParser = bhttp::response_parser<bhttp::buffer_body>;
using http::Stream;
using http::TunnelStream;

bool IsTls(const Stream&) { return false; }
bool IsTls(const TunnelStream& s) { return s.tls(); }

// Bodies move a piece at a time per direction; the piece exists only while a body moves.
constexpr size_t kPiece = 64 * 1024;
// What a kept tunnel's read buffer keeps between requests (a typical response head).
constexpr size_t kUpstreamIdleBuffer = 4096;

absl::string_view Sv(beast::string_view s) { return absl::string_view(s.data(), s.size()); }
constexpr size_t kMaxUpstreamHead = 64 * 1024;

std::chrono::steady_clock::duration Chrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(d);
}

bool IsHex(absl::string_view s) {
  for (char c : s) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// Hop-by-hop headers (RFC 9110 7.6.1) and the framing headers the proxy sets itself.
bool HopByHop(absl::string_view name) {
  static const char* kNames[] = {
      "connection", "keep-alive",     "proxy-connection", "transfer-encoding",  "te", "trailer",
      "upgrade",    "content-length", "expect",           "proxy-authorization"};
  for (const char* n : kNames) {
    if (absl::EqualsIgnoreCase(name, n)) return true;
  }
  return false;
}

std::string HtmlEscape(absl::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// One client connection: relays each request to a tunnel into the sandbox its Host names, and
// keeps that tunnel for the next request to the same sandbox port. Runs on the connection's
// strand only. Callbacks hold the connection (which owns this session) alive; each exchange has
// a generation, so callbacks of an exchange that was given up do nothing.
class ProxySession : public http::ConnectionHandler {
 public:
  explicit ProxySession(PublicProxy& proxy) : proxy_(proxy) {}
  ~ProxySession() override {
    EndExchange();
    ReleaseUpstream();
  }

  void OnRequest(std::shared_ptr<http::Connection> c) override {
    c_ = c.get();
    ++gen_;
    request_done_ = response_done_ = false;
    exchange_open_ = true;
    proxy_.requests_total().Increment();
    const auto& req = c_->request();
    host_ = std::string(Sv(req[bhttp::field::host]));
    if (!ParsePublicHost(host_, proxy_.options().public_domain, &port_, &public_id_)) {
      return Fail(Error(absl::StatusCode::kNotFound, "NOT_FOUND",
                        absl::StrCat("no sandbox answers at host \"", host_,
                                     "\": public URLs look like <port>-<publicId>.",
                                     proxy_.options().public_domain)));
    }
    // A kept-alive client asks the same sandbox again and again: its last answer serves until
    // the cache's TTL ends, with no lookup and no lock on the way.
    const absl::Time now = absl::Now();
    if (have_resolved_ && public_id_ == resolved_id_ && now < resolved_until_) {
      return OnResolved(resolved_);
    }
    if (proxy_.Cached(public_id_, now, &resolved_, &resolved_until_)) {
      have_resolved_ = true;
      resolved_id_ = public_id_;
      return OnResolved(resolved_);
    }
    const uint64_t gen = gen_;
    proxy_.Resolve(public_id_, [c, this, gen](PublicProxy::Resolved r) {
      c->Post([c, this, gen, r = std::move(r)]() mutable {
        if (gen != gen_) return;
        // Answers are kept as long as the proxy's cache keeps them; failures are not.
        have_resolved_ = r.ok() || r.status().code() == absl::StatusCode::kNotFound;
        resolved_id_ = public_id_;
        resolved_until_ = absl::Now() + proxy_.options().resolve_ttl;
        resolved_ = r;
        OnResolved(std::move(r));
      });
    });
  }

 private:
  std::shared_ptr<http::Connection> Self() { return c_->shared_from_this(); }

  // The public id's lookup is stale (the tunnel says the sandbox is gone, or it was resumed).
  void ForgetResolved() {
    have_resolved_ = false;
    proxy_.Forget(public_id_);
  }

  void OnResolved(PublicProxy::Resolved r) {
    if (!r.ok()) {
      if (r.status().code() == absl::StatusCode::kNotFound) return NotFound();
      return Fail(Error(absl::StatusCode::kUnavailable, "UNAVAILABLE",
                        "the control plane cannot look up this sandbox now; retry shortly"));
    }
    const v1::Sandbox& sb = (*r)->sandbox();
    switch (sb.state()) {
      case v1::RUNNING:
        return Proceed(sb.id(), (*r)->tunnel_address());
      case v1::HIBERNATED: {
        const uint64_t gen = gen_;
        auto c = Self();
        std::string tunnel = (*r)->tunnel_address();
        proxy_.Resume(sb, [c, this, gen, tunnel](absl::StatusOr<v1::Sandbox> resumed) {
          c->Post([c, this, gen, tunnel, resumed = std::move(resumed)] {
            if (gen != gen_) return;
            ForgetResolved();
            if (!resumed.ok()) {
              if (resumed.status().code() == absl::StatusCode::kNotFound) return NotFound();
              return Fail(resumed.status());
            }
            if (resumed->state() != v1::RUNNING) return NotFound();
            Proceed(resumed->id(), tunnel);
          });
        });
        return;
      }
      case v1::PENDING:
      case v1::STARTING:
        return Fail(Error(absl::StatusCode::kUnavailable, "SANDBOX_STARTING",
                          "the sandbox is still starting; retry shortly"));
      default:
        return NotFound();
    }
  }

  void NotFound() {
    Fail(Error(absl::StatusCode::kNotFound, "NOT_FOUND",
               absl::StrCat("no running sandbox has the public id ", public_id_,
                            " (unknown, or it has ended)")));
  }

  void Proceed(const std::string& sandbox_id, const std::string& tunnel) {
    sandbox_id_ = sandbox_id;
    tunnel_ = tunnel;
    if (up_ && up_sandbox_ == sandbox_id && up_port_ == port_ && up_->socket().is_open()) {
      reused_ = true;
      BeginExchange(sandbox_id);
      return SendHead();
    }
    reused_ = false;
    ReleaseUpstream();
    if (tunnel.empty()) {
      return Fail(Error(absl::StatusCode::kUnavailable, "UNAVAILABLE",
                        "the sandbox's runner has no public-URL tunnel"));
    }
    if (!proxy_.AcquireSlot(sandbox_id)) {
      return Fail(
          Error(absl::StatusCode::kResourceExhausted, "CONNECTION_LIMIT",
                absl::StrCat("the sandbox has ", proxy_.options().max_connections_per_sandbox,
                             " open connections through its public URLs, the most "
                             "allowed; close some or retry later"),
                proxy_.options().max_connections_per_sandbox,
                proxy_.options().max_connections_per_sandbox, 1));
    }
    slot_sandbox_ = sandbox_id;
    BeginExchange(sandbox_id);
    std::string host;
    int port = 0;
    beast::error_code ec;
    asio::ip::address ip;
    if (http::SplitHostPort(tunnel, &host, &port)) {
      ip = asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host, ec);
    }
    if (port == 0 || ec) {
      return Fail(Error(absl::StatusCode::kUnavailable, "UNAVAILABLE",
                        "the sandbox's runner advertises an unusable tunnel address"));
    }
    up_ = std::make_unique<TunnelStream>(c_->executor(), proxy_.options().tunnel_tls.get());
    up_buf_ = std::make_unique<beast::flat_buffer>(kMaxUpstreamHead);
    // Beast reads at most the buffer's spare capacity (512 bytes at least): give it room.
    up_buf_->reserve(kUpstreamIdleBuffer);
    up_sandbox_ = sandbox_id;
    up_port_ = port_;
    up_->expires_after(Chrono(proxy_.options().tunnel_timeout));
    const uint64_t gen = gen_;
    up_->async_connect(
        tcp::endpoint(ip, static_cast<uint16_t>(port)),
        asio::bind_executor(c_->executor(), [c = Self(), this, gen](beast::error_code ec) {
          if (gen != gen_) return;
          if (ec) return TunnelFailed("cannot reach the sandbox's runner");
          beast::error_code ignored;
          up_->socket().set_option(tcp::no_delay(true), ignored);
          if (!up_->tls()) return SendPreamble();
          up_->Handshake(http::ssl::stream_base::client, "runner",
                         [c, this, gen](beast::error_code ec, std::string peer) {
                           if (gen != gen_) return;
                           if (ec == asio::error::access_denied) {
                             LogError("a tunnel's peer is not a runner; refused",
                                      {{"identity", peer}, {"tunnel", tunnel_}});
                             return TunnelFailed("the sandbox's runner is not who it should be");
                           }
                           if (ec) {
                             LogWarn("TLS with a runner's tunnel failed",
                                     {{"error", ec.message()}, {"tunnel", tunnel_}});
                             return TunnelFailed("cannot reach the sandbox's runner over TLS");
                           }
                           SendPreamble();
                         });
        }));
  }

  void SendPreamble() {
    auto line = std::make_shared<std::string>(absl::StrCat(
        "ISORUN-TUNNEL/1 ",
        proxy_.options().tunnel_token.empty() ? "-" : proxy_.options().tunnel_token, " ",
        up_sandbox_, " ", port_, "\n"));
    const uint64_t gen = gen_;
    asio::async_write(
        *up_, asio::buffer(*line),
        asio::bind_executor(c_->executor(), [c = Self(), this, gen, line](beast::error_code ec,
                                                                          size_t) {
          if (gen != gen_) return;
          if (ec) return TunnelFailed("the sandbox's runner closed the tunnel");
          // A string adapter: asio copies a flat_buffer it is given.
          asio::async_read_until(
              *up_, asio::dynamic_buffer(answer_, 256), '\n',
              asio::bind_executor(c_->executor(), [c, this, gen](beast::error_code ec, size_t n) {
                if (gen != gen_) return;
                if (ec) return TunnelFailed("the sandbox's runner did not answer");
                OnTunnelAnswer(n);
              }));
        }));
  }

  void OnTunnelAnswer(size_t n) {
    std::string line = answer_.substr(0, n - 1);
    if (answer_.size() > n) {  // the server spoke first: its bytes go to the response parser
      const size_t rest = answer_.size() - n;
      auto b = up_buf_->prepare(rest);
      std::memcpy(b.data(), answer_.data() + n, rest);
      up_buf_->commit(rest);
    }
    answer_.clear();
    if (line == "OK") return SendHead();
    ReleaseUpstream();
    if (line == "ERR NO_SANDBOX") {
      ForgetResolved();
      return NotFound();
    }
    if (absl::StartsWith(line, "ERR REFUSED")) {
      return Fail(Error(absl::StatusCode::kUnavailable, "PORT_NOT_LISTENING",
                        absl::StrCat("the sandbox is running, but nothing listens on port ", port_,
                                     " in it; start a server on that port (any address, "
                                     "127.0.0.1 included) and retry")),
                  502);
    }
    if (line == "ERR AUTH") {
      LogError(
          "the runner refused the gateway's tunnel: check --tunnel_token and the TLS "
          "certificates on both");
    }
    Fail(Error(absl::StatusCode::kUnavailable, "UNAVAILABLE",
               "the sandbox's runner refused the tunnel"),
         502);
  }

  void TunnelFailed(const std::string& why) {
    ReleaseUpstream();
    Fail(Error(absl::StatusCode::kUnavailable, "UNAVAILABLE", why), 502);
  }

  // The request head as the sandbox's server gets it: hop-by-hop headers replaced, framing set
  // from what the parser saw, X-Forwarded-* added.
  void SendHead() {
    const auto& req = c_->request();
    upgrade_ = c_->parser().upgrade();
    std::string& head = up_head_;
    head.clear();
    absl::StrAppend(&head, Sv(req.method_string()), " ", Sv(req.target()), " HTTP/1.1\r\n");
    std::string forwarded_for;
    bool expect_continue = false;
    for (const auto& f : req) {
      absl::string_view name = Sv(f.name_string());
      if (absl::EqualsIgnoreCase(name, "x-forwarded-for")) {
        forwarded_for = std::string(Sv(f.value()));
        continue;
      }
      if (absl::EqualsIgnoreCase(name, "x-forwarded-proto") ||
          absl::EqualsIgnoreCase(name, "x-forwarded-host")) {
        continue;
      }
      if (absl::EqualsIgnoreCase(name, "expect")) {
        expect_continue = absl::EqualsIgnoreCase(Sv(f.value()), "100-continue");
        continue;
      }
      if (HopByHop(name)) continue;
      absl::StrAppend(&head, name, ": ", Sv(f.value()), "\r\n");
    }
    absl::StrAppend(&head, "X-Forwarded-For: ",
                    forwarded_for.empty() ? c_->remote_ip()
                                          : absl::StrCat(forwarded_for, ", ", c_->remote_ip()),
                    "\r\n");
    absl::StrAppend(&head, "X-Forwarded-Proto: ", proxy_.options().forwarded_proto, "\r\n");
    absl::StrAppend(&head, "X-Forwarded-Host: ", host_, "\r\n");
    if (upgrade_) {
      absl::StrAppend(&head, "Connection: upgrade\r\nUpgrade: ", Sv(req[bhttp::field::upgrade]),
                      "\r\n");
    }
    request_chunked_ = c_->parser().chunked();
    if (request_chunked_) {
      head += "Transfer-Encoding: chunked\r\n";
    } else if (c_->parser().content_length()) {
      absl::StrAppend(&head, "Content-Length: ", *c_->parser().content_length(), "\r\n");
    }
    head += "\r\n";
    Send(*up_, {asio::buffer(head)}, [this, expect_continue](beast::error_code ec) {
      if (ec) return TunnelFailed("the tunnel to the sandbox broke");
      ReadResponseHead();
      if (c_->parser().is_done()) {
        request_done_ = true;
        return;
      }
      if (expect_continue) return SendContinue();
      PumpRequest();
    });
  }

  void SendContinue() {
    static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    Send(c_->stream(), {asio::buffer(kContinue)}, [this](beast::error_code ec) {
      if (ec) return Abort();
      PumpRequest();
    });
  }

  // Writes `bufs` to `to`, then runs `next` (on this connection's thread, with the exchange still
  // current). Most writes fit the socket's buffer: they are made at once with one sendmsg, and
  // `next` runs right away, with no timer and no trip through the event loop; the rest of a
  // write that does not fit is written asynchronously (with the write timeout). Every buffer
  // must stay valid until `next` runs (members of this session, or static).
  template <class S>
  void Send(S& to, std::vector<asio::const_buffer> bufs,
            std::function<void(beast::error_code)> next) {
    if (IsTls(to)) return SendAsync(to, std::move(bufs), std::move(next));
    iovec iov[8];
    size_t count = 0, total = 0;
    for (const auto& b : bufs) {
      if (b.size() == 0 || count == 8) continue;
      iov[count].iov_base = const_cast<void*>(b.data());
      iov[count].iov_len = b.size();
      total += b.size();
      ++count;
    }
    ssize_t w = 0;
    if (count > 0 && count == static_cast<size_t>(std::count_if(bufs.begin(), bufs.end(),
                                                                 [](const asio::const_buffer& b) {
                                                                   return b.size() > 0;
                                                                 }))) {
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = count;
      w = ::sendmsg(to.socket().native_handle(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          return next(beast::error_code(errno, boost::system::system_category()));
        }
        w = 0;
      }
      if (static_cast<size_t>(w) == total) return next({});
    }
    // Drop what went out; the rest goes asynchronously.
    bufs = Skip(std::move(bufs), static_cast<size_t>(w));
    SendAsync(to, std::move(bufs), std::move(next));
  }

  static std::vector<asio::const_buffer> Skip(std::vector<asio::const_buffer> bufs, size_t n) {
    std::vector<asio::const_buffer> rest;
    size_t skip = n;
    for (const auto& b : bufs) {
      if (skip >= b.size()) {
        skip -= b.size();
        continue;
      }
      rest.push_back(b + skip);
      skip = 0;
    }
    return rest;
  }

  // Writes `bufs` asynchronously (a TLS tunnel: asio's TLS stream encrypts and writes them).
  template <class S>
  void SendAsync(S& to, std::vector<asio::const_buffer> bufs,
                 std::function<void(beast::error_code)> next) {
    if (IsTls(to) && bufs.size() > 1) {
      // One TLS record rather than one per piece (asio's TLS stream writes a buffer at a time).
      size_t total = 0;
      for (const auto& b : bufs) total += b.size();
      if (total <= 16 * 1024) {
        tls_out_.clear();
        for (const auto& b : bufs) tls_out_.append(static_cast<const char*>(b.data()), b.size());
        bufs = {asio::buffer(tls_out_)};
      }
    }
    const uint64_t gen = gen_;
    to.expires_after(Chrono(c_->options().write_timeout));
    asio::async_write(to, std::move(bufs),
                      [c = Self(), this, gen, next = std::move(next)](beast::error_code ec,
                                                                      size_t) {
                        if (gen != gen_) return;
                        next(ec);
                      });
  }

  // Adds `n` bytes of a body to `bufs`, framed as a chunk when `chunked` (and the last chunk
  // after the final piece); the framing goes into `frame`, which must outlive the write.
  static void AddPiece(std::vector<asio::const_buffer>& bufs,
                       std::pair<std::string, std::string>& frame, const char* data, size_t n,
                       bool chunked, bool last) {
    frame.first.clear();
    frame.second.clear();
    if (chunked && n > 0) {
      frame.first = absl::StrCat(absl::Hex(n), "\r\n");
      bufs.push_back(asio::buffer(frame.first));
    }
    if (n > 0) bufs.push_back(asio::buffer(data, n));
    if (chunked && n > 0) frame.second = "\r\n";
    if (chunked && last) frame.second += "0\r\n\r\n";
    if (!frame.second.empty()) bufs.push_back(asio::buffer(frame.second));
  }

  // Client -> sandbox: one piece at a time; the next read starts when the piece is written.
  void PumpRequest() {
    if (!req_piece_) req_piece_.reset(new char[kPiece]);
    // Beast reads at most the buffer's spare capacity: room for a piece while a body streams
    // (the front end shrinks it again before the connection idles).
    auto& in = c_->buffer();
    if (in.capacity() < kPiece && in.max_size() >= kPiece) in.reserve(kPiece);
    auto& body = c_->parser().get().body();
    body.data = req_piece_.get();
    body.size = kPiece;
    const uint64_t gen = gen_;
    c_->stream().expires_after(Chrono(c_->options().body_timeout));
    bhttp::async_read_some(
        c_->stream(), c_->buffer(), c_->parser(),
        [c = Self(), this, gen](beast::error_code ec, size_t) {
          if (gen != gen_) return;
          if (ec == bhttp::error::need_buffer) ec = {};
          if (ec) return Abort();
          const size_t n = kPiece - c_->parser().get().body().size;
          const bool last = c_->parser().is_done();
          std::vector<asio::const_buffer> bufs;
          AddPiece(bufs, req_frame_, req_piece_.get(), n, request_chunked_, last);
          Send(*up_, std::move(bufs), [this, last](beast::error_code ec) {
            if (ec) return Abort();
            if (!last) return PumpRequest();
            request_done_ = true;
            req_piece_.reset();
            MaybeFinish();
          });
        });
  }

  void ReadResponseHead() {
    resp_ = std::make_unique<ResponseParser>();
    resp_->header_limit(static_cast<uint32_t>(kMaxUpstreamHead));
    resp_->body_limit(std::numeric_limits<uint64_t>::max());
    if (c_->request().method() == bhttp::verb::head) resp_->skip(true);
    const uint64_t gen = gen_;
    up_->expires_after(Chrono(proxy_.options().response_timeout));
    bhttp::async_read_header(
        *up_, *up_buf_, *resp_, [c = Self(), this, gen](beast::error_code ec, size_t) {
          if (gen != gen_) return;
          if (ec && reused_ && request_done_ && ec != beast::error::timeout) {
            // A kept-alive tunnel the server closed meanwhile: one more try on a new one (the
            // request had no body, so it can be sent again).
            ReleaseUpstream();
            EndExchange();
            return Proceed(sandbox_id_, tunnel_);
          }
          if (ec) {
            ReleaseUpstream();
            if (ec == beast::error::timeout) {
              return Fail(Error(absl::StatusCode::kDeadlineExceeded, "UPSTREAM_TIMEOUT",
                                absl::StrCat("the server on port ", port_,
                                             " in the sandbox did not answer in time")),
                          504);
            }
            return Fail(Error(absl::StatusCode::kUnavailable, "BAD_UPSTREAM_RESPONSE",
                              absl::StrCat("the server on port ", port_,
                                           " in the sandbox closed the connection or answered "
                                           "something other than HTTP/1.x")),
                        502);
          }
          OnResponseHead();
        });
  }

  void OnResponseHead() {
    const auto& res = resp_->get();
    const unsigned code = res.result_int();
    const bool switching = code == 101 && upgrade_;
    std::string& head = down_head_;
    head.clear();
    absl::StrAppend(&head, "HTTP/1.1 ", code, " ", Sv(res.reason()), "\r\n");
    for (const auto& f : res) {
      if (HopByHop(Sv(f.name_string()))) continue;
      absl::StrAppend(&head, Sv(f.name_string()), ": ", Sv(f.value()), "\r\n");
    }
    const bool client_11 = c_->request().version() >= 11;
    interim_ = code >= 100 && code < 200 && !switching;
    response_chunked_ = false;
    close_after_ = false;
    bool body_follows = false;
    if (switching) {
      absl::StrAppend(&head, "Connection: upgrade\r\nUpgrade: ", Sv(res[bhttp::field::upgrade]),
                      "\r\n");
    } else if (!interim_) {
      const bool no_body = resp_->is_done() || c_->request().method() == bhttp::verb::head ||
                           code == 204 || code == 304;
      if (no_body) {
        // Framing headers of a HEAD answer describe the GET's body: passed on, no body follows.
        if (resp_->content_length()) {
          absl::StrAppend(&head, "Content-Length: ", *resp_->content_length(), "\r\n");
        } else if (resp_->chunked()) {
          head += "Transfer-Encoding: chunked\r\n";
        }
      } else if (resp_->content_length() && !resp_->chunked()) {
        absl::StrAppend(&head, "Content-Length: ", *resp_->content_length(), "\r\n");
      } else {
        if (client_11) {
          head += "Transfer-Encoding: chunked\r\n";
          response_chunked_ = true;
        } else {
          close_after_ = true;  // an HTTP/1.0 client learns the end by the close
        }
      }
      body_follows = !resp_->is_done();
      const bool keep = c_->request().keep_alive() && !close_after_ && !upgrade_;
      head += keep ? (client_11 ? "" : "Connection: keep-alive\r\n") : "Connection: close\r\n";
      client_keep_ = keep;
      upstream_keep_ = resp_->keep_alive();
    }
    head += "\r\n";
    std::vector<asio::const_buffer> bufs{asio::buffer(head)};
    // The body's first bytes usually came with the head: they go out in the same write (for a
    // small answer, the whole exchange is then one read and one write on each side).
    bool last = !body_follows;
    if (body_follows && up_buf_->size() > 0) {
      if (!resp_piece_) resp_piece_.reset(new char[kPiece]);
      auto& body = resp_->get().body();
      body.data = resp_piece_.get();
      body.size = kPiece;
      beast::error_code ec;
      while (up_buf_->size() > 0 && body.size > 0 && !resp_->is_done()) {
        const size_t used = resp_->put(up_buf_->data(), ec);
        up_buf_->consume(used);
        if (ec || used == 0) break;
      }
      if (ec && ec != bhttp::error::need_more && ec != bhttp::error::need_buffer) {
        ReleaseUpstream();
        return Fail(Error(absl::StatusCode::kUnavailable, "BAD_UPSTREAM_RESPONSE",
                          absl::StrCat("the server on port ", port_,
                                       " in the sandbox sent a malformed body")),
                    502);
      }
      last = resp_->is_done();
      AddPiece(bufs, resp_frame_, resp_piece_.get(), kPiece - body.size, response_chunked_,
               last);
    }
    Send(c_->stream(), std::move(bufs), [this, switching, body_follows, last](beast::error_code ec) {
      if (ec) return Abort();
      if (switching) return StartRelay();
      if (interim_) return ReadResponseHead();
      if (!body_follows || last) {
        response_done_ = true;
        resp_piece_.reset();
        return MaybeFinish();
      }
      PumpResponse();
    });
  }

  // Sandbox -> client, as PumpRequest the other way.
  void PumpResponse() {
    if (resp_->is_done()) {
      std::vector<asio::const_buffer> bufs;
      AddPiece(bufs, resp_frame_, nullptr, 0, response_chunked_, true);
      return Send(c_->stream(), std::move(bufs), [this](beast::error_code ec) {
        if (ec) return Abort();
        response_done_ = true;
        resp_piece_.reset();
        MaybeFinish();
      });
    }
    if (!resp_piece_) resp_piece_.reset(new char[kPiece]);
    if (up_buf_->capacity() < kPiece) up_buf_->reserve(kPiece);
    auto& body = resp_->get().body();
    body.data = resp_piece_.get();
    body.size = kPiece;
    const uint64_t gen = gen_;
    up_->expires_after(Chrono(proxy_.options().response_timeout));
    bhttp::async_read_some(*up_, *up_buf_, *resp_, [c = Self(), this, gen](beast::error_code ec,
                                                                          size_t) {
      if (gen != gen_) return;
      if (ec == bhttp::error::need_buffer) ec = {};
      if (ec) return Abort();  // the client sees a cut response: the server's doing
      const size_t n = kPiece - resp_->get().body().size;
      const bool last = resp_->is_done();
      std::vector<asio::const_buffer> bufs;
      AddPiece(bufs, resp_frame_, resp_piece_.get(), n, response_chunked_, last);
      Send(c_->stream(), std::move(bufs), [this, last](beast::error_code ec) {
        if (ec) return Abort();
        if (!last) return PumpResponse();
        response_done_ = true;
        resp_piece_.reset();
        MaybeFinish();
      });
    });
  }

  void StartRelay() {
    // The exchange (and its activity count) stays open for as long as the relay runs.
    ++gen_;  // nothing of the HTTP exchange may run any more
    auto c = Self();
    auto up = std::shared_ptr<TunnelStream>(std::move(up_));
    auto up_buf = std::shared_ptr<beast::flat_buffer>(std::move(up_buf_));
    http::RelayBothWays(c_->stream(), c_->buffer(), *up, *up_buf, c_->executor(),
                        [c, up, up_buf, this] {
                          EndExchange();
                          ReleaseUpstream();
                          c_->Close();
                        });
  }

  void MaybeFinish() {
    if (!response_done_) return;
    if (!request_done_) {
      // The server answered before the whole body came: the rest of it cannot be told apart from
      // a next request, so this connection ends here (as nginx does).
      ReleaseUpstream();
      EndExchange();
      ++gen_;
      return c_->Close();
    }
    EndExchange();
    if (!upstream_keep_) ReleaseUpstream();
    if (up_buf_ && up_buf_->size() == 0 && up_buf_->capacity() > kUpstreamIdleBuffer) {
      up_buf_->shrink_to_fit();  // after a large body: keep a kept tunnel small again
      up_buf_->reserve(kUpstreamIdleBuffer);
    }
    ++gen_;
    resp_.reset();
    c_->Finish(client_keep_);
  }

  void BeginExchange(const std::string& sandbox_id) {
    if (!activity_ || activity_->sandbox_id != sandbox_id) {
      activity_ = proxy_.ActivityOf(sandbox_id);
    }
    activity_->Begin();
    open_activity_ = activity_;
  }

  void EndExchange() {
    if (open_activity_) open_activity_->End();
    open_activity_.reset();
    exchange_open_ = false;
  }

  void ReleaseUpstream() {
    if (up_) {
      beast::error_code ignored;
      up_->socket().close(ignored);
      up_.reset();
    }
    up_buf_.reset();
    answer_.clear();
    up_sandbox_.clear();
    up_port_ = 0;
    if (!slot_sandbox_.empty()) proxy_.ReleaseSlot(slot_sandbox_);
    slot_sandbox_.clear();
  }

  void Abort() {
    ++gen_;
    EndExchange();
    ReleaseUpstream();
    c_->Close();
  }

  // An answer of the proxy itself: API.md's error body, or an HTML page for browsers.
  void Fail(const absl::Status& status, int http_status = 0) {
    ErrorReply e = RenderError(status, http_status);
    proxy_.errors_total(e.http_status).Increment();
    http::StringResponse r{static_cast<bhttp::status>(e.http_status), 11};
    const bool html = absl::StrContains(Sv(c_->request()[bhttp::field::accept]), "text/html");
    if (html) {
      r.set(bhttp::field::content_type, "text/html; charset=utf-8");
      r.body() = absl::StrCat("<!doctype html><html><head><meta charset=\"utf-8\"><title>",
                              e.http_status, " ", HtmlEscape(e.reason), "</title></head><body><h1>",
                              e.http_status, " ", HtmlEscape(e.reason), "</h1><p>",
                              HtmlEscape(status.message()), "</p></body></html>\n");
    } else {
      r.set(bhttp::field::content_type, "application/json");
      r.body() = e.body;
    }
    r.set(bhttp::field::cache_control, "no-store");
    for (const auto& [name, value] : e.headers) r.set(name, value);
    EndExchange();
    ++gen_;
    // A body left unread ends the connection (Reply/Finish see the parser is not done).
    c_->Reply(std::move(r));
  }

  PublicProxy& proxy_;
  http::Connection* c_ = nullptr;
  // This connection's last lookup, used until resolved_until_ (the proxy's TTL).
  bool have_resolved_ = false;
  std::string resolved_id_;
  absl::Time resolved_until_;
  PublicProxy::Resolved resolved_ = absl::UnknownError("not resolved");
  // Activity of the sandbox this connection talks to (atomics: no lock per request).
  std::shared_ptr<PublicProxy::Activity> activity_;
  uint64_t gen_ = 0;
  std::string host_;
  std::string public_id_;
  int port_ = 0;
  bool exchange_open_ = false;
  bool request_done_ = false;
  bool response_done_ = false;
  bool request_chunked_ = false;
  bool response_chunked_ = false;
  bool upgrade_ = false;
  bool interim_ = false;
  bool close_after_ = false;
  bool client_keep_ = true;
  bool upstream_keep_ = true;
  std::unique_ptr<TunnelStream> up_;
  std::unique_ptr<beast::flat_buffer> up_buf_;
  std::string up_sandbox_;
  int up_port_ = 0;
  bool reused_ = false;
  std::string sandbox_id_;
  std::string tunnel_;
  std::string answer_;  // the tunnel's answer line
  std::string slot_sandbox_;
  std::shared_ptr<PublicProxy::Activity> open_activity_;  // Begin() called, End() not yet
  std::unique_ptr<ResponseParser> resp_;
  std::unique_ptr<char[]> req_piece_;
  std::unique_ptr<char[]> resp_piece_;
  // What the writes in flight point to (see Send).
  std::string up_head_;
  std::string tls_out_;  // a write to a TLS tunnel gathered into one record
  std::string down_head_;
  std::pair<std::string, std::string> req_frame_;
  std::pair<std::string, std::string> resp_frame_;
};

}  // namespace

bool ParsePublicHost(absl::string_view host, absl::string_view domain, int* port,
                     std::string* public_id) {
  // Drop a port (IPv6 literals are no public URLs).
  if (size_t colon = host.rfind(':'); colon != absl::string_view::npos)
    host = host.substr(0, colon);
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  if (host.size() <= domain.size() + 1) return false;
  absl::string_view suffix = host.substr(host.size() - domain.size());
  if (!absl::EqualsIgnoreCase(suffix, domain) || host[host.size() - domain.size() - 1] != '.') {
    return false;
  }
  absl::string_view label = host.substr(0, host.size() - domain.size() - 1);
  size_t dash = label.find('-');
  if (dash == absl::string_view::npos || dash == 0 || dash > 5) return false;
  absl::string_view port_text = label.substr(0, dash);
  absl::string_view id = label.substr(dash + 1);
  int p = 0;
  for (char c : port_text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  if (!absl::SimpleAtoi(port_text, &p) || p < 1 || p > 65535) return false;
  if (id.size() != 32 || !IsHex(id)) return false;
  *port = p;
  *public_id = absl::AsciiStrToLower(id);
  return true;
}

PublicProxy::PublicProxy(PublicProxyOptions options, std::shared_ptr<grpc::Channel> lifecycle,
                         prometheus::Registry& registry)
    : options_(std::move(options)),
      urls_(v1::PublicUrls::NewStub(lifecycle)),
      sandboxes_(v1::Sandboxes::NewStub(lifecycle)),
      answers_(prometheus::BuildCounter()
                   .Name("isorun_gateway_proxy_errors_total")
                   .Help("Answers the public-URL proxy made itself, by HTTP status")
                   .Register(registry)) {
  requests_ = &prometheus::BuildCounter()
                   .Name("isorun_gateway_proxy_requests_total")
                   .Help("Requests received by the public-URL proxy")
                   .Register(registry)
                   .Add({});
  touches_ = &prometheus::BuildCounter()
                  .Name("isorun_gateway_proxy_activity_flushes_total")
                  .Help("Sandboxes reported active to the lifecycle by the proxy")
                  .Register(registry)
                  .Add({});
  flusher_ = std::thread([this] { FlushLoop(); });
}

PublicProxy::~PublicProxy() {
  stop_.Notify();
  flusher_.join();
  FlushActivity();
}

prometheus::Counter& PublicProxy::errors_total(int status) {
  return answers_.Add({{"status", std::to_string(status)}});
}

http::HandlerFactory PublicProxy::Factory() {
  return [this] { return std::make_unique<ProxySession>(*this); };
}

bool PublicProxy::Cached(const std::string& public_id, absl::Time now, Resolved* out,
                         absl::Time* expires) {
  absl::MutexLock lock(&cache_mu_);
  auto it = cache_.find(public_id);
  if (it == cache_.end() || it->second.expires <= now) return false;
  *out = it->second.value;
  *expires = it->second.expires;
  return true;
}

void PublicProxy::Resolve(const std::string& public_id, std::function<void(Resolved)> done) {
  {
    Resolved cached;
    absl::Time expires;
    if (Cached(public_id, absl::Now(), &cached, &expires)) {
      done(std::move(cached));
      return;
    }
  }
  struct Call {
    grpc::ClientContext ctx;
    v1::ResolvePublicIdRequest req;
    v1::ResolvePublicIdResponse resp;
  };
  auto call = std::make_shared<Call>();
  call->req.set_public_id(public_id);
  call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  urls_->async()->ResolvePublicId(
      &call->ctx, &call->req, &call->resp,
      [this, call, public_id, done = std::move(done)](grpc::Status s) {
        Resolved r = s.ok() ? Resolved(std::make_shared<const v1::ResolvePublicIdResponse>(
                                  std::move(call->resp)))
                            : Resolved(FromGrpcStatus(s));
        const bool cacheable = s.ok() || s.error_code() == grpc::StatusCode::NOT_FOUND;
        if (cacheable) {
          absl::MutexLock lock(&cache_mu_);
          // A flood of made-up ids must not grow the cache without bound.
          if (cache_.size() > 100000) cache_.clear();
          cache_[public_id] = CacheEntry{r, absl::Now() + options_.resolve_ttl};
        }
        done(std::move(r));
      });
}

void PublicProxy::Forget(const std::string& public_id) {
  absl::MutexLock lock(&cache_mu_);
  cache_.erase(public_id);
}

void PublicProxy::Resume(const v1::Sandbox& sandbox,
                         std::function<void(absl::StatusOr<v1::Sandbox>)> done) {
  struct Call {
    grpc::ClientContext ctx;
    v1::ResumeSandboxRequest req;
    v1::Sandbox resp;
  };
  auto call = std::make_shared<Call>();
  call->req.set_tenant_id(sandbox.tenant_id());
  call->req.set_id(sandbox.id());
  call->ctx.set_deadline(std::chrono::system_clock::now() +
                         absl::ToChronoNanoseconds(options_.resume_deadline));
  sandboxes_->async()->ResumeSandbox(&call->ctx, &call->req, &call->resp,
                                     [call, done = std::move(done)](grpc::Status s) {
                                       if (!s.ok()) return done(FromGrpcStatus(s));
                                       done(call->resp);
                                     });
}

bool PublicProxy::AcquireSlot(const std::string& sandbox_id) {
  absl::MutexLock lock(&slots_mu_);
  int& n = slots_[sandbox_id];
  if (n >= options_.max_connections_per_sandbox) {
    if (n == 0) slots_.erase(sandbox_id);
    return false;
  }
  ++n;
  return true;
}

void PublicProxy::ReleaseSlot(const std::string& sandbox_id) {
  absl::MutexLock lock(&slots_mu_);
  auto it = slots_.find(sandbox_id);
  if (it == slots_.end()) return;
  if (--it->second <= 0) slots_.erase(it);
}

std::shared_ptr<PublicProxy::Activity> PublicProxy::ActivityOf(const std::string& sandbox_id) {
  absl::MutexLock lock(&touch_mu_);
  auto& a = activities_[sandbox_id];
  if (!a) a = std::make_shared<Activity>(sandbox_id);
  return a;
}

void PublicProxy::FlushActivity() {
  v1::TouchSandboxesRequest req;
  {
    absl::MutexLock lock(&touch_mu_);
    for (const auto& id : retry_) req.add_sandbox_ids(id);
    retry_.clear();
    for (auto it = activities_.begin(); it != activities_.end();) {
      Activity& a = *it->second;
      const bool touched = a.touched.exchange(false, std::memory_order_relaxed);
      if (touched || a.open.load(std::memory_order_relaxed) > 0) {
        req.add_sandbox_ids(a.sandbox_id);
      } else if (it->second.use_count() == 1) {
        // No connection talks to it and it saw nothing since the last flush.
        activities_.erase(it++);
        continue;
      }
      ++it;
    }
  }
  if (req.sandbox_ids_size() == 0) return;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::TouchSandboxesResponse resp;
  grpc::Status s = urls_->TouchSandboxes(&ctx, req, &resp);
  if (!s.ok()) {
    LogWarn("cannot report proxied activity", {{"error", s.error_message()}});
    absl::MutexLock lock(&touch_mu_);  // try again next time
    for (const auto& id : req.sandbox_ids()) retry_.insert(id);
    return;
  }
  touches_->Increment(req.sandbox_ids_size());
}

void PublicProxy::FlushLoop() {
  while (!stop_.WaitForNotificationWithTimeout(options_.touch_interval)) FlushActivity();
}

}  // namespace isorun::gateway
