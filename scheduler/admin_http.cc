#include "scheduler/admin_http.h"

#include "absl/strings/str_split.h"
#include "services/kit/http_blocking.h"
#include "services/kit/log.h"

namespace isorun::scheduler {

struct AdminHttpServer::Impl {
  std::unique_ptr<http::BlockingServer> server;
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
  http::BlockingServerOptions options;
  options.front.address = address;
  options.front.threads = 1;
  options.front.max_head_bytes = 16 * 1024;
  options.front.max_connections = 1000;
  options.front.idle_timeout = absl::Seconds(30);
  options.front.head_timeout = absl::Seconds(5);
  options.front.body_timeout = absl::Seconds(5);
  options.front.write_timeout = absl::Seconds(5);
  options.max_body_bytes = 16 * 1024;
  // The handlers read the scheduler's memory: a few threads are plenty.
  options.max_workers = 8;
  options.min_workers = 1;
  options.max_queued = 1000;
  auto server = http::BlockingServer::Start(
      options, [handler = std::move(handler)](const http::Request& req) {
        AdminRequest ar;
        ar.method = req.method;
        const size_t q = req.target.find('?');
        ar.path = req.target.substr(0, q);
        if (q != std::string::npos) ar.query = ParseQuery(req.target.substr(q + 1));
        http::Response res;
        if (req.body_too_large) {
          res.status = 413;
          res.content_type = "text/plain";
          res.body = "request too large\n";
          return res;
        }
        AdminResponse out;
        try {
          out = handler(ar);
        } catch (const std::exception& e) {
          LogError("admin handler failed", {{"error", e.what()}});
          out = AdminResponse{500, "text/plain", "internal error\n"};
        }
        res.status = out.status;
        res.content_type = out.content_type;
        res.body = std::move(out.body);
        res.headers.emplace_back("Cache-Control", "no-store");
        return res;
      });
  if (!server.ok()) return server.status();
  auto impl = std::make_unique<Impl>();
  impl->server = std::move(*server);
  std::unique_ptr<AdminHttpServer> admin(new AdminHttpServer(std::move(impl)));
  admin->port_ = admin->impl_->server->port();
  return admin;
}

void AdminHttpServer::Stop() {
  if (impl_ && impl_->server) impl_->server->Stop(absl::Seconds(2));
}

}  // namespace isorun::scheduler
