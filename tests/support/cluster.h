#pragma once

// A whole Isorun control plane as real processes (quota, scheduler, lifecycle, runners, gateway)
// on a fresh Postgres database, for end-to-end tests and benchmarks. Each process gets fixed
// loopback ports chosen at construction, so a killed process restarts where its peers expect it.
// Logs go to files in a temporary folder and are printed when a process fails to come up.

#include <sys/types.h>

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
  std::string sim_fail_images_containing;
  int sim_start_ms = 0;
  int reaper_interval_ms = 200;
  int reconcile_interval_ms = 500;
  int stuck_after_sec = 120;
  int destroy_retry_after_sec = 2;
  int orphan_grace_sec = 30;
  int runner_lost_after_ms = 60000;
  bool gateway = true;
  // Extra environment for every process (NAME=value).
  std::vector<std::string> env;
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
  std::string grpc_addr(const std::string& process) const;  // quota, scheduler, lifecycle, runner-N
  std::string metrics_url(const std::string& process) const;

  // Process control: names as above plus "gateway".
  void Kill(const std::string& process, int signal);
  void Start(const std::string& process);
  bool Running(const std::string& process);

  // Admin helpers (direct SQL, as isorunctl does).
  std::string CreateTenant(const std::string& name, int max_concurrent);
  std::string CreateKey(const std::string& tenant_id, const std::string& region = "local");

  // Runs build/bin/isorunctl with this cluster's database; returns its exit code and output.
  int Isorunctl(const std::vector<std::string>& args, std::string* out = nullptr);

  static std::string BinDir();

 private:
  struct Process {
    std::string binary;
    std::vector<std::string> args;
    std::string log;
    pid_t pid = 0;
  };
  void Define();
  void WaitReady(const std::string& process);

  ClusterOptions options_;
  TestDatabase db_;
  std::string dir_;
  std::map<std::string, int> ports_;
  std::map<std::string, int> metrics_ports_;
  std::map<std::string, Process> processes_;
  std::vector<std::string> order_;
};

// Picks a loopback TCP port that is free now.
int PickFreePort();

}  // namespace isorun::testing
