#include "services/kit/flags.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>

#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/mutex.h"

namespace isorun {

std::string EnvNameForFlag(const std::string& flag_name) {
  std::string env = "ISORUN_";
  for (char c : flag_name) env += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return env;
}

std::vector<char*> ParseFlags(int argc, char** argv, const char* usage) {
  // Debian's Abseil is built with deadlock detection on: every Mutex lock then records a stack
  // trace in a global graph, which cost a few percent of each service's CPU under load.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage(usage);
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    // Only our own flags (declared in this repository), not absl's or gRPC's internals.
    const std::string file = flag->Filename();
    if (file.find("services/") == std::string::npos && file.find("scheduler/") == std::string::npos &&
        file.find("quotas/") == std::string::npos && file.find("tools/") == std::string::npos &&
        file.find("bench/") == std::string::npos && file.find("tests/") == std::string::npos) {
      continue;
    }
    const std::string env = EnvNameForFlag(std::string(name));
    const char* value = std::getenv(env.c_str());
    if (value == nullptr) continue;
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      std::fprintf(stderr, "invalid value in %s for --%s: %s\n", env.c_str(),
                   std::string(name).c_str(), error.c_str());
      std::exit(2);
    }
  }
  return absl::ParseCommandLine(argc, argv);
}

}  // namespace isorun
