#include "tests/support/cluster.h"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <pqxx/pqxx>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "isorun/v1/scheduler.grpc.pb.h"
#include "services/kit/api_key.h"
#include "services/kit/ids.h"
#include "services/kit/server.h"
#include "tests/support/http_client.h"

#ifndef ISORUN_BIN_DIR
#error "ISORUN_BIN_DIR must be defined by the build"
#endif

namespace isorun::testing {
namespace {

std::string Tail(const std::string& path, size_t bytes = 4000) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  return s.size() > bytes ? s.substr(s.size() - bytes) : s;
}

std::string Addr(int port) { return "127.0.0.1:" + std::to_string(port); }

// Whether process `pid` itself listens on TCP `port`: a listening socket for that port in
// /proc/net/tcp or tcp6 (gRPC binds 127.0.0.1 as a v4-mapped IPv6 socket) whose inode is one of
// the process's open files. A port that answers is not enough: between picking a free port and
// binding it, another process may have taken it.
bool ListensOn(pid_t pid, int port) {
  std::set<std::string> inodes;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream tcp(table);
    std::string line;
    std::getline(tcp, line);  // header
    while (std::getline(tcp, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retr, uid, timeout, inode;
      fields >> slot >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >>
          inode;
      const size_t colon = local.rfind(':');
      if (colon == std::string::npos || state != "0A") continue;
      if (std::stoi(local.substr(colon + 1), nullptr, 16) == port) inodes.insert(inode);
    }
  }
  if (inodes.empty()) return false;
  const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(fd_dir.c_str());
  if (d == nullptr) return false;
  bool found = false;
  while (dirent* e = ::readdir(d)) {
    char target[256];
    ssize_t n = ::readlink((fd_dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    std::string t = target;  // socket:[INODE]
    if (t.rfind("socket:[", 0) == 0 && inodes.count(t.substr(8, t.size() - 9)) > 0) {
      found = true;
      break;
    }
  }
  ::closedir(d);
  return found;
}

}  // namespace

int PickFreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    throw std::runtime_error("cannot bind a loopback port");
  }
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string Cluster::BinDir() {
  const char* env = std::getenv("ISORUN_BIN_DIR");
  return env != nullptr && *env != '\0' ? env : ISORUN_BIN_DIR;
}

Cluster::Cluster(ClusterOptions options)
    : options_(std::move(options)), db_(options_.admin_database_url) {
  char tmpl[] = "/tmp/isorun-cluster.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
  dir_ = tmpl;
  // runc sandboxes run as an unprivileged host uid that must traverse down to their bundles.
  if (options_.runner_driver == "runc") ::chmod(dir_.c_str(), 0711);
  for (int attempt = 1;; ++attempt) {
    Define();
    try {
      for (const auto& name : order_) Start(name);
      return;
    } catch (const std::exception& e) {
      StopProcesses();
      // Ports are picked free here and bound later by the processes: on a busy machine (tests
      // run in parallel) another process can take one in between. Start over on fresh ports.
      const std::string why = e.what();
      const bool port_taken = why.find("Address already in use") != std::string::npos ||
                              why.find("binding to port") != std::string::npos ||
                              why.find("cannot listen") != std::string::npos ||
                              why.find("uses sandbox network") != std::string::npos;
      if (port_taken && attempt < 4) {
        processes_.clear();
        order_.clear();
        ports_.clear();
        metrics_ports_.clear();
        networks_.clear();
        continue;
      }
      RemoveDir();
      throw;
    }
  }
}

std::unique_ptr<Cluster> Cluster::StartOrExplain(ClusterOptions options) {
  try {
    return std::make_unique<Cluster>(std::move(options));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cannot start the cluster: %s\n", e.what());
    return nullptr;
  }
}

Cluster::~Cluster() {
  StopProcesses();
  RemoveDir();
}

void Cluster::RemoveDir() {
  if (std::getenv("ISORUN_KEEP_CLUSTER_LOGS") == nullptr) {
    std::string cmd = "rm -rf '" + dir_ + "'";
    int ignored = std::system(cmd.c_str());
    (void)ignored;
  }
}

void Cluster::StopProcesses() {
  // Reverse order: the gateway first, quota last.
  for (auto it = order_.rbegin(); it != order_.rend(); ++it) {
    Process& p = processes_[*it];
    if (p.pid > 0) ::kill(p.pid, SIGTERM);
  }
  // A second in all for graceful exits (logs flushed), then SIGKILL: a throwaway cluster needs
  // no more, and some services take seconds to wind down their background loops.
  const auto grace = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (auto& [name, p] : processes_) {
    if (p.pid <= 0) continue;
    while (true) {
      if (::waitpid(p.pid, nullptr, WNOHANG) != 0) {
        p.pid = 0;
        break;
      }
      if (std::chrono::steady_clock::now() > grace) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (p.pid > 0) {
      ::kill(p.pid, SIGKILL);
      ::waitpid(p.pid, nullptr, 0);
      p.pid = 0;
    }
  }
  // Runners leave their sandboxes running when they exit (a restarted runner re-attaches them).
  if (options_.runner_driver == "runc") {
    for (int i = 1; i <= options_.runners; ++i) {
      RemoveRunnerContainers(runner_data_dir("runner-" + std::to_string(i)));
      RemoveRunnerNetwork("runner-" + std::to_string(i));
    }
  }
}

std::vector<std::string> Cluster::replica_names(const std::string& service) const {
  std::vector<std::string> out = {service};
  for (int i = 2; i <= options_.replicas; ++i) out.push_back(service + "-" + std::to_string(i));
  return out;
}

std::string Cluster::grpc_targets(const std::string& service) const {
  std::string out;
  for (const auto& name : replica_names(service)) {
    if (!out.empty()) out += ',';
    out += Addr(ports_.at(name));
  }
  return out;
}

void Cluster::Define() {
  for (const char* service : {"quota", "scheduler", "lifecycle"}) {
    for (const auto& name : replica_names(service)) {
      ports_[name] = PickFreePort();
      metrics_ports_[name] = PickFreePort();
    }
  }
  ports_["proxy"] = PickFreePort();
  if (tunnel_token_.empty()) tunnel_token_ = RandomHex(24);
  const std::string bin = BinDir();
  auto common = [&](const std::string& name) {
    return std::vector<std::string>{"--grpc_addr=" + Addr(ports_[name]),
                                    "--metrics_addr=" + Addr(metrics_ports_[name])};
  };
  // The identity of a process: its service ("runner-2" and "lifecycle-2" are runner, lifecycle).
  auto with_tls = [&](const std::string& identity, std::vector<std::string>& args) {
    if (options_.tls_dir.empty()) return;
    args.push_back("--tls_cert_file=" + options_.tls_dir + "/" + identity + ".crt");
    args.push_back("--tls_key_file=" + options_.tls_dir + "/" + identity + ".key");
    args.push_back("--tls_ca_file=" + options_.tls_dir + "/ca.crt");
  };
  for (const auto& name : replica_names("quota")) {
    processes_[name] = {bin + "/isorun-quota", common(name), dir_ + "/" + name + ".log"};
    processes_[name].args.push_back("--database_url=" + db_.url());
    order_.push_back(name);
  }
  processes_["scheduler"] = {bin + "/isorun-scheduler", common("scheduler"),
                             dir_ + "/scheduler.log"};
  processes_["scheduler"].args.push_back("--database_url=" + db_.url());
  processes_["scheduler"].args.push_back("--heartbeat_interval_ms=200");
  // The scheduler's admin listener: the one a test chose through the environment, else a free
  // port (never the default 9202, which several clusters would share).
  ports_["scheduler-admin"] = 0;
  for (const std::string& e : options_.env) {
    const std::string prefix = "ISORUN_ADMIN_HTTP_ADDR=";
    if (e.rfind(prefix, 0) == 0 && e.rfind(':') != std::string::npos) {
      ports_["scheduler-admin"] = std::stoi(e.substr(e.rfind(':') + 1));
    }
  }
  if (ports_["scheduler-admin"] == 0) {
    ports_["scheduler-admin"] = PickFreePort();
    processes_["scheduler"].args.push_back("--admin_http_addr=" +
                                           Addr(ports_["scheduler-admin"]));
  }
  if (options_.capacity_history_interval_sec > 0) {
    processes_["scheduler"].args.push_back("--capacity_history_interval_sec=" +
                                           std::to_string(options_.capacity_history_interval_sec));
  }
  processes_["scheduler"].args.push_back("--lost_after_ms=" +
                                         std::to_string(options_.runner_lost_after_ms));
  order_.push_back("scheduler");
  // Followers: the same flags but their own listeners (each its own admin port).
  std::string scheduler_admins = "http://" + Addr(ports_["scheduler-admin"]);
  for (const auto& name : replica_names("scheduler")) {
    if (name == "scheduler") continue;
    ports_[name + "-admin"] = PickFreePort();
    Process p = processes_["scheduler"];
    p.log = dir_ + "/" + name + ".log";
    p.args.clear();
    for (const auto& a : processes_["scheduler"].args) {
      if (a.rfind("--grpc_addr=", 0) == 0 || a.rfind("--metrics_addr=", 0) == 0 ||
          a.rfind("--admin_http_addr=", 0) == 0) {
        continue;
      }
      p.args.push_back(a);
    }
    for (const auto& a : common(name)) p.args.push_back(a);
    p.args.push_back("--admin_http_addr=" + Addr(ports_[name + "-admin"]));
    scheduler_admins += ",http://" + Addr(ports_[name + "-admin"]);
    processes_[name] = p;
    order_.push_back(name);
  }
  std::vector<std::string> lifecycle;
  for (const std::string& a :
       {"--database_url=" + db_.url(), "--quota_addr=" + grpc_targets("quota"),
        "--scheduler_addr=" + grpc_targets("scheduler"),
        "--reaper_interval_ms=" + std::to_string(options_.reaper_interval_ms),
        "--reconcile_interval_ms=" + std::to_string(options_.reconcile_interval_ms),
        "--stuck_after_sec=" + std::to_string(options_.stuck_after_sec),
        "--destroy_retry_after_sec=" + std::to_string(options_.destroy_retry_after_sec),
        "--orphan_grace_sec=" + std::to_string(options_.orphan_grace_sec),
        "--public_url_template=http://{port}-{publicId}.localhost:" +
            std::to_string(ports_["proxy"])}) {
    lifecycle.push_back(a);
  }
  // The test registry is the configured one: qualified names of it are allowed too.
  if (!options_.registry.empty()) lifecycle.push_back("--registries=" + options_.registry);
  for (const auto& a : options_.lifecycle_args) lifecycle.push_back(a);
  for (const auto& name : replica_names("lifecycle")) {
    auto args = common(name);
    args.insert(args.end(), lifecycle.begin(), lifecycle.end());
    processes_[name] = {bin + "/isorun-lifecycle", args, dir_ + "/" + name + ".log"};
    order_.push_back(name);
  }
  for (int i = 1; i <= options_.runners; ++i) {
    std::string name = "runner-" + std::to_string(i);
    ports_[name] = PickFreePort();
    metrics_ports_[name] = PickFreePort();
    ports_["tunnel-" + name] = PickFreePort();
    auto args = common(name);
    args.push_back("--tunnel_addr=" + Addr(ports_["tunnel-" + name]));
    args.push_back("--tunnel_token=" + tunnel_token_);
    if (options_.runner_driver == "runc") {
      args.push_back("--data_dir=" + runner_data_dir(name));
      args.push_back("--registry=" + options_.registry);
      // The test registry serves plain HTTP on loopback.
      args.push_back("--insecure_registries=" + options_.registry);
      // A random /24 of 100.80.0.0/12 (4096 of them); the runner refuses a range another runner
      // holds, and the cluster then starts over with a new one.
      static std::mt19937 rng(std::random_device{}());
      const unsigned block = std::uniform_int_distribution<unsigned>(0, 4095)(rng);
      networks_[name] = "100." + std::to_string(80 + block / 256) + "." +
                        std::to_string(block % 256) + ".0/24";
      args.push_back("--sandbox_network=" + networks_[name]);
      args.push_back("--dns_upstream=" + options_.runner_dns_upstream);
      if (!options_.runner_egress_deny.empty()) {
        args.push_back("--egress_deny=" + options_.runner_egress_deny);
      }
      if (options_.runner_image_cache_bytes > 0) {
        args.push_back("--image_cache_bytes=" + std::to_string(options_.runner_image_cache_bytes));
      }
    }
    for (const std::string& a :
         {"--scheduler_addr=" + grpc_targets("scheduler"), "--runner_name=" + name,
          "--driver=" + options_.runner_driver,
          "--max_sandboxes=" + std::to_string(options_.runner_slots),
          "--cpu_millis=" + std::to_string(options_.runner_cpu_millis),
          "--memory_mb=" + std::to_string(options_.runner_memory_mb),
          "--sim_start_ms=" + std::to_string(options_.sim_start_ms),
          "--sim_fail_images_containing=" + options_.sim_fail_images_containing}) {
      args.push_back(a);
    }
    for (const auto& a : options_.runner_args) args.push_back(a);
    processes_[name] = {bin + "/isorun-runner", args, dir_ + "/" + name + ".log"};
    order_.push_back(name);
  }
  if (options_.gateway) {
    for (const auto& name : replica_names("gateway")) {
      ports_[name] = PickFreePort();
      metrics_ports_[name] = PickFreePort();
      // The first gateway's proxy is proxy_port(); the others' are "<name>-proxy".
      const std::string proxy = name == "gateway" ? "proxy" : name + "-proxy";
      if (name != "gateway") ports_[proxy] = PickFreePort();
      processes_[name] = {
          bin + "/isorun-gateway",
          {"--http_addr=" + Addr(ports_[name]), "--metrics_addr=" + Addr(metrics_ports_[name]),
           "--lifecycle_addr=" + grpc_targets("lifecycle"),
           "--quota_addr=" + grpc_targets("quota"), "--region=local",
           "--database_url=" + db_.url(), "--scheduler_admin_url=" + scheduler_admins,
           "--dashboard_dir=" + options_.dashboard_dir, "--public_addr=" + Addr(ports_[proxy]),
           "--public_domain=localhost", "--tunnel_token=" + tunnel_token_,
           "--proxy_max_connections_per_sandbox=" +
               std::to_string(options_.proxy_max_connections_per_sandbox),
           "--proxy_activity_interval=" + std::to_string(options_.proxy_activity_interval_ms) +
               "ms"},
          dir_ + "/" + name + ".log"};
      if (options_.usage_sample_interval_ms > 0) {
        processes_[name].args.push_back("--usage_history_sample_interval=" +
                                        std::to_string(options_.usage_sample_interval_ms) + "ms");
      }
      for (const auto& a : options_.gateway_args) processes_[name].args.push_back(a);
      order_.push_back(name);
    }
  }
  for (auto& [name, p] : processes_) {
    const std::string identity = name.substr(0, name.find('-'));
    with_tls(identity, p.args);
  }
}

std::string Cluster::gateway_url() const { return "http://" + Addr(ports_.at("gateway")); }

std::string Cluster::gateway_url(const std::string& gateway) const {
  return "http://" + Addr(ports_.at(gateway));
}

std::string Cluster::tunnel_addr(const std::string& runner) const {
  return Addr(ports_.at("tunnel-" + runner));
}

std::string Cluster::grpc_addr(const std::string& process) const {
  return Addr(ports_.at(process));
}

std::string Cluster::metrics_url(const std::string& process) const {
  return "http://" + Addr(metrics_ports_.at(process)) + "/metrics";
}

std::string Cluster::runner_data_dir(const std::string& runner) const {
  return dir_ + "/" + runner + "-data";
}

std::string Cluster::runner_nft_table(const std::string& runner) const {
  const std::string& net = networks_.at(runner);  // "a.b.c.0/24"
  unsigned a = 0, b = 0, c = 0, d = 0, p = 0;
  std::sscanf(net.c_str(), "%u.%u.%u.%u/%u", &a, &b, &c, &d, &p);
  char buf[64];
  std::snprintf(buf, sizeof buf, "isorun_%02x%02x%02x%02x_%u", a, b, c, d, p);
  return buf;
}

void Cluster::RemoveRunnerNetwork(const std::string& runner) const {
  if (networks_.count(runner) == 0) return;
  const std::string table = runner_nft_table(runner);
  int ignored = std::system(("nft delete table inet " + table + " >/dev/null 2>&1").c_str());
  (void)ignored;
  // Veths are named after their sandbox's address: isv + 8 hex digits, the first six this
  // /24's.
  const std::string prefix = "isv" + table.substr(7, 6);
  if (DIR* d = ::opendir("/sys/class/net"); d != nullptr) {
    std::vector<std::string> veths;
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name.size() == 11 && name.rfind(prefix, 0) == 0) veths.push_back(name);
    }
    ::closedir(d);
    for (const auto& v : veths) {
      ignored = std::system(("ip link del " + v + " >/dev/null 2>&1").c_str());
    }
  }
  ::unlink(("/run/isorun/" + table + ".lock").c_str());
}

void Cluster::RemoveRunnerContainers(const std::string& data_dir) {
  const std::string root = data_dir + "/runc";
  if (::access(root.c_str(), F_OK) == 0) {
    std::string cmd = "runc --root '" + root + "' list --quiet 2>/dev/null";
    std::string ids;
    if (FILE* pipe = ::popen(cmd.c_str(), "r"); pipe != nullptr) {
      std::array<char, 4096> buf;
      size_t n;
      while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) ids.append(buf.data(), n);
      ::pclose(pipe);
    }
    std::istringstream lines(ids);
    for (std::string id; std::getline(lines, id);) {
      if (id.empty() || id.find('\'') != std::string::npos) continue;
      std::string del = "runc --root '" + root + "' delete --force '" + id + "' >/dev/null 2>&1";
      int ignored = std::system(del.c_str());
      (void)ignored;
    }
  }
  const std::string sandboxes = data_dir + "/sandboxes";
  if (DIR* d = ::opendir(sandboxes.c_str()); d != nullptr) {
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      ::umount2((sandboxes + "/" + name + "/rootfs").c_str(), MNT_DETACH);
      ::umount2((sandboxes + "/" + name + "/layer").c_str(), MNT_DETACH);
    }
    ::closedir(d);
  }
  // Disk layers, taken or kept ready (a killed runner leaves its ready ones mounted).
  const std::string layers = data_dir + "/layers";
  if (DIR* d = ::opendir(layers.c_str()); d != nullptr) {
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      ::umount2((layers + "/" + name).c_str(), MNT_DETACH);
    }
    ::closedir(d);
  }
}

void Cluster::Start(const std::string& name) {
  Process& p = processes_.at(name);
  if (p.pid > 0 && Running(name)) throw std::runtime_error(name + " is already running");
  std::vector<std::string> argv_s = {p.binary};
  for (const auto& a : p.args) argv_s.push_back(a);
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    // Die with the test process, whatever happens to it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    int fd = ::open(p.log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    // The service blocks SIGINT/SIGTERM itself; start from a clean mask.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (const auto& e : options_.env) ::putenv(const_cast<char*>(e.c_str()));
    // Nothing of the test process's own (its clients' sockets, say) lives on in the service: a
    // connection the test closes must end for its server too.
    ::close_range(3, ~0U, 0);
    ::execv(argv[0], argv.data());
    std::perror("execv");
    ::_exit(127);
  }
  p.pid = pid;
  WaitReady(name, options_.probe_ports && !p.started_before);
  p.started_before = true;
}

bool Cluster::Running(const std::string& name) {
  Process& p = processes_.at(name);
  if (p.pid <= 0) return false;
  if (::waitpid(p.pid, nullptr, WNOHANG) == p.pid) {
    p.pid = 0;
    return false;
  }
  return true;
}

void Cluster::Kill(const std::string& name, int signal) {
  Process& p = processes_.at(name);
  if (p.pid <= 0) return;
  ::kill(p.pid, signal);
  ::waitpid(p.pid, nullptr, 0);
  p.pid = 0;
}

void Cluster::WaitReady(const std::string& name, bool probe_port_first) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  auto fail = [&](const std::string& why) {
    throw std::runtime_error(name + " " + why + "; its log:\n" + Tail(processes_[name].log));
  };
  if (name.rfind("gateway", 0) == 0) {
    std::string last;
    while (std::chrono::steady_clock::now() < deadline) {
      if (!Running(name)) fail("exited");
      try {
        auto r = HttpRequest("GET", gateway_url(name) + "/healthz");
        if (r.status == 200 && ListensOn(processes_[name].pid, ports_.at(name))) return;
        last = r.body;
      } catch (const std::exception& e) {
        last = e.what();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    fail("did not become healthy in 30 s (/healthz: " + last + ")");
  }
  // ClusterOptions::probe_ports: plain connects until the port listens, then the gRPC checks.
  while (probe_port_first && !ListensOn(processes_[name].pid, ports_.at(name))) {
    if (!Running(name)) fail("exited");
    if (std::chrono::steady_clock::now() > deadline) fail("did not listen in 30 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto channel = MakeChannel(grpc_addr(name));
  while (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                    std::chrono::milliseconds(100)) ||
         !ListensOn(processes_[name].pid, ports_.at(name))) {
    if (!Running(name)) fail("exited");
    if (std::chrono::steady_clock::now() > deadline) fail("did not listen in 30 s");
  }
  if (name.rfind("runner-", 0) == 0) {
    // Ready once the scheduler lists it as healthy.
    auto stub = v1::Scheduler::NewStub(MakeChannel(grpc_targets("scheduler")));
    while (std::chrono::steady_clock::now() < deadline) {
      if (!Running(name)) fail("exited");
      grpc::ClientContext ctx;
      v1::ListRunnersResponse resp;
      if (stub->ListRunners(&ctx, {}, &resp).ok()) {
        for (const auto& r : resp.runners()) {
          if (r.name() == name && r.state() == "HEALTHY") return;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    fail("did not register with the scheduler in 30 s");
  }
}

std::string Cluster::CreateTenant(const std::string& name, int max_concurrent) {
  return db_.Scalar(
      "WITH t AS (INSERT INTO accounts.tenants (name) VALUES ('" + name +
      "') RETURNING id), l AS (INSERT INTO quota.limits (tenant_id, max_concurrent) SELECT id, " +
      std::to_string(max_concurrent) +
      " FROM t RETURNING tenant_id), u AS (INSERT INTO quota.usage (tenant_id) "
      "SELECT tenant_id FROM l RETURNING tenant_id) SELECT tenant_id FROM u");
}

std::string Cluster::CreateKey(const std::string& tenant_id, const std::string& region,
                               const std::string& role) {
  ApiKey key = NewApiKey(region);
  pqxx::connection conn(db_.url());
  pqxx::work tx(conn);
  tx.exec_params(
      "INSERT INTO accounts.api_keys (key_id, tenant_id, region, secret_hash, role) "
      "VALUES ($1, $2, $3, $4, $5)",
      key.key_id, tenant_id, key.region, HashSecret(key.secret), role);
  tx.commit();
  return key.ToString();
}

std::string Cluster::CreateOperatorToken() {
  OperatorToken token = NewOperatorToken();
  pqxx::connection conn(db_.url());
  pqxx::work tx(conn);
  tx.exec_params("INSERT INTO accounts.operator_tokens (token_id, secret_hash) VALUES ($1, $2)",
                 token.token_id, HashSecret(token.secret));
  tx.commit();
  return token.ToString();
}

std::string Cluster::scheduler_admin_url() const {
  return "http://" + Addr(ports_.at("scheduler-admin"));
}

int Cluster::Isorunctl(const std::vector<std::string>& args, std::string* out) {
  std::string cmd = "ISORUN_DATABASE_URL='" + db_.url() + "' '" + BinDir() + "/isorunctl'";
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("popen failed");
  std::string output;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) output.append(buf.data(), n);
  int status = ::pclose(pipe);
  if (out != nullptr) *out = output;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace isorun::testing
