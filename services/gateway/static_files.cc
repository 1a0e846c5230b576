#include "services/gateway/static_files.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "services/gateway/render.h"
#include "services/gateway/strings.h"
#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

constexpr std::string_view kPrefix = "/dashboard";

std::string TypeOf(std::string_view name) {
  auto ends = [&](std::string_view ext) { return absl::EndsWith(Sv(name), Sv(ext)); };
  if (ends(".html")) return "text/html; charset=utf-8";
  if (ends(".js")) return "text/javascript; charset=utf-8";
  if (ends(".css")) return "text/css; charset=utf-8";
  if (ends(".map") || ends(".json")) return "application/json";
  if (ends(".png")) return "image/png";
  if (ends(".svg")) return "image/svg+xml";
  return "application/octet-stream";
}

HttpResponse NotFound(std::string_view why) {
  return ErrorResponse(Error(absl::StatusCode::kNotFound, "NOT_FOUND", why));
}

// A regular file (following no symlink) under the folder, or false.
bool ReadRegular(const std::string& file, std::string* out) {
  struct stat st {};
  if (::lstat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  std::ifstream in(file, std::ios::binary);
  if (!in) return false;
  std::ostringstream s;
  s << in.rdbuf();
  *out = s.str();
  return true;
}

}  // namespace

bool IsDashboardPath(std::string_view path) {
  return path == kPrefix || absl::StartsWith(Sv(path), "/dashboard/");
}

HttpResponse ServeDashboard(const std::string& dir, std::string_view method,
                            std::string_view path) {
  if (method != "GET" && method != "HEAD") {
    HttpResponse r = ErrorResponse(Error(absl::StatusCode::kUnimplemented, "METHOD_NOT_ALLOWED",
                                         "the dashboard's files take GET and HEAD"),
                                   405);
    r.headers.emplace_back("Allow", "GET, HEAD");
    return r;
  }
  if (dir.empty()) return NotFound("this gateway serves no dashboard (--dashboard_dir is empty)");
  if (path == kPrefix) {
    HttpResponse r;
    r.status = 301;
    r.content_type.clear();
    r.headers.emplace_back("Location", "/dashboard/");
    return r;
  }
  std::string_view rest = path.substr(kPrefix.size() + 1);
  std::string relative;
  for (absl::string_view part : absl::StrSplit(Sv(rest), '/', absl::SkipEmpty())) {
    // Percent-encoding, dot segments and hidden files are all refused: the build output has none.
    if (part.empty() || part[0] == '.' || absl::StrContains(part, "%") ||
        absl::StrContains(part, "\\") || absl::StrContains(part, std::string(1, '\0'))) {
      return NotFound("no such dashboard file");
    }
    if (!relative.empty()) relative += "/";
    relative.append(part.data(), part.size());
  }
  if (relative.empty()) relative = "index.html";
  std::string body;
  if (!ReadRegular(dir + "/" + relative, &body)) return NotFound("no such dashboard file");
  HttpResponse r;
  r.status = 200;
  r.content_type = TypeOf(relative);
  if (method == "GET") r.body = std::move(body);
  r.headers.emplace_back("Content-Security-Policy",
                         "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' "
                         "data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'");
  r.headers.emplace_back("X-Content-Type-Options", "nosniff");
  r.headers.emplace_back("Referrer-Policy", "no-referrer");
  // index.html names its assets without hashes: revalidate everything.
  r.headers.emplace_back("Cache-Control", "no-cache");
  return r;
}

}  // namespace isorun::gateway
