#include "tools/isorunctl/commands.h"

#include <cctype>
#include <cmath>
#include <functional>
#include <pqxx/pqxx>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "services/kit/api_key.h"
#include "services/kit/json.h"
#include "services/kit/migrate.h"
#include "services/kit/pg.h"
#include "tools/isorunctl/args.h"
#include "isorun/v1/sandboxes.grpc.pb.h"
#include "services/kit/egress_policy.h"
#include "services/kit/server.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/ascii.h"
#include <chrono>
#include "tools/isorunctl/table.h"

namespace isorun::ctl {
namespace {

// Opens one connection for the command; libpqxx exceptions end here as statuses.
absl::Status WithDb(const std::string& url,
                    const std::function<absl::Status(pqxx::connection&)>& fn) {
  try {
    pqxx::connection conn(url);
    return fn(conn);
  } catch (const std::exception& e) {
    // libpq's messages span lines ("...failed: Connection refused\n\tIs the server running");
    // an error here is one line.
    absl::Status status = StatusFromPgException(e);
    std::string message;
    bool space = false;
    for (char c : status.message()) {
      if (std::isspace(static_cast<unsigned char>(c))) {
        space = true;
        continue;
      }
      if (space && !message.empty()) message += ' ';
      space = false;
      message += c;
    }
    // An unmigrated database is the usual cause of a missing schema or table.
    if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e);
        sql != nullptr && (sql->sqlstate() == "42P01" || sql->sqlstate() == "3F000")) {
      absl::StrAppend(&message, " (is the database migrated? run `isorunctl migrate`)");
    }
    return absl::Status(status.code(), message);
  }
}

// SQL for a timestamptz column as RFC 3339 UTC (NULL stays NULL).
std::string Ts(const std::string& column) {
  return absl::StrCat("to_char(", column, " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')");
}

std::string Text(const pqxx::field& f) { return f.is_null() ? std::string() : f.c_str(); }

// A nullable text column as a JSON string or null.
void JsonText(JsonWriter& w, const std::string& key, const pqxx::field& f) {
  w.Key(key);
  if (f.is_null()) {
    w.Null();
  } else {
    w.String(f.c_str());
  }
}

void JsonNumber(JsonWriter& w, const std::string& key, double value) {
  w.Key(key).Raw(FormatNumber(value));
}

absl::Status ValidateTenantName(const std::string& name) {
  if (IsValidTenantName(name)) return absl::OkStatus();
  return UsageError(absl::StrCat("invalid tenant name '", name,
                                 "': use 1 to 63 characters of a-z, 0-9, '_' and '-', starting "
                                 "with a letter or digit"));
}

absl::Status ValidateLimits(const LimitsUpdate& limits) {
  if (limits.max_concurrent.has_value() &&
      (*limits.max_concurrent < 0 || *limits.max_concurrent > kMaxConcurrentLimit)) {
    return MaxConcurrentError();
  }
  auto check_rate = [](const std::string& flag, const std::optional<double>& rate) {
    if (rate.has_value() && !(std::isfinite(*rate) && *rate > 0 && *rate <= kMaxRate)) {
      return RateError(flag);
    }
    return absl::OkStatus();
  };
  if (auto s = check_rate("creates-per-sec", limits.creates_per_sec); !s.ok()) return s;
  if (auto s = check_rate("requests-per-sec", limits.requests_per_sec); !s.ok()) return s;
  auto check_count = [](const char* flag, const std::optional<int>& n, int min, int max) {
    if (n.has_value() && (*n < min || *n > max)) {
      return UsageError(absl::StrCat("--", flag, " must be an integer ", min, "..", max));
    }
    return absl::OkStatus();
  };
  if (auto s = check_count("max-concurrent-execs", limits.max_concurrent_execs, 0, 100000);
      !s.ok()) {
    return s;
  }
  if (auto s = check_count("max-hibernated", limits.max_hibernated, 0, 100000); !s.ok()) return s;
  return check_count("hibernation-retention-sec", limits.hibernation_retention_sec, 1,
                     366 * 24 * 3600);
}

absl::Status TenantNotFound(const std::string& name) {
  return absl::NotFoundError(absl::StrCat("tenant '", name, "' not found"));
}

// The id of tenant `name`, or NOT_FOUND.
absl::Status LookUpTenant(pqxx::transaction_base& tx, const std::string& name, std::string* id) {
  if (!IsValidTenantName(name)) return TenantNotFound(name);
  auto r = tx.exec_params("SELECT id FROM accounts.tenants WHERE name = $1", std::string(name));
  if (r.empty()) return TenantNotFound(name);
  *id = r[0][0].c_str();
  return absl::OkStatus();
}

bool IsBase62(std::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace

absl::Status Migrate(const std::string& database_url, std::ostream& out) {
  auto applied = ApplyMigrations(database_url);
  if (!applied.ok()) return applied.status();
  for (const std::string& name : *applied) out << "applied " << name << '\n';
  if (applied->empty()) out << "up to date\n";
  return absl::OkStatus();
}

absl::Status MigrationStatusTable(const std::string& database_url, std::ostream& out) {
  auto status = GetMigrationStatus(database_url);
  if (!status.ok()) return status.status();
  Table table({"VERSION", "NAME", "STATUS", "APPLIED_AT", "NOTE"});
  for (const MigrationStatus& m : *status) {
    table.AddRow({absl::StrCat(m.version), m.name, m.applied ? "applied" : "pending", m.applied_at,
                  m.checksum_mismatch ? "CHANGED" : ""});
  }
  table.Print(out);
  return absl::OkStatus();
}

absl::Status CreateTenant(const std::string& database_url, const std::string& name,
                          const LimitsUpdate& limits, std::ostream& out) {
  if (auto s = ValidateTenantName(name); !s.ok()) return s;
  if (auto s = ValidateLimits(limits); !s.ok()) return s;
  return WithDb(database_url, [&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto r = tx.exec_params(
        "INSERT INTO accounts.tenants (name) VALUES ($1) ON CONFLICT (name) DO NOTHING "
        "RETURNING id",
        std::string(name));
    if (r.empty()) {
      return absl::AlreadyExistsError(absl::StrCat("tenant '", name, "' already exists"));
    }
    std::string id = r[0][0].c_str();
    tx.exec_params(
        "INSERT INTO quota.limits (tenant_id, max_concurrent, creates_per_sec, requests_per_sec, "
        "    max_concurrent_execs, max_hibernated, hibernation_retention_sec) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        id, limits.max_concurrent.value_or(kDefaultMaxConcurrent),
        limits.creates_per_sec.value_or(kDefaultCreatesPerSec),
        limits.requests_per_sec.value_or(kDefaultRequestsPerSec),
        limits.max_concurrent_execs.value_or(kDefaultMaxConcurrentExecs),
        limits.max_hibernated.value_or(kDefaultMaxHibernated),
        limits.hibernation_retention_sec.value_or(kDefaultHibernationRetentionSec));
    tx.exec_params("INSERT INTO quota.usage (tenant_id, active) VALUES ($1, 0)", id);
    tx.commit();
    out << id << '\n';
    return absl::OkStatus();
  });
}

absl::Status SetTenantLimits(const std::string& database_url, const std::string& name,
                             const LimitsUpdate& limits, std::ostream& out) {
  if (limits.empty()) {
    return UsageError(
        "nothing to change: give at least one of --max-concurrent, --creates-per-sec, "
        "--requests-per-sec, --max-concurrent-execs, --max-hibernated, "
        "--hibernation-retention-sec");
  }
  if (auto s = ValidateLimits(limits); !s.ok()) return s;
  return WithDb(database_url, [&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    std::string id;
    if (auto s = LookUpTenant(tx, name, &id); !s.ok()) return s;
    // A tenant made by other means may lack its quota rows: create them with the defaults.
    auto r = tx.exec_params(
        "INSERT INTO quota.limits AS l (tenant_id, max_concurrent, creates_per_sec, "
        "    requests_per_sec, max_concurrent_execs, max_hibernated, hibernation_retention_sec) "
        "VALUES ($1, coalesce($2::integer, $5::integer), coalesce($3::float8, $6::float8), "
        "    coalesce($4::float8, $7::float8), coalesce($8::integer, $11::integer), "
        "    coalesce($9::integer, $12::integer), coalesce($10::integer, $13::integer)) "
        "ON CONFLICT (tenant_id) DO UPDATE SET "
        "  max_concurrent = coalesce($2::integer, l.max_concurrent), "
        "  creates_per_sec = coalesce($3::float8, l.creates_per_sec), "
        "  requests_per_sec = coalesce($4::float8, l.requests_per_sec), "
        "  max_concurrent_execs = coalesce($8::integer, l.max_concurrent_execs), "
        "  max_hibernated = coalesce($9::integer, l.max_hibernated), "
        "  hibernation_retention_sec = coalesce($10::integer, l.hibernation_retention_sec), "
        "  updated_at = now() "
        "RETURNING max_concurrent, creates_per_sec, requests_per_sec, max_concurrent_execs, "
        "  max_hibernated, hibernation_retention_sec",
        id, limits.max_concurrent, limits.creates_per_sec, limits.requests_per_sec,
        kDefaultMaxConcurrent, kDefaultCreatesPerSec, kDefaultRequestsPerSec,
        limits.max_concurrent_execs, limits.max_hibernated, limits.hibernation_retention_sec,
        kDefaultMaxConcurrentExecs, kDefaultMaxHibernated, kDefaultHibernationRetentionSec);
    tx.exec_params(
        "INSERT INTO quota.usage (tenant_id, active) VALUES ($1, 0) ON CONFLICT DO NOTHING", id);
    tx.commit();
    out << "tenant " << name << ": max_concurrent=" << r[0][0].as<int>()
        << " creates_per_sec=" << FormatNumber(r[0][1].as<double>())
        << " requests_per_sec=" << FormatNumber(r[0][2].as<double>())
        << " max_concurrent_execs=" << r[0][3].as<int>() << " max_hibernated=" << r[0][4].as<int>()
        << " hibernation_retention_sec=" << r[0][5].as<int>() << '\n';
    return absl::OkStatus();
  });
}

absl::Status ListTenants(const std::string& database_url, Format format, std::ostream& out) {
  return WithDb(database_url, [&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    auto rows = tx.exec(
        "SELECT t.name, t.id, l.max_concurrent, l.creates_per_sec, l.requests_per_sec, u.active "
        "FROM accounts.tenants t "
        "LEFT JOIN quota.limits l ON l.tenant_id = t.id "
        "LEFT JOIN quota.usage u ON u.tenant_id = t.id "
        "ORDER BY t.name");
    tx.commit();
    auto number = [](const pqxx::field& f) {
      return f.is_null() ? std::string() : FormatNumber(f.as<double>());
    };
    if (format == Format::kJson) {
      JsonWriter w;
      w.BeginObject().Key("tenants").BeginArray();
      for (const auto& row : rows) {
        w.BeginObject().Key("name").String(row[0].c_str()).Key("id").String(row[1].c_str());
        for (int i = 2; i <= 5; ++i) {
          static constexpr const char* kKeys[] = {"maxConcurrent", "createsPerSec",
                                                  "requestsPerSec", "active"};
          w.Key(kKeys[i - 2]);
          if (row[i].is_null()) {
            w.Null();
          } else {
            w.Raw(number(row[i]));
          }
        }
        w.EndObject();
      }
      w.EndArray().EndObject();
      out << w.str() << '\n';
      return absl::OkStatus();
    }
    Table table({"NAME", "ID", "MAX_CONCURRENT", "CREATES_PER_SEC", "REQUESTS_PER_SEC", "ACTIVE"});
    for (const auto& row : rows) {
      table.AddRow({row[0].c_str(), row[1].c_str(), number(row[2]), number(row[3]), number(row[4]),
                    number(row[5])});
    }
    table.Print(out);
    return absl::OkStatus();
  });
}

absl::Status CreateKey(const std::string& database_url, const std::string& tenant,
                       const std::string& region, const std::string& role,
                       const std::string& name, std::ostream& out) {
  if (!IsValidRegion(region)) {
    return UsageError(
        absl::StrCat("invalid region '", region, "': use 1 to 63 characters of a-z, 0-9 and '-'"));
  }
  if (role != "admin" && role != "sandbox") {
    return UsageError(absl::StrCat("invalid role '", role, "': use admin or sandbox"));
  }
  if (name.size() > 128) return UsageError("the name must be at most 128 bytes long");
  return WithDb(database_url, [&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    std::string tenant_id;
    if (auto s = LookUpTenant(tx, tenant, &tenant_id); !s.ok()) return s;
    ApiKey key = NewApiKey(region);
    tx.exec_params(
        "INSERT INTO accounts.api_keys (key_id, tenant_id, region, secret_hash, role, name) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        key.key_id, tenant_id, key.region, HashSecret(key.secret), role, name);
    tx.commit();
    // The only time the secret exists outside the caller's hands: print it, keep nothing.
    out << key.ToString() << '\n';
    return absl::OkStatus();
  });
}

absl::Status CreateOperatorToken(const std::string& database_url, const std::string& name,
                                 std::ostream& out) {
  if (name.size() > 128) return UsageError("the name must be at most 128 bytes long");
  return WithDb(database_url, [&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    OperatorToken token = NewOperatorToken();
    tx.exec_params(
        "INSERT INTO accounts.operator_tokens (token_id, name, secret_hash) VALUES ($1, $2, $3)",
        token.token_id, name, HashSecret(token.secret));
    tx.commit();
    out << token.ToString() << '\n';
    return absl::OkStatus();
  });
}

absl::Status ListKeys(const std::string& database_url, const std::string& tenant, Format format,
                      std::ostream& out) {
  return WithDb(database_url, [&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::string tenant_id;
    if (auto s = LookUpTenant(tx, tenant, &tenant_id); !s.ok()) return s;
    auto rows = tx.exec_params(
        absl::StrCat("SELECT key_id, region, ", Ts("created_at"), ", ", Ts("revoked_at"),
                     ", role, name FROM accounts.api_keys WHERE tenant_id = $1 "
                     "ORDER BY created_at, key_id"),
        tenant_id);
    tx.commit();
    if (format == Format::kJson) {
      JsonWriter w;
      w.BeginObject().Key("keys").BeginArray();
      for (const auto& row : rows) {
        w.BeginObject();
        JsonText(w, "keyId", row[0]);
        JsonText(w, "region", row[1]);
        JsonText(w, "createdAt", row[2]);
        JsonText(w, "revokedAt", row[3]);
        JsonText(w, "role", row[4]);
        JsonText(w, "name", row[5]);
        w.EndObject();
      }
      w.EndArray().EndObject();
      out << w.str() << '\n';
      return absl::OkStatus();
    }
    // NAME last: a name with spaces then cannot shift the other columns for scripts.
    Table table({"KEY_ID", "REGION", "ROLE", "CREATED_AT", "REVOKED_AT", "NAME"});
    for (const auto& row : rows) {
      table.AddRow({Text(row[0]), Text(row[1]), Text(row[4]), Text(row[2]), Text(row[3]),
                    Text(row[5])});
    }
    table.Print(out);
    return absl::OkStatus();
  });
}

absl::Status RevokeKey(const std::string& database_url, const std::string& key, std::ostream& out) {
  std::string key_id;
  if (absl::StartsWith(key, "isr_")) {
    auto parsed = ParseApiKey(key);
    // Never echo what may be a secret.
    if (!parsed.has_value()) {
      return UsageError(
          "the argument starts with isr_ but is not a well-formed key "
          "(isr_<region>_<keyId>_<secret>): pass the key id or the whole key");
    }
    key_id = parsed->key_id;
  } else {
    if (!IsBase62(key)) {
      return UsageError(absl::StrCat("invalid key id '", key,
                                     "': key ids are letters and digits (see `keys list`)"));
    }
    key_id = std::string(key);
  }
  return WithDb(database_url, [&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto revoked = tx.exec_params(
        "UPDATE accounts.api_keys k SET revoked_at = now() FROM accounts.tenants t "
        "WHERE k.key_id = $1 AND k.revoked_at IS NULL AND t.id = k.tenant_id RETURNING t.name",
        key_id);
    if (!revoked.empty()) {
      tx.commit();
      out << "revoked key " << key_id << " of tenant " << revoked[0][0].c_str() << '\n';
      return absl::OkStatus();
    }
    auto existing = tx.exec_params(
        absl::StrCat("SELECT ", Ts("revoked_at"), " FROM accounts.api_keys WHERE key_id = $1"),
        key_id);
    tx.commit();
    if (existing.empty()) {
      return absl::NotFoundError(absl::StrCat("key '", key_id, "' not found"));
    }
    out << "key " << key_id << " already revoked at " << Text(existing[0][0]) << '\n';
    return absl::OkStatus();
  });
}

absl::Status ListSandboxes(const std::string& database_url, const SandboxFilter& filter,
                           Format format, std::ostream& out) {
  std::optional<std::string> state;
  if (!filter.state.empty()) {
    auto parsed = ParseStateFilter(filter.state);
    if (!parsed.ok()) return parsed.status();
    state = *parsed;
  }
  return WithDb(database_url, [&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::optional<std::string> tenant_id;
    if (!filter.tenant.empty()) {
      std::string id;
      if (auto s = LookUpTenant(tx, filter.tenant, &id); !s.ok()) return s;
      tenant_id = id;
    }
    // lifecycle.sandboxes has no foreign key to accounts: show the tenant id if the name is gone.
    auto rows = tx.exec_params(
        absl::StrCat(
            "SELECT s.id, coalesce(t.name, s.tenant_id::text), s.state, s.image, s.runner_id, ",
            Ts("s.created_at"), ", ", Ts("s.expires_at"), ", s.end_reason, s.end_message, ",
            "s.tenant_id "
            "FROM lifecycle.sandboxes s LEFT JOIN accounts.tenants t ON t.id = s.tenant_id "
            "WHERE ($1::uuid IS NULL OR s.tenant_id = $1::uuid) AND CASE "
            "  WHEN $2::text IS NULL THEN s.state NOT IN ('DESTROYED', 'FAILED', 'LOST') "
            "  WHEN $2::text = 'all' THEN true "
            "  ELSE s.state = $2::text END "
            "ORDER BY s.created_at, s.id"),
        tenant_id, state);
    tx.commit();
    if (format == Format::kJson) {
      JsonWriter w;
      w.BeginObject().Key("sandboxes").BeginArray();
      for (const auto& row : rows) {
        w.BeginObject();
        JsonText(w, "id", row[0]);
        JsonText(w, "tenant", row[1]);
        JsonText(w, "tenantId", row[9]);
        JsonText(w, "state", row[2]);
        JsonText(w, "image", row[3]);
        JsonText(w, "runnerId", row[4]);
        JsonText(w, "createdAt", row[5]);
        JsonText(w, "expiresAt", row[6]);
        JsonText(w, "endReason", row[7]);
        JsonText(w, "endMessage", row[8]);
        w.EndObject();
      }
      w.EndArray().EndObject();
      out << w.str() << '\n';
      return absl::OkStatus();
    }
    Table table(
        {"ID", "TENANT", "STATE", "IMAGE", "RUNNER", "CREATED_AT", "EXPIRES_AT", "END_REASON"});
    for (const auto& row : rows) {
      table.AddRow({Text(row[0]), Text(row[1]), Text(row[2]), Text(row[3]), Text(row[4]),
                    Text(row[5]), Text(row[6]), Text(row[7])});
    }
    table.Print(out);
    return absl::OkStatus();
  });
}

std::string_view RunnerLiveness(double heartbeat_age_sec) {
  if (heartbeat_age_sec <= kHealthySec) return "healthy";
  if (heartbeat_age_sec <= kUnhealthySec) return "unhealthy";
  return "lost";
}

namespace {

struct RunnerCapacity {
  std::string name;
  std::string id;
  std::string region;
  std::string liveness;
  bool draining = false;
  double heartbeat_age_sec = 0;
  int64_t cpu_total = 0, cpu_used = 0;
  int64_t memory_total = 0, memory_used = 0;
  int64_t max_sandboxes = 0, sandboxes = 0;
  int64_t images = 0, warm = 0, cold = 0;

  bool schedulable() const { return liveness == "healthy" && !draining; }
};

std::string FreeOfTotal(int64_t used, int64_t total) {
  return absl::StrCat(total - used, "/", total);
}

}  // namespace

absl::Status ShowCapacity(const std::string& database_url, Format format, std::ostream& out) {
  return WithDb(database_url, [&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    auto rows = tx.exec(
        "SELECT r.name, r.id, r.region, r.draining, "
        "  extract(epoch FROM now() - r.last_heartbeat)::float8, "
        "  r.cpu_millis, r.memory_mb, r.max_sandboxes, "
        "  coalesce(p.cpu, 0), coalesce(p.memory, 0), coalesce(p.n, 0), "
        "  coalesce(p.warm, 0), coalesce(p.cold, 0), coalesce(i.n, 0) "
        "FROM scheduler.runners r "
        "LEFT JOIN (SELECT runner_id, sum(cpu_millis)::bigint AS cpu, "
        "    sum(memory_mb)::bigint AS memory, count(*) AS n, "
        "    count(*) FILTER (WHERE warm) AS warm, count(*) FILTER (WHERE NOT warm) AS cold "
        "  FROM scheduler.placements GROUP BY runner_id) p ON p.runner_id = r.id "
        "LEFT JOIN (SELECT runner_id, count(*) AS n FROM scheduler.runner_images "
        "  GROUP BY runner_id) i ON i.runner_id = r.id "
        "ORDER BY r.name");
    int64_t distinct_images =
        tx.exec("SELECT count(DISTINCT digest) FROM scheduler.runner_images")[0][0].as<int64_t>();
    tx.commit();

    std::vector<RunnerCapacity> runners;
    RunnerCapacity total;
    RunnerCapacity schedulable;
    int64_t schedulable_count = 0;
    std::map<std::string, int64_t> by_liveness{{"healthy", 0}, {"unhealthy", 0}, {"lost", 0}};
    int64_t draining = 0;
    for (const auto& row : rows) {
      RunnerCapacity r;
      r.name = row[0].c_str();
      r.id = row[1].c_str();
      r.region = row[2].c_str();
      r.draining = row[3].as<bool>();
      r.heartbeat_age_sec = row[4].as<double>();
      r.liveness = std::string(RunnerLiveness(r.heartbeat_age_sec));
      r.cpu_total = row[5].as<int64_t>();
      r.memory_total = row[6].as<int64_t>();
      r.max_sandboxes = row[7].as<int64_t>();
      r.cpu_used = row[8].as<int64_t>();
      r.memory_used = row[9].as<int64_t>();
      r.sandboxes = row[10].as<int64_t>();
      r.warm = row[11].as<int64_t>();
      r.cold = row[12].as<int64_t>();
      r.images = row[13].as<int64_t>();
      for (RunnerCapacity* sum : {&total, &schedulable}) {
        if (sum == &schedulable && !r.schedulable()) continue;
        sum->cpu_total += r.cpu_total;
        sum->cpu_used += r.cpu_used;
        sum->memory_total += r.memory_total;
        sum->memory_used += r.memory_used;
        sum->max_sandboxes += r.max_sandboxes;
        sum->sandboxes += r.sandboxes;
        sum->images += r.images;
        sum->warm += r.warm;
        sum->cold += r.cold;
      }
      if (r.schedulable()) ++schedulable_count;
      ++by_liveness[r.liveness];
      if (r.draining) ++draining;
      runners.push_back(std::move(r));
    }

    if (format == Format::kJson) {
      JsonWriter w;
      auto figures = [&w](const RunnerCapacity& c) {
        w.Key("cpuMillisFree").Int(c.cpu_total - c.cpu_used).Key("cpuMillisTotal").Int(c.cpu_total);
        w.Key("memoryMbFree")
            .Int(c.memory_total - c.memory_used)
            .Key("memoryMbTotal")
            .Int(c.memory_total);
        w.Key("sandboxes").Int(c.sandboxes).Key("maxSandboxes").Int(c.max_sandboxes);
        w.Key("images").Int(c.images);
        w.Key("warmPlacements").Int(c.warm).Key("coldPlacements").Int(c.cold);
      };
      w.BeginObject().Key("runners").BeginArray();
      for (const RunnerCapacity& r : runners) {
        w.BeginObject().Key("name").String(r.name).Key("id").String(r.id);
        w.Key("state").String(r.liveness).Key("draining").Bool(r.draining);
        w.Key("region").String(r.region);
        JsonNumber(w, "heartbeatAgeSec", std::round(r.heartbeat_age_sec * 10) / 10);
        figures(r);
        w.EndObject();
      }
      w.EndArray();
      w.Key("totals").BeginObject().Key("runners").Int(static_cast<int64_t>(runners.size()));
      for (const auto& [liveness, count] : by_liveness) w.Key(liveness).Int(count);
      w.Key("draining").Int(draining);
      figures(total);
      w.Key("distinctImages").Int(distinct_images);
      w.EndObject();
      w.Key("schedulable").BeginObject().Key("runners").Int(schedulable_count);
      figures(schedulable);
      w.EndObject();
      w.EndObject();
      out << w.str() << '\n';
      return absl::OkStatus();
    }

    Table table({"NAME", "STATE", "REGION", "CPU_MILLIS(FREE/TOTAL)", "MEMORY_MB(FREE/TOTAL)",
                 "SANDBOXES(USED/MAX)", "IMAGES", "WARM", "COLD"});
    for (const RunnerCapacity& r : runners) {
      table.AddRow({r.name, r.draining ? r.liveness + ",draining" : r.liveness, r.region,
                    FreeOfTotal(r.cpu_used, r.cpu_total),
                    FreeOfTotal(r.memory_used, r.memory_total),
                    absl::StrCat(r.sandboxes, "/", r.max_sandboxes), absl::StrCat(r.images),
                    absl::StrCat(r.warm), absl::StrCat(r.cold)});
    }
    table.Print(out);
    out << "\nTOTAL: " << runners.size() << (runners.size() == 1 ? " runner" : " runners") << " ("
        << by_liveness["healthy"] << " healthy, " << by_liveness["unhealthy"] << " unhealthy, "
        << by_liveness["lost"] << " lost; " << draining << " draining), cpu "
        << FreeOfTotal(total.cpu_used, total.cpu_total) << " millis free, memory "
        << FreeOfTotal(total.memory_used, total.memory_total) << " MB free, sandboxes "
        << total.sandboxes << "/" << total.max_sandboxes << ", images " << total.images << " ("
        << distinct_images << " distinct), placements " << total.warm << " warm / " << total.cold
        << " cold\n";
    out << "SCHEDULABLE (healthy, not draining): " << schedulable_count
        << (schedulable_count == 1 ? " runner" : " runners") << ", cpu "
        << schedulable.cpu_total - schedulable.cpu_used << " millis free, memory "
        << schedulable.memory_total - schedulable.memory_used << " MB free, "
        << schedulable.max_sandboxes - schedulable.sandboxes << " sandbox slots free\n";
    return absl::OkStatus();
  });
}

absl::Status SetRunnerDraining(const std::string& database_url, const std::string& runner,
                               bool draining, std::ostream& out) {
  if (runner.empty()) return UsageError("runner name is empty");
  return WithDb(database_url, [&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    // Names and ids are both unique; a name wins over another runner's id.
    auto found = tx.exec_params(
        "SELECT id, name, draining FROM scheduler.runners WHERE name = $1 OR id = $1 "
        "ORDER BY (name = $1) DESC LIMIT 1 FOR UPDATE",
        std::string(runner));
    if (found.empty()) {
      return absl::NotFoundError(absl::StrCat("runner '", runner, "' not found"));
    }
    std::string name = found[0][1].c_str();
    if (found[0][2].as<bool>() == draining) {
      tx.commit();
      out << "runner " << name << (draining ? " is already draining" : " is not draining") << '\n';
      return absl::OkStatus();
    }
    tx.exec_params("UPDATE scheduler.runners SET draining = $2 WHERE id = $1",
                   std::string(found[0][0].c_str()), draining);
    tx.commit();
    if (draining) {
      out << "runner " << name
          << " is draining: no new sandboxes are placed on it; running ones stay\n";
    } else {
      out << "runner " << name << " is no longer draining\n";
    }
    return absl::OkStatus();
  });
}

absl::Status SetSandboxNetwork(const std::string& database_url, const std::string& lifecycle_addr,
                               const std::string& sandbox_id, const std::string& egress,
                               const std::string& allow, std::ostream& out) {
  if (lifecycle_addr.empty()) {
    return UsageError("--lifecycle-addr (or ISORUN_GRPC_LIFECYCLE) is required");
  }
  v1::SetNetworkRequest req;
  req.set_id(sandbox_id);
  req.mutable_network()->set_egress(egress);
  for (absl::string_view a : absl::StrSplit(allow, ',', absl::SkipWhitespace())) {
    req.mutable_network()->add_allow(std::string(absl::StripAsciiWhitespace(a)));
  }
  // Checked here too, so a bad profile is a usage error before anything is looked up.
  v1::NetworkPolicy check = req.network();
  if (absl::Status s = NormalizeNetworkPolicy(check); !s.ok()) {
    return UsageError(std::string(s.message()));
  }
  // The lifecycle trusts the caller's tenant: the operator acts as the sandbox's own tenant.
  absl::Status looked = WithDb(database_url, [&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    auto rows = tx.exec_params("SELECT tenant_id::text FROM lifecycle.sandboxes WHERE id = $1",
                               sandbox_id);
    tx.commit();
    if (rows.empty()) return absl::NotFoundError(absl::StrCat("no sandbox ", sandbox_id));
    req.set_tenant_id(rows[0][0].as<std::string>());
    return absl::OkStatus();
  });
  if (!looked.ok()) return looked;
  auto stub = v1::Sandboxes::NewStub(MakeChannel(lifecycle_addr));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::Sandbox sb;
  grpc::Status st = stub->SetNetwork(&ctx, req, &sb);
  if (!st.ok()) return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
  out << sb.id() << " egress " << sb.network().egress();
  if (sb.network().allow_size() > 0) out << " allow " << absl::StrJoin(sb.network().allow(), ",");
  out << "\n";
  return absl::OkStatus();
}

}  // namespace isorun::ctl
