// isorun-runner: runs sandboxes with a driver and serves isorun.v1.Runner.

#include <unistd.h>

#include <thread>

#include "absl/flags/flag.h"
#include "absl/synchronization/notification.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/ascii.h"
#include "services/kit/flags.h"
#include "services/kit/http_front.h"
#include "services/kit/image_policy.h"
#include "services/kit/log.h"
#include "services/kit/server.h"
#include "services/kit/tunnel_tls.h"
#include "services/runner/agent.h"
#include "services/runner/runc_driver.h"
#include "services/runner/runner_service.h"
#include "services/runner/sim_driver.h"
#include "services/runner/skopeo_fetcher.h"
#include "services/runner/tunnel.h"

ABSL_FLAG(std::string, grpc_addr, "127.0.0.1:7101", "host:port of the gRPC listener");
ABSL_FLAG(std::string, advertise_addr, "",
          "host:port others use to reach this runner; empty: --grpc_addr with the bound port");
ABSL_FLAG(std::string, metrics_addr, "127.0.0.1:9111", "host:port of /metrics; empty: none");
ABSL_FLAG(std::string, scheduler_addr, "127.0.0.1:7002",
          "host:port of the scheduler; several replicas: a comma-separated list of ip:port or a "
          "gRPC target (dns:///name:port): the heartbeat stream finds the leader");
ABSL_FLAG(std::string, runner_name, "runner-1", "unique name of this runner");
ABSL_FLAG(std::string, region, "local", "region this runner serves");
ABSL_FLAG(
    std::string, driver, "sim",
    "sandbox driver: runc (real OCI containers; needs root) or sim (simulated, no processes)");
ABSL_FLAG(int, cpu_millis, 16000, "cpu millis offered to sandboxes");
ABSL_FLAG(int, memory_mb, 32768, "memory offered to sandboxes, in MB");
ABSL_FLAG(int, max_sandboxes, 100, "sandbox slots");
ABSL_FLAG(int, sim_pull_ms, 0, "sim driver: simulated pull time of a cold image");
ABSL_FLAG(int, sim_start_ms, 0, "sim driver: simulated start time");
ABSL_FLAG(std::string, sim_fail_images_containing, "",
          "sim driver: fail starts of images whose reference contains this (failure injection)");
ABSL_FLAG(std::string, data_dir, "/var/lib/isorun/runner",
          "runc driver: image cache, sandbox bundles and runc state (kept across restarts)");
ABSL_FLAG(std::string, registry, "",
          "runc driver: host:port of the registry for unqualified image names (busybox:1.36)");
ABSL_FLAG(std::string, registries, "",
          "runc driver: registry hosts (host:port, comma-separated) images may come from; "
          "--registry is always allowed. Any other host is refused before anything is fetched");
ABSL_FLAG(std::string, insecure_registries, "",
          "runc driver: registries (host:port, comma-separated) reached without TLS "
          "verification, e.g. a local test registry on plain HTTP; all others must present a "
          "verified certificate");
ABSL_FLAG(int64_t, max_image_bytes, int64_t{4} << 30,
          "runc driver: most bytes an image may take, compressed and unpacked, checked while it "
          "is pulled; 0: no cap");
ABSL_FLAG(int, default_disk_mb, 2048,
          "runc driver: size of a sandbox's writable layer when the request gives none");
ABSL_FLAG(int, disk_pool, 2,
          "runc driver: writable layers kept formatted and mounted, ready for a start, per size "
          "in use (the default size and the most recently requested others); 0: each start "
          "formats its own (slower starts)");
ABSL_FLAG(int64_t, image_cache_bytes, int64_t{20} << 30,
          "runc driver: disk budget of unpacked images; least recently used unused ones go first");
ABSL_FLAG(int, pids_limit, 512, "runc driver: most processes (and threads) in one sandbox");
ABSL_FLAG(std::string, runc_path, "runc", "runc driver: the runc binary");
ABSL_FLAG(std::string, skopeo_path, "skopeo", "runc driver: the skopeo binary");
ABSL_FLAG(std::string, umoci_path, "umoci", "runc driver: the umoci binary");
ABSL_FLAG(std::string, sandbox_init, "",
          "runc driver: PID 1 of sandboxes; empty: isorun-sandbox-init beside this binary");
ABSL_FLAG(bool, stop_sandboxes_on_exit, false,
          "stop every sandbox when the runner exits; by default they keep running and a restarted "
          "runner re-attaches them");
ABSL_FLAG(std::string, tunnel_addr, "",
          "host:port of the public-URL tunnel listener (the gateway's way into sandbox ports); "
          "empty: none. Mutual TLS with the process's --tls_* files (only the gateway's "
          "certificate gets in); without TLS it requires --tunnel_token");
ABSL_FLAG(std::string, tunnel_advertise_addr, "",
          "host:port the gateway uses to reach the tunnel; empty: --tunnel_addr with the bound port");
ABSL_FLAG(std::string, tunnel_token, "",
          "shared secret the gateway presents on every tunnel connection (at least 16 characters; "
          "ISORUN_TUNNEL_TOKEN); required without TLS, checked as well when set with TLS");
ABSL_FLAG(int, grpc_max_threads, 64,
          "threads of the pool that serves start, stop, pause and the other short calls; exec "
          "and exec:stream calls each run on a thread of their own, outside it");
ABSL_FLAG(int, sandbox_uid_base, 100000,
          "runc driver: host uid (and gid) that root in a sandbox maps to; 65536 ids from there");

ABSL_FLAG(std::string, sandbox_network, "100.96.0.0/24",
          "runc driver: this runner's sandbox addresses (IPv4 CIDR, /8-/29; the first address is "
          "the gateway and DNS forwarder). Unique per runner on a host; empty: sandboxes get "
          "loopback only whatever their profile");
ABSL_FLAG(std::string, egress_deny, isorun::runner::kDefaultEgressDeny,
          "runc driver: comma-separated CIDRs no sandbox may reach, whatever its profile "
          "(169.254.0.0/16, the host and other sandboxes are always blocked)");
ABSL_FLAG(std::string, dns_upstream, "",
          "runc driver: ip:port the sandboxes' DNS forwarder asks; empty: the first nameserver of "
          "/etc/resolv.conf; off: every query refused");

namespace {

std::string DefaultInitPath() {
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "";
  std::string path(self, static_cast<size_t>(n));
  path = path.substr(0, path.rfind('/') + 1) + "isorun-sandbox-init";
  return ::access(path.c_str(), X_OK) == 0 ? path : "";
}

}  // namespace

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv, "isorun-runner: runs sandboxes (gRPC isorun.v1.Runner)");
  isorun::SetLogService("runner");
  isorun::BlockShutdownSignals();
  // Each proxied connection holds two sockets here (the gateway's and the sandbox's).
  isorun::http::RaiseOpenFileLimit();
  std::unique_ptr<isorun::runner::ImageFetcher> fetcher;
  std::unique_ptr<isorun::runner::Driver> driver;
  isorun::Metrics metrics(absl::GetFlag(FLAGS_metrics_addr));
  auto& egress_attempts =
      prometheus::BuildCounter()
          .Name("isorun_runner_egress_connections_total")
          .Help("Connection attempts of sandboxes logged at the host, by verdict (blocked under "
                "every profile; allowed under allowlist)")
          .Register(metrics.registry());
  // The driver uses it while it serves; it is torn down (threads stopped, rules and veths left for
  // a restarted runner) after everything that calls the driver has stopped.
  std::unique_ptr<isorun::runner::SandboxNetwork> network;
  const std::string driver_name = absl::GetFlag(FLAGS_driver);
  if (driver_name == "sim") {
    isorun::runner::SimOptions options;
    options.pull_delay = absl::Milliseconds(absl::GetFlag(FLAGS_sim_pull_ms));
    options.start_delay = absl::Milliseconds(absl::GetFlag(FLAGS_sim_start_ms));
    options.fail_images_containing = absl::GetFlag(FLAGS_sim_fail_images_containing);
    driver = std::make_unique<isorun::runner::SimDriver>(options);
  } else if (driver_name == "runc") {
    const auto uid_base = static_cast<uint32_t>(absl::GetFlag(FLAGS_sandbox_uid_base));
    isorun::runner::SkopeoOptions fetch;
    fetch.skopeo_path = absl::GetFlag(FLAGS_skopeo_path);
    fetch.umoci_path = absl::GetFlag(FLAGS_umoci_path);
    fetch.insecure_registries = isorun::ParseRegistryList(absl::GetFlag(FLAGS_insecure_registries));
    fetch.max_image_bytes = absl::GetFlag(FLAGS_max_image_bytes);
    fetch.uid_base = uid_base;
    fetcher = std::make_unique<isorun::runner::SkopeoFetcher>(fetch);
    isorun::runner::RuncOptions options;
    options.data_dir = absl::GetFlag(FLAGS_data_dir);
    options.registry = absl::GetFlag(FLAGS_registry);
    options.registries = isorun::ParseRegistryList(absl::GetFlag(FLAGS_registries));
    if (!options.registry.empty()) options.registries.push_back(absl::AsciiStrToLower(options.registry));
    options.default_disk_mb = absl::GetFlag(FLAGS_default_disk_mb);
    options.disk_pool_per_size = absl::GetFlag(FLAGS_disk_pool);
    options.image_cache_bytes = absl::GetFlag(FLAGS_image_cache_bytes);
    options.pids_limit = absl::GetFlag(FLAGS_pids_limit);
    options.runc_path = absl::GetFlag(FLAGS_runc_path);
    options.init_path = absl::GetFlag(FLAGS_sandbox_init);
    if (options.init_path.empty()) options.init_path = DefaultInitPath();
    options.uid_base = uid_base;
    if (!absl::GetFlag(FLAGS_sandbox_network).empty()) {
      isorun::runner::NetworkOptions net;
      net.range = absl::GetFlag(FLAGS_sandbox_network);
      net.deny = absl::GetFlag(FLAGS_egress_deny);
      net.dns_upstream = absl::GetFlag(FLAGS_dns_upstream);
      net.state_dir = options.data_dir + "/network";
      net.on_attempt = [&egress_attempts](const std::string& verdict) {
        egress_attempts.Add({{"verdict", verdict}}).Increment();
      };
      auto created = isorun::runner::SandboxNetwork::Create(net);
      if (!created.ok()) {
        isorun::LogError("cannot set up sandbox networks", {{"error", created.status().ToString()}});
        return 1;
      }
      network = std::move(*created);
      options.network = network.get();
    }
    auto runc = isorun::runner::RuncDriver::Create(options, *fetcher);
    if (!runc.ok()) {
      isorun::LogError("cannot start the runc driver", {{"error", runc.status().ToString()}});
      return 1;
    }
    if (options.init_path.empty()) {
      isorun::LogWarn(
          "isorun-sandbox-init not found: sandboxes get a shell loop as PID 1, and runc installs "
          "the syscall filter on every start and exec (slower)");
    }
    driver = std::move(*runc);
  } else {
    isorun::LogError("unknown --driver (runc or sim)", {{"driver", driver_name}});
    return 2;
  }
  std::unique_ptr<isorun::runner::TunnelServer> tunnel;
  std::string tunnel_advertise;
  if (const std::string tunnel_addr = absl::GetFlag(FLAGS_tunnel_addr); !tunnel_addr.empty()) {
    isorun::runner::TunnelOptions tunnel_options;
    tunnel_options.address = tunnel_addr;
    tunnel_options.token = absl::GetFlag(FLAGS_tunnel_token);
    auto tls = isorun::http::TunnelTlsContext(/*server=*/true);
    if (!tls.ok()) {
      isorun::LogError("cannot start the tunnel", {{"error", tls.status().ToString()}});
      return 2;
    }
    tunnel_options.tls = *tls;
    auto started = isorun::runner::TunnelServer::Start(
        tunnel_options, [d = driver.get()](const std::string& id) { return d->NetnsPid(id); });
    if (!started.ok()) {
      isorun::LogError("cannot start the tunnel", {{"error", started.status().ToString()}});
      return 1;
    }
    tunnel = std::move(*started);
    tunnel_advertise = absl::GetFlag(FLAGS_tunnel_advertise_addr);
    if (tunnel_advertise.empty()) {
      tunnel_advertise =
          absl::StrCat(tunnel_addr.substr(0, tunnel_addr.rfind(':')), ":", tunnel->port());
    }
  }
  isorun::runner::RunnerService service(*driver, tunnel_advertise);
  const std::string grpc_addr = absl::GetFlag(FLAGS_grpc_addr);
  auto server =
      isorun::StartGrpcServer(grpc_addr, {&service}, absl::GetFlag(FLAGS_grpc_max_threads));
  if (!server.ok()) {
    isorun::LogError("cannot start", {{"error", std::string(server.status().message())}});
    return 1;
  }
  std::string advertise = absl::GetFlag(FLAGS_advertise_addr);
  if (advertise.empty()) {
    advertise = absl::StrCat(grpc_addr.substr(0, grpc_addr.rfind(':')), ":", server->port);
  }
  isorun::runner::AgentOptions agent_options;
  agent_options.name = absl::GetFlag(FLAGS_runner_name);
  agent_options.address = advertise;
  agent_options.region = absl::GetFlag(FLAGS_region);
  agent_options.cpu_millis = absl::GetFlag(FLAGS_cpu_millis);
  agent_options.memory_mb = absl::GetFlag(FLAGS_memory_mb);
  agent_options.max_sandboxes = absl::GetFlag(FLAGS_max_sandboxes);
  // The scheduler pre-warms within the budget of a real cache; the simulated one has none.
  if (driver_name == "runc")
    agent_options.image_cache_bytes = absl::GetFlag(FLAGS_image_cache_bytes);
  isorun::runner::Agent agent(isorun::MakeChannel(absl::GetFlag(FLAGS_scheduler_addr)), *driver,
                              agent_options);
  agent.Start();
  // What the runner holds, refreshed every 2 s for dashboards.
  auto& sandboxes_gauge = prometheus::BuildGauge()
                              .Name("isorun_runner_sandboxes")
                              .Help("Sandboxes this runner holds")
                              .Register(metrics.registry())
                              .Add({});
  auto& images_gauge = prometheus::BuildGauge()
                           .Name("isorun_runner_cached_images")
                           .Help("Images in this runner's cache")
                           .Register(metrics.registry())
                           .Add({});
  auto& image_bytes = prometheus::BuildGauge()
                          .Name("isorun_runner_image_cache_bytes")
                          .Help("Bytes of unpacked images in this runner's cache")
                          .Register(metrics.registry())
                          .Add({});
  absl::Notification stop_gauges;
  std::thread gauges([&] {
    do {
      sandboxes_gauge.Set(static_cast<double>(driver->Sandboxes().size()));
      auto images = driver->Images();
      images_gauge.Set(static_cast<double>(images.size()));
      double bytes = 0;
      for (const auto& image : images) bytes += static_cast<double>(image.size_bytes);
      image_bytes.Set(bytes);
    } while (!stop_gauges.WaitForNotificationWithTimeout(absl::Seconds(2)));
  });
  isorun::LogInfo("serving", {{"grpc_port", std::to_string(server->port)},
                              {"advertise", advertise},
                              {"tunnel", tunnel_advertise},
                              {"driver", driver_name}});
  int sig = isorun::WaitForShutdownSignal();
  stop_gauges.Notify();
  gauges.join();
  isorun::LogInfo("shutting down", {{"signal", std::to_string(sig)}});
  agent.Stop();
  if (tunnel) tunnel->Stop();
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (absl::GetFlag(FLAGS_stop_sandboxes_on_exit)) {
    for (const auto& id : driver->Sandboxes()) {
      auto stopped = driver->Stop(id);
      if (!stopped.ok()) {
        isorun::LogWarn("cannot stop sandbox",
                        {{"sandbox", id}, {"error", stopped.status().ToString()}});
      }
    }
  }
  return 0;
}
