#include "services/lifecycle/sandbox_store.h"

#include <cctype>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "services/kit/json.h"
#include "services/kit/status.h"

namespace isorun::lifecycle {
namespace {

using google::protobuf::util::TimeUtil;

// Every query that returns sandboxes selects these columns from a relation named `s`.
constexpr const char* kCols =
    "s.id, s.tenant_id::text, s.state, s.image, s.image_digest, s.cpu_millis, s.memory_mb, "
    "s.timeout_sec, json_build_object('metadata', s.metadata, 'network', s.network, "
    "'env', s.env)::text, s.public_id, coalesce(s.runner_id, ''), coalesce(s.runner_address, ''), "
    "(extract(epoch FROM s.created_at) * 1000000)::bigint, "
    "(extract(epoch FROM s.expires_at) * 1000000)::bigint, "
    "(extract(epoch FROM s.ended_at) * 1000000)::bigint, coalesce(s.end_reason, ''), "
    "coalesce(s.end_message, ''), s.created_at::text";

const std::vector<SandboxState>& LiveStates() {
  static const std::vector<SandboxState> kLive = {v1::PENDING, v1::STARTING, v1::RUNNING,
                                                  v1::HIBERNATED, v1::DESTROYING};
  return kLive;
}

std::string StateArray(const std::vector<SandboxState>& states) {
  std::vector<std::string> names;
  for (auto s : states) names.push_back(StateName(s));
  return "{" + absl::StrJoin(names, ",") + "}";
}

// A guarded transition of one sandbox: `set` may use $2..; `reason` is an SQL expression.
std::string TransitionSql(const std::string& to, const std::string& from_guard,
                          const std::string& set, const std::string& reason) {
  return absl::StrCat(
      "WITH prev AS (SELECT id, state FROM lifecycle.sandboxes WHERE id = $1 FOR UPDATE), "
      "s AS (UPDATE lifecycle.sandboxes s SET state = '",
      to, "', updated_at = now()", set.empty() ? "" : ", ", set,
      " FROM prev WHERE s.id = prev.id AND ", from_guard,
      " RETURNING s.*, prev.state AS from_state), "
      "ev AS (INSERT INTO lifecycle.sandbox_events (sandbox_id, from_state, to_state, reason) "
      "SELECT id, from_state, state, ",
      reason, " FROM s) SELECT ", kCols, " FROM s");
}

std::string MapJson(const google::protobuf::Map<std::string, std::string>& map) {
  JsonWriter w;
  w.BeginObject();
  for (const auto& [k, v] : map) w.Key(k).String(v);
  w.EndObject();
  return w.Take();
}

std::string NetworkJson(const v1::NetworkPolicy& net) {
  JsonWriter w;
  w.BeginObject().Key("egress").String(net.egress()).Key("allow").BeginArray();
  for (const auto& a : net.allow()) w.String(a);
  w.EndArray().EndObject();
  return w.Take();
}

SandboxState ParseState(const std::string& name) {
  SandboxState state = v1::SANDBOX_STATE_UNSPECIFIED;
  v1::SandboxState_Parse(name, &state);
  return state;
}

// Which columns a caller needs: the JSON ones (metadata, network, env) cost a protobuf JSON parse,
// which dominated the lifecycle's CPU when every internal transition paid for it.
enum class Detail { kFull, kCore };

Sandbox FromRow(const pqxx::row& row, Detail detail = Detail::kFull) {
  Sandbox sb;
  if (detail == Detail::kFull) {
    // The JSON columns first: parsing replaces the message's fields named in the JSON only.
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    auto parsed =
        google::protobuf::util::JsonStringToMessage(row[8].as<std::string>(), &sb, options);
    (void)parsed;  // written by us from validated maps; a failure leaves the maps empty
  }
  sb.set_id(row[0].as<std::string>());
  sb.set_tenant_id(row[1].as<std::string>());
  sb.set_state(ParseState(row[2].as<std::string>()));
  sb.set_image(row[3].as<std::string>());
  sb.set_image_digest(row[4].as<std::string>());
  sb.set_cpu_millis(row[5].as<int>());
  sb.set_memory_mb(row[6].as<int>());
  sb.set_timeout_sec(row[7].as<int>());
  sb.set_public_id(row[9].as<std::string>());
  sb.set_runner_id(row[10].as<std::string>());
  sb.set_runner_address(row[11].as<std::string>());
  *sb.mutable_created_at() = TimeUtil::MicrosecondsToTimestamp(row[12].as<int64_t>());
  if (!row[13].is_null()) {
    *sb.mutable_expires_at() = TimeUtil::MicrosecondsToTimestamp(row[13].as<int64_t>());
  }
  if (!row[14].is_null()) {
    *sb.mutable_ended_at() = TimeUtil::MicrosecondsToTimestamp(row[14].as<int64_t>());
  }
  v1::EndReason reason = v1::END_REASON_UNSPECIFIED;
  v1::EndReason_Parse(row[15].as<std::string>(), &reason);
  sb.set_end_reason(reason);
  sb.set_end_message(row[16].as<std::string>());
  return sb;
}

absl::Status NotFound(const std::string& id) {
  return Error(absl::StatusCode::kNotFound, "NOT_FOUND",
               absl::StrCat("sandbox ", id, " not found"));
}

}  // namespace

std::string StateName(SandboxState state) { return v1::SandboxState_Name(state); }
std::string EndReasonName(v1::EndReason reason) { return v1::EndReason_Name(reason); }

SandboxStore::SandboxStore(PgPool& pool) : pool_(pool) {
  pool_.Prepare("lc_claim_idem",
                "INSERT INTO lifecycle.idempotency_keys AS k (tenant_id, key, sandbox_id) "
                "VALUES ($1, $2, $3) ON CONFLICT (tenant_id, key) DO UPDATE "
                "SET sandbox_id = excluded.sandbox_id, created_at = now() "
                "WHERE k.created_at < now() - interval '24 hours' RETURNING sandbox_id");
  pool_.Prepare("lc_find_idem",
                "SELECT sandbox_id FROM lifecycle.idempotency_keys WHERE tenant_id = $1 "
                "AND key = $2 AND created_at >= now() - interval '24 hours'");
  pool_.Prepare("lc_insert",
                "WITH s AS (INSERT INTO lifecycle.sandboxes (id, tenant_id, state, image, "
                "cpu_millis, memory_mb, timeout_sec, env, metadata, network, public_id) "
                "VALUES ($1, $2, 'PENDING', $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9::jsonb, $10) "
                "RETURNING id) INSERT INTO lifecycle.sandbox_events (sandbox_id, to_state) "
                "SELECT id, 'PENDING' FROM s");
  pool_.Prepare("lc_get", absl::StrCat("SELECT ", kCols,
                                       " FROM lifecycle.sandboxes s WHERE s.id = $1 "
                                       "AND s.tenant_id = $2"));
  pool_.Prepare("lc_get_any",
                absl::StrCat("SELECT ", kCols, " FROM lifecycle.sandboxes s WHERE s.id = $1"));
  pool_.Prepare("lc_list", absl::StrCat("SELECT ", kCols,
                                        " FROM lifecycle.sandboxes s WHERE s.tenant_id = $1 "
                                        "AND s.state = ANY($2::text[]) AND s.metadata @> $3::jsonb "
                                        "AND (s.created_at, s.id) > ($4::timestamptz, $5) "
                                        "ORDER BY s.created_at, s.id LIMIT $6"));
  pool_.Prepare("lc_count_state",
                "SELECT count(*) FROM lifecycle.sandboxes WHERE tenant_id = $1 AND state = $2");
  pool_.Prepare("lc_to_starting", TransitionSql("STARTING", "prev.state = 'PENDING'",
                                                "runner_id = $2, runner_address = $3", "NULL"));
  pool_.Prepare("lc_to_running",
                TransitionSql("RUNNING", "prev.state = 'STARTING'",
                              "image_digest = $2, "
                              "expires_at = now() + s.timeout_sec * interval '1 second'",
                              "NULL"));
  pool_.Prepare("lc_to_failed",
                TransitionSql("FAILED", "prev.state IN ('PENDING', 'STARTING')",
                              "ended_at = now(), expires_at = NULL, end_reason = 'START_FAILED', "
                              "end_message = $2",
                              "'START_FAILED'"));
  pool_.Prepare("lc_to_destroying",
                TransitionSql("DESTROYING", "prev.state = ANY($3::text[]) AND s.tenant_id = $4",
                              "end_reason = $2, expires_at = NULL", "$2"));
  pool_.Prepare("lc_to_destroyed",
                TransitionSql("DESTROYED", "prev.state = 'DESTROYING'",
                              "ended_at = now(), expires_at = NULL", "s.end_reason"));
  pool_.Prepare("lc_to_hibernated",
                TransitionSql("HIBERNATED", "prev.state = 'RUNNING'", "expires_at = NULL", "NULL"));
  pool_.Prepare("lc_to_resumed",
                TransitionSql("RUNNING", "prev.state = 'HIBERNATED'",
                              "expires_at = now() + s.timeout_sec * interval '1 second'", "NULL"));
  pool_.Prepare("lc_to_lost",
                TransitionSql("LOST", "prev.state IN ('RUNNING', 'HIBERNATED')",
                              "ended_at = now(), expires_at = NULL, end_reason = 'RUNNER_LOST', "
                              "end_message = $2",
                              "'RUNNER_LOST'"));
  pool_.Prepare("lc_states_of",
                "SELECT id, state, coalesce(runner_id, ''), "
                "extract(epoch FROM now() - updated_at)::float8 FROM lifecycle.sandboxes "
                "WHERE id = ANY($1::text[])");
  pool_.Prepare("lc_live_on_runner",
                absl::StrCat("SELECT ", kCols,
                             " FROM lifecycle.sandboxes s WHERE s.runner_id = $1 "
                             "AND s.state IN ('RUNNING', 'HIBERNATED')"));
  pool_.Prepare(
      "lc_delete_unacked",
      "WITH d AS (DELETE FROM lifecycle.sandboxes WHERE id = $1 "
      "AND state IN ('PENDING', 'STARTING') RETURNING id), "
      "e AS (DELETE FROM lifecycle.sandbox_events WHERE sandbox_id IN (SELECT id FROM d)), "
      "k AS (DELETE FROM lifecycle.idempotency_keys WHERE sandbox_id IN "
      "(SELECT id FROM d)) SELECT count(*) FROM d");
  pool_.Prepare("lc_set_timeout",
                absl::StrCat("UPDATE lifecycle.sandboxes s SET timeout_sec = $3::integer, "
                             "expires_at = CASE WHEN s.state = 'RUNNING' "
                             "THEN now() + $3::integer * interval '1 second' "
                             "ELSE s.expires_at END, "
                             "updated_at = now() WHERE s.id = $1 AND s.tenant_id = $2 AND "
                             "s.state IN ('PENDING', 'STARTING', 'RUNNING', 'HIBERNATED') "
                             "RETURNING ",
                             kCols));
  pool_.Prepare("lc_touch",
                "UPDATE lifecycle.sandboxes SET expires_at = now() + timeout_sec * "
                "interval '1 second' WHERE id = $1 AND state = 'RUNNING'");
  pool_.Prepare(
      "lc_claim_expired",
      absl::StrCat(
          "WITH c AS (SELECT id, state FROM lifecycle.sandboxes WHERE state = 'RUNNING' "
          "AND expires_at <= now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED), "
          "s AS (UPDATE lifecycle.sandboxes s SET state = 'DESTROYING', "
          "end_reason = 'IDLE_TIMEOUT', expires_at = NULL, updated_at = now() FROM c "
          "WHERE s.id = c.id RETURNING s.*, c.state AS from_state), "
          "ev AS (INSERT INTO lifecycle.sandbox_events (sandbox_id, from_state, to_state, reason) "
          "SELECT id, from_state, 'DESTROYING', 'IDLE_TIMEOUT' FROM s) SELECT ",
          kCols, " FROM s"));
  pool_.Prepare("lc_claim_stuck",
                absl::StrCat("WITH c AS (SELECT id FROM lifecycle.sandboxes WHERE state = $1 "
                             "AND updated_at < now() - $2 * interval '1 second' "
                             "ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED) "
                             "UPDATE lifecycle.sandboxes s SET updated_at = now() FROM c "
                             "WHERE s.id = c.id RETURNING ",
                             kCols));
}

absl::Status SandboxStore::InsertPending(const v1::CreateSandboxRequest& r, const std::string& id,
                                         const std::string& public_id, std::string* existing_id) {
  if (r.idempotency_key().empty()) {
    return pool_.Execute([&](pqxx::nontransaction& tx) {
      tx.exec_prepared("lc_insert", id, r.tenant_id(), r.image(), r.cpu_millis(), r.memory_mb(),
                       r.timeout_sec(), MapJson(r.env()), MapJson(r.metadata()),
                       NetworkJson(r.network()), public_id);
      return absl::OkStatus();
    });
  }
  return pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    {
      auto claimed = tx.exec_prepared("lc_claim_idem", r.tenant_id(), r.idempotency_key(), id);
      if (claimed.empty()) {
        auto found = tx.exec_prepared("lc_find_idem", r.tenant_id(), r.idempotency_key());
        if (!found.empty() && existing_id != nullptr) *existing_id = found[0][0].as<std::string>();
        return absl::AlreadyExistsError("idempotency key already used");
      }
    }
    tx.exec_prepared("lc_insert", id, r.tenant_id(), r.image(), r.cpu_millis(), r.memory_mb(),
                     r.timeout_sec(), MapJson(r.env()), MapJson(r.metadata()),
                     NetworkJson(r.network()), public_id);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::optional<std::string>> SandboxStore::FindIdempotent(
    const std::string& tenant_id, const std::string& key) {
  std::optional<std::string> out;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    auto r = tx.exec_prepared("lc_find_idem", tenant_id, key);
    if (!r.empty()) out = r[0][0].as<std::string>();
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<Sandbox> SandboxStore::Get(const std::string& tenant_id, const std::string& id) {
  Sandbox sb;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    auto r = tx.exec_prepared("lc_get", id, tenant_id);
    if (r.empty()) return NotFound(id);
    sb = FromRow(r[0]);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return sb;
}

absl::StatusOr<Sandbox> SandboxStore::GetAny(const std::string& id) {
  Sandbox sb;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    auto r = tx.exec_prepared("lc_get_any", id);
    if (r.empty()) return NotFound(id);
    sb = FromRow(r[0]);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return sb;
}

absl::StatusOr<ListPage> SandboxStore::List(const ListQuery& q) {
  std::string after_time = "-infinity";
  std::string after_id;
  if (!q.page_token.empty()) {
    std::string raw;
    auto bar = std::string::npos;
    if (absl::WebSafeBase64Unescape(q.page_token, &raw)) bar = raw.find('|');
    if (bar == std::string::npos) {
      return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                   "pageToken is not a token this API returned");
    }
    after_time = raw.substr(0, bar);
    after_id = raw.substr(bar + 1);
  }
  JsonWriter meta;
  meta.BeginObject();
  for (const auto& [k, v] : q.metadata) meta.Key(k).String(v);
  meta.EndObject();
  ListPage page;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    page = ListPage{};
    pqxx::result r;
    try {
      r = tx.exec_prepared("lc_list", q.tenant_id,
                           StateArray(q.states.empty() ? LiveStates() : q.states), meta.str(),
                           after_time, after_id, q.page_size + 1);
    } catch (const pqxx::data_exception&) {
      return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                   "pageToken is not a token this API returned");
    }
    for (size_t i = 0; i < r.size() && static_cast<int>(i) < q.page_size; ++i) {
      page.sandboxes.push_back(FromRow(r[i]));
    }
    if (static_cast<int>(r.size()) > q.page_size) {
      const auto& last = r[q.page_size - 1];
      page.next_page_token = absl::WebSafeBase64Escape(
          absl::StrCat(last[17].as<std::string>(), "|", last[0].as<std::string>()));
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return page;
}

absl::StatusOr<int> SandboxStore::CountInState(const std::string& tenant_id, SandboxState state) {
  int n = 0;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    n = tx.exec_prepared("lc_count_state", tenant_id, StateName(state))[0][0].as<int>();
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return n;
}

namespace {

template <typename... Args>
absl::StatusOr<std::optional<Sandbox>> RunTransition(PgPool& pool, Durability durability,
                                                     Detail detail, const char* statement,
                                                     Args&&... args) {
  std::optional<Sandbox> out;
  absl::Status s = pool.Execute(
      [&](pqxx::nontransaction& tx) {
        out.reset();
        auto r = tx.exec_prepared(statement, args...);
        if (!r.empty()) out = FromRow(r[0], detail);
        return absl::OkStatus();
      },
      durability);
  if (!s.ok()) return s;
  return out;
}

}  // namespace

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToStarting(const std::string& id,
                                                                const std::string& runner_id,
                                                                const std::string& address) {
  return RunTransition(pool_, Durability::kAsync, Detail::kCore, "lc_to_starting", id, runner_id,
                       address);
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToRunning(const std::string& id,
                                                               const std::string& digest) {
  // Durable: the client is told the sandbox runs right after this commit.
  return RunTransition(pool_, Durability::kSync, Detail::kFull, "lc_to_running", id, digest);
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToFailed(const std::string& id,
                                                              const std::string& message) {
  return RunTransition(pool_, Durability::kSync, Detail::kCore, "lc_to_failed", id, message);
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToDestroying(
    const std::string& tenant_id, const std::string& id, const std::vector<SandboxState>& from,
    v1::EndReason reason) {
  return RunTransition(pool_, Durability::kAsync, Detail::kCore, "lc_to_destroying", id,
                       EndReasonName(reason), StateArray(from), tenant_id);
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToDestroyed(const std::string& id) {
  return RunTransition(pool_, Durability::kSync, Detail::kCore, "lc_to_destroyed", id);
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToHibernated(const std::string& id) {
  return RunTransition(pool_, Durability::kSync, Detail::kFull, "lc_to_hibernated", id);
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToRunningFromHibernated(
    const std::string& id) {
  return RunTransition(pool_, Durability::kSync, Detail::kFull, "lc_to_resumed", id);
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToLost(const std::string& id,
                                                            const std::string& message) {
  return RunTransition(pool_, Durability::kSync, Detail::kCore, "lc_to_lost", id, message);
}

absl::StatusOr<std::map<std::string, SandboxStore::RowState>> SandboxStore::StatesOf(
    const std::vector<std::string>& ids) {
  std::map<std::string, RowState> out;
  if (ids.empty()) return out;
  // Only well-formed ids go into the array literal; others cannot have rows anyway.
  std::vector<std::string> safe;
  for (const auto& id : ids) {
    bool ok = !id.empty() && id.size() < 100;
    for (char c : id) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
    if (ok) safe.push_back(id);
  }
  std::string array = "{" + absl::StrJoin(safe, ",") + "}";
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    out.clear();
    for (const auto& row : tx.exec_prepared("lc_states_of", array)) {
      out[row[0].as<std::string>()] =
          RowState{ParseState(row[1].as<std::string>()), row[2].as<std::string>(),
                   absl::Seconds(row[3].as<double>())};
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<std::vector<Sandbox>> SandboxStore::LiveOnRunner(const std::string& runner_id) {
  std::vector<Sandbox> out;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    out.clear();
    for (const auto& row : tx.exec_prepared("lc_live_on_runner", runner_id)) {
      out.push_back(FromRow(row));
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::Status SandboxStore::DeleteUnacknowledged(const std::string& id) {
  return pool_.Execute([&](pqxx::nontransaction& tx) {
    tx.exec_prepared("lc_delete_unacked", id);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::SetTimeout(const std::string& tenant_id,
                                                                const std::string& id,
                                                                int timeout_sec) {
  std::optional<Sandbox> out;
  absl::Status s = pool_.Execute(
      [&](pqxx::nontransaction& tx) -> absl::Status {
        out.reset();
        auto r = tx.exec_prepared("lc_set_timeout", id, tenant_id, timeout_sec);
        if (!r.empty()) {
          out = FromRow(r[0]);
          return absl::OkStatus();
        }
        if (tx.exec_prepared("lc_get", id, tenant_id).empty()) return NotFound(id);
        return absl::OkStatus();
      },
      Durability::kSync);
  if (!s.ok()) return s;
  return out;
}

absl::Status SandboxStore::Touch(const std::string& id) {
  return pool_.Execute([&](pqxx::nontransaction& tx) {
    tx.exec_prepared("lc_touch", id);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<Sandbox>> SandboxStore::ClaimExpired(int limit) {
  std::vector<Sandbox> out;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    out.clear();
    for (const auto& row : tx.exec_prepared("lc_claim_expired", limit)) {
      out.push_back(FromRow(row, Detail::kCore));
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<std::vector<Sandbox>> SandboxStore::ClaimStuck(SandboxState state,
                                                              int older_than_sec, int limit) {
  std::vector<Sandbox> out;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    out.clear();
    for (const auto& row :
         tx.exec_prepared("lc_claim_stuck", StateName(state), older_than_sec, limit)) {
      out.push_back(FromRow(row));
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

}  // namespace isorun::lifecycle
