#include "services/gateway/key_admin.h"

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/kit/api_key.h"
#include "services/kit/log.h"
#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

constexpr char kListKeys[] = "gateway_list_api_keys";
constexpr char kInsertKey[] = "gateway_insert_api_key";
constexpr char kLockTenant[] = "gateway_lock_tenant_for_keys";
constexpr char kFindTenantKey[] = "gateway_find_tenant_api_key";
constexpr char kCountAdmins[] = "gateway_count_admin_keys";
constexpr char kRevokeKey[] = "gateway_revoke_api_key";
constexpr char kTouchKeys[] = "gateway_touch_api_keys";

#define ISORUN_TS(column) \
  "to_char(" column " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
constexpr char kKeyColumns[] = "key_id, name, role, region, " ISORUN_TS("created_at") ", " ISORUN_TS(
    "last_used_at") ", " ISORUN_TS("revoked_at");
#undef ISORUN_TS

KeyInfo ReadKey(const pqxx::row& row) {
  auto text = [](const pqxx::field& f) { return f.is_null() ? std::string() : f.as<std::string>(); };
  KeyInfo k;
  k.key_id = text(row[0]);
  k.name = text(row[1]);
  k.role = text(row[2]);
  k.region = text(row[3]);
  k.created_at = text(row[4]);
  k.last_used_at = text(row[5]);
  k.revoked_at = text(row[6]);
  return k;
}

}  // namespace

bool IsValidKeyRole(std::string_view role) { return role == "admin" || role == "sandbox"; }

PgKeyAdmin::PgKeyAdmin(PgPool& pool, Options options) : pool_(pool), options_(options) {
  pool_.Prepare(kListKeys, absl::StrCat("SELECT ", kKeyColumns,
                                        " FROM accounts.api_keys WHERE tenant_id = $1::uuid "
                                        "ORDER BY created_at, key_id"));
  pool_.Prepare(kInsertKey, absl::StrCat("INSERT INTO accounts.api_keys "
                                         "(key_id, tenant_id, region, secret_hash, name, role) "
                                         "VALUES ($1, $2::uuid, $3, $4, $5, $6) RETURNING ",
                                         kKeyColumns));
  pool_.Prepare(kLockTenant, "SELECT 1 FROM accounts.tenants WHERE id = $1::uuid FOR UPDATE");
  pool_.Prepare(kFindTenantKey,
                "SELECT role, revoked_at IS NOT NULL FROM accounts.api_keys "
                "WHERE key_id = $1 AND tenant_id = $2::uuid");
  pool_.Prepare(kCountAdmins,
                "SELECT count(*) FROM accounts.api_keys "
                "WHERE tenant_id = $1::uuid AND role = 'admin' AND revoked_at IS NULL");
  pool_.Prepare(kRevokeKey,
                "UPDATE accounts.api_keys SET revoked_at = now() "
                "WHERE key_id = $1 AND tenant_id = $2::uuid AND revoked_at IS NULL");
  // Never moves a time backwards (another gateway may have written a later use).
  pool_.Prepare(kTouchKeys,
                "UPDATE accounts.api_keys k SET last_used_at = u.t "
                "FROM unnest($1::text[], $2::text[]::timestamptz[]) AS u(id, t) "
                "WHERE k.key_id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.t)");
}

PgKeyAdmin::~PgKeyAdmin() { Stop(); }

void PgKeyAdmin::Start() {
  absl::MutexLock lock(&mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { FlushLoop(); });
}

void PgKeyAdmin::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  (void)Flush();
}

void PgKeyAdmin::FlushLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), options_.flush_interval);
      if (stopping_) return;
    }
    if (absl::Status st = Flush(); !st.ok()) {
      LogWarn("could not record API key uses", {{"error", std::string(st.message())}});
    }
  }
}

void PgKeyAdmin::Touch(const std::string& key_id) {
  absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  used_[key_id] = now;
}

absl::Status PgKeyAdmin::Flush() {
  absl::flat_hash_map<std::string, absl::Time> used;
  {
    absl::MutexLock lock(&mu_);
    used.swap(used_);
  }
  if (used.empty()) return absl::OkStatus();
  std::vector<std::string> ids, times;
  ids.reserve(used.size());
  times.reserve(used.size());
  for (const auto& [id, t] : used) {
    ids.push_back(id);
    times.push_back(absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", t, absl::UTCTimeZone()));
  }
  absl::Status st = pool_.Execute([&](pqxx::nontransaction& tx) {
    tx.exec_prepared(kTouchKeys, PgTextArray(ids), PgTextArray(times));
    return absl::OkStatus();
  });
  if (!st.ok()) {
    // Keep them for the next try, unless newer uses came in meanwhile.
    absl::MutexLock lock(&mu_);
    for (auto& [id, t] : used) used_.try_emplace(id, t);
  }
  return st;
}

absl::StatusOr<std::vector<KeyInfo>> PgKeyAdmin::List(const std::string& tenant_id) {
  // The caller's own use shows at once (other gateways' within a flush interval).
  if (absl::Status st = Flush(); !st.ok()) return st;
  std::vector<KeyInfo> keys;
  absl::Status st = pool_.Transact([&](pqxx::work& tx) {
    keys.clear();
    for (const auto& row : tx.exec_prepared(kListKeys, tenant_id)) keys.push_back(ReadKey(row));
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return keys;
}

absl::StatusOr<CreatedKey> PgKeyAdmin::Create(const std::string& tenant_id,
                                              const std::string& name, const std::string& role,
                                              const std::string& region) {
  if (!IsValidKeyRole(role)) {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                 "field \"role\" must be \"admin\" or \"sandbox\"");
  }
  ApiKey key = NewApiKey(region);
  CreatedKey created;
  absl::Status st = pool_.Transact([&](pqxx::work& tx) {
    pqxx::result r = tx.exec_prepared(kInsertKey, key.key_id, tenant_id, key.region,
                                      HashSecret(key.secret), name, role);
    created.info = ReadKey(r[0]);
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  created.key = key.ToString();
  return created;
}

absl::Status PgKeyAdmin::Revoke(const std::string& tenant_id, const std::string& key_id) {
  return pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    tx.exec_prepared(kLockTenant, tenant_id);
    pqxx::result found = tx.exec_prepared(kFindTenantKey, key_id, tenant_id);
    if (found.empty()) {
      return Error(absl::StatusCode::kNotFound, "NOT_FOUND",
                   absl::StrCat("no API key with id \"", key_id, "\""));
    }
    if (found[0][1].as<bool>()) return absl::OkStatus();  // already revoked: idempotent
    if (found[0][0].as<std::string>() == "admin") {
      int64_t admins = tx.exec_prepared(kCountAdmins, tenant_id)[0][0].as<int64_t>();
      if (admins <= 1) {
        return Error(absl::StatusCode::kFailedPrecondition, "LAST_ADMIN_KEY",
                     absl::StrCat("key ", key_id,
                                  " is the tenant's last admin key; create another admin key "
                                  "before revoking it"));
      }
    }
    tx.exec_prepared(kRevokeKey, key_id, tenant_id);
    return absl::OkStatus();
  });
}

}  // namespace isorun::gateway
