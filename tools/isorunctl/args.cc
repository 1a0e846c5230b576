#include "tools/isorunctl/args.h"

#include <charconv>
#include <cmath>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace isorun::ctl {
namespace {

constexpr char kUsagePayload[] = "type.isorun.dev/isorunctl.usage";

bool IsHelp(std::string_view arg) { return arg == "--help" || arg == "-h"; }

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

absl::Status UsageError(std::string_view message) {
  absl::Status status = absl::InvalidArgumentError(std::string(message));
  status.SetPayload(kUsagePayload, absl::Cord("1"));
  return status;
}

bool IsUsageError(const absl::Status& status) {
  return status.GetPayload(kUsagePayload).has_value();
}

const std::map<std::string, FlagKind, std::less<>>& KnownFlags() {
  static const auto* flags = new std::map<std::string, FlagKind, std::less<>>{
      {"database-url", FlagKind::kValue},    {"max-concurrent", FlagKind::kValue},
      {"creates-per-sec", FlagKind::kValue}, {"requests-per-sec", FlagKind::kValue},
      {"region", FlagKind::kValue},          {"tenant", FlagKind::kValue},
      {"state", FlagKind::kValue},           {"json", FlagKind::kBool},
      {"status", FlagKind::kBool},           {"role", FlagKind::kValue},
      {"name", FlagKind::kValue},
      {"max-concurrent-execs", FlagKind::kValue}, {"max-hibernated", FlagKind::kValue},
      {"hibernation-retention-sec", FlagKind::kValue},
      {"egress", FlagKind::kValue},           {"allow", FlagKind::kValue},
      {"lifecycle-addr", FlagKind::kValue},
  };
  return *flags;
}

std::optional<std::string> Args::Get(std::string_view name) const {
  auto it = flags.find(std::string(name));
  if (it == flags.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& argv) {
  Args args;
  for (const std::string& arg : argv) {
    if (arg == "--") break;
    if (IsHelp(arg)) args.help = true;
  }
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg == "--") {
      args.positionals.insert(args.positionals.end(), argv.begin() + i + 1, argv.end());
      break;
    }
    if (IsHelp(arg)) continue;
    if (arg.size() < 2 || arg[0] != '-') {
      args.positionals.push_back(arg);
      continue;
    }
    if (arg[1] != '-') {
      if (args.help) continue;
      return UsageError(absl::StrCat("unknown flag '", arg, "' (flags are spelled --name)"));
    }
    std::string body = arg.substr(2);
    std::optional<std::string> inline_value;
    if (auto eq = body.find('='); eq != std::string::npos) {
      inline_value = body.substr(eq + 1);
      body.resize(eq);
    }
    auto known = KnownFlags().find(body);
    if (known == KnownFlags().end()) {
      if (args.help) continue;
      return UsageError(absl::StrCat("unknown flag '--", body, "'"));
    }
    std::string value;
    if (known->second == FlagKind::kBool) {
      if (inline_value.has_value()) {
        return UsageError(absl::StrCat("flag --", body, " takes no value"));
      }
    } else if (inline_value.has_value()) {
      value = *inline_value;
    } else if (i + 1 < argv.size()) {
      // The next word is the value even when it starts with '-', so that `--max-concurrent -1`
      // gets a range error rather than "unknown flag -1".
      value = argv[++i];
    } else {
      if (args.help) continue;
      return UsageError(absl::StrCat("flag --", body, " needs a value"));
    }
    if (!args.flags.emplace(body, value).second) {
      return UsageError(absl::StrCat("flag --", body, " is given more than once"));
    }
  }
  return args;
}

bool IsValidTenantName(std::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || IsDigit(c) || (i > 0 && (c == '_' || c == '-'));
    if (!ok) return false;
  }
  return true;
}

absl::Status MaxConcurrentError() {
  return UsageError(
      absl::StrCat("--max-concurrent must be an integer from 0 to ", kMaxConcurrentLimit));
}

absl::StatusOr<int> ParseMaxConcurrent(std::string_view value) {
  auto error = [] { return MaxConcurrentError(); };
  if (value.empty() || value.size() > 6) return error();
  int n = 0;
  for (char c : value) {
    if (!IsDigit(c)) return error();
    n = n * 10 + (c - '0');
  }
  if (n > kMaxConcurrentLimit) return error();
  return n;
}

absl::Status RateError(const std::string& flag) {
  return UsageError(absl::StrCat("--", flag, " must be a number greater than 0 and at most ",
                                 FormatNumber(kMaxRate), " (e.g. 5 or 0.5)"));
}

absl::StatusOr<double> ParseRate(const std::string& flag, const std::string& value) {
  auto error = [&] { return RateError(flag); };
  int digits = 0;
  int dots = 0;
  for (char c : value) {
    if (IsDigit(c)) {
      ++digits;
    } else if (c == '.') {
      ++dots;
    } else {
      return error();
    }
  }
  if (digits == 0 || dots > 1 || value.size() > 32) return error();
  double rate = 0;
  if (!absl::SimpleAtod(value, &rate) || !std::isfinite(rate) || rate <= 0 || rate > kMaxRate) {
    return error();
  }
  return rate;
}

const std::vector<std::string>& SandboxStates() {
  static const auto* states = new std::vector<std::string>{
      "PENDING", "STARTING", "RUNNING", "HIBERNATED", "DESTROYING", "DESTROYED", "FAILED", "LOST"};
  return *states;
}

absl::StatusOr<std::string> ParseStateFilter(const std::string& value) {
  std::string upper = absl::AsciiStrToUpper(std::string(value));
  if (upper == "ALL") return std::string("all");
  for (const std::string& state : SandboxStates()) {
    if (upper == state) return upper;
  }
  return UsageError(absl::StrCat("--state must be one of ", absl::StrJoin(SandboxStates(), ", "),
                                 " or all (got '", value, "')"));
}

std::string FormatNumber(double value) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value, std::chars_format::fixed);
  if (ec != std::errc()) return absl::StrCat(value);
  return std::string(buf, end);
}

}  // namespace isorun::ctl
