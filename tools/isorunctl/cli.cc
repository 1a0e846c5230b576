#include "tools/isorunctl/cli.h"

#include <cstdlib>

#include <algorithm>
#include <functional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tools/isorunctl/args.h"
#include "tools/isorunctl/commands.h"

namespace isorun::ctl {
namespace {

using Handler = std::function<absl::Status(const Args&, const std::vector<std::string>& params,
                                           const std::string& database_url, std::ostream& out)>;

struct Command {
  std::string group;  // empty for a top-level command
  std::string name;
  std::vector<std::string> params;  // positional parameters, all required
  std::string flags_synopsis;
  std::string summary;
  std::string details;             // shown by --help: parameters and flags
  std::vector<std::string> flags;  // allowed besides --database-url and --help
  Handler run;

  std::string path() const { return group.empty() ? name : absl::StrCat(group, " ", name); }
  std::string synopsis() const {
    std::string s = absl::StrCat("isorunctl ", path());
    for (const std::string& p : params) absl::StrAppend(&s, " ", p);
    if (!flags_synopsis.empty()) absl::StrAppend(&s, " ", flags_synopsis);
    return s;
  }
};

struct Group {
  std::string name;
  std::string summary;
};

constexpr char kGlobalFlags[] =
    "Global flags:\n"
    "  --database-url URL   PostgreSQL URL; default: $ISORUN_DATABASE_URL\n"
    "  -h, --help           show help\n";

constexpr char kLimitFlags[] =
    "  --max-concurrent N     concurrent (non-hibernated) sandboxes, an integer 0..100000\n"
    "  --creates-per-sec R    sandbox creates per second (rate limit), a number > 0\n"
    "  --requests-per-sec R   API requests per second (rate limit), a number > 0\n"
    "  --max-concurrent-execs N  exec and exec:stream calls running at once, 0..100000\n"
    "  --max-hibernated N     hibernated sandboxes kept at once, 0..100000\n"
    "  --hibernation-retention-sec S  how long a hibernated sandbox is kept before it is\n"
    "                         destroyed (HIBERNATION_EXPIRED), 1..31622400\n";

Format FormatOf(const Args& args) { return args.Has("json") ? Format::kJson : Format::kTable; }

absl::StatusOr<LimitsUpdate> LimitsOf(const Args& args) {
  LimitsUpdate limits;
  if (auto v = args.Get("max-concurrent")) {
    auto n = ParseMaxConcurrent(*v);
    if (!n.ok()) return n.status();
    limits.max_concurrent = *n;
  }
  for (const char* flag : {"creates-per-sec", "requests-per-sec"}) {
    if (auto v = args.Get(flag)) {
      auto rate = ParseRate(flag, *v);
      if (!rate.ok()) return rate.status();
      (std::string_view(flag) == "creates-per-sec" ? limits.creates_per_sec
                                                   : limits.requests_per_sec) = *rate;
    }
  }
  for (const char* flag : {"max-concurrent-execs", "max-hibernated", "hibernation-retention-sec"}) {
    if (auto v = args.Get(flag)) {
      int n = 0;
      if (!absl::SimpleAtoi(*v, &n)) {
        return UsageError(absl::StrCat("--", flag, " must be an integer, got '", *v, "'"));
      }
      const std::string_view f(flag);
      (f == "max-concurrent-execs" ? limits.max_concurrent_execs
       : f == "max-hibernated"     ? limits.max_hibernated
                                   : limits.hibernation_retention_sec) = n;
    }
  }
  return limits;
}

const std::vector<Group>& Groups() {
  static const auto* groups = new std::vector<Group>{
      {"tenants", "create tenants, set and list their quota limits"},
      {"keys", "create, list and revoke a tenant's API keys"},
      {"sandboxes", "list sandboxes, change a sandbox's network profile"},
      {"runners", "drain runners (no new placements) and undrain them"},
      {"operators", "create operator tokens (the /v1/admin routes and the dashboard's fleet view)"},
  };
  return *groups;
}

const std::vector<Command>& Commands() {
  static const auto* commands = new std::vector<Command>{
      {"",
       "migrate",
       {},
       "[--status]",
       "apply pending schema migrations (--status: list them)",
       "Applies the migrations built into this binary that the database lacks, each in its own\n"
       "transaction, under an advisory lock; prints each one applied, or \"up to date\".\n\n"
       "  --status   list every migration instead: VERSION NAME STATUS APPLIED_AT NOTE, where\n"
       "             NOTE is CHANGED when an applied migration's file has changed since\n",
       {"status"},
       [](const Args& args, const std::vector<std::string>&, const std::string& db,
          std::ostream& out) {
         return args.Has("status") ? MigrationStatusTable(db, out) : Migrate(db, out);
       }},
      {"tenants",
       "create",
       {"NAME"},
       "[--max-concurrent N] [--creates-per-sec R] [--requests-per-sec R] "
       "[--max-concurrent-execs N] [--max-hibernated N] [--hibernation-retention-sec S]",
       "create a tenant with its quota limits",
       absl::StrCat("Creates tenant NAME with its quota limits and usage in one transaction and "
                    "prints its id.\n\n"
                    "  NAME                   1 to 63 of a-z, 0-9, '_', '-'; starts with a "
                    "letter or digit\n",
                    kLimitFlags,
                    "\nDefaults: --max-concurrent 10, --creates-per-sec 5, "
                    "--requests-per-sec 50, --max-concurrent-execs 32, --max-hibernated 10, "
                    "--hibernation-retention-sec 604800 (7 days).\n"),
       {"max-concurrent", "creates-per-sec", "requests-per-sec", "max-concurrent-execs",
        "max-hibernated", "hibernation-retention-sec"},
       [](const Args& args, const std::vector<std::string>& params, const std::string& db,
          std::ostream& out) {
         auto limits = LimitsOf(args);
         if (!limits.ok()) return limits.status();
         return CreateTenant(db, params[0], *limits, out);
       }},
      {"tenants",
       "set-limits",
       {"NAME"},
       "[--max-concurrent N] [--creates-per-sec R] [--requests-per-sec R] "
       "[--max-concurrent-execs N] [--max-hibernated N] [--hibernation-retention-sec S]",
       "change a tenant's quota limits",
       absl::StrCat("Changes only the limits given (at least one) and prints the new limits.\n\n",
                    kLimitFlags),
       {"max-concurrent", "creates-per-sec", "requests-per-sec", "max-concurrent-execs",
        "max-hibernated", "hibernation-retention-sec"},
       [](const Args& args, const std::vector<std::string>& params, const std::string& db,
          std::ostream& out) {
         auto limits = LimitsOf(args);
         if (!limits.ok()) return limits.status();
         return SetTenantLimits(db, params[0], *limits, out);
       }},
      {"tenants",
       "list",
       {},
       "[--json]",
       "list tenants with their limits and active sandboxes",
       "Prints NAME ID MAX_CONCURRENT CREATES_PER_SEC REQUESTS_PER_SEC ACTIVE, one tenant a line\n"
       "after a header line, sorted by name (\"-\" where a value is missing).\n\n"
       "  --json   print {\"tenants\": [...]} instead\n",
       {"json"},
       [](const Args& args, const std::vector<std::string>&, const std::string& db,
          std::ostream& out) { return ListTenants(db, FormatOf(args), out); }},
      {"keys",
       "create",
       {"TENANT"},
       "[--region R] [--role admin|sandbox] [--name N]",
       "create an API key and print it",
       "Creates an API key for tenant TENANT and prints the whole key, alone, on stdout. This is\n"
       "the only time it is shown: only a hash of its secret is stored.\n\n"
       "  --region R   the key's region, [a-z0-9-]+ (default: local)\n"
       "  --role R     admin (may also manage the tenant's keys through /v1/keys; the default\n"
       "               here, so an operator's first key lets a tenant manage the rest) or sandbox\n"
       "  --name N     a label shown in key lists (default: empty)\n",
       {"region", "role", "name"},
       [](const Args& args, const std::vector<std::string>& params, const std::string& db,
          std::ostream& out) {
         return CreateKey(db, params[0], args.Get("region").value_or("local"),
                          args.Get("role").value_or("admin"), args.Get("name").value_or(""), out);
       }},
      {"keys",
       "list",
       {"TENANT"},
       "[--json]",
       "list a tenant's API keys",
       "Prints KEY_ID REGION ROLE CREATED_AT REVOKED_AT NAME for each key of TENANT, oldest first\n"
       "(never a secret or its hash).\n\n"
       "  --json   print {\"keys\": [...]} instead\n",
       {"json"},
       [](const Args& args, const std::vector<std::string>& params, const std::string& db,
          std::ostream& out) { return ListKeys(db, params[0], FormatOf(args), out); }},
      {"keys",
       "revoke",
       {"KEY_ID"},
       "",
       "revoke an API key",
       "Revokes the key at once (gateways drop it from their caches on the next request).\n"
       "KEY_ID is the key id shown by `keys list`, or the whole key. Revoking a revoked key\n"
       "succeeds and says so.\n",
       {},
       [](const Args&, const std::vector<std::string>& params, const std::string& db,
          std::ostream& out) { return RevokeKey(db, params[0], out); }},
      {"operators",
       "create-token",
       {},
       "[--name N]",
       "create an operator token and print it",
       "Creates an operator token and prints it, alone, on stdout: the only time it is shown\n"
       "(only a hash of its secret is stored). It is sent as `Authorization: Bearer <token>`\n"
       "to the gateway's /v1/admin routes and signs in the dashboard's operator view.\n\n"
       "  --name N   a label (default: empty)\n",
       {"name"},
       [](const Args& args, const std::vector<std::string>&, const std::string& db,
          std::ostream& out) { return CreateOperatorToken(db, args.Get("name").value_or(""), out); }},
      {"sandboxes",
       "list",
       {},
       "[--tenant T] [--state S] [--json]",
       "list sandboxes",
       "Prints ID TENANT STATE IMAGE RUNNER CREATED_AT EXPIRES_AT END_REASON, oldest first.\n\n"
       "  --tenant T   only tenant T's sandboxes\n"
       "  --state S    only sandboxes in state S (PENDING, STARTING, RUNNING, HIBERNATED,\n"
       "               DESTROYING, DESTROYED, FAILED, LOST), or \"all\"; default: live ones\n"
       "               (all but DESTROYED, FAILED and LOST)\n"
       "  --json       print {\"sandboxes\": [...]} instead\n",
       {"tenant", "state", "json"},
       [](const Args& args, const std::vector<std::string>&, const std::string& db,
          std::ostream& out) {
         SandboxFilter filter{args.Get("tenant").value_or(""), args.Get("state").value_or("")};
         if (args.Has("tenant") && filter.tenant.empty()) {
           return UsageError("--tenant needs a tenant name");
         }
         if (args.Has("state") && filter.state.empty()) {
           return UsageError("--state needs a state or \"all\"");
         }
         return ListSandboxes(db, filter, FormatOf(args), out);
       }},
      {"",
       "capacity",
       {},
       "[--json]",
       "show runners, free resources, cached images and warm/cold placements",
       "Prints one line per runner: NAME, STATE (healthy: heartbeat within 10 s, unhealthy:\n"
       "within 60 s, else lost; \",draining\" when drained), REGION, free/total cpu millis and\n"
       "memory MB, used/max sandboxes, cached IMAGES, and WARM and COLD placements; then fleet\n"
       "totals and the free capacity of schedulable (healthy, not draining) runners.\n\n"
       "  --json   print {\"runners\": [...], \"totals\": {...}, \"schedulable\": {...}}\n",
       {"json"},
       [](const Args& args, const std::vector<std::string>&, const std::string& db,
          std::ostream& out) { return ShowCapacity(db, FormatOf(args), out); }},
      {"sandboxes",
       "set-network",
       {"ID"},
       "--egress E [--allow LIST] [--lifecycle-addr HOST:PORT]",
       "replace a running sandbox's network profile",
       "Replaces the network profile of sandbox ID (running or hibernated) at once, as\n"
       "PUT /v1/sandboxes/{id}/network does, and prints the new profile.\n\n"
       "  --egress E                open, none or allowlist\n"
       "  --allow LIST              with allowlist: comma-separated IPv4 addresses, CIDR blocks,\n"
       "                            host names and *.names\n"
       "  --lifecycle-addr H:P      the lifecycle service (default: $ISORUN_GRPC_LIFECYCLE, which\n"
       "                            ./isorun up writes into its env file)\n",
       {"egress", "allow", "lifecycle-addr"},
       [](const Args& args, const std::vector<std::string>& params, const std::string& db,
          std::ostream& out) {
         auto egress = args.Get("egress");
         if (!egress.has_value() || egress->empty()) return UsageError("--egress is required");
         std::string addr = args.Get("lifecycle-addr").value_or("");
         if (addr.empty()) {
           const char* env = std::getenv("ISORUN_GRPC_LIFECYCLE");
           if (env != nullptr) addr = env;
         }
         return SetSandboxNetwork(db, addr, params[0], *egress, args.Get("allow").value_or(""),
                                  out);
       }},
      {"runners",
       "drain",
       {"NAME"},
       "",
       "stop placing new sandboxes on a runner",
       "Marks runner NAME (a name or id) as draining: the scheduler places no new sandboxes on\n"
       "it; sandboxes already there keep running.\n",
       {},
       [](const Args&, const std::vector<std::string>& params, const std::string& db,
          std::ostream& out) { return SetRunnerDraining(db, params[0], true, out); }},
      {"runners",
       "undrain",
       {"NAME"},
       "",
       "place sandboxes on a drained runner again",
       "Clears the draining mark of runner NAME (a name or id).\n",
       {},
       [](const Args&, const std::vector<std::string>& params, const std::string& db,
          std::ostream& out) { return SetRunnerDraining(db, params[0], false, out); }},
  };
  return *commands;
}

void PrintTopHelp(std::ostream& out) {
  std::vector<std::pair<std::string, std::string>> lines;
  for (const Command& c : Commands()) {
    if (c.group.empty()) lines.emplace_back(c.name, c.summary);
  }
  for (const Group& g : Groups()) {
    std::vector<std::string> subs;
    for (const Command& c : Commands()) {
      if (c.group == g.name) subs.push_back(c.name);
    }
    lines.emplace_back(absl::StrCat(g.name, " ", absl::StrJoin(subs, "|")), g.summary);
  }
  size_t width = 0;
  for (const auto& [words, summary] : lines) width = std::max(width, words.size());
  out << "isorunctl: administer an Isorun control plane through its PostgreSQL database.\n\n"
         "Usage: isorunctl [--database-url URL] COMMAND [ARGS...] [FLAGS...]\n\n"
         "Commands:\n";
  for (const auto& [words, summary] : lines) {
    out << "  " << words << std::string(width - words.size() + 3, ' ') << summary << '\n';
  }
  out << "\n"
      << kGlobalFlags
      << "\nRun `isorunctl COMMAND --help` for a command's arguments and flags.\n"
         "Exit status: 0 success, 1 failure, 2 bad command line.\n";
}

void PrintGroupHelp(const Group& g, std::ostream& out) {
  out << "isorunctl " << g.name << ": " << g.summary << ".\n\nUsage:\n";
  for (const Command& c : Commands()) {
    if (c.group == g.name) out << "  " << c.synopsis() << '\n';
  }
  out << "\nCommands:\n";
  for (const Command& c : Commands()) {
    if (c.group == g.name) {
      out << "  " << c.name << std::string(14 - c.name.size(), ' ') << c.summary << '\n';
    }
  }
  out << "\n"
      << kGlobalFlags << "\nRun `isorunctl " << g.name
      << " COMMAND --help` for a command's arguments and flags.\n";
}

void PrintCommandHelp(const Command& c, std::ostream& out) {
  out << "Usage: " << c.synopsis() << "\n\n" << c.details << "\n" << kGlobalFlags;
}

const Group* FindGroup(std::string_view name) {
  for (const Group& g : Groups()) {
    if (g.name == name) return &g;
  }
  return nullptr;
}

const Command* FindCommand(std::string_view group, std::string_view name) {
  for (const Command& c : Commands()) {
    if (c.group == group && c.name == name) return &c;
  }
  return nullptr;
}

// Prints a usage error and where to find help; returns kExitUsage.
int Usage(std::ostream& err, std::string_view message, std::string_view help_for) {
  err << "isorunctl: " << message << "\n";
  err << "Run `isorunctl" << (help_for.empty() ? "" : " ") << help_for << " --help` for usage.\n";
  return kExitUsage;
}

}  // namespace

int Run(const std::vector<std::string>& argv, const std::string& env_database_url,
        std::ostream& out, std::ostream& err) {
  auto parsed = ParseArgs(argv);
  if (!parsed.ok()) return Usage(err, std::string(parsed.status().message()), "");
  Args args = *std::move(parsed);
  std::vector<std::string>& words = args.positionals;
  // `isorunctl help [COMMAND...]` is `isorunctl [COMMAND...] --help`.
  if (!words.empty() && words[0] == "help") {
    words.erase(words.begin());
    args.help = true;
  }

  if (words.empty()) {
    if (args.help) {
      PrintTopHelp(out);
      return kExitOk;
    }
    err << "isorunctl: missing command\n\n";
    PrintTopHelp(err);
    return kExitUsage;
  }

  const Command* command = FindCommand("", words[0]);
  size_t consumed = 1;
  if (command == nullptr) {
    const Group* group = FindGroup(words[0]);
    if (group == nullptr) {
      return Usage(err, absl::StrCat("unknown command '", words[0], "'"), "");
    }
    if (words.size() < 2) {
      if (args.help) {
        PrintGroupHelp(*group, out);
        return kExitOk;
      }
      err << "isorunctl: missing command after '" << group->name << "'\n\n";
      PrintGroupHelp(*group, err);
      return kExitUsage;
    }
    command = FindCommand(group->name, words[1]);
    if (command == nullptr) {
      return Usage(err, absl::StrCat("unknown command '", group->name, " ", words[1], "'"),
                   group->name);
    }
    consumed = 2;
  }
  if (args.help) {
    PrintCommandHelp(*command, out);
    return kExitOk;
  }

  for (const auto& [flag, value] : args.flags) {
    if (flag == "database-url") continue;
    if (std::find(command->flags.begin(), command->flags.end(), flag) == command->flags.end()) {
      return Usage(
          err, absl::StrCat("flag --", flag, " is not valid for `isorunctl ", command->path(), "`"),
          command->path());
    }
  }
  std::vector<std::string> params(words.begin() + consumed, words.end());
  if (params.size() < command->params.size()) {
    return Usage(
        err,
        absl::StrCat("missing ", command->params[params.size()], ": usage: ", command->synopsis()),
        command->path());
  }
  if (params.size() > command->params.size()) {
    return Usage(err,
                 absl::StrCat("unexpected argument '", params[command->params.size()],
                              "': usage: ", command->synopsis()),
                 command->path());
  }

  std::string database_url = args.Get("database-url").value_or(env_database_url);
  if (database_url.empty()) {
    return Usage(err,
                 "no database: set ISORUN_DATABASE_URL or pass --database-url URL "
                 "(e.g. postgresql://isorun@127.0.0.1:5432/isorun)",
                 command->path());
  }

  absl::Status status = command->run(args, params, database_url, out);
  out.flush();
  if (status.ok()) return kExitOk;
  if (IsUsageError(status)) return Usage(err, std::string(status.message()), command->path());
  err << "isorunctl: " << status.message() << "\n";
  return kExitFailure;
}

}  // namespace isorun::ctl
