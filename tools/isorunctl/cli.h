#pragma once

// isorunctl's command line: resolves the command words, checks flags and arguments, prints help,
// runs the command from commands.h and turns its status into an exit code.

#include <ostream>
#include <string>
#include <vector>

namespace isorun::ctl {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Runs isorunctl on `argv` (without the program name). `env_database_url` is ISORUN_DATABASE_URL
// (empty when unset); --database-url wins over it. Normal output and help go to `out`, errors to
// `err`. Returns the exit code: kExitOk, kExitFailure, or kExitUsage for a bad command line.
int Run(const std::vector<std::string>& argv, const std::string& env_database_url,
        std::ostream& out, std::ostream& err);

}  // namespace isorun::ctl
