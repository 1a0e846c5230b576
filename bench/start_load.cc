// Load program of `./isorun bench start`: a throwaway cluster (real processes, runc runners) on
// the Postgres named by ISORUN_TEST_DATABASE_URL and images from the registry at --registry. One
// client, through the public HTTP API, measures
//   warm start: POST /v1/sandboxes (image cached on the runner) until its first exec (`true`)
//               has answered;
//   cold start: the same with images no runner has cached (--cold_images, fresh digests);
//   exec:       round trips of `true` in one running sandbox.
// and, in the same run, the machine's own floor: `runc exec` of `true` in that sandbox timed
// directly (runc_exec_ms), `runc run -d` of the same image as the runner timed it for each warm
// start (runc_run_ms, from its log), and a fork+exec of `true` on the host (host_fork_exec_ms).
// Pooled starts (pool_start_*) are not measured: runners keep no pools of started sandboxes yet.
// Sandboxes are deleted between runs (not timed). Prints key=value lines.

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "bench/figures.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "isorun/v1/quotas.grpc.pb.h"
#include "isorun/v1/runner.grpc.pb.h"
#include "isorun/v1/sandboxes.grpc.pb.h"
#include "isorun/v1/scheduler.grpc.pb.h"
#include "services/kit/flags.h"
#include "services/kit/server.h"
#include "tests/support/cluster.h"
#include "tests/support/http_client.h"

ABSL_FLAG(std::string, registry, "", "host:port of the registry holding busybox:1.36");
ABSL_FLAG(std::string, cold_images, "",
          "comma-separated images that no runner has cached, one cold start each");
ABSL_FLAG(int, warm, 40, "warm starts to time");
ABSL_FLAG(int, execs, 200, "exec round trips to time");
ABSL_FLAG(std::string, image, "busybox:1.36", "image of the warm starts and execs");
ABSL_FLAG(int, floor_runs, 30, "runc exec and host fork+exec runs of the floor figures");
ABSL_FLAG(int, breakdown, 20,
          "warm starts to time step by step, each service called directly (0: none)");

namespace {

using Clock = std::chrono::steady_clock;
using isorun::testing::HttpRequest;
using isorun::testing::HttpResponse;

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
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

// Runs argv to completion; its wall time in ms, or -1 when it fails.
double TimeCommand(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const auto t0 = Clock::now();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? Ms(t0, Clock::now()) : -1;
}

// The per-step times the runner logs for warm starts ("sandbox started ... bundle_ms=N
// runc_ms=N"), from its log file.
void RunnerLogTimes(const std::string& log, std::vector<double>* bundle,
                    std::vector<double>* runc) {
  std::ifstream in(log);
  const std::regex re(R"(warm=true .*bundle_ms=(\d+) runc_ms=(\d+))");
  std::smatch m;
  for (std::string line; std::getline(in, line);) {
    if (line.find("sandbox started") == std::string::npos) continue;
    if (std::regex_search(line, m, re)) {
      bundle->push_back(std::stod(m[1]));
      runc->push_back(std::stod(m[2]));
    }
  }
}

// Where a warm start's time goes: each service called directly, one step at a time, with the
// same requests the lifecycle makes (quota admission, placement, runner start and exec), the
// lifecycle's create and exec without the gateway, and runc exec on the host.
void Breakdown(isorun::testing::Cluster& cluster, Client& client, const std::string& tenant,
               const std::string& image, int n, isorun::bench::Figures& f) {
  using namespace isorun::v1;
  auto quota = Quotas::NewStub(isorun::MakeChannel(cluster.grpc_addr("quota")));
  auto scheduler = Scheduler::NewStub(isorun::MakeChannel(cluster.grpc_addr("scheduler")));
  auto runner = Runner::NewStub(isorun::MakeChannel(cluster.grpc_addr("runner-1")));
  auto lifecycle = Sandboxes::NewStub(isorun::MakeChannel(cluster.grpc_addr("lifecycle")));
  const std::string runc_root = cluster.runner_data_dir("runner-1") + "/runc";
  std::map<std::string, std::vector<double>> t;
  auto timed = [&](const std::string& step, auto&& call) {
    const auto t0 = Clock::now();
    grpc::ClientContext ctx;
    grpc::Status s = call(&ctx);
    if (!s.ok()) {
      std::fprintf(stderr, "breakdown %s: %s\n", step.c_str(), s.error_message().c_str());
      return;
    }
    t[step].push_back(Ms(t0, Clock::now()));
  };
  for (int i = 0; i < n; ++i) {
    const std::string id = "sbx_bench" + std::to_string(i);
    AdmitRequest admit;
    admit.set_tenant_id(tenant);
    admit.set_sandbox_id(id);
    AdmitResponse admitted;
    timed("quota_admit", [&](auto* ctx) { return quota->Admit(ctx, admit, &admitted); });
    PlaceRequest place;
    place.set_sandbox_id(id);
    place.set_tenant_id(tenant);
    place.set_image(image);
    place.set_region("local");
    place.mutable_request()->set_cpu_millis(1000);
    place.mutable_request()->set_memory_mb(512);
    Placement placement;
    timed("scheduler_place", [&](auto* ctx) { return scheduler->Place(ctx, place, &placement); });
    StartSandboxRequest start;
    start.set_sandbox_id(id);
    start.set_image(image);
    start.set_cpu_millis(1000);
    start.set_memory_mb(512);
    StartSandboxResponse started;
    timed("runner_start", [&](auto* ctx) { return runner->StartSandbox(ctx, start, &started); });
    RunnerExecRequest exec;
    exec.set_sandbox_id(id);
    exec.mutable_exec()->set_cmd("true");
    ExecResponse executed;
    timed("runner_first_exec", [&](auto* ctx) { return runner->Exec(ctx, exec, &executed); });
    timed("runner_exec", [&](auto* ctx) { return runner->Exec(ctx, exec, &executed); });
    if (double ms = TimeCommand({"runc", "--root", runc_root, "exec", id, "true"}); ms >= 0) {
      t["runc_exec"].push_back(ms);
    }
    StopSandboxRequest stop;
    stop.set_sandbox_id(id);
    StopSandboxResponse stopped;
    timed("runner_stop", [&](auto* ctx) { return runner->StopSandbox(ctx, stop, &stopped); });
    ReleasePlacementRequest unplace;
    unplace.set_sandbox_id(id);
    ReleasePlacementResponse unplaced;
    timed("scheduler_release",
          [&](auto* ctx) { return scheduler->ReleasePlacement(ctx, unplace, &unplaced); });
    ReleaseRequest release;
    release.set_tenant_id(tenant);
    release.set_sandbox_id(id);
    ReleaseResponse released;
    timed("quota_release", [&](auto* ctx) { return quota->Release(ctx, release, &released); });

    CreateSandboxRequest create;
    create.set_tenant_id(tenant);
    create.set_image(image);
    Sandbox sb;
    timed("lifecycle_create",
          [&](auto* ctx) { return lifecycle->CreateSandbox(ctx, create, &sb); });
    ExecRequest lexec;
    lexec.set_tenant_id(tenant);
    lexec.set_id(sb.id());
    lexec.set_cmd("true");
    timed("lifecycle_first_exec",
          [&](auto* ctx) { return lifecycle->Exec(ctx, lexec, &executed); });
    timed("lifecycle_exec", [&](auto* ctx) { return lifecycle->Exec(ctx, lexec, &executed); });
    // The gateway's own share: an API read of the sandbox against the lifecycle's.
    GetSandboxRequest get;
    get.set_tenant_id(tenant);
    get.set_id(sb.id());
    timed("lifecycle_get", [&](auto* ctx) { return lifecycle->GetSandbox(ctx, get, &sb); });
    {
      auto t0 = Clock::now();
      if (client.Call("GET", "/v1/sandboxes/" + sb.id()).status == 200) {
        t["api_get"].push_back(Ms(t0, Clock::now()));
      }
      t0 = Clock::now();
      if (client.ExecTrue(sb.id())) t["api_exec"].push_back(Ms(t0, Clock::now()));
    }
    DestroySandboxRequest destroy;
    destroy.set_tenant_id(tenant);
    destroy.set_id(sb.id());
    DestroySandboxResponse destroyed;
    timed("lifecycle_destroy",
          [&](auto* ctx) { return lifecycle->DestroySandbox(ctx, destroy, &destroyed); });
  }
  std::vector<double> bundle, runc;
  RunnerLogTimes(cluster.log_path("runner-1"), &bundle, &runc);
  t["runner_bundle"] = bundle;
  t["runc_run"] = runc;
  for (const auto& [step, v] : t) f.Percentile("breakdown_" + step + "_p50_ms", v, 0.5, 1);
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one;
  in >> one;
  return one.empty() ? "unknown" : one;
}

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
  // The breakdown starts sandboxes on the runner behind the lifecycle's back; its reconciler
  // would stop them as strays. Everything here is deleted explicitly (and leftovers counted).
  options.reconcile_interval_ms = 600'000;
  auto cluster = isorun::testing::Cluster::StartOrExplain(options);
  if (!cluster) return 1;
  const std::string load_before = LoadAverage();
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

  std::vector<double> exec, runc_exec, host_fork_exec;
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
    // The floor, in the same sandbox and the same minute: runc's own exec, and a process on
    // the host. (The runner names each container after its sandbox.)
    const std::string runc_root = cluster->runner_data_dir("runner-1") + "/runc";
    for (int i = 0; i < absl::GetFlag(FLAGS_floor_runs); ++i) {
      if (double ms = TimeCommand({"runc", "--root", runc_root, "exec", id, "true"}); ms >= 0) {
        runc_exec.push_back(ms);
      }
      if (double ms = TimeCommand({"true"}); ms >= 0) host_fork_exec.push_back(ms);
    }
    if (!client.Delete(id)) ++errors;
  } else {
    ++errors;
  }

  isorun::bench::Figures f;
  if (const int n = absl::GetFlag(FLAGS_breakdown); n > 0)
    Breakdown(*cluster, client, tenant, image, n, f);
  std::vector<double> bundle, runc_run;
  RunnerLogTimes(cluster->log_path("runner-1"), &bundle, &runc_run);

  f.Count("warm_starts", static_cast<long long>(warm.size()));
  f.Count("cold_starts", static_cast<long long>(cold.size()));
  f.Count("execs", static_cast<long long>(exec.size()));
  f.Error(errors);
  f.Percentile("warm_start_p50_ms", warm, 0.5, 1);
  f.Percentile("warm_start_p99_ms", warm, 0.99, 1);
  f.Percentile("warm_create_p50_ms", warm_create, 0.5, 1);
  f.Percentile("warm_first_exec_p50_ms", warm_exec, 0.5, 1);
  // --cold 0 asks for no cold starts: then there is no figure to miss.
  if (!absl::GetFlag(FLAGS_cold_images).empty()) {
    f.Percentile("cold_start_p50_ms", cold, 0.5, 1);
    f.Percentile("cold_create_p50_ms", cold_create, 0.5, 1);
  }
  f.Percentile("exec_p50_ms", exec, 0.5, 1);
  f.Percentile("exec_p99_ms", exec, 0.99, 1);
  // The floor, in the same run.
  if (absl::GetFlag(FLAGS_floor_runs) > 0) {
    f.Percentile("runc_exec_ms", runc_exec, 0.5, 1);
    f.Percentile("host_fork_exec_ms", host_fork_exec, 0.5, 2);
  }
  f.Percentile("runc_run_ms", runc_run, 0.5, 1);
  std::fprintf(stderr, "pool_start_p50_ms/pool_start_p99_ms: not measured (runners keep no "
                       "pools of started sandboxes)\n");
  f.Text("loadavg_before", load_before);
  f.Text("loadavg_after", LoadAverage());
  f.Leftover("leftover_reservations",
             cluster->db().Scalar("SELECT count(*) FROM quota.reservations"));
  f.Leftover("leftover_placements",
             cluster->db().Scalar("SELECT count(*) FROM scheduler.placements"));
  return f.Finish();
}
