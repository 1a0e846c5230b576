// One HTTP/1.1 request as a client may send it, through what the gateway does with it before
// any handler runs: Beast's request parser with the gateway's limits (16 KiB of head, 1 MiB of
// body), fed in pieces as a socket would deliver them, then the route table and the query
// decoder on the target. No input crashes; a parser that completes never holds more body than
// the limit; every route the table names has a bounded metrics label.

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz/fuzz_check.h"
#include "services/gateway/bodies.h"
#include "services/gateway/routes.h"

namespace http = boost::beast::http;

namespace {

constexpr size_t kMaxHead = 16 * 1024;
constexpr size_t kMaxBody = 1 << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte chooses how the bytes arrive: in pieces of 1..256 bytes.
  const size_t piece = 1 + data[0];
  std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);

  http::request_parser<http::string_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(kMaxHead));
  parser.body_limit(kMaxBody);
  boost::beast::error_code ec;
  size_t offset = 0;
  std::string pending;
  while (offset < bytes.size() && !parser.is_done()) {
    pending.append(bytes.substr(offset, piece));
    offset += piece;
    size_t used = parser.put(boost::asio::buffer(pending), ec);
    if (ec == http::error::need_more) {
      ec = {};
    } else if (ec) {
      break;
    }
    pending.erase(0, used);
  }
  if (!ec && offset >= bytes.size() && !parser.is_done()) parser.put_eof(ec);
  if (parser.is_header_done()) {
    const auto& msg = parser.get();
    std::string_view target(msg.target().data(), msg.target().size());
    const size_t q = target.find('?');
    auto match = isorun::gateway::MatchRoute(
        std::string_view(msg.method_string().data(), msg.method_string().size()),
        target.substr(0, q));
    FUZZ_CHECK(match.path_template.size() < 64);
    if (match.outcome == isorun::gateway::RouteMatch::Outcome::kMatched &&
        !match.sandbox_id.empty()) {
      (void)isorun::gateway::IsPlausibleSandboxId(match.sandbox_id);
    }
    if (q != std::string_view::npos) {
      (void)isorun::gateway::ParseQueryString(target.substr(q + 1));
      (void)isorun::gateway::ParseListQuery(target.substr(q + 1));
    }
  }
  if (parser.is_done()) FUZZ_CHECK(parser.get().body().size() <= kMaxBody);
  return 0;
}
