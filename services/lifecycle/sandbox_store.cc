#include "services/lifecycle/sandbox_store.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "services/kit/json.h"
#include "services/kit/status.h"
#include "services/lifecycle/page_token.h"

namespace isorun::lifecycle {
namespace {

using google::protobuf::util::TimeUtil;

// Every query that returns sandboxes selects these columns from a relation named `s`; the
// statements whose rows are read without their JSON columns (Detail::kCore) leave them out.
std::string Cols(bool with_json) {
  return absl::StrCat(
      "s.id, s.tenant_id::text, s.state, s.image, s.image_digest, s.cpu_millis, s.memory_mb, "
      "s.timeout_sec, ",
      with_json ? "json_build_object('metadata', s.metadata, 'network', s.network, "
                  "'env', s.env)::text, "
                : "'', ",
      "s.public_id, coalesce(s.runner_id, ''), coalesce(s.runner_address, ''), "
      "(extract(epoch FROM s.created_at) * 1000000)::bigint, "
      "(extract(epoch FROM s.expires_at) * 1000000)::bigint, "
      "(extract(epoch FROM s.ended_at) * 1000000)::bigint, coalesce(s.end_reason, ''), "
      "coalesce(s.end_message, ''), s.created_at::text, s.disk_mb, coalesce(s.start_phase, ''), "
      "coalesce(s.pull_bytes_done, 0), coalesce(s.pull_bytes_total, 0)");
}
const std::string kCols = Cols(true);

// Whether lifecycle replica `owner_expr` (an integer expression) holds its session lock
// (replica_session.h), in this database.
std::string OwnerAlive(const std::string& owner_expr) {
  return absl::StrCat(
      "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.database = "
      "(SELECT oid FROM pg_database WHERE datname = current_database()) AND l.classid = 4243 "
      "AND l.objid = (",
      owner_expr, ")::oid AND l.objsubid = 2 AND l.granted)");
}

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

// The rows of a batch, `r(id, p1, ..., pN)`, from the array parameters $1 .. $N+1.
std::string BatchRows(int params) {
  std::string arrays = "$1::text[]";
  std::string names = "id";
  for (int i = 1; i <= params; ++i) {
    absl::StrAppend(&arrays, ", $", i + 1, "::text[]");
    absl::StrAppend(&names, ", p", i);
  }
  return absl::StrCat("WITH r AS (SELECT * FROM unnest(", arrays, ") AS r(", names, ")), ");
}

// A guarded transition of a batch of sandboxes. $1 is the array of ids, $2.. arrays of per-row
// text parameters, seen as r.p1, r.p2, ...; `set`, `guard` and `reason` are SQL over `s` (the row),
// `prev` (its state before) and `r`. Rows are locked in id order, so concurrent batches cannot
// deadlock; a row whose guard fails is not in `s`. AddTransition appends what is selected.
std::string TransitionSql(const std::string& to, const std::string& guard, const std::string& set,
                          const std::string& reason, int params) {
  return absl::StrCat(
      BatchRows(params),
      "prev AS (SELECT s.id, s.state FROM lifecycle.sandboxes s WHERE s.id = ANY($1::text[]) "
      "ORDER BY s.id FOR UPDATE), "
      "s AS (UPDATE lifecycle.sandboxes s SET state = '",
      to, "', updated_at = now()", set.empty() ? "" : ", ", set,
      " FROM prev JOIN r ON r.id = prev.id WHERE s.id = ANY($1::text[]) AND s.id = prev.id AND ",
      guard,
      " RETURNING s.*, prev.state AS from_state, ", reason, " AS event_reason), "
      "ev AS (INSERT INTO lifecycle.sandbox_events (sandbox_id, from_state, to_state, reason) "
      "SELECT id, from_state, state, event_reason FROM s)");
}

// The same for a transition from one state only: the prior state is known, so the guard sits in
// the UPDATE itself (Postgres re-checks it on a row that changed while it waited for the lock)
// and no locking read comes first. Half the work of the general form on the hot path. The state
// it moves from is the statement's last parameter (AddTransition's `fixed`), not a literal: a
// literal state would let the plan read through a partial index on state, whose dead entries pile
// up between vacuums, instead of the primary key. `guard`: more conditions on `s` and `r`.
std::string TransitionFromSql(const std::string& to, const std::string& set,
                              const std::string& reason, int params,
                              const std::string& guard = "") {
  const std::string from = absl::StrCat("$", params + 2, "::text");
  return absl::StrCat(
      BatchRows(params),
      "s AS (UPDATE lifecycle.sandboxes s SET state = '", to, "', updated_at = now()",
      set.empty() ? "" : ", ", set, " FROM r WHERE s.id = ANY($1::text[]) AND s.id = r.id AND ",
      "s.state = ", from, guard.empty() ? "" : " AND ", guard, " RETURNING s.*, ", reason,
      " AS event_reason), "
      "ev AS (INSERT INTO lifecycle.sandbox_events (sandbox_id, from_state, to_state, reason) "
      "SELECT id, ", from, ", state, event_reason FROM s)");
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
  sb.set_disk_mb(row[18].as<int>());
  // The progress of a start is only news while the sandbox starts.
  if (sb.state() == v1::STARTING && !row[19].is_null() && !row[19].as<std::string>().empty()) {
    v1::StartProgress* p = sb.mutable_start_progress();
    p->set_phase(row[19].as<std::string>());
    p->set_pull_bytes_done(row[20].as<int64_t>());
    p->set_pull_bytes_total(row[21].as<int64_t>());
  }
  return sb;
}

absl::Status NotFound(const std::string& id) {
  return Error(absl::StatusCode::kNotFound, "NOT_FOUND",
               absl::StrCat("sandbox ", id, " not found"));
}

// Runs an update statement of one sandbox (parameters: id, tenant, then `args`) that returns the
// changed row: the sandbox after it; nullopt when the row exists but the statement's guard left it
// alone; NOT_FOUND when there is no such sandbox of the tenant.
template <typename... Args>
absl::StatusOr<std::optional<Sandbox>> UpdateOne(PgPool& pool, const char* statement,
                                                 const std::string& tenant_id,
                                                 const std::string& id, const Args&... args) {
  std::optional<Sandbox> out;
  absl::Status s = pool.Execute(
      [&](pqxx::nontransaction& tx) -> absl::Status {
        out.reset();
        auto r = tx.exec_prepared(statement, id, tenant_id, args...);
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
                "cpu_millis, memory_mb, timeout_sec, env, metadata, network, public_id, disk_mb, "
                "owner) "
                "SELECT id, tenant::uuid, 'PENDING', image, cpu::integer, mem::integer, "
                "timeout::integer, env::jsonb, meta::jsonb, net::jsonb, public_id, disk::integer, "
                "NULLIF($12::integer, 0) "
                "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], "
                "$6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[]) "
                "AS r(id, tenant, image, cpu, mem, timeout, env, meta, net, public_id, disk) "
                "RETURNING id) INSERT INTO lifecycle.sandbox_events (sandbox_id, to_state) "
                "SELECT id, 'PENDING' FROM s");
  pool_.Prepare("lc_get", absl::StrCat("SELECT ", kCols,
                                       " FROM lifecycle.sandboxes s WHERE s.id = $1 "
                                       "AND s.tenant_id = $2"));
  pool_.Prepare("lc_get_any",
                absl::StrCat("SELECT ", kCols, " FROM lifecycle.sandboxes s WHERE s.id = $1"));
  pool_.Prepare("lc_get_by_public_id",
                absl::StrCat("SELECT ", kCols, " FROM lifecycle.sandboxes s WHERE s.public_id = $1"));
  pool_.Prepare("lc_list", absl::StrCat("SELECT ", kCols,
                                        " FROM lifecycle.sandboxes s WHERE s.tenant_id = $1 "
                                        "AND s.state = ANY($2::text[]) AND s.metadata @> $3::jsonb "
                                        "AND (s.created_at, s.id) > ($4::timestamptz, $5) "
                                        "ORDER BY s.created_at, s.id LIMIT $6"));
  // A start's progress; the first sight of a pull is an event of its own (PULLING).
  pool_.Prepare("lc_start_progress",
                "WITH prev AS (SELECT id, start_phase FROM lifecycle.sandboxes "
                "WHERE id = $1 AND state = 'STARTING' FOR UPDATE), "
                "s AS (UPDATE lifecycle.sandboxes x SET start_phase = $2, "
                "pull_bytes_done = $3::bigint, pull_bytes_total = $4::bigint FROM prev "
                "WHERE x.id = prev.id RETURNING x.id), "
                "ev AS (INSERT INTO lifecycle.sandbox_events (sandbox_id, from_state, to_state, "
                "reason) SELECT id, 'STARTING', 'STARTING', $2 FROM prev WHERE $2 = 'PULLING' "
                "AND prev.start_phase IS DISTINCT FROM 'PULLING') SELECT count(*) FROM s");
  pool_.Prepare("lc_event_owner",
                "SELECT coalesce(end_message, ''), coalesce(runner_id, '') "
                "FROM lifecycle.sandboxes WHERE id = $1 AND tenant_id = $2");
  pool_.Prepare("lc_events",
                "SELECT id, coalesce(from_state, ''), to_state, coalesce(reason, ''), "
                "(extract(epoch FROM at) * 1000000)::bigint FROM lifecycle.sandbox_events "
                "WHERE sandbox_id = $1 AND id > $2 ORDER BY id LIMIT $3");
  pool_.Prepare("lc_count_state",
                "SELECT count(*) FROM lifecycle.sandboxes WHERE tenant_id = $1 AND state = $2");
  to_starting_ = &AddTransition("lc_to_starting",
                                TransitionFromSql("STARTING",
                                                  "runner_id = r.p1, runner_address = r.p2",
                                                  "NULL", 2),
                                Durability::kAsync, false, {"PENDING"});
  // Durable: the client is told the sandbox runs right after this commit.
  to_running_ = &AddTransition(
      "lc_to_running",
      TransitionFromSql("RUNNING",
                        "image_digest = r.p1, "
                        "expires_at = now() + s.timeout_sec * interval '1 second'",
                        "NULL", 1),
      Durability::kSync, true, {"STARTING"});
  to_failed_ = &AddTransition(
      "lc_to_failed",
      TransitionSql("FAILED", "prev.state IN ('PENDING', 'STARTING')",
                    "ended_at = now(), expires_at = NULL, end_reason = 'START_FAILED', "
                    "end_message = r.p1, env = '{}'",
                    "'START_FAILED'", 1),
      Durability::kSync, false);
  // The common destroy, of a running sandbox, without the locking read of the general one.
  running_to_destroying_ = &AddTransition(
      "lc_running_to_destroying",
      TransitionFromSql("DESTROYING", "end_reason = r.p1, expires_at = NULL, env = '{}'", "r.p1", 2,
                        "s.tenant_id = r.p2::uuid"),
      Durability::kAsync, false, {"RUNNING"});
  to_destroying_ = &AddTransition(
      "lc_to_destroying",
      TransitionSql("DESTROYING", "prev.state = ANY(r.p2::text[]) AND s.tenant_id = r.p3::uuid",
                    "end_reason = r.p1, expires_at = NULL, env = '{}'", "r.p1", 3),
      Durability::kAsync, false);
  to_destroyed_ = &AddTransition("lc_to_destroyed",
                                 TransitionFromSql("DESTROYED",
                                                   "ended_at = now(), expires_at = NULL, env = '{}'",
                                                   "s.end_reason", 0),
                                 Durability::kSync, false, {"DESTROYING"});
  to_hibernated_ = &AddTransition(
      "lc_to_hibernated",
      TransitionFromSql("HIBERNATED", "expires_at = NULL", "NULL", 0),
      Durability::kSync, true, {"RUNNING"});
  to_resumed_ = &AddTransition(
      "lc_to_resumed",
      TransitionFromSql("RUNNING",
                        "expires_at = now() + s.timeout_sec * interval '1 second'", "NULL", 0),
      Durability::kSync, true, {"HIBERNATED"});
  to_lost_ = &AddTransition(
      "lc_to_lost",
      TransitionSql("LOST", "prev.state IN ('RUNNING', 'HIBERNATED')",
                    "ended_at = now(), expires_at = NULL, end_reason = 'RUNNER_LOST', "
                    "end_message = r.p1, env = '{}'",
                    "'RUNNER_LOST'", 1),
      Durability::kSync, false);
  inserts_ = std::make_unique<Batcher<InsertCall, absl::Status>>(
      [this](std::vector<InsertCall>& calls) { return RunInserts(calls); });
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
  pool_.Prepare("lc_set_network",
                absl::StrCat("UPDATE lifecycle.sandboxes s SET network = $3::jsonb, "
                             "updated_at = now() WHERE s.id = $1 AND s.tenant_id = $2 AND "
                             "s.state IN ('RUNNING', 'HIBERNATED') RETURNING ",
                             kCols));
  // The state is a parameter: with a literal 'RUNNING' the plan walks sandboxes_expiry (every
  // running sandbox) instead of the primary key.
  // A no-op row update committed durably: its WAL flush makes every earlier asynchronous commit
  // (the DESTROYING transition, quota's release) durable too.
  pool_.Prepare("lc_persist", "UPDATE lifecycle.sandboxes SET updated_at = updated_at WHERE id = $1");
  pool_.Prepare("lc_touch",
                "UPDATE lifecycle.sandboxes SET expires_at = now() + timeout_sec * "
                "interval '1 second' WHERE id = $1 AND state = $2::text");
  pool_.Prepare("lc_touch_many",
                "UPDATE lifecycle.sandboxes SET expires_at = now() + timeout_sec * "
                "interval '1 second' WHERE id = ANY($1::text[]) AND state = $2::text");
  pool_.Prepare(
      "lc_claim_expired",
      absl::StrCat(
          "WITH c AS (SELECT id, state FROM lifecycle.sandboxes WHERE state = 'RUNNING' "
          "AND expires_at <= now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED), "
          "s AS (UPDATE lifecycle.sandboxes s SET state = 'DESTROYING', "
          "end_reason = 'IDLE_TIMEOUT', expires_at = NULL, env = '{}', updated_at = now() FROM c "
          "WHERE s.id = c.id RETURNING s.*, c.state AS from_state), "
          "ev AS (INSERT INTO lifecycle.sandbox_events (sandbox_id, from_state, to_state, reason) "
          "SELECT id, from_state, 'DESTROYING', 'IDLE_TIMEOUT' FROM s) SELECT ",
          Cols(false), " FROM s"));
  pool_.Prepare(
      "lc_claim_retention",
      absl::StrCat(
          "WITH c AS (SELECT id, state FROM lifecycle.sandboxes WHERE state = 'HIBERNATED' "
          "AND retain_until <= now() ORDER BY retain_until LIMIT $1 FOR UPDATE SKIP LOCKED), "
          "s AS (UPDATE lifecycle.sandboxes s SET state = 'DESTROYING', "
          "end_reason = 'HIBERNATION_EXPIRED', retain_until = NULL, updated_at = now() FROM c "
          "WHERE s.id = c.id RETURNING s.*, c.state AS from_state), "
          "ev AS (INSERT INTO lifecycle.sandbox_events (sandbox_id, from_state, to_state, reason) "
          "SELECT id, from_state, 'DESTROYING', 'HIBERNATION_EXPIRED' FROM s) SELECT ",
          Cols(false), " FROM s"));
  pool_.Prepare("lc_lock", absl::StrCat("SELECT ", kCols,
                                        " FROM lifecycle.sandboxes s WHERE s.id = $1 "
                                        "AND s.tenant_id = $2 FOR UPDATE"));
  // Keyed by tenant in a space of its own (the first key), held to the commit.
  pool_.Prepare("lc_lock_tenant_hibernated",
                "SELECT pg_advisory_xact_lock(4242, hashtext($1::text))");
  pool_.Prepare(
      "lc_hibernate_locked",
      absl::StrCat("WITH s AS (UPDATE lifecycle.sandboxes s SET state = 'HIBERNATED', "
                   "expires_at = NULL, retain_until = now() + $2::integer * interval '1 second', "
                   "updated_at = now() WHERE s.id = $1 AND s.state = $3::text RETURNING s.*), "
                   "ev AS (INSERT INTO lifecycle.sandbox_events (sandbox_id, from_state, to_state) "
                   "SELECT id, 'RUNNING', 'HIBERNATED' FROM s) SELECT ",
                   kCols, " FROM s"));
  pool_.Prepare(
      "lc_resume_locked",
      absl::StrCat("WITH s AS (UPDATE lifecycle.sandboxes s SET state = 'RUNNING', "
                   "expires_at = now() + s.timeout_sec * interval '1 second', "
                   "retain_until = NULL, updated_at = now() WHERE s.id = $1 "
                   "AND s.state = $2::text RETURNING s.*), "
                   "ev AS (INSERT INTO lifecycle.sandbox_events (sandbox_id, from_state, to_state) "
                   "SELECT id, 'HIBERNATED', 'RUNNING' FROM s) SELECT ",
                   kCols, " FROM s"));
  // Retention: the oldest ended sandboxes past $1 seconds, at most $2, with their events and
  // idempotency keys; rows another replica purges are skipped.
  pool_.Prepare("lc_purge_ended",
                "WITH d AS (SELECT id FROM lifecycle.sandboxes "
                "WHERE state IN ('DESTROYED', 'FAILED', 'LOST') "
                "AND ended_at < now() - $1::float8 * interval '1 second' "
                "ORDER BY ended_at LIMIT $2 FOR UPDATE SKIP LOCKED), "
                "g AS (DELETE FROM lifecycle.sandboxes s USING d WHERE s.id = d.id RETURNING s.id), "
                "e AS (DELETE FROM lifecycle.sandbox_events v USING g WHERE v.sandbox_id = g.id), "
                "k AS (DELETE FROM lifecycle.idempotency_keys i USING g WHERE i.sandbox_id = g.id) "
                "SELECT count(*) FROM g");
  pool_.Prepare("lc_purge_idempotency",
                "WITH d AS (SELECT tenant_id, key FROM lifecycle.idempotency_keys "
                "WHERE created_at < now() - $1::float8 * interval '1 second' "
                "ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) "
                "DELETE FROM lifecycle.idempotency_keys i USING d "
                "WHERE i.tenant_id = d.tenant_id AND i.key = d.key");
  pool_.Prepare("lc_mark_awaited",
                absl::StrCat("WITH u AS (UPDATE lifecycle.sandboxes SET awaited = true "
                             "WHERE id = $1 AND tenant_id = $2 "
                             "AND state IN ('PENDING', 'STARTING') RETURNING state, owner) "
                             "SELECT u.state, coalesce(u.owner, 0), u.owner IS NOT NULL AND ",
                             OwnerAlive("u.owner"), " FROM u"));
  pool_.Prepare("lc_take_over",
                absl::StrCat("UPDATE lifecycle.sandboxes s SET owner = $2::integer, "
                             "updated_at = now() WHERE s.id = $1 "
                             "AND s.state IN ('PENDING', 'STARTING') AND s.owner IS NOT NULL "
                             "AND s.owner <> $2::integer AND NOT ",
                             OwnerAlive("s.owner"), " RETURNING ", kCols));
  pool_.Prepare("lc_take_over_orphans",
                absl::StrCat("WITH c AS (SELECT id FROM lifecycle.sandboxes "
                             "WHERE state IN ('PENDING', 'STARTING') AND owner IS NOT NULL "
                             "AND owner <> $1::integer AND NOT ",
                             OwnerAlive("owner"),
                             " ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED) "
                             "UPDATE lifecycle.sandboxes s SET owner = $1::integer, "
                             "updated_at = now() FROM c WHERE s.id = c.id RETURNING ",
                             kCols));
  pool_.Prepare("lc_lock_in_flight",
                absl::StrCat("SELECT ", kCols,
                             ", coalesce(s.owner, 0) FROM lifecycle.sandboxes s WHERE s.id = $1 "
                             "FOR UPDATE"));
  pool_.Prepare(
      "lc_fail_locked",
      "WITH prev AS (SELECT id, state FROM lifecycle.sandboxes WHERE id = $1 "
      "AND state IN ('PENDING', 'STARTING')), "
      "s AS (UPDATE lifecycle.sandboxes s SET state = 'FAILED', ended_at = now(), "
      "expires_at = NULL, end_reason = 'START_FAILED', end_message = $2, env = '{}', "
      "updated_at = now() FROM prev WHERE s.id = prev.id RETURNING s.id, prev.state AS from_state), "
      "ev AS (INSERT INTO lifecycle.sandbox_events (sandbox_id, from_state, to_state, reason) "
      "SELECT id, from_state, 'FAILED', 'START_FAILED' FROM s) SELECT count(*) FROM s");
  pool_.Prepare("lc_claim_stuck",
                // The constant IN list lets the generic plan use sandboxes_unsettled.
                absl::StrCat("WITH c AS (SELECT id FROM lifecycle.sandboxes WHERE state = $1 "
                             "AND state IN ('PENDING', 'STARTING', 'DESTROYING') "
                             "AND updated_at < now() - $2 * interval '1 second' "
                             "ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED) "
                             "UPDATE lifecycle.sandboxes s SET updated_at = now() FROM c "
                             "WHERE s.id = c.id RETURNING ",
                             kCols));
}

namespace {

// The eleven array parameters of lc_insert.
std::vector<std::string> InsertArrays(const std::vector<const v1::CreateSandboxRequest*>& requests,
                                      const std::vector<std::string>& ids,
                                      const std::vector<std::string>& public_ids) {
  std::vector<std::vector<std::string>> cols(11);
  for (size_t i = 0; i < requests.size(); ++i) {
    const v1::CreateSandboxRequest& r = *requests[i];
    cols[0].push_back(ids[i]);
    cols[1].push_back(r.tenant_id());
    cols[2].push_back(r.image());
    cols[3].push_back(std::to_string(r.cpu_millis()));
    cols[4].push_back(std::to_string(r.memory_mb()));
    cols[5].push_back(std::to_string(r.timeout_sec()));
    cols[6].push_back(MapJson(r.env()));
    cols[7].push_back(MapJson(r.metadata()));
    cols[8].push_back(NetworkJson(r.network()));
    cols[9].push_back(public_ids[i]);
    cols[10].push_back(std::to_string(r.disk_mb() > 0 ? r.disk_mb() : 2048));
  }
  std::vector<std::string> arrays;
  for (const auto& c : cols) arrays.push_back(PgTextArray(c));
  return arrays;
}

}  // namespace

absl::Status SandboxStore::InsertPending(const v1::CreateSandboxRequest& r, const std::string& id,
                                         const std::string& public_id, std::string* existing_id) {
  if (r.idempotency_key().empty()) return inserts_->Call(InsertCall{&r, id, public_id});
  return pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    {
      auto claimed = tx.exec_prepared("lc_claim_idem", r.tenant_id(), r.idempotency_key(), id);
      if (claimed.empty()) {
        auto found = tx.exec_prepared("lc_find_idem", r.tenant_id(), r.idempotency_key());
        if (!found.empty() && existing_id != nullptr) *existing_id = found[0][0].as<std::string>();
        return absl::AlreadyExistsError("idempotency key already used");
      }
    }
    auto params = InsertArrays({&r}, {id}, {public_id});
    params.push_back(std::to_string(owner_.load()));
    tx.exec_prepared("lc_insert", pqxx::prepare::make_dynamic_params(params));
    return absl::OkStatus();
  });
}

std::vector<absl::Status> SandboxStore::RunInserts(std::vector<InsertCall>& calls) {
  std::vector<const v1::CreateSandboxRequest*> requests;
  std::vector<std::string> ids, public_ids;
  for (const auto& c : calls) {
    requests.push_back(c.request);
    ids.push_back(c.id);
    public_ids.push_back(c.public_id);
  }
  auto params = InsertArrays(requests, ids, public_ids);
  params.push_back(std::to_string(owner_.load()));
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    tx.exec_prepared("lc_insert", pqxx::prepare::make_dynamic_params(params));
    return absl::OkStatus();
  });
  if (s.ok() || calls.size() == 1 || s.code() == absl::StatusCode::kUnavailable) {
    return std::vector<absl::Status>(calls.size(), s);
  }
  // One bad row fails the statement: insert one by one so the others do not fail with it.
  std::vector<absl::Status> out;
  for (auto& c : calls) {
    std::vector<InsertCall> one = {c};
    out.push_back(RunInserts(one)[0]);
  }
  return out;
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
  ++gets_;
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

absl::StatusOr<Sandbox> SandboxStore::GetByPublicId(const std::string& public_id) {
  Sandbox sb;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    auto r = tx.exec_prepared("lc_get_by_public_id", public_id);
    if (r.empty()) {
      return Error(absl::StatusCode::kNotFound, "NOT_FOUND", "no sandbox has this public id");
    }
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
    auto cursor = DecodePageToken(q.page_token);
    if (!cursor.ok()) return cursor.status();
    after_time = std::move(cursor->created_at);
    after_id = std::move(cursor->id);
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
      page.next_page_token =
          EncodePageToken({last[17].as<std::string>(), last[0].as<std::string>()});
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return page;
}

absl::StatusOr<bool> SandboxStore::SetStartProgress(const std::string& id,
                                                    const v1::StartProgress& progress) {
  bool moved = false;
  absl::Status s = pool_.Execute(
      [&](pqxx::nontransaction& tx) -> absl::Status {
        auto r = tx.exec_prepared("lc_start_progress", id, progress.phase(),
                                  progress.pull_bytes_done(), progress.pull_bytes_total());
        moved = !r.empty() && r[0][0].as<int64_t>() > 0;
        return absl::OkStatus();
      },
      Durability::kAsync);
  if (!s.ok()) return s;
  return moved;
}

absl::StatusOr<EventPage> SandboxStore::ListEvents(const std::string& tenant_id,
                                                   const std::string& id, int64_t after_seq,
                                                   int limit) {
  EventPage page;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    page = EventPage{};
    auto owner = tx.exec_prepared("lc_event_owner", id, tenant_id);
    if (owner.empty()) return NotFound(id);
    page.end_message = owner[0][0].as<std::string>();
    page.runner_id = owner[0][1].as<std::string>();
    auto r = tx.exec_prepared("lc_events", id, after_seq, limit + 1);
    for (size_t i = 0; i < r.size() && static_cast<int>(i) < limit; ++i) {
      EventRow e;
      e.seq = r[i][0].as<int64_t>();
      e.from_state = r[i][1].as<std::string>();
      e.to_state = r[i][2].as<std::string>();
      e.reason = r[i][3].as<std::string>();
      e.at = absl::FromUnixMicros(r[i][4].as<int64_t>());
      page.events.push_back(std::move(e));
    }
    page.more = static_cast<int>(r.size()) > limit;
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

SandboxStore::TransitionBatcher& SandboxStore::AddTransition(const std::string& name,
                                                             const std::string& sql,
                                                             Durability durability, bool full,
                                                             std::vector<std::string> fixed) {
  // The sandboxes moved, with their JSON columns only for callers that read them.
  pool_.Prepare(name, absl::StrCat(sql, " SELECT ", Cols(full), " FROM s"));
  transitions_.push_back(std::make_unique<TransitionBatcher>(
      [this, name, durability, full, fixed = std::move(fixed)](std::vector<TransitionCall>& calls) {
        return RunTransitions(name, fixed, durability, full, calls);
      }));
  return *transitions_.back();
}

std::vector<SandboxStore::TransitionResult> SandboxStore::RunTransitions(
    const std::string& name, const std::vector<std::string>& fixed, Durability durability,
    bool full, std::vector<TransitionCall>& calls) {
  std::vector<TransitionResult> out(calls.size(), std::optional<Sandbox>());
  // One statement moves a row at most once: a second call for the same sandbox in this batch
  // waits for the next round, and sees the row as the first call left it.
  std::vector<size_t> pending(calls.size());
  for (size_t i = 0; i < calls.size(); ++i) pending[i] = i;
  while (!pending.empty()) {
    std::vector<size_t> round, later;
    std::set<std::string> seen;
    for (size_t i : pending) (seen.insert(calls[i].id).second ? round : later).push_back(i);
    std::vector<std::vector<std::string>> cols(1 + calls[round[0]].params.size());
    for (size_t i : round) {
      cols[0].push_back(calls[i].id);
      for (size_t p = 0; p + 1 < cols.size() && p < calls[i].params.size(); ++p) {
        cols[p + 1].push_back(calls[i].params[p]);
      }
    }
    std::vector<std::string> arrays;
    for (const auto& c : cols) arrays.push_back(PgTextArray(c));
    arrays.insert(arrays.end(), fixed.begin(), fixed.end());
    std::map<std::string, Sandbox> moved;
    absl::Status s = pool_.Execute(
        [&](pqxx::nontransaction& tx) {
          moved.clear();
          for (const auto& row :
               tx.exec_prepared(name, pqxx::prepare::make_dynamic_params(arrays))) {
            Sandbox sb = FromRow(row, full ? Detail::kFull : Detail::kCore);
            std::string id = sb.id();
            moved.emplace(std::move(id), std::move(sb));
          }
          return absl::OkStatus();
        },
        durability);
    if (!s.ok() && round.size() > 1 && s.code() != absl::StatusCode::kUnavailable) {
      // One bad row fails the statement: run the round one by one so only it fails.
      for (size_t i : round) {
        std::vector<TransitionCall> one = {calls[i]};
        out[i] = RunTransitions(name, fixed, durability, full, one)[0];
      }
    } else {
      for (size_t i : round) {
        if (!s.ok()) {
          out[i] = s;
        } else if (auto it = moved.find(calls[i].id); it != moved.end()) {
          out[i] = std::optional<Sandbox>(it->second);
        }
      }
    }
    pending = std::move(later);
  }
  return out;
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToStarting(const std::string& id,
                                                                const std::string& runner_id,
                                                                const std::string& address) {
  return to_starting_->Call({id, {runner_id, address}});
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToRunning(const std::string& id,
                                                               const std::string& digest) {
  return to_running_->Call({id, {digest}});
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToFailed(const std::string& id,
                                                              const std::string& message) {
  return to_failed_->Call({id, {message}});
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToDestroying(
    const std::string& tenant_id, const std::string& id, const std::vector<SandboxState>& from,
    v1::EndReason reason) {
  if (std::find(from.begin(), from.end(), v1::RUNNING) != from.end()) {
    auto moved = running_to_destroying_->Call({id, {EndReasonName(reason), tenant_id}});
    if (!moved.ok() || moved->has_value()) return moved;
  }
  return to_destroying_->Call({id, {EndReasonName(reason), StateArray(from), tenant_id}});
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToDestroyed(const std::string& id) {
  return to_destroyed_->Call({id, {}});
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToHibernated(const std::string& id) {
  return to_hibernated_->Call({id, {}});
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToRunningFromHibernated(
    const std::string& id) {
  return to_resumed_->Call({id, {}});
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::ToLost(const std::string& id,
                                                            const std::string& message) {
  return to_lost_->Call({id, {message}});
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
  return UpdateOne(pool_, "lc_set_timeout", tenant_id, id, timeout_sec);
}

absl::StatusOr<int> SandboxStore::PurgeEnded(absl::Duration retention, int limit) {
  int n = 0;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    n = tx.exec_prepared("lc_purge_ended", absl::ToDoubleSeconds(retention), limit)[0][0].as<int>();
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return n;
}

absl::StatusOr<int> SandboxStore::PurgeIdempotencyKeys(absl::Duration retention, int limit) {
  int n = 0;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    n = static_cast<int>(
        tx.exec_prepared("lc_purge_idempotency", absl::ToDoubleSeconds(retention), limit)
            .affected_rows());
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return n;
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::SetNetwork(const std::string& tenant_id,
                                                                const std::string& id,
                                                                const v1::NetworkPolicy& policy) {
  return UpdateOne(pool_, "lc_set_network", tenant_id, id, NetworkJson(policy));
}

absl::Status SandboxStore::Persist(const std::string& id) {
  return pool_.Execute(
      [&](pqxx::nontransaction& tx) {
        tx.exec_prepared("lc_persist", id);
        return absl::OkStatus();
      },
      Durability::kSync);
}

absl::Status SandboxStore::Touch(const std::string& id) {
  return pool_.Execute([&](pqxx::nontransaction& tx) {
    tx.exec_prepared("lc_touch", id, "RUNNING");
    return absl::OkStatus();
  });
}

absl::StatusOr<int> SandboxStore::TouchMany(const std::vector<std::string>& ids) {
  int n = 0;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    auto r = tx.exec_prepared("lc_touch_many", PgTextArray(ids), "RUNNING");
    n = static_cast<int>(r.affected_rows());
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return n;
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

absl::StatusOr<std::vector<Sandbox>> SandboxStore::ClaimRetentionExpired(int limit) {
  std::vector<Sandbox> out;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    out.clear();
    for (const auto& row : tx.exec_prepared("lc_claim_retention", limit)) {
      out.push_back(FromRow(row, Detail::kCore));
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::Status SandboxStore::WithLocked(
    const std::string& tenant_id, const std::string& id,
    const std::function<absl::Status(const Sandbox&, Locked&)>& fn) {
  return pool_.Transact(
      [&](pqxx::work& tx) -> absl::Status {
        auto rows = tx.exec_prepared("lc_lock", id, tenant_id);
        if (rows.empty()) return NotFound(id);
        Locked locked(tx, tenant_id, id);
        return fn(FromRow(rows[0]), locked);
      },
      Durability::kSync);
}

absl::StatusOr<int> SandboxStore::Locked::CountHibernated() {
  tx_.exec_prepared("lc_lock_tenant_hibernated", tenant_id_);
  return tx_.exec_prepared("lc_count_state", tenant_id_, "HIBERNATED")[0][0].as<int>();
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::Locked::Hibernate(int retention_sec) {
  auto rows = tx_.exec_prepared("lc_hibernate_locked", id_, retention_sec, "RUNNING");
  if (rows.empty()) return std::optional<Sandbox>();
  return std::optional<Sandbox>(FromRow(rows[0]));
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::Locked::Resume() {
  auto rows = tx_.exec_prepared("lc_resume_locked", id_, "HIBERNATED");
  if (rows.empty()) return std::optional<Sandbox>();
  return std::optional<Sandbox>(FromRow(rows[0]));
}

absl::StatusOr<std::optional<SandboxStore::InFlight>> SandboxStore::MarkAwaited(
    const std::string& tenant_id, const std::string& id) {
  ++marks_;
  std::optional<InFlight> out;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    out.reset();
    auto rows = tx.exec_prepared("lc_mark_awaited", id, tenant_id);
    if (rows.empty()) return absl::OkStatus();
    InFlight f;
    f.state = ParseState(rows[0][0].as<std::string>());
    f.owner = rows[0][1].as<int32_t>();
    f.owner_alive = rows[0][2].as<bool>();
    out = f;
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<std::optional<Sandbox>> SandboxStore::TakeOver(const std::string& id,
                                                              int32_t owner) {
  std::optional<Sandbox> out;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    out.reset();
    auto rows = tx.exec_prepared("lc_take_over", id, owner);
    if (!rows.empty()) out = FromRow(rows[0]);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<std::vector<Sandbox>> SandboxStore::TakeOverOrphans(int32_t owner, int limit) {
  std::vector<Sandbox> out;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    out.clear();
    for (const auto& row : tx.exec_prepared("lc_take_over_orphans", owner, limit)) {
      out.push_back(FromRow(row));
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<bool> SandboxStore::WithOwnedInFlight(
    const std::string& id, int32_t owner,
    const std::function<absl::Status(const Sandbox&, Locked&)>& fn) {
  bool ran = false;
  absl::Status s = pool_.Transact(
      [&](pqxx::work& tx) -> absl::Status {
        ran = false;
        auto rows = tx.exec_prepared("lc_lock_in_flight", id);
        if (rows.empty()) return absl::OkStatus();
        Sandbox sb = FromRow(rows[0]);
        const int32_t row_owner = rows[0][rows[0].size() - 1].as<int32_t>();
        if ((sb.state() != v1::PENDING && sb.state() != v1::STARTING) || row_owner != owner) {
          return absl::OkStatus();
        }
        ran = true;
        Locked locked(tx, sb.tenant_id(), id);
        return fn(sb, locked);
      },
      Durability::kSync);
  if (!s.ok()) return s;
  return ran;
}

absl::Status SandboxStore::Locked::DeleteUnacknowledged() {
  tx_.exec_prepared("lc_delete_unacked", id_);
  return absl::OkStatus();
}

absl::Status SandboxStore::Locked::Fail(const std::string& message) {
  tx_.exec_prepared("lc_fail_locked", id_, message);
  return absl::OkStatus();
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
