// Load program of `./isorun bench soak --minutes N`: a throwaway cluster of real processes (quota,
// scheduler, lifecycle, gateway with its public-URL proxy, one runc runner) on the Postgres named
// by ISORUN_TEST_DATABASE_URL, and --workers clients of the public API doing a random mix of what
// tenants do: create, exec, exec:stream, proxied HTTP to a server in the sandbox, hibernate and
// resume, delete. Every --kill_every_sec one service, picked at random, is killed with SIGKILL and
// started again a second later. Clients see errors while a service is down; those are counted by
// status (errors_<status>=, errors_conn= for a refused or broken connection). An answer that is
// a success but wrong (an exec's output that is not what was run) is errors_wrong_answer= and
// fails the run.
// When the time is up, everything is started again, every sandbox the tenant still has is
// deleted, and once the cluster has settled (or after --settle_sec) the run counts what was left
// behind: quota slots and reservations, placements, sandbox rows not ended, sandboxes the runner
// still holds, runc containers, veths, network state files and nftables elements of sandboxes.
// Prints requests=, errors_<status>=, kills=, leak_<kind>= and leaks= (must be 0: else exit 1).

#include <dirent.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/figures.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "isorun/v1/runner.grpc.pb.h"
#include "services/kit/flags.h"
#include "services/kit/server.h"
#include "tests/support/cluster.h"
#include "tests/support/host_command.h"
#include "tests/support/http_client.h"

ABSL_FLAG(std::string, registry, "", "host:port of the registry holding busybox:1.36");
ABSL_FLAG(double, minutes, 5, "how long the mixed load runs");
ABSL_FLAG(int, workers, 4, "concurrent API clients");
ABSL_FLAG(int, sandboxes_per_worker, 2, "sandboxes each client keeps at most");
ABSL_FLAG(int, kill_every_sec, 60, "a random service is killed with SIGKILL this often");
ABSL_FLAG(int, down_ms, 1000, "how long a killed service stays down");
ABSL_FLAG(int, settle_sec, 120, "after the load, how long the cluster may take to settle");
ABSL_FLAG(uint64_t, seed, 0, "random seed (0: from the clock; printed)");
ABSL_FLAG(int, request_timeout_ms, 30'000,
          "a request with no answer this long is given up (errors_timeout=)");

namespace {

using Clock = std::chrono::steady_clock;
using isorun::testing::Cluster;
using isorun::testing::HttpRequest;
using isorun::testing::HttpResponse;

google::protobuf::Struct Json(const std::string& body) {
  google::protobuf::Struct s;
  (void)google::protobuf::util::JsonStringToMessage(body, &s);
  return s;
}

std::string Field(const google::protobuf::Struct& s, const std::string& name) {
  auto it = s.fields().find(name);
  return it == s.fields().end() ? "" : it->second.string_value();
}

// Counts of answers by status, shared by the clients.
class Tally {
 public:
  void Add(int status, const std::string& what = "", const std::string& body = "") {
    std::lock_guard<std::mutex> lock(mu_);
    ++requests_;
    ++by_status_[status];
    if ((status < 0 || status >= 400) && first_.count(status) == 0) first_[status] = what + " " + body;
  }
  void WrongAnswer(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    if (wrong_ == 0) first_wrong_ = what;
    ++wrong_;
  }
  void Print(isorun::bench::Figures& f) {
    std::lock_guard<std::mutex> lock(mu_);
    f.Count("requests", requests_);
    long long ok = 0;
    for (const auto& [status, n] : by_status_) {
      if (status >= 200 && status < 400) {  // (0: no connection, -1: no answer in time)
        ok += n;
      } else {
        f.Count(status == 0    ? std::string("errors_conn")
                : status < 0 ? std::string("errors_timeout")
                             : absl::StrCat("errors_", status),
                n);
      }
    }
    // What each kind of failure said the first time (stderr: the figures stay key=value).
    for (const auto& [status, first] : first_) {
      std::fprintf(stderr, "soak: first %d: %s\n", status, first.substr(0, 300).c_str());
    }
    f.Count("answered_ok", ok);
    f.Count("errors_wrong_answer", wrong_);
    if (wrong_ > 0) {
      f.Text("first_wrong_answer", first_wrong_);
      f.Error(wrong_);
    }
  }

 private:
  std::mutex mu_;
  long long requests_ = 0;
  std::map<int, long long> by_status_;
  std::map<int, std::string> first_;
  long long wrong_ = 0;
  std::string first_wrong_;
};

struct Sandbox {
  std::string id;
  std::string public_id;
  bool hibernated = false;
  bool serving = false;  // an HTTP server on port 8080 was started in it
};

class Worker {
 public:
  Worker(const Cluster& cluster, std::string key, Tally& tally, uint64_t seed)
      : cluster_(cluster), key_(std::move(key)), tally_(tally), rng_(seed) {}

  void Run(const std::atomic<bool>& stop) {
    while (!stop.load()) Step();
  }

 private:
  // One HTTP exchange: status 0 when the connection failed, -1 when no answer came in time.
  static HttpResponse Send(const std::string& method, const std::string& url,
                           const std::string& body,
                           const std::map<std::string, std::string>& headers) {
    HttpResponse r;
    try {
      r = HttpRequest(method, url, body, headers, absl::GetFlag(FLAGS_request_timeout_ms));
    } catch (const isorun::testing::HttpTimeout&) {
      r.status = -1;
    } catch (const std::exception&) {
      r.status = 0;
    }
    return r;
  }

  // One API call.
  HttpResponse Call(const std::string& method, const std::string& path,
                    const std::string& body = "") {
    std::map<std::string, std::string> headers = {{"Authorization", "Bearer " + key_}};
    if (!body.empty()) headers["Content-Type"] = "application/json";
    HttpResponse r = Send(method, cluster_.gateway_url() + path, body, headers);
    tally_.Add(r.status, method + " " + path, r.body);
    if (r.status <= 0 || r.status >= 500) {
      // A service is down: do not spin on it.
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return r;
  }

  // Keeps what this client knows in step with the API, as a careful client does: a sandbox
  // the API says is gone (ended by the platform, e.g. after its runner died) is forgotten; on
  // a 409 (not running) its state is read again, since a call that answered 503 while a
  // service died may still have happened (a hibernate, say).
  void ForgetIfGone(size_t i, const HttpResponse& r) {
    if (r.status == 409) {
      auto now = Call("GET", "/v1/sandboxes/" + sandboxes_[i].id);
      if (now.status == 200) {
        const std::string state = Field(Json(now.body), "state");
        sandboxes_[i].hibernated = state == "HIBERNATED";
        if (state == "RUNNING" || state == "HIBERNATED") return;
      } else if (now.status != 404) {
        return;
      }
    } else if (r.status != 404) {
      return;
    }
    sandboxes_.erase(sandboxes_.begin() + static_cast<long>(i));
  }

  void Create() {
    // An Idempotency-Key, as a careful client sends: a create retried after a crash is not
    // a second sandbox.
    const std::string key = absl::StrCat("soak-", rng_(), "-", rng_());
    for (int attempt = 0; attempt < 3; ++attempt) {
      std::map<std::string, std::string> headers = {{"Authorization", "Bearer " + key_},
                                                    {"Content-Type", "application/json"},
                                                    {"Idempotency-Key", key}};
      HttpResponse r = Send("POST", cluster_.gateway_url() + "/v1/sandboxes",
                            R"({"image":"busybox:1.36","timeoutSec":600})", headers);
      tally_.Add(r.status, "POST /v1/sandboxes", r.body);
      if (r.status == 201 || r.status == 200) {
        auto sb = Json(r.body);
        sandboxes_.push_back({Field(sb, "id"), Field(sb, "publicId")});
        return;
      }
      if (r.status > 0 && r.status < 500) return;  // refused (e.g. 429): not retried
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }

  void Exec(size_t i) {
    Sandbox& sb = sandboxes_[i];
    const std::string word = absl::StrCat("w", rng_() % 100000);
    auto r = Call("POST", "/v1/sandboxes/" + sb.id + "/exec",
                  absl::StrCat(R"({"cmd":"echo )", word, R"("})"));
    if (r.status == 200) {
      auto out = Json(r.body);
      if (Field(out, "stdout") != word + "\n") tally_.WrongAnswer("exec: " + r.body);
    }
    ForgetIfGone(i, r);
  }

  void Stream(size_t i) {
    auto r = Call("POST", "/v1/sandboxes/" + sandboxes_[i].id + "/exec:stream",
                  R"({"cmd":"echo one; echo two >&2; echo three"})");
    if (r.status == 200 &&
        (!absl::StrContains(r.body, "one") || !absl::StrContains(r.body, "three") ||
         !absl::StrContains(r.body, "exitCode"))) {
      tally_.WrongAnswer("exec:stream: " + r.body);
    }
    ForgetIfGone(i, r);
  }

  void Serve(size_t i) {
    auto r = Call("POST", "/v1/sandboxes/" + sandboxes_[i].id + "/exec",
                  R"({"cmd":"mkdir -p /tmp/www && echo soak > /tmp/www/index.html && )"
                  R"(httpd -p 8080 -h /tmp/www"})");
    if (r.status == 200) sandboxes_[i].serving = true;
    ForgetIfGone(i, r);
  }

  void Proxy(size_t i) {
    const Sandbox& sb = sandboxes_[i];
    HttpResponse r = Send("GET", absl::StrCat("http://127.0.0.1:", cluster_.proxy_port(), "/"),
                          "", {{"Host", "8080-" + sb.public_id + ".localhost"}});
    tally_.Add(r.status, "GET proxy", r.body);
    if (r.status == 200 && r.body != "soak\n") tally_.WrongAnswer("proxy: " + r.body);
    if (r.status <= 0 || r.status >= 500) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  void HibernateOrResume(size_t i) {
    Sandbox& sb = sandboxes_[i];
    auto r = Call("POST", "/v1/sandboxes/" + sb.id + (sb.hibernated ? "/resume" : "/hibernate"));
    if (r.status == 200) {
      sb.hibernated = Field(Json(r.body), "state") == "HIBERNATED";
      // A resumed sandbox's processes were frozen, not lost: the server answers again.
    }
    ForgetIfGone(i, r);
  }

  void Delete(size_t i) {
    auto r = Call("DELETE", "/v1/sandboxes/" + sandboxes_[i].id);
    if (r.status == 204 || r.status == 404) {
      sandboxes_.erase(sandboxes_.begin() + static_cast<long>(i));
    }
  }

  void Step() {
    const size_t cap = static_cast<size_t>(absl::GetFlag(FLAGS_sandboxes_per_worker));
    if (sandboxes_.empty() || (sandboxes_.size() < cap && rng_() % 8 == 0)) return Create();
    const size_t i = rng_() % sandboxes_.size();
    if (sandboxes_[i].hibernated) {
      // Mostly resumed, sometimes deleted while hibernated.
      return rng_() % 4 == 0 ? Delete(i) : HibernateOrResume(i);
    }
    if (!sandboxes_[i].serving) return Serve(i);
    switch (rng_() % 20) {
      case 0:
        return Delete(i);
      case 1:
        return HibernateOrResume(i);
      case 2:
      case 3:
      case 4:
        return Stream(i);
      case 5:
      case 6:
      case 7:
      case 8:
      case 9:
        return Proxy(i);
      default:
        return Exec(i);
    }
  }

  const Cluster& cluster_;
  const std::string key_;
  Tally& tally_;
  std::mt19937_64 rng_;
  std::vector<Sandbox> sandboxes_;
};

long CountLines(const std::string& text) {
  long n = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    (void)line;
    ++n;
  }
  return n;
}

// What the cluster holds that nothing should hold any more, by kind.
std::map<std::string, long> Leftovers(const Cluster& cluster) {
  std::map<std::string, long> out;
  auto count = [&](const std::string& sql) {
    long n = -1;
    try {
      n = std::stol(cluster.db().Scalar(sql));
    } catch (const std::exception&) {
    }
    return n;
  };
  out["quota_active"] = count("SELECT coalesce(sum(active), 0) FROM quota.usage");
  out["quota_reservations"] = count("SELECT count(*) FROM quota.reservations");
  out["placements"] = count("SELECT count(*) FROM scheduler.placements");
  out["sandboxes_not_ended"] =
      count("SELECT count(*) FROM lifecycle.sandboxes WHERE state NOT IN "
            "('DESTROYED', 'FAILED', 'LOST')");
  {
    auto stub = isorun::v1::Runner::NewStub(isorun::MakeChannel(cluster.grpc_addr("runner-1")));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    isorun::v1::ListRunnerSandboxesRequest req;
    isorun::v1::ListRunnerSandboxesResponse resp;
    out["runner_sandboxes"] =
        stub->ListSandboxes(&ctx, req, &resp).ok() ? resp.sandbox_ids_size() : -1;
  }
  const std::string dir = cluster.runner_data_dir("runner-1");
  out["runc_containers"] = CountLines(isorun::testing::Host("runc --root '" + dir +
                                                            "/runc' list -q 2>/dev/null"));
  out["network_state"] = CountLines(
      isorun::testing::Host("ls -1 '" + dir + "/network' 2>/dev/null | grep -v '^\\.' || true"));
  // Veths are named after their sandbox's address: isv + 8 hex digits, the first six the
  // runner's /24 (as its nftables table's name says).
  const std::string table = cluster.runner_nft_table("runner-1");
  const std::string prefix = "isv" + table.substr(7, 6);
  out["veths"] = CountLines(
      isorun::testing::Host("ls /sys/class/net | grep '^" + prefix + "' || true"));
  out["nft_sandbox_entries"] = CountLines(isorun::testing::Host(
      "nft list table inet " + table + " 2>/dev/null | grep -o '" + prefix + "[0-9a-f]*' || true"));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv, "mixed load on real sandboxes while services are killed");
  if (absl::GetFlag(FLAGS_registry).empty()) {
    std::fprintf(stderr, "--registry is required (run through ./isorun bench soak)\n");
    return 2;
  }
  uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (seed == 0) seed = static_cast<uint64_t>(Clock::now().time_since_epoch().count());
  std::mt19937_64 rng(seed);

  isorun::testing::ClusterOptions options;
  options.runner_driver = "runc";
  options.registry = absl::GetFlag(FLAGS_registry);
  // A crashed create is repaired within seconds, as in the crash tests.
  options.stuck_after_sec = 5;
  options.orphan_grace_sec = 5;
  options.reconcile_interval_ms = 1000;
  options.probe_ports = true;
  auto cluster = Cluster::StartOrExplain(options);
  if (!cluster) return 1;
  const int workers_n = std::max(1, absl::GetFlag(FLAGS_workers));
  const int per_worker = std::max(1, absl::GetFlag(FLAGS_sandboxes_per_worker));
  const std::string tenant = cluster->CreateTenant("soak", workers_n * per_worker);
  cluster->db().Scalar(
      "UPDATE quota.limits SET creates_per_sec = 1000, requests_per_sec = 100000, "
      "max_hibernated = 1000 WHERE tenant_id = '" +
      tenant + "'");
  const std::string key = cluster->CreateKey(tenant);

  Tally tally;
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  std::vector<std::unique_ptr<Worker>> workers;
  for (int w = 0; w < workers_n; ++w) {
    workers.push_back(std::make_unique<Worker>(*cluster, key, tally, rng()));
    threads.emplace_back([&, w] { workers[static_cast<size_t>(w)]->Run(stop); });
  }

  // The killer: one service at a time, a random one, every kill_every_sec.
  const std::vector<std::string> victims = {"quota", "scheduler", "lifecycle", "gateway",
                                            "runner-1"};
  std::map<std::string, long long> killed;
  const auto start = Clock::now();
  const auto end = start + std::chrono::milliseconds(
                               static_cast<long>(absl::GetFlag(FLAGS_minutes) * 60'000));
  const auto every = std::chrono::seconds(std::max(1, absl::GetFlag(FLAGS_kill_every_sec)));
  auto next_kill = start + every;
  while (Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (Clock::now() < next_kill) continue;
    next_kill += every;
    const std::string& v = victims[rng() % victims.size()];
    std::fprintf(stderr, "soak: killing %s at %.0f s\n", v.c_str(),
                 std::chrono::duration<double>(Clock::now() - start).count());
    cluster->Kill(v, SIGKILL);
    ++killed[v];
    std::this_thread::sleep_for(std::chrono::milliseconds(absl::GetFlag(FLAGS_down_ms)));
    cluster->Start(v);
  }
  stop = true;
  for (auto& t : threads) t.join();
  const double load_sec = std::chrono::duration<double>(Clock::now() - start).count();

  // Everything is up; delete what the tenant still has, as a client would, retrying through
  // the last restart.
  for (const auto& v : victims) {
    if (!cluster->Running(v)) cluster->Start(v);
  }
  const std::map<std::string, std::string> auth = {{"Authorization", "Bearer " + key}};
  const auto settle_end = Clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_settle_sec));
  long long cleanup_deletes = 0;
  std::map<std::string, long> left;
  long leaks = 0;
  while (true) {
    HttpResponse list;
    try {
      list = HttpRequest("GET",
                         cluster->gateway_url() +
                             "/v1/sandboxes?state=PENDING,STARTING,RUNNING,HIBERNATED,DESTROYING&pageSize=100",
                         "", auth);
    } catch (const std::exception&) {
      list.status = 0;
    }
    if (list.status == 200) {
      auto body = Json(list.body);
      for (const auto& sb : body.fields().at("sandboxes").list_value().values()) {
        const std::string id = Field(sb.struct_value(), "id");
        try {
          (void)HttpRequest("DELETE", cluster->gateway_url() + "/v1/sandboxes/" + id, "", auth);
          ++cleanup_deletes;
        } catch (const std::exception&) {
        }
      }
    }
    left = Leftovers(*cluster);
    leaks = 0;
    for (const auto& [kind, n] : left) leaks += n < 0 ? 1 : n;
    if (leaks == 0 || Clock::now() > settle_end) break;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  const double settle_sec =
      std::chrono::duration<double>(Clock::now() - start).count() - load_sec;

  isorun::bench::Figures f;
  f.Text("seed", std::to_string(seed));
  f.Value("load_sec", load_sec, 0);
  f.Count("workers", workers_n);
  long long kills = 0;
  for (const auto& [v, n] : killed) {
    f.Count("kills_" + v, n);
    kills += n;
  }
  f.Count("kills", kills);
  tally.Print(f);
  f.Count("cleanup_deletes", cleanup_deletes);
  f.Value("settle_sec", settle_sec, 1);
  for (const auto& [kind, n] : left) f.Count("leak_" + kind, n);
  f.Count("leaks", leaks);
  if (leaks > 0) {
    std::fprintf(stderr, "soak: %ld leftovers after %.0f s of settling\n", leaks, settle_sec);
    f.Error();
  }
  return f.Finish();
}
