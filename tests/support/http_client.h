#pragma once

// A small blocking HTTP/1.1 client (Boost.Beast) for end-to-end tests and benchmarks.

#include <map>
#include <string>

namespace isorun::testing {

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lowercase names
  std::string body;
  std::string Header(const std::string& name) const;
};

// `url` is http://host:port/path?query. Throws std::runtime_error on connection failure.
HttpResponse HttpRequest(const std::string& method, const std::string& url,
                         const std::string& body = "",
                         const std::map<std::string, std::string>& headers = {});

}  // namespace isorun::testing
