#include "scheduler/admin_http.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/kit/log.h"

namespace isorun::scheduler {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

struct AdminHttpServer::Impl {
  asio::io_context ioc;
  tcp::acceptor acceptor{ioc};
  Handler handler;
};

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string Decode(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out.push_back(' ');
    } else if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 &&
               HexValue(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

void SetTimeouts(int fd) {
  timeval tv{};
  tv.tv_sec = 5;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

}  // namespace

std::map<std::string, std::string> ParseQuery(const std::string& query) {
  std::map<std::string, std::string> out;
  for (absl::string_view part : absl::StrSplit(query, '&', absl::SkipEmpty())) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(part, absl::MaxSplits('=', 1));
    out[Decode(kv.first)] = Decode(kv.second);
  }
  return out;
}

AdminHttpServer::AdminHttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AdminHttpServer::~AdminHttpServer() { Stop(); }

absl::StatusOr<std::unique_ptr<AdminHttpServer>> AdminHttpServer::Start(const std::string& address,
                                                                        Handler handler) {
  size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad admin address ", address, ": want host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  auto impl = std::make_unique<Impl>();
  impl->handler = std::move(handler);
  beast::error_code ec;
  auto ip = asio::ip::make_address(host.empty() ? "0.0.0.0" : host, ec);
  if (ec)
    return absl::InvalidArgumentError(absl::StrCat("bad admin host ", host, ": ", ec.message()));
  tcp::endpoint endpoint(ip, static_cast<uint16_t>(port));
  impl->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(endpoint, ec);
  if (!ec) impl->acceptor.listen(16, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ", ec.message()));
  }
  std::unique_ptr<AdminHttpServer> server(new AdminHttpServer(std::move(impl)));
  server->port_ = server->impl_->acceptor.local_endpoint().port();
  server->thread_ = std::thread([s = server.get()] { s->Run(); });
  return server;
}

void AdminHttpServer::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void AdminHttpServer::Run() {
  const int fd = impl_->acceptor.native_handle();
  while (!stop_) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    beast::error_code ec;
    tcp::socket socket(impl_->ioc);
    impl_->acceptor.accept(socket, ec);
    if (ec) continue;
    SetTimeouts(socket.native_handle());
    beast::flat_buffer buffer(16 * 1024);
    http::request_parser<http::string_body> parser;
    parser.header_limit(16 * 1024);
    parser.body_limit(16 * 1024);
    http::read(socket, buffer, parser, ec);
    http::response<http::string_body> res;
    if (ec) {
      if (ec == http::error::end_of_stream || ec == asio::error::eof) continue;
      res.result(http::status::bad_request);
      res.set(http::field::content_type, "text/plain");
      res.body() = "bad request\n";
    } else {
      const auto& req = parser.get();
      AdminRequest ar;
      ar.method = std::string(req.method_string());
      std::string target(req.target());
      size_t q = target.find('?');
      ar.path = target.substr(0, q);
      if (q != std::string::npos) ar.query = ParseQuery(target.substr(q + 1));
      AdminResponse out;
      try {
        out = impl_->handler(ar);
      } catch (const std::exception& e) {
        LogError("admin handler failed", {{"error", e.what()}});
        out = AdminResponse{500, "text/plain", "internal error\n"};
      }
      res.result(static_cast<unsigned>(out.status));
      res.set(http::field::content_type, out.content_type);
      res.set(http::field::cache_control, "no-store");
      res.body() = std::move(out.body);
    }
    res.version(11);
    res.keep_alive(false);
    res.prepare_payload();
    http::write(socket, res, ec);
    socket.shutdown(tcp::socket::shutdown_both, ec);
  }
}

}  // namespace isorun::scheduler
