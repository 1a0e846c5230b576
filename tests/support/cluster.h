#pragma once

// A whole Isorun control plane as real processes (quota, scheduler, lifecycle, runners, gateway)
// on a fresh Postgres database, for end-to-end tests and benchmarks. Each process gets fixed
// loopback ports chosen at construction, so a killed process restarts where its peers expect it.
// Logs go to files in a temporary folder and are printed when a process fails to come up.

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/support/test_database.h"

namespace isorun::testing {

struct ClusterOptions {
  int runners = 1;
  int runner_slots = 100;
  int runner_cpu_millis = 1'000'000;
  int runner_memory_mb = 1'000'000;
  // Runner driver: "sim" (simulated, no processes) or "runc" (real OCI sandboxes: needs root,
  // runc, skopeo, umoci and a registry). runc runners keep their image cache and bundles in
  // runner_data_dir(name), which survives a Kill/Start of the runner; the Cluster's destructor
  // deletes their containers and unmounts their overlays.
  std::string runner_driver = "sim";
  std::string registry;  // runc: host:port for unqualified image names (busybox:1.36)
  int64_t runner_image_cache_bytes = 0;  // runc: cache budget; 0 = the runner's default
  // runc: sandbox networks. Each runner gets a /24 of 100.80.0.0/12 picked at random (so runs in
  // parallel do not meet; runner_network() says which), removed with its nftables table and veths
  // when the cluster stops. DNS upstream: "off" by default, so that no test sandbox ever reaches
  // the host's resolver; a test that needs names starts its own server and sets it here.
  std::string runner_dns_upstream = "off";
  std::string runner_egress_deny;  // empty: the runner's default deny list
  std::string sim_fail_images_containing;
  int sim_start_ms = 0;
  int reaper_interval_ms = 200;
  int reconcile_interval_ms = 500;
  int stuck_after_sec = 120;
  int destroy_retry_after_sec = 2;
  int orphan_grace_sec = 30;
  int runner_lost_after_ms = 60000;
  bool gateway = true;
  // The gateway's public-URL proxy (on proxy_port(), domain `localhost`) and the runners' tunnels.
  int proxy_max_connections_per_sandbox = 1000;
  int proxy_activity_interval_ms = 1000;
  // Wait for each process's first start with plain TCP connects to its port before the gRPC
  // checks: a fresh gRPC channel that finds nothing listening yet waits about a second before
  // it tries again, so this starts a cluster seconds sooner. Restarts (Start after Kill) never
  // probe.
  bool probe_ports = true;
  // The gateway serves this folder at /dashboard/ (empty: none).
  std::string dashboard_dir;
  // The scheduler's capacity snapshots (0: the scheduler's default, 10 s).
  int capacity_history_interval_sec = 0;
  // How often the gateway samples tenants' usage for their history (0: its default, 1 min).
  int usage_sample_interval_ms = 0;
  // Replicas of quota, scheduler, lifecycle and gateway: the first of each keeps the plain name
  // ("quota"), the others are "quota-2", ... Every client gets the list of all replicas.
  int replicas = 1;
  // Mutual TLS: a folder with ca.crt and <identity>.crt/.key (gateway, lifecycle, quota,
  // scheduler, runner) made by openssl; every process gets its identity's files. The test
  // process's own clients (readiness checks) use its --tls_* flags: give it the admin identity.
  std::string tls_dir;
  // The server to make the cluster's database on (superuser URL of its maintenance database);
  // empty: the one of `./isorun test` (ISORUN_TEST_DATABASE_URL).
  std::string admin_database_url;
  // Extra environment for every process (NAME=value).
  std::vector<std::string> env;
  // Extra flags of the lifecycle, every runner and the gateway.
  std::vector<std::string> lifecycle_args;
  std::vector<std::string> runner_args;
  std::vector<std::string> gateway_args;
};

class Cluster {
 public:
  explicit Cluster(ClusterOptions options = {});
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  const std::string& database_url() const { return db_.url(); }
  const TestDatabase& db() const { return db_; }
  std::string gateway_url() const;  // http://127.0.0.1:PORT
  int gateway_port() const { return ports_.at("gateway"); }
  // The public-URL proxy: Host "<port>-<publicId>.localhost" on 127.0.0.1:proxy_port().
  int proxy_port() const { return ports_.at("proxy"); }
  // host:port of a runner's tunnel listener, and the token it requires.
  std::string tunnel_addr(const std::string& runner) const;
  const std::string& tunnel_token() const { return tunnel_token_; }
  std::string grpc_addr(const std::string& process) const;  // quota, scheduler, lifecycle, runner-N
  // Every replica of a service ("quota", "scheduler", "lifecycle"), as clients are given them:
  // "127.0.0.1:P1,127.0.0.1:P2" (one address with one replica).
  std::string grpc_targets(const std::string& service) const;
  // The names of a service's replicas: {"lifecycle", "lifecycle-2", ...}.
  std::vector<std::string> replica_names(const std::string& service) const;
  // http://127.0.0.1:PORT of a gateway replica ("gateway", "gateway-2", ...).
  std::string gateway_url(const std::string& gateway) const;
  std::string metrics_url(const std::string& process) const;
  // runc runners: the runner's --data_dir (images/, sandboxes/<id>/, runc/ = its runc --root).
  std::string runner_data_dir(const std::string& runner) const;
  // runc runners: the runner's --sandbox_network (CIDR) and its nftables table's name.
  std::string runner_network(const std::string& runner) const { return networks_.at(runner); }
  std::string runner_nft_table(const std::string& runner) const;
  // The file a process's stdout and stderr go to.
  std::string log_path(const std::string& process) const { return processes_.at(process).log; }

  // Process control: names as above plus "gateway".
  void Kill(const std::string& process, int signal);
  void Start(const std::string& process);
  bool Running(const std::string& process);
  pid_t pid(const std::string& process) const { return processes_.at(process).pid; }

  // Admin helpers (direct SQL, as isorunctl does).
  std::string CreateTenant(const std::string& name, int max_concurrent);
  // role: "sandbox" (sandboxes only) or "admin" (may manage the tenant's keys too).
  std::string CreateKey(const std::string& tenant_id, const std::string& region = "local",
                        const std::string& role = "sandbox");
  // An operator token for /v1/admin/* (isro_<id>_<secret>).
  std::string CreateOperatorToken();
  // http://127.0.0.1:PORT of the scheduler's admin listener.
  std::string scheduler_admin_url() const;

  // Runs build/bin/isorunctl with this cluster's database; returns its exit code and output.
  int Isorunctl(const std::vector<std::string>& args, std::string* out = nullptr);

  static std::string BinDir();

  // A started cluster, or nullptr after saying on stderr why it did not start (for the load
  // programs of `./isorun bench`, which exit with an error then).
  static std::unique_ptr<Cluster> StartOrExplain(ClusterOptions options);

 private:
  struct Process {
    std::string binary;
    std::vector<std::string> args;
    std::string log;
    pid_t pid = 0;
    bool started_before = false;
  };
  void Define();
  // Stops every process (SIGTERM, then SIGKILL) and removes what they leave behind.
  // Stops every process (and a runc runner's containers); keeps the folder with the logs.
  void StopProcesses();
  void RemoveDir();
  void WaitReady(const std::string& process, bool probe_port_first);
  // Deletes the containers of a runc runner's data dir and unmounts its sandboxes' overlays.
  static void RemoveRunnerContainers(const std::string& data_dir);
  // Deletes a runc runner's nftables table, the veths of its range and its range lock.
  void RemoveRunnerNetwork(const std::string& runner) const;

  ClusterOptions options_;
  TestDatabase db_;
  std::string dir_;
  std::map<std::string, int> ports_;
  std::map<std::string, int> metrics_ports_;
  std::map<std::string, std::string> networks_;  // runner -> sandbox network
  std::map<std::string, Process> processes_;
  std::vector<std::string> order_;
  std::string tunnel_token_;
};

// Picks a loopback TCP port that is free now.
int PickFreePort();

}  // namespace isorun::testing
