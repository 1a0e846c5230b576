#pragma once

// A small blocking HTTP/1.1 client (Boost.Beast) for end-to-end tests and benchmarks.

#include <map>
#include <stdexcept>
#include <string>

namespace isorun::testing {

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lowercase names
  std::string body;
  std::string Header(const std::string& name) const;
};

// What HttpRequest throws when the server sent no (complete) answer within its timeout.
struct HttpTimeout : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// `url` is http://host:port/path?query. Throws std::runtime_error on connection failure, and
// HttpTimeout when a write or a read waits longer than `timeout_ms` (each one, not the whole
// exchange).
HttpResponse HttpRequest(const std::string& method, const std::string& url,
                         const std::string& body = "",
                         const std::map<std::string, std::string>& headers = {},
                         int timeout_ms = 120'000);

}  // namespace isorun::testing
