#pragma once

// Command-line parsing for isorunctl, kept apart from any I/O so it can be tested on its own.
//
// Flags are `--name value` or `--name=value`, anywhere before or after the command words; `-h`
// and `--help` ask for help; `--` ends the flags. Every flag name has one arity wherever it is
// used, so the command words can be told from flag values before the command is known.

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace isorun::ctl {

// A bad command line: exits with 2 (every other failure exits with 1).
absl::Status UsageError(std::string_view message);
bool IsUsageError(const absl::Status& status);

enum class FlagKind { kBool, kValue };

// Every flag isorunctl knows (without the leading dashes), and whether it takes a value.
const std::map<std::string, FlagKind, std::less<>>& KnownFlags();

struct Args {
  std::vector<std::string> positionals;      // command words and their arguments, in order
  std::map<std::string, std::string> flags;  // name -> value ("" for boolean flags)
  bool help = false;

  bool Has(std::string_view name) const { return flags.count(std::string(name)) > 0; }
  std::optional<std::string> Get(std::string_view name) const;
};

// Splits argv (without the program name). An unknown flag, a missing value, a value given to a
// boolean flag or a flag given twice is a usage error, except that with --help anywhere unknown
// flags are ignored, so that help always answers.
absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& argv);

// ^[a-z0-9][a-z0-9_-]{0,62}$, as accounts.tenants checks.
bool IsValidTenantName(std::string_view name);

// `--max-concurrent`: an integer from 0 to kMaxConcurrentLimit, digits only.
inline constexpr int kMaxConcurrentLimit = 100000;
absl::StatusOr<int> ParseMaxConcurrent(std::string_view value);
absl::Status MaxConcurrentError();

// `--creates-per-sec`, `--requests-per-sec`: a decimal number greater than 0 and at most
// kMaxRate (no exponent, no sign, no inf or nan).
inline constexpr double kMaxRate = 1000000;
absl::StatusOr<double> ParseRate(const std::string& flag, const std::string& value);
absl::Status RateError(const std::string& flag);

// Sandbox states of API.md; `--state` takes one (any case) or "all".
const std::vector<std::string>& SandboxStates();
// Returns the upper-case state, or "all".
absl::StatusOr<std::string> ParseStateFilter(const std::string& value);

// Shortest round-trip decimal without exponent: 5 -> "5", 0.25 -> "0.25", 1e6 -> "1000000".
std::string FormatNumber(double value);

}  // namespace isorun::ctl
