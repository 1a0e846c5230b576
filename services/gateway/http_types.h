#pragma once

// The HTTP request and response as the API handler sees them: no Beast types, so the handler is
// testable without sockets and the server stays a thin adapter.

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace isorun::gateway {

struct HttpRequest {
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

// Writes one chunk of a streamed body; false once the client is gone.
using ChunkWriter = std::function<bool(std::string_view chunk)>;

struct HttpResponse {
  int status = 200;
  // Content-Type, unless the body is empty.
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // When set, the body is streamed with chunked transfer encoding instead of `body`: the server
  // sends the head, then calls this with a writer. Set `on_client_gone` to learn (from another
  // thread) that the client closed the connection while the stream runs.
  std::function<void(const ChunkWriter& write)> stream;
  std::function<void()> on_client_gone;
};

}  // namespace isorun::gateway
