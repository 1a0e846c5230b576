#include "tests/support/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <stdexcept>

namespace isorun::testing {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

std::string HttpResponse::Header(const std::string& name) const {
  std::string lower;
  for (char c : name) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  auto it = headers.find(lower);
  return it == headers.end() ? "" : it->second;
}

HttpResponse HttpRequest(const std::string& method, const std::string& url,
                         const std::string& body,
                         const std::map<std::string, std::string>& headers, int timeout_ms) {
  const std::string prefix = "http://";
  if (url.rfind(prefix, 0) != 0) throw std::runtime_error("only http:// URLs: " + url);
  auto slash = url.find('/', prefix.size());
  std::string hostport = url.substr(prefix.size(), slash - prefix.size());
  std::string target = slash == std::string::npos ? "/" : url.substr(slash);
  auto colon = hostport.rfind(':');
  std::string host = hostport.substr(0, colon);
  std::string port = colon == std::string::npos ? "80" : hostport.substr(colon + 1);

  boost::asio::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::tcp_stream stream(ioc);
  stream.connect(resolver.resolve(host, port));
  http::request<http::string_body> req{http::string_to_verb(method), target, 11};
  req.set(http::field::host, hostport);
  for (const auto& [k, v] : headers) req.set(k, v);
  if (!body.empty() || method == "POST" || method == "PUT") {
    req.body() = body;
    req.prepare_payload();
  }
  // The stream's timer bounds asynchronous operations only (a blocking read would wait
  // forever), so the exchange runs asynchronously on this thread's own io_context.
  beast::error_code ec;
  auto run = [&](auto start) {
    stream.expires_after(std::chrono::milliseconds(timeout_ms));
    start([&](beast::error_code e, std::size_t) { ec = e; });
    ioc.restart();
    ioc.run();
    if (ec == beast::error::timeout) {
      throw HttpTimeout(method + " " + url + ": no answer within " + std::to_string(timeout_ms) +
                        " ms");
    }
    if (ec) throw boost::system::system_error(ec);
  };
  run([&](auto done) { http::async_write(stream, req, done); });
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 << 20);
  run([&](auto done) { http::async_read(stream, buffer, parser, done); });
  auto res = parser.release();
  HttpResponse out;
  out.status = static_cast<int>(res.result_int());
  for (const auto& field : res) {
    std::string name(field.name_string());
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out.headers[name] = std::string(field.value());
  }
  out.body = res.body();
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  return out;
}

}  // namespace isorun::testing
