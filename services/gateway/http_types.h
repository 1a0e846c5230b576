#pragma once

// The HTTP request and response as the API handler sees them: no Beast types, so the handler is
// testable without sockets and the server stays a thin adapter. They are the kit's blocking
// server's (services/kit/http_blocking.h), which serves the handler.

#include "services/kit/http_blocking.h"

namespace isorun::gateway {

using HttpRequest = http::Request;
using HttpResponse = http::Response;
using ChunkWriter = http::ChunkWriter;

}  // namespace isorun::gateway
