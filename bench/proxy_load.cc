// Load program of `./isorun bench proxy`: a throwaway cluster (real processes, one runc runner,
// the gateway's public-URL proxy; mutual TLS everywhere, the tunnel included, with --tls_dir) on
// the Postgres named by ISORUN_TEST_DATABASE_URL. A small keep-alive HTTP server
// (isorun-sandbox-http-server) runs in a real sandbox with egress `open` on 0.0.0.0:8080, so on
// its loopback and on the address it has from the runner's --sandbox_network. Debian's wrk sends
// the same load of small GETs three ways, one after the other:
//   proxy:  wrk on the host -> the gateway's proxy -> the runner's tunnel -> the server
//   direct: wrk inside the sandbox's network namespace -> 127.0.0.1:8080 there (the floor)
//   nginx:  wrk on the host -> Debian's nginx on the host, a plain reverse proxy (upstream
//           keep-alive) -> the server on the sandbox's address (the reference an operator would
//           otherwise put in front)
// Then a 1 GiB download through the proxy (throughput; the gateway's peak RSS) and the time to
// first byte of the first request to a port the proxy has not seen. Prints key=value lines.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/figures.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "services/kit/flags.h"
#include "tests/support/cluster.h"
#include "tests/support/http_client.h"

ABSL_FLAG(std::string, registry, "", "host:port of the registry holding busybox:1.36");
ABSL_FLAG(std::string, server, "", "the isorun-sandbox-http-server binary to copy in");
ABSL_FLAG(int, seconds, 10, "duration of each wrk run (each of the three ways runs --rounds times)");
ABSL_FLAG(int, rounds, 2,
          "rounds of the three runs; odd rounds go proxy, direct, nginx and even ones the other "
          "way, so a change in the machine's load during the run favours none of them");
ABSL_FLAG(int, connections, 32, "wrk connections (keep-alive)");
ABSL_FLAG(int, threads, 2, "wrk threads");
ABSL_FLAG(int, new_ports, 10, "first requests to new ports to time");
ABSL_FLAG(std::string, tls_dir, "",
          "mutual TLS on every connection of the cluster, the tunnel included: a folder with "
          "ca.crt and <identity>.crt/.key as ./isorun up makes them; empty: plain text");
ABSL_DECLARE_FLAG(std::string, tls_cert_file);
ABSL_DECLARE_FLAG(std::string, tls_key_file);
ABSL_DECLARE_FLAG(std::string, tls_ca_file);

namespace {

using Clock = std::chrono::steady_clock;
using isorun::testing::HttpRequest;
using isorun::testing::HttpResponse;

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "bench proxy: %s\n", why.c_str());
  std::exit(1);
}

std::string Run(const std::string& cmd) {
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r"); p != nullptr) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    ::pclose(p);
  }
  return out;
}

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// wrk's latency "1.23ms", "812.00us", "1.01s" in ms.
double WrkMs(const std::string& v) {
  double x = 0;
  std::string num = v, unit;
  while (!num.empty() && std::isalpha(static_cast<unsigned char>(num.back()))) {
    unit.insert(unit.begin(), num.back());
    num.pop_back();
  }
  if (!absl::SimpleAtod(num, &x)) return -1;
  if (unit == "us") return x / 1000;
  if (unit == "ms") return x;
  if (unit == "s") return x * 1000;
  return -1;
}

struct WrkResult {
  double rps = 0, p50_ms = 0, p99_ms = 0;
  long errors = 0;
  // Adds one run of `of` (the mean over them).
  void Add(const WrkResult& r, int of) {
    rps += r.rps / of;
    p50_ms += r.p50_ms / of;
    p99_ms += r.p99_ms / of;
    errors += r.errors;
  }
};

// The machine's load average over 1 minute: the benchmark shares its CPUs with whatever runs.
std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one;
  in >> one;
  if (one.empty()) Die("cannot read /proc/loadavg");
  return one;
}

WrkResult Wrk(const std::string& prefix, const std::string& url, const std::string& host) {
  std::string cmd =
      absl::StrCat(prefix, "wrk --latency -t", absl::GetFlag(FLAGS_threads), " -c",
                   absl::GetFlag(FLAGS_connections), " -d", absl::GetFlag(FLAGS_seconds), "s");
  if (!host.empty()) absl::StrAppend(&cmd, " -H 'Host: ", host, "'");
  absl::StrAppend(&cmd, " ", url, " 2>&1");
  std::string out = Run(cmd);
  WrkResult r;
  std::smatch m;
  if (std::regex_search(out, m, std::regex(R"(Requests/sec:\s+([0-9.]+))"))) {
    (void)absl::SimpleAtod(m[1].str(), &r.rps);
  }
  if (std::regex_search(out, m, std::regex(R"(\n\s+50%\s+(\S+))"))) r.p50_ms = WrkMs(m[1].str());
  if (std::regex_search(out, m, std::regex(R"(\n\s+99%\s+(\S+))"))) r.p99_ms = WrkMs(m[1].str());
  if (std::regex_search(out, m, std::regex(R"(Non-2xx or 3xx responses:\s+(\d+))"))) {
    r.errors += std::stol(m[1].str());
  }
  if (std::regex_search(
          out, m,
          std::regex(R"(Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+))"))) {
    for (int i = 1; i <= 4; ++i) r.errors += std::stol(m[i].str());
  }
  if (r.rps <= 0 || r.p50_ms <= 0 || r.p99_ms <= 0) Die("cannot read wrk's output:\n" + out);
  return r;
}

int Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) Die("cannot connect");
  return fd;
}

long StatusKib(pid_t pid, const char* field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, field)) {
      std::istringstream s(line.substr(std::strlen(field)));
      long kib = 0;
      s >> kib;
      return kib;
    }
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv,
                     "isorun-proxy-load: the public-URL proxy against direct and nginx");
  const std::string server = absl::GetFlag(FLAGS_server);
  if (server.empty()) Die("--server is required");
  isorun::testing::ClusterOptions options;
  options.runner_driver = "runc";
  options.registry = absl::GetFlag(FLAGS_registry);
  options.proxy_max_connections_per_sandbox = 10000;
  if (const std::string tls_dir = absl::GetFlag(FLAGS_tls_dir); !tls_dir.empty()) {
    options.tls_dir = tls_dir;
    // The cluster's readiness checks use this process's flags.
    absl::SetFlag(&FLAGS_tls_cert_file, tls_dir + "/admin.crt");
    absl::SetFlag(&FLAGS_tls_key_file, tls_dir + "/admin.key");
    absl::SetFlag(&FLAGS_tls_ca_file, tls_dir + "/ca.crt");
  }
  auto cluster = isorun::testing::Cluster::StartOrExplain(options);
  if (!cluster) return 1;
  std::string tenant = cluster->CreateTenant("bench", 10);
  cluster->db().Scalar(
      "UPDATE quota.limits SET creates_per_sec = 1000, requests_per_sec = 100000 WHERE "
      "tenant_id = '" +
      tenant + "'");
  const std::string key = cluster->CreateKey(tenant);
  auto api = [&](const std::string& method, const std::string& path, const std::string& body) {
    std::map<std::string, std::string> h = {{"Authorization", "Bearer " + key}};
    if (!body.empty()) h["Content-Type"] = "application/json";
    return HttpRequest(method, cluster->gateway_url() + path, body, h);
  };
  auto created =
      api("POST", "/v1/sandboxes",
          R"({"image":"busybox:1.36","cpuMillis":2000,"memoryMb":1024,"timeoutSec":3600})");
  if (created.status != 201) Die("create: " + created.body);
  google::protobuf::Struct sb;
  (void)google::protobuf::util::JsonStringToMessage(created.body, &sb);
  const std::string id = sb.fields().at("id").string_value();
  const std::string public_id = sb.fields().at("publicId").string_value();

  // The sandbox's init on the host: the way into its filesystem and network namespace.
  const std::string state = Run("runc --root '" + cluster->runner_data_dir("runner-1") +
                                "/runc' state " + id + " 2>/dev/null");
  std::smatch m;
  if (!std::regex_search(state, m, std::regex(R"("pid":\s*(\d+))"))) Die("no runc state: " + state);
  const std::string pid = m[1].str();
  if (Run("cp '" + server + "' /proc/" + pid + "/root/srv && chmod 0755 /proc/" + pid +
          "/root/srv && echo ok") != "ok\n") {
    Die("cannot copy the server into the sandbox");
  }
  auto exec = [&](const std::string& cmd) {
    std::string quoted = "\"" + cmd + "\"";
    auto r = api("POST", "/v1/sandboxes/" + id + "/exec", R"({"cmd":)" + quoted + "}");
    if (r.status != 200) Die("exec " + cmd + ": " + r.body);
    return r.body;
  };
  auto listening = [&](int port) {
    return absl::StrContains(Run("nsenter --net=/proc/" + pid + "/ns/net ss -Hltn 'sport = :" +
                                 std::to_string(port) + "' 2>/dev/null"),
                             "LISTEN");
  };
  auto start_server = [&](int port) {
    exec(absl::StrCat("(/srv ", port, " 0.0.0.0 >/dev/null 2>&1 &)"));
    for (int i = 0; i < 200 && !listening(port); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!listening(port)) Die(absl::StrCat("the server did not listen on ", port));
  };
  start_server(8080);
  const std::string netns = "nsenter --net=/proc/" + pid + "/ns/net ";
  const std::string host = "8080-" + public_id + ".localhost";
  const std::string proxy_url = absl::StrCat("http://127.0.0.1:", cluster->proxy_port(), "/");
  auto check = HttpRequest("GET", proxy_url, "", {{"Host", host}});
  if (check.status != 200) Die(absl::StrCat("proxy check: ", check.status, " ", check.body));

  // The sandbox's own address (egress `open`: a veth with an address of the runner's range).
  const std::string addr_out = Run(netns + "ip -4 -o addr show dev eth0 2>/dev/null");
  if (!std::regex_search(addr_out, m, std::regex(R"(inet (\d+\.\d+\.\d+\.\d+)[ /])"))) {
    Die("the sandbox has no address on eth0: " + addr_out);
  }
  const std::string sandbox_ip = m[1].str();
  // nginx on the host, as a reverse proxy with upstream keep-alive to the sandbox's address.
  const int nginx_port = isorun::testing::PickFreePort();
  char tmpl[] = "/tmp/isorun-bench-nginx.XXXXXX";
  const std::string ndir = ::mkdtemp(tmpl);
  {
    std::ofstream conf(ndir + "/nginx.conf");
    conf << "worker_processes 2;\nuser root;\ndaemon off;\npid " << ndir << "/nginx.pid;\n"
         << "error_log " << ndir << "/error.log;\nevents { worker_connections 4096; }\n"
         << "http {\n  access_log off;\n  client_body_temp_path " << ndir << ";\n"
         << "  proxy_temp_path " << ndir << ";\n  fastcgi_temp_path " << ndir << ";\n"
         << "  uwsgi_temp_path " << ndir << ";\n  scgi_temp_path " << ndir << ";\n"
         << "  upstream sandbox { server " << sandbox_ip << ":8080; keepalive 64; }\n"
         << "  server {\n    listen 127.0.0.1:" << nginx_port << ";\n    location / {\n"
         << "      proxy_pass http://sandbox;\n      proxy_http_version 1.1;\n"
         << "      proxy_set_header Connection \"\";\n      proxy_set_header X-Forwarded-For "
            "$remote_addr;\n    }\n  }\n}\n";
  }
  Run("nginx -c " + ndir + "/nginx.conf -p " + ndir + " >/dev/null 2>&1 &");
  const std::string nginx_url = absl::StrCat("http://127.0.0.1:", nginx_port, "/");
  HttpResponse through_nginx;
  for (int i = 0; i < 300; ++i) {
    try {
      through_nginx = HttpRequest("GET", nginx_url, "", {});
    } catch (const std::exception&) {  // not listening yet
      through_nginx.status = 0;
    }
    if (through_nginx.status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (through_nginx.status != 200) {
    Die(absl::StrCat("nginx on the host does not reach the sandbox's ", sandbox_ip,
                     ":8080: ", through_nginx.status, " ", through_nginx.body, " ",
                     Run("cat " + ndir + "/error.log")));
  }

  const pid_t gateway = cluster->pid("gateway");
  const std::string load_before = LoadAverage();
  // Warm-up, then the rounds. Each way's figures are the mean over its rounds.
  (void)Wrk("", proxy_url, host);
  WrkResult proxy, direct, nginx;
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  for (int round = 0; round < rounds; ++round) {
    auto run_proxy = [&] { proxy.Add(Wrk("", proxy_url, host), rounds); };
    auto run_direct = [&] { direct.Add(Wrk(netns, "http://127.0.0.1:8080/", ""), rounds); };
    auto run_nginx = [&] { nginx.Add(Wrk("", nginx_url, ""), rounds); };
    if (round % 2 == 0) {
      run_proxy();
      run_direct();
      run_nginx();
    } else {
      run_nginx();
      run_direct();
      run_proxy();
    }
  }
  Run("kill $(cat " + ndir + "/nginx.pid) 2>/dev/null; sleep 0.5; rm -rf '" + ndir + "'");

  // 1 GiB through the proxy, read as fast as this client can.
  int fd = Connect(cluster->proxy_port());
  const std::string req = "GET /big HTTP/1.1\r\nHost: " + host + "\r\n\r\n";
  (void)::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  const auto t0 = Clock::now();
  std::vector<char> buf(1 << 20);
  size_t got = 0, head = 0;
  std::string first;
  const size_t total = size_t{1} << 30;
  while (head == 0 || got < head + total) {
    ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n <= 0) Die(absl::StrCat("the download ended after ", got, " bytes"));
    if (head == 0) {
      first.append(buf.data(), static_cast<size_t>(n));
      size_t e = first.find("\r\n\r\n");
      if (e != std::string::npos) head = e + 4;
    }
    got += static_cast<size_t>(n);
  }
  const double download_s = Ms(t0, Clock::now()) / 1000;
  ::close(fd);
  const long peak_kib = StatusKib(gateway, "VmHWM:");
  if (peak_kib <= 0) Die("cannot read the gateway's peak RSS");

  // Time to first byte on a port the proxy has not seen: the server listens already; the
  // request needs a new tunnel (the public id's lookup may be cached).
  std::vector<double> ttfb;
  for (int i = 0; i < absl::GetFlag(FLAGS_new_ports); ++i) {
    const int port = 9100 + i;
    start_server(port);
    const std::string r = absl::StrCat("GET / HTTP/1.1\r\nHost: ", port, "-", public_id,
                                       ".localhost\r\nConnection: close\r\n\r\n");
    const auto s = Clock::now();
    int c = Connect(cluster->proxy_port());
    (void)::send(c, r.data(), r.size(), MSG_NOSIGNAL);
    char b[64];
    if (::recv(c, b, sizeof b, 0) <= 0) Die("no answer on a new port");
    ttfb.push_back(Ms(s, Clock::now()));
    ::close(c);
  }
  std::sort(ttfb.begin(), ttfb.end());
  api("DELETE", "/v1/sandboxes/" + id, "");

  isorun::bench::Figures f;
  f.Count("connections", absl::GetFlag(FLAGS_connections));
  f.Count("seconds", absl::GetFlag(FLAGS_seconds));
  f.Count("rounds", rounds);
  f.Count("tls", absl::GetFlag(FLAGS_tls_dir).empty() ? 0 : 1);
  f.Text("load_avg_1m_before", load_before);
  f.Text("load_avg_1m_after", LoadAverage());
  f.Positive("proxy_rps", proxy.rps, 0);
  f.Positive("direct_rps", direct.rps, 0);
  f.Positive("nginx_rps", nginx.rps, 0);
  f.Ratio("proxy_ratio", proxy.rps, direct.rps, 2);
  f.Ratio("proxy_vs_nginx", proxy.rps, nginx.rps, 2);
  f.Positive("proxy_p50_ms", proxy.p50_ms, 3);
  f.Positive("proxy_p99_ms", proxy.p99_ms, 3);
  f.Positive("direct_p50_ms", direct.p50_ms, 3);
  f.Positive("direct_p99_ms", direct.p99_ms, 3);
  f.Positive("nginx_p50_ms", nginx.p50_ms, 3);
  f.Positive("nginx_p99_ms", nginx.p99_ms, 3);
  f.Value("proxy_added_p50_ms", proxy.p50_ms - direct.p50_ms, 3);
  f.Ratio("download_mib_per_sec", static_cast<double>(total) / (1 << 20), download_s, 0);
  f.Positive("proxy_rss_mib", static_cast<double>(peak_kib) / 1024, 1);
  f.Percentile("ttfb_new_port_p50_ms", ttfb, 0.5, 2);
  f.Percentile("ttfb_new_port_max_ms", ttfb, 1.0, 2);
  f.Error(proxy.errors + direct.errors + nginx.errors);
  return f.Finish();
}
