#pragma once

// The web dashboard's files (its build output, --dashboard_dir) under /dashboard/. No key is
// needed for the files themselves: the page asks for a key or an operator token and sends it on
// its API calls. Only GET and HEAD; names are resolved inside the folder (no "..", no hidden
// files, no symlinks out of it); a path without an extension that names no file gets index.html
// (the page routes by #hash, so this is only for /dashboard/ itself). Answers carry a strict
// Content-Security-Policy: scripts and styles only from the same origin, no framing.

#include <string>
#include <string_view>

#include "services/gateway/http_types.h"

namespace isorun::gateway {

// Whether `path` (no query) belongs to the dashboard: "/dashboard" or "/dashboard/...".
bool IsDashboardPath(std::string_view path);

// Serves `path` from `dir` (empty `dir`: 404 saying the dashboard is not configured).
HttpResponse ServeDashboard(const std::string& dir, std::string_view method,
                            std::string_view path);

}  // namespace isorun::gateway
