// isorun-runner: runs sandboxes with a driver and serves isorun.v1.Runner.

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "services/kit/flags.h"
#include "services/kit/log.h"
#include "services/kit/server.h"
#include "services/runner/agent.h"
#include "services/runner/runner_service.h"
#include "services/runner/sim_driver.h"

ABSL_FLAG(std::string, grpc_addr, "127.0.0.1:7101", "host:port of the gRPC listener");
ABSL_FLAG(std::string, advertise_addr, "",
          "host:port others use to reach this runner; empty: --grpc_addr with the bound port");
ABSL_FLAG(std::string, metrics_addr, "127.0.0.1:9111", "host:port of /metrics; empty: none");
ABSL_FLAG(std::string, scheduler_addr, "127.0.0.1:7002", "host:port of the scheduler");
ABSL_FLAG(std::string, runner_name, "runner-1", "unique name of this runner");
ABSL_FLAG(std::string, region, "local", "region this runner serves");
ABSL_FLAG(std::string, driver, "sim", "sandbox driver: sim (simulated, no processes)");
ABSL_FLAG(int, cpu_millis, 16000, "cpu millis offered to sandboxes");
ABSL_FLAG(int, memory_mb, 32768, "memory offered to sandboxes, in MB");
ABSL_FLAG(int, max_sandboxes, 100, "sandbox slots");
ABSL_FLAG(int, sim_pull_ms, 0, "sim driver: simulated pull time of a cold image");
ABSL_FLAG(int, sim_start_ms, 0, "sim driver: simulated start time");
ABSL_FLAG(std::string, sim_fail_images_containing, "",
          "sim driver: fail starts of images whose reference contains this (failure injection)");

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv, "isorun-runner: runs sandboxes (gRPC isorun.v1.Runner)");
  isorun::SetLogService("runner");
  isorun::BlockShutdownSignals();
  std::unique_ptr<isorun::runner::Driver> driver;
  if (absl::GetFlag(FLAGS_driver) == "sim") {
    isorun::runner::SimOptions options;
    options.pull_delay = absl::Milliseconds(absl::GetFlag(FLAGS_sim_pull_ms));
    options.start_delay = absl::Milliseconds(absl::GetFlag(FLAGS_sim_start_ms));
    options.fail_images_containing = absl::GetFlag(FLAGS_sim_fail_images_containing);
    driver = std::make_unique<isorun::runner::SimDriver>(options);
  } else {
    isorun::LogError("unknown --driver", {{"driver", absl::GetFlag(FLAGS_driver)}});
    return 2;
  }
  isorun::Metrics metrics(absl::GetFlag(FLAGS_metrics_addr));
  isorun::runner::RunnerService service(*driver);
  const std::string grpc_addr = absl::GetFlag(FLAGS_grpc_addr);
  auto server = isorun::StartGrpcServer(grpc_addr, {&service});
  if (!server.ok()) {
    isorun::LogError("cannot start", {{"error", std::string(server.status().message())}});
    return 1;
  }
  std::string advertise = absl::GetFlag(FLAGS_advertise_addr);
  if (advertise.empty()) {
    advertise = absl::StrCat(grpc_addr.substr(0, grpc_addr.rfind(':')), ":", server->port);
  }
  isorun::runner::Agent agent(isorun::MakeChannel(absl::GetFlag(FLAGS_scheduler_addr)), *driver,
                              {absl::GetFlag(FLAGS_runner_name), advertise,
                               absl::GetFlag(FLAGS_region), absl::GetFlag(FLAGS_cpu_millis),
                               absl::GetFlag(FLAGS_memory_mb), absl::GetFlag(FLAGS_max_sandboxes)});
  agent.Start();
  isorun::LogInfo("serving", {{"grpc_port", std::to_string(server->port)},
                              {"advertise", advertise},
                              {"driver", absl::GetFlag(FLAGS_driver)}});
  int sig = isorun::WaitForShutdownSignal();
  isorun::LogInfo("shutting down", {{"signal", std::to_string(sig)}});
  agent.Stop();
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return 0;
}
