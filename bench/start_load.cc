// Load program of `./isorun bench start`: a throwaway cluster (real processes, runc runners) on
// the Postgres named by ISORUN_TEST_DATABASE_URL and images from the registry at --registry. One
// client, through the public HTTP API, measures
//   warm start: POST /v1/sandboxes (image cached on the runner) until its first exec (`true`)
//               has answered;
//   cold start: the same with images no runner has cached (--cold_images, fresh digests);
//   exec:       round trips of `true` in one running sandbox.
// Sandboxes are deleted between runs (not timed). Prints key=value lines.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "services/kit/flags.h"
#include "tests/support/cluster.h"
#include "tests/support/http_client.h"

ABSL_FLAG(std::string, registry, "", "host:port of the registry holding busybox:1.36");
ABSL_FLAG(std::string, cold_images, "",
          "comma-separated images that no runner has cached, one cold start each");
ABSL_FLAG(int, warm, 40, "warm starts to time");
ABSL_FLAG(int, execs, 200, "exec round trips to time");
ABSL_FLAG(std::string, image, "busybox:1.36", "image of the warm starts and execs");

namespace {

using Clock = std::chrono::steady_clock;
using isorun::testing::HttpRequest;
using isorun::testing::HttpResponse;

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

class Client {
 public:
  Client(std::string base, std::string key) : base_(std::move(base)), key_(std::move(key)) {}

  HttpResponse Call(const std::string& method, const std::string& path,
                    const std::string& body = "") {
    std::map<std::string, std::string> headers = {{"Authorization", "Bearer " + key_}};
    if (!body.empty()) headers["Content-Type"] = "application/json";
    return HttpRequest(method, base_ + path, body, headers);
  }

  // Creates a sandbox of `image`; "" (and a message) on failure.
  std::string Create(const std::string& image) {
    auto r = Call("POST", "/v1/sandboxes", R"({"image":")" + image + R"("})");
    if (r.status != 201) {
      std::fprintf(stderr, "create %s: %d %s\n", image.c_str(), r.status, r.body.c_str());
      return "";
    }
    google::protobuf::Struct sb;
    (void)google::protobuf::util::JsonStringToMessage(r.body, &sb);
    return sb.fields().at("id").string_value();
  }

  bool ExecTrue(const std::string& id) {
    auto r = Call("POST", "/v1/sandboxes/" + id + "/exec", R"({"cmd":"true"})");
    if (r.status != 200 || r.body.find("\"exitCode\":0") == std::string::npos) {
      std::fprintf(stderr, "exec in %s: %d %s\n", id.c_str(), r.status, r.body.c_str());
      return false;
    }
    return true;
  }

  bool Delete(const std::string& id) {
    auto r = Call("DELETE", "/v1/sandboxes/" + id);
    if (r.status != 204)
      std::fprintf(stderr, "delete %s: %d %s\n", id.c_str(), r.status, r.body.c_str());
    return r.status == 204;
  }

 private:
  std::string base_, key_;
};

struct Start {
  double total_ms = 0, create_ms = 0, exec_ms = 0;
};

}  // namespace

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv, "create-to-first-exec and exec latency with runc sandboxes");
  if (absl::GetFlag(FLAGS_registry).empty()) {
    std::fprintf(stderr, "--registry is required (run through ./isorun bench start)\n");
    return 2;
  }
  isorun::testing::ClusterOptions options;
  options.runner_driver = "runc";
  options.registry = absl::GetFlag(FLAGS_registry);
  options.probe_ports = true;
  std::unique_ptr<isorun::testing::Cluster> cluster;
  try {
    cluster = std::make_unique<isorun::testing::Cluster>(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cannot start the cluster: %s\n", e.what());
    return 1;
  }
  const std::string tenant = cluster->CreateTenant("bench", 1000);
  cluster->db().Scalar(
      "UPDATE quota.limits SET creates_per_sec = 100000, requests_per_sec = 100000 "
      "WHERE tenant_id = '" +
      tenant + "'");
  Client client(cluster->gateway_url(), cluster->CreateKey(tenant));
  long errors = 0;

  auto start_one = [&](const std::string& image, Start* out) {
    const auto t0 = Clock::now();
    std::string id = client.Create(image);
    if (id.empty()) return false;
    const auto t1 = Clock::now();
    bool ok = client.ExecTrue(id);
    const auto t2 = Clock::now();
    *out = {Ms(t0, t2), Ms(t0, t1), Ms(t1, t2)};
    return client.Delete(id) && ok;
  };

  // The first create pulls the image (and warms every connection on the way); not counted.
  const std::string image = absl::GetFlag(FLAGS_image);
  Start ignored;
  if (!start_one(image, &ignored)) {
    std::fprintf(stderr, "the first start of %s failed\n", image.c_str());
    return 1;
  }

  std::vector<double> warm, warm_create, warm_exec;
  for (int i = 0; i < absl::GetFlag(FLAGS_warm); ++i) {
    Start s;
    if (!start_one(image, &s)) {
      ++errors;
      continue;
    }
    warm.push_back(s.total_ms);
    warm_create.push_back(s.create_ms);
    warm_exec.push_back(s.exec_ms);
  }

  std::vector<double> cold, cold_create;
  for (absl::string_view cold_image :
       absl::StrSplit(absl::GetFlag(FLAGS_cold_images), ',', absl::SkipEmpty())) {
    Start s;
    if (!start_one(std::string(cold_image), &s)) {
      ++errors;
      continue;
    }
    cold.push_back(s.total_ms);
    cold_create.push_back(s.create_ms);
  }

  std::vector<double> exec;
  if (std::string id = client.Create(image); !id.empty()) {
    client.ExecTrue(id);  // the first exec of a sandbox is not a round trip like the others
    for (int i = 0; i < absl::GetFlag(FLAGS_execs); ++i) {
      const auto t0 = Clock::now();
      if (!client.ExecTrue(id)) {
        ++errors;
        continue;
      }
      exec.push_back(Ms(t0, Clock::now()));
    }
    if (!client.Delete(id)) ++errors;
  } else {
    ++errors;
  }

  std::printf("warm_starts=%zu\ncold_starts=%zu\nexecs=%zu\nerrors=%ld\n", warm.size(), cold.size(),
              exec.size(), errors);
  std::printf("warm_start_p50_ms=%.1f\nwarm_start_p99_ms=%.1f\n", Pct(warm, 0.5), Pct(warm, 0.99));
  std::printf("warm_create_p50_ms=%.1f\nwarm_first_exec_p50_ms=%.1f\n", Pct(warm_create, 0.5),
              Pct(warm_exec, 0.5));
  std::printf("cold_start_p50_ms=%.1f\ncold_create_p50_ms=%.1f\n", Pct(cold, 0.5),
              Pct(cold_create, 0.5));
  std::printf("exec_p50_ms=%.1f\nexec_p99_ms=%.1f\n", Pct(exec, 0.5), Pct(exec, 0.99));
  std::printf("leftover_reservations=%s\nleftover_placements=%s\n",
              cluster->db().Scalar("SELECT count(*) FROM quota.reservations").c_str(),
              cluster->db().Scalar("SELECT count(*) FROM scheduler.placements").c_str());
  std::fflush(stdout);
  return errors == 0 ? 0 : 1;
}
