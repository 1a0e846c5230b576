// Every isorunctl command against a fresh, migrated database, through the same entry point as
// the binary (Run), so argument handling, validation, SQL and output are tested together.

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <pqxx/pqxx>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/kit/api_key.h"
#include "services/kit/ids.h"
#include "services/kit/migrate.h"
#include "tests/support/test_database.h"
#include "tools/isorunctl/cli.h"
#include "tools/isorunctl/run_binary_testing.h"

namespace isorun::ctl {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

struct Result {
  int code;
  std::string out;
  std::string err;
};

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A table's lines split on whitespace: the header first.
std::vector<std::vector<std::string>> Rows(const std::string& text) {
  std::vector<std::vector<std::string>> rows;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    rows.push_back(absl::StrSplit(line, ' ', absl::SkipEmpty()));
  }
  return rows;
}

Struct ParseJson(const std::string& text) {
  Struct s;
  auto status = google::protobuf::util::JsonStringToMessage(text, &s);
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << text;
  return s;
}

const Value& Field(const Struct& s, const std::string& name) {
  static const Value* missing = new Value();
  auto it = s.fields().find(name);
  if (it == s.fields().end()) {
    ADD_FAILURE() << "no field " << name;
    return *missing;
  }
  return it->second;
}

class IsorunctlTest : public ::testing::Test {
 protected:
  Result Ctl(const std::vector<std::string>& argv) {
    std::ostringstream out, err;
    int code = ctl::Run(argv, db_.url(), out, err);
    return {code, out.str(), err.str()};
  }
  // Runs a command that must succeed and returns its stdout.
  std::string Ok(const std::vector<std::string>& argv) {
    Result r = Ctl(argv);
    EXPECT_EQ(r.code, kExitOk) << ::testing::PrintToString(argv) << "\n" << r.err;
    EXPECT_EQ(r.err, "") << ::testing::PrintToString(argv);
    return r.out;
  }
  std::string Q(const std::string& sql) { return db_.Scalar(sql); }
  std::string TenantId(const std::string& name) {
    return Q(absl::StrCat("SELECT id FROM accounts.tenants WHERE name = '", name, "'"));
  }
  std::string CountAll() {
    return Q(
        "SELECT (SELECT count(*) FROM accounts.tenants) || '/' || "
        "(SELECT count(*) FROM quota.limits) || '/' || (SELECT count(*) FROM quota.usage)");
  }

  isorun::testing::TestDatabase db_;
};

TEST_F(IsorunctlTest, CreateTenantsWithDefaultAndGivenLimits) {
  std::string out = Ok({"tenants", "create", "acme"});
  std::string id = TenantId("acme");
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(out, id + "\n");
  EXPECT_EQ(Q("SELECT max_concurrent || ' ' || creates_per_sec || ' ' || requests_per_sec "
              "FROM quota.limits WHERE tenant_id = '" +
              id + "'"),
            "10 5 50");
  EXPECT_EQ(Q("SELECT active FROM quota.usage WHERE tenant_id = '" + id + "'"), "0");

  Ok({"tenants", "create", "beta-2", "--max-concurrent=3", "--creates-per-sec", "0.5",
      "--requests-per-sec", "20"});
  EXPECT_EQ(Q("SELECT max_concurrent || ' ' || creates_per_sec || ' ' || requests_per_sec "
              "FROM quota.limits l JOIN accounts.tenants t ON t.id = l.tenant_id "
              "WHERE t.name = 'beta-2'"),
            "3 0.5 20");
  EXPECT_EQ(CountAll(), "2/2/2");
}

TEST_F(IsorunctlTest, ListTenantsAsTableAndJson) {
  Ok({"tenants", "create", "zeta"});
  Ok({"tenants", "create", "acme", "--max-concurrent", "0"});
  Q("UPDATE quota.usage SET active = 4 WHERE tenant_id = (SELECT id FROM accounts.tenants "
    "WHERE name = 'zeta')");

  auto rows = Rows(Ok({"tenants", "list"}));
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"NAME", "ID", "MAX_CONCURRENT", "CREATES_PER_SEC",
                                               "REQUESTS_PER_SEC", "ACTIVE"}));
  EXPECT_EQ(rows[1], (std::vector<std::string>{"acme", TenantId("acme"), "0", "5", "50", "0"}));
  EXPECT_EQ(rows[2], (std::vector<std::string>{"zeta", TenantId("zeta"), "10", "5", "50", "4"}));

  Struct json = ParseJson(Ok({"tenants", "list", "--json"}));
  const auto& tenants = Field(json, "tenants").list_value().values();
  ASSERT_EQ(tenants.size(), 2);
  const Struct& zeta = tenants[1].struct_value();
  EXPECT_EQ(Field(zeta, "name").string_value(), "zeta");
  EXPECT_EQ(Field(zeta, "id").string_value(), TenantId("zeta"));
  EXPECT_EQ(Field(zeta, "maxConcurrent").number_value(), 10);
  EXPECT_EQ(Field(zeta, "createsPerSec").number_value(), 5);
  EXPECT_EQ(Field(zeta, "requestsPerSec").number_value(), 50);
  EXPECT_EQ(Field(zeta, "active").number_value(), 4);
}

TEST_F(IsorunctlTest, AnEmptyListIsJustTheHeader) {
  EXPECT_EQ(Ok({"tenants", "list"}),
            "NAME  ID  MAX_CONCURRENT  CREATES_PER_SEC  REQUESTS_PER_SEC  ACTIVE\n");
  EXPECT_EQ(Ok({"tenants", "list", "--json"}), "{\"tenants\":[]}\n");
}

TEST_F(IsorunctlTest, SetLimitsChangesOnlyTheFlagsGiven) {
  Ok({"tenants", "create", "acme", "--requests-per-sec", "70"});
  EXPECT_EQ(Ok({"tenants", "set-limits", "acme", "--max-concurrent", "25"}),
            "tenant acme: max_concurrent=25 creates_per_sec=5 requests_per_sec=70"
            " max_concurrent_execs=32 max_hibernated=10 hibernation_retention_sec=604800\n");
  EXPECT_EQ(Ok({"tenants", "set-limits", "acme", "--creates-per-sec=2.5"}),
            "tenant acme: max_concurrent=25 creates_per_sec=2.5 requests_per_sec=70"
            " max_concurrent_execs=32 max_hibernated=10 hibernation_retention_sec=604800\n");
  EXPECT_EQ(Ok({"tenants", "set-limits", "acme", "--max-concurrent-execs", "4",
                "--max-hibernated", "0", "--hibernation-retention-sec", "60"}),
            "tenant acme: max_concurrent=25 creates_per_sec=2.5 requests_per_sec=70"
            " max_concurrent_execs=4 max_hibernated=0 hibernation_retention_sec=60\n");
  Result bad = Ctl({"tenants", "set-limits", "acme", "--hibernation-retention-sec", "0"});
  EXPECT_EQ(bad.code, kExitUsage) << bad.err;
  bad = Ctl({"tenants", "set-limits", "acme", "--max-concurrent-execs", "x"});
  EXPECT_EQ(bad.code, kExitUsage) << bad.err;
  auto rows = Rows(Ok({"tenants", "list"}));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1][2], "25");
  EXPECT_EQ(rows[1][3], "2.5");
  EXPECT_EQ(rows[1][4], "70");

  Result none = Ctl({"tenants", "set-limits", "acme"});
  EXPECT_EQ(none.code, kExitUsage);
  EXPECT_TRUE(Contains(none.err, "give at least one of --max-concurrent")) << none.err;

  Result unknown = Ctl({"tenants", "set-limits", "nope", "--max-concurrent", "1"});
  EXPECT_EQ(unknown.code, kExitFailure);
  EXPECT_EQ(unknown.err, "isorunctl: tenant 'nope' not found\n");
}

TEST_F(IsorunctlTest, SetLimitsRepairsATenantWithoutQuotaRows) {
  Q("INSERT INTO accounts.tenants (name) VALUES ('bare')");
  EXPECT_EQ(Ok({"tenants", "set-limits", "bare", "--max-concurrent", "2"}),
            "tenant bare: max_concurrent=2 creates_per_sec=5 requests_per_sec=50"
            " max_concurrent_execs=32 max_hibernated=10 hibernation_retention_sec=604800\n");
  EXPECT_EQ(CountAll(), "1/1/1");
}

TEST_F(IsorunctlTest, ADuplicateTenantIsRefusedAndChangesNothing) {
  Ok({"tenants", "create", "acme", "--max-concurrent", "7"});
  Result again = Ctl({"tenants", "create", "acme", "--max-concurrent", "99"});
  EXPECT_EQ(again.code, kExitFailure);
  EXPECT_EQ(again.out, "");
  EXPECT_EQ(again.err, "isorunctl: tenant 'acme' already exists\n");
  EXPECT_EQ(CountAll(), "1/1/1");
  EXPECT_EQ(Q("SELECT max_concurrent FROM quota.limits"), "7");
}

TEST_F(IsorunctlTest, BadNamesAndNumbersChangeNothing) {
  Ok({"tenants", "create", "acme"});
  for (const auto& argv : std::vector<std::vector<std::string>>{
           {"tenants", "create", "Acme"},
           {"tenants", "create", "-x"},
           {"tenants", "create", "_x"},
           {"tenants", "create", "a b"},
           {"tenants", "create", std::string(64, 'a')},
           {"tenants", "create", "x';DROP TABLE accounts.tenants;--"},
           {"tenants", "create", "ok", "--max-concurrent", "-1"},
           {"tenants", "create", "ok", "--max-concurrent", "100001"},
           {"tenants", "create", "ok", "--max-concurrent", "2.5"},
           {"tenants", "create", "ok", "--creates-per-sec", "0"},
           {"tenants", "create", "ok", "--creates-per-sec", "nan"},
           {"tenants", "create", "ok", "--requests-per-sec", "-3"},
           {"tenants", "create", "ok", "--requests-per-sec="},
           {"tenants", "set-limits", "acme", "--max-concurrent", "x"},
           {"tenants", "set-limits", "acme", "--max-concurrent", "1", "--creates-per-sec", "inf"},
           {"tenants", "set-limits", "acme", "--requests-per-sec", "1e3"},
       }) {
    Result r = Ctl(argv);
    std::string what = ::testing::PrintToString(argv);
    EXPECT_EQ(r.code, kExitUsage) << what << "\n" << r.err;
    EXPECT_EQ(r.out, "") << what;
    EXPECT_TRUE(Contains(r.err, "isorunctl: ")) << what;
  }
  EXPECT_EQ(CountAll(), "1/1/1");
  EXPECT_EQ(Q("SELECT max_concurrent || ' ' || creates_per_sec || ' ' || requests_per_sec "
              "FROM quota.limits"),
            "10 5 50");
}

TEST_F(IsorunctlTest, TenantCreateIsOneTransaction) {
  // Make the last of the three inserts fail: the first two must not stay.
  Q("ALTER TABLE quota.usage ADD CONSTRAINT test_refuses_all CHECK (active < 0)");
  Result r = Ctl({"tenants", "create", "acme"});
  EXPECT_EQ(r.code, kExitFailure) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(CountAll(), "0/0/0");
}

TEST_F(IsorunctlTest, KeysCreatePrintsTheKeyAloneAndStoresOnlyItsHash) {
  Ok({"tenants", "create", "acme"});
  std::string out = Ok({"keys", "create", "acme"});
  ASSERT_FALSE(out.empty());
  ASSERT_EQ(out.back(), '\n');
  std::string text = out.substr(0, out.size() - 1);
  EXPECT_EQ(text.find('\n'), std::string::npos) << out;
  auto key = ParseApiKey(text);
  ASSERT_TRUE(key.has_value()) << out;
  EXPECT_EQ(key->region, "local");
  EXPECT_EQ(key->ToString(), text);

  std::string where = absl::StrCat(" FROM accounts.api_keys WHERE key_id = '", key->key_id, "'");
  EXPECT_EQ(Q("SELECT secret_hash" + where), HashSecret(key->secret));
  EXPECT_TRUE(SecretMatches(key->secret, Q("SELECT secret_hash" + where)));
  EXPECT_EQ(Q("SELECT tenant_id" + where), TenantId("acme"));
  EXPECT_EQ(Q("SELECT region" + where), "local");
  EXPECT_EQ(Q("SELECT revoked_at IS NULL" + where), "t");

  // The secret is in no row of any table.
  pqxx::connection conn(db_.url());
  pqxx::nontransaction nt(conn);
  auto tables = nt.exec(
      "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) "
      "FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
      "AND table_schema NOT IN ('pg_catalog', 'information_schema')");
  ASSERT_GT(tables.size(), 5u);
  for (const auto& table : tables) {
    std::string name = table[0].as<std::string>();
    auto hits = nt.exec_params("SELECT count(*) FROM " + name + " t WHERE strpos(t::text, $1) > 0",
                               key->secret);
    EXPECT_EQ(hits[0][0].as<int>(), 0) << "secret found in " << name;
  }

  std::string eu = Ok({"keys", "create", "acme", "--region", "eu-west-1"});
  auto eu_key = ParseApiKey(eu.substr(0, eu.size() - 1));
  ASSERT_TRUE(eu_key.has_value()) << eu;
  EXPECT_EQ(eu_key->region, "eu-west-1");
  EXPECT_NE(eu_key->key_id, key->key_id);
  EXPECT_NE(eu_key->secret, key->secret);
}

TEST_F(IsorunctlTest, KeysCreateRefusesBadInputAndUnknownTenants) {
  Ok({"tenants", "create", "acme"});
  Result region = Ctl({"keys", "create", "acme", "--region", "Bad_Region"});
  EXPECT_EQ(region.code, kExitUsage);
  EXPECT_EQ(region.out, "");
  Result unknown = Ctl({"keys", "create", "nope"});
  EXPECT_EQ(unknown.code, kExitFailure);
  EXPECT_EQ(unknown.out, "");
  EXPECT_EQ(unknown.err, "isorunctl: tenant 'nope' not found\n");
  EXPECT_EQ(Q("SELECT count(*) FROM accounts.api_keys"), "0");
}

TEST_F(IsorunctlTest, TheBinaryPrintsOnlyTheKeyOnStdout) {
  Ok({"tenants", "create", "acme"});
  auto r = testing::RunBinary({"keys", "create", "acme"}, {{"ISORUN_DATABASE_URL", db_.url()}});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  ASSERT_FALSE(r.out.empty());
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << r.out;
  EXPECT_TRUE(ParseApiKey(r.out.substr(0, r.out.size() - 1)).has_value()) << r.out;
}

TEST_F(IsorunctlTest, KeysListShowsIdsAndRevocationNeverSecrets) {
  Ok({"tenants", "create", "acme"});
  Ok({"tenants", "create", "other"});
  std::string first = Ok({"keys", "create", "acme"});
  std::string second = Ok({"keys", "create", "acme", "--region", "us-east"});
  Ok({"keys", "create", "other"});
  auto k1 = *ParseApiKey(first.substr(0, first.size() - 1));
  auto k2 = *ParseApiKey(second.substr(0, second.size() - 1));
  Q("UPDATE accounts.api_keys SET created_at = created_at - interval '1 min' WHERE key_id = '" +
    k1.key_id + "'");

  std::string listed = Ok({"keys", "list", "acme"});
  EXPECT_FALSE(Contains(listed, k1.secret));
  EXPECT_FALSE(Contains(listed, HashSecret(k1.secret)));
  auto rows = Rows(listed);
  ASSERT_EQ(rows.size(), 3u) << listed;
  EXPECT_EQ(rows[0], (std::vector<std::string>{"KEY_ID", "REGION", "ROLE", "CREATED_AT",
                                               "REVOKED_AT", "NAME"}));
  EXPECT_EQ(rows[1][0], k1.key_id);
  EXPECT_EQ(rows[1][1], "local");
  EXPECT_EQ(rows[1][2], "admin") << "isorunctl makes admin keys unless told otherwise";
  EXPECT_EQ(rows[1][3].size(), 20u) << "RFC 3339 UTC: " << rows[1][3];
  EXPECT_EQ(rows[1][3].back(), 'Z');
  EXPECT_EQ(rows[1][4], "-");
  EXPECT_EQ(rows[2][0], k2.key_id);
  EXPECT_EQ(rows[2][1], "us-east");

  Result unknown = Ctl({"keys", "list", "nope"});
  EXPECT_EQ(unknown.code, kExitFailure);
  EXPECT_EQ(unknown.err, "isorunctl: tenant 'nope' not found\n");

  Struct json = ParseJson(Ok({"keys", "list", "acme", "--json"}));
  const auto& keys = Field(json, "keys").list_value().values();
  ASSERT_EQ(keys.size(), 2);
  EXPECT_EQ(Field(keys[0].struct_value(), "keyId").string_value(), k1.key_id);
  EXPECT_TRUE(Field(keys[0].struct_value(), "revokedAt").has_null_value());
}

TEST_F(IsorunctlTest, KeysCreateTakesRoleAndName) {
  Ok({"tenants", "create", "acme"});
  std::string made = Ok({"keys", "create", "acme", "--role", "sandbox", "--name", "ci bot"});
  auto key = *ParseApiKey(made.substr(0, made.size() - 1));
  EXPECT_EQ(Q("SELECT role || '/' || name FROM accounts.api_keys WHERE key_id = '" + key.key_id +
              "'"),
            "sandbox/ci bot");
  Result bad = Ctl({"keys", "create", "acme", "--role", "root"});
  EXPECT_NE(bad.code, 0);
  EXPECT_TRUE(Contains(bad.err, "invalid role 'root'")) << bad.err;
  EXPECT_EQ(Q("SELECT count(*) FROM accounts.api_keys"), "1") << "a refused create adds no key";
}

TEST_F(IsorunctlTest, RevokeIsImmediateAndIdempotent) {
  Ok({"tenants", "create", "acme"});
  std::string first = Ok({"keys", "create", "acme"});
  std::string second = Ok({"keys", "create", "acme"});
  auto k1 = *ParseApiKey(first.substr(0, first.size() - 1));
  auto k2 = *ParseApiKey(second.substr(0, second.size() - 1));

  EXPECT_EQ(Ok({"keys", "revoke", k1.key_id}), "revoked key " + k1.key_id + " of tenant acme\n");
  EXPECT_EQ(
      Q("SELECT revoked_at IS NOT NULL FROM accounts.api_keys WHERE key_id = '" + k1.key_id + "'"),
      "t");
  EXPECT_EQ(
      Q("SELECT revoked_at IS NULL FROM accounts.api_keys WHERE key_id = '" + k2.key_id + "'"), "t")
      << "only the one key";
  std::string revoked_at =
      Q("SELECT revoked_at FROM accounts.api_keys WHERE key_id = '" + k1.key_id + "'");

  std::string again = Ok({"keys", "revoke", k1.key_id});
  EXPECT_TRUE(Contains(again, "already revoked")) << again;
  EXPECT_EQ(Q("SELECT revoked_at FROM accounts.api_keys WHERE key_id = '" + k1.key_id + "'"),
            revoked_at)
      << "revoking twice keeps the first time";

  // A whole key works too, and is never echoed.
  std::string whole = Ok({"keys", "revoke", k2.ToString()});
  EXPECT_EQ(whole, "revoked key " + k2.key_id + " of tenant acme\n");
  EXPECT_FALSE(Contains(whole, k2.secret));

  auto rows = Rows(Ok({"keys", "list", "acme"}));
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_NE(rows[1][3], "-");
  EXPECT_NE(rows[2][3], "-");

  Result unknown = Ctl({"keys", "revoke", "NoSuchKey123"});
  EXPECT_EQ(unknown.code, kExitFailure);
  EXPECT_EQ(unknown.err, "isorunctl: key 'NoSuchKey123' not found\n");
}

class SandboxesTest : public IsorunctlTest {
 protected:
  void SetUp() override {
    Ok({"tenants", "create", "acme"});
    Ok({"tenants", "create", "beta"});
    int age = 100;
    for (const auto& [id, tenant, state] :
         std::vector<std::tuple<std::string, std::string, std::string>>{
             {"sbx_a1", "acme", "RUNNING"},
             {"sbx_a2", "acme", "HIBERNATED"},
             {"sbx_a3", "acme", "DESTROYED"},
             {"sbx_b1", "beta", "PENDING"},
             {"sbx_b2", "beta", "FAILED"},
             {"sbx_b3", "beta", "LOST"},
         }) {
      bool ended = state == "DESTROYED" || state == "FAILED" || state == "LOST";
      Q(absl::StrCat(
          "INSERT INTO lifecycle.sandboxes (id, tenant_id, state, image, cpu_millis, memory_mb, "
          "timeout_sec, public_id, runner_id, created_at, expires_at, ended_at, end_reason) "
          "VALUES ('",
          id, "', '", TenantId(tenant), "', '", state,
          "', 'busybox:1.36', 1000, 512, "
          "300, '",
          RandomHex(16), "', ", state == "RUNNING" ? "'runner-1'" : "NULL", ", now() - interval '",
          age--, " s', ", state == "RUNNING" ? "now() + interval '5 min'" : "NULL", ", ",
          ended ? "now()" : "NULL", ", ", ended ? "'DELETED'" : "NULL", ")"));
    }
  }

  std::vector<std::string> Ids(const std::string& out) {
    std::vector<std::string> ids;
    auto rows = Rows(out);
    EXPECT_FALSE(rows.empty());
    for (size_t i = 1; i < rows.size(); ++i) ids.push_back(rows[i][0]);
    return ids;
  }
};

TEST_F(SandboxesTest, LiveOnesByDefault) {
  std::string out = Ok({"sandboxes", "list"});
  auto rows = Rows(out);
  ASSERT_EQ(rows.size(), 4u) << out;
  EXPECT_EQ(rows[0], (std::vector<std::string>{"ID", "TENANT", "STATE", "IMAGE", "RUNNER",
                                               "CREATED_AT", "EXPIRES_AT", "END_REASON"}));
  EXPECT_EQ(Ids(out), (std::vector<std::string>{"sbx_a1", "sbx_a2", "sbx_b1"}));
  EXPECT_EQ(rows[1][1], "acme");
  EXPECT_EQ(rows[1][2], "RUNNING");
  EXPECT_EQ(rows[1][3], "busybox:1.36");
  EXPECT_EQ(rows[1][4], "runner-1");
  EXPECT_EQ(rows[1][6].back(), 'Z');
  EXPECT_EQ(rows[1][7], "-");
  EXPECT_EQ(rows[2][4], "-");
}

TEST_F(SandboxesTest, FilterByStateAndTenant) {
  EXPECT_EQ(Ids(Ok({"sandboxes", "list", "--state", "all"})),
            (std::vector<std::string>{"sbx_a1", "sbx_a2", "sbx_a3", "sbx_b1", "sbx_b2", "sbx_b3"}));
  EXPECT_EQ(Ids(Ok({"sandboxes", "list", "--state=destroyed"})),
            std::vector<std::string>{"sbx_a3"});
  EXPECT_EQ(Ids(Ok({"sandboxes", "list", "--state", "LOST"})), std::vector<std::string>{"sbx_b3"});
  EXPECT_EQ(Ids(Ok({"sandboxes", "list", "--tenant", "beta"})), std::vector<std::string>{"sbx_b1"});
  EXPECT_EQ(Ids(Ok({"sandboxes", "list", "--tenant", "beta", "--state", "all"})),
            (std::vector<std::string>{"sbx_b1", "sbx_b2", "sbx_b3"}));
  EXPECT_TRUE(Ids(Ok({"sandboxes", "list", "--tenant", "acme", "--state", "PENDING"})).empty());
  auto ended = Rows(Ok({"sandboxes", "list", "--state", "destroyed"}));
  EXPECT_EQ(ended[1][7], "DELETED");

  Result unknown = Ctl({"sandboxes", "list", "--tenant", "nope"});
  EXPECT_EQ(unknown.code, kExitFailure);
  EXPECT_EQ(unknown.err, "isorunctl: tenant 'nope' not found\n");
  Result bad = Ctl({"sandboxes", "list", "--state", "asleep"});
  EXPECT_EQ(bad.code, kExitUsage);
}

TEST_F(SandboxesTest, Json) {
  Struct json =
      ParseJson(Ok({"sandboxes", "list", "--tenant", "acme", "--state", "all", "--json"}));
  const auto& list = Field(json, "sandboxes").list_value().values();
  ASSERT_EQ(list.size(), 3);
  const Struct& running = list[0].struct_value();
  EXPECT_EQ(Field(running, "id").string_value(), "sbx_a1");
  EXPECT_EQ(Field(running, "tenant").string_value(), "acme");
  EXPECT_EQ(Field(running, "tenantId").string_value(), TenantId("acme"));
  EXPECT_EQ(Field(running, "state").string_value(), "RUNNING");
  EXPECT_EQ(Field(running, "runnerId").string_value(), "runner-1");
  EXPECT_TRUE(Field(running, "endReason").has_null_value());
  EXPECT_EQ(Field(list[2].struct_value(), "endReason").string_value(), "DELETED");
}

class CapacityTest : public IsorunctlTest {
 protected:
  void SetUp() override {
    Q("INSERT INTO scheduler.runners (id, name, address, region, cpu_millis, memory_mb, "
      "max_sandboxes, draining, last_heartbeat) VALUES "
      "('id-a', 'r-a', '10.0.0.1:7000', 'local', 4000, 8192, 10, false, now()), "
      "('id-b', 'r-b', '10.0.0.2:7000', 'local', 4000, 8192, 10, false, "
      "  now() - interval '30 s'), "
      "('id-c', 'r-c', '10.0.0.3:7000', 'eu', 4000, 8192, 10, true, now() - interval '5 min')");
    Q("INSERT INTO scheduler.placements (sandbox_id, runner_id, cpu_millis, memory_mb, image, "
      "warm) VALUES ('s1', 'id-a', 1000, 1024, 'busybox:1.36', true), "
      "('s2', 'id-a', 500, 512, 'busybox:1.36', false), "
      "('s3', 'id-b', 250, 256, 'alpine:3.19', true)");
    Q("INSERT INTO scheduler.runner_images (runner_id, digest) VALUES ('id-a', 'sha256:1'), "
      "('id-a', 'sha256:2'), ('id-b', 'sha256:1'), ('id-c', 'sha256:3')");
  }
};

TEST_F(CapacityTest, PerRunnerAndFleetTotals) {
  std::string out = Ok({"capacity"});
  auto rows = Rows(out);
  ASSERT_GE(rows.size(), 6u) << out;
  EXPECT_EQ(rows[0][0], "NAME");
  EXPECT_EQ(rows[1], (std::vector<std::string>{"r-a", "healthy", "local", "2500/4000", "6656/8192",
                                               "2/10", "2", "1", "1"}));
  EXPECT_EQ(rows[2], (std::vector<std::string>{"r-b", "unhealthy", "local", "3750/4000",
                                               "7936/8192", "1/10", "1", "1", "0"}));
  EXPECT_EQ(rows[3], (std::vector<std::string>{"r-c", "lost,draining", "eu", "4000/4000",
                                               "8192/8192", "0/10", "1", "0", "0"}));
  EXPECT_TRUE(Contains(out,
                       "TOTAL: 3 runners (1 healthy, 1 unhealthy, 1 lost; 1 draining), cpu "
                       "10250/12000 millis free, memory 22784/24576 MB free, sandboxes 3/30, "
                       "images 4 (3 distinct), placements 2 warm / 1 cold\n"))
      << out;
  EXPECT_TRUE(Contains(out,
                       "SCHEDULABLE (healthy, not draining): 1 runner, cpu 2500 millis free, "
                       "memory 6656 MB free, 8 sandbox slots free\n"))
      << out;
}

TEST_F(CapacityTest, Json) {
  Struct json = ParseJson(Ok({"capacity", "--json"}));
  const auto& runners = Field(json, "runners").list_value().values();
  ASSERT_EQ(runners.size(), 3);
  const Struct& c = runners[2].struct_value();
  EXPECT_EQ(Field(c, "name").string_value(), "r-c");
  EXPECT_EQ(Field(c, "state").string_value(), "lost");
  EXPECT_TRUE(Field(c, "draining").bool_value());
  const Struct& totals = Field(json, "totals").struct_value();
  EXPECT_EQ(Field(totals, "runners").number_value(), 3);
  EXPECT_EQ(Field(totals, "cpuMillisFree").number_value(), 10250);
  EXPECT_EQ(Field(totals, "cpuMillisTotal").number_value(), 12000);
  EXPECT_EQ(Field(totals, "memoryMbFree").number_value(), 22784);
  EXPECT_EQ(Field(totals, "sandboxes").number_value(), 3);
  EXPECT_EQ(Field(totals, "maxSandboxes").number_value(), 30);
  EXPECT_EQ(Field(totals, "images").number_value(), 4);
  EXPECT_EQ(Field(totals, "distinctImages").number_value(), 3);
  EXPECT_EQ(Field(totals, "warmPlacements").number_value(), 2);
  EXPECT_EQ(Field(totals, "coldPlacements").number_value(), 1);
  const Struct& schedulable = Field(json, "schedulable").struct_value();
  EXPECT_EQ(Field(schedulable, "runners").number_value(), 1);
  EXPECT_EQ(Field(schedulable, "cpuMillisFree").number_value(), 2500);
}

TEST_F(CapacityTest, AnEmptyFleet) {
  Q("DELETE FROM scheduler.placements");
  Q("DELETE FROM scheduler.runners");
  std::string out = Ok({"capacity"});
  EXPECT_TRUE(Contains(out, "TOTAL: 0 runners")) << out;
}

TEST_F(CapacityTest, DrainAndUndrain) {
  EXPECT_TRUE(Contains(Ok({"runners", "drain", "r-a"}), "runner r-a is draining"));
  EXPECT_EQ(Q("SELECT draining FROM scheduler.runners WHERE id = 'id-a'"), "t");
  EXPECT_EQ(Rows(Ok({"capacity"}))[1][1], "healthy,draining");
  EXPECT_EQ(Ok({"runners", "drain", "id-a"}), "runner r-a is already draining\n");
  EXPECT_EQ(Ok({"runners", "undrain", "r-a"}), "runner r-a is no longer draining\n");
  EXPECT_EQ(Q("SELECT draining FROM scheduler.runners WHERE id = 'id-a'"), "f");
  EXPECT_EQ(Ok({"runners", "undrain", "r-a"}), "runner r-a is not draining\n");
  EXPECT_EQ(Q("SELECT draining FROM scheduler.runners WHERE id = 'id-c'"), "t") << "untouched";

  Result unknown = Ctl({"runners", "drain", "nope"});
  EXPECT_EQ(unknown.code, kExitFailure);
  EXPECT_EQ(unknown.err, "isorunctl: runner 'nope' not found\n");
}

TEST_F(IsorunctlTest, MigrateStatusShowsAppliedPendingAndChanged) {
  EXPECT_EQ(Ok({"migrate"}), "up to date\n");
  const auto& embedded = EmbeddedMigrations();
  ASSERT_GE(embedded.size(), 2u);

  auto rows = Rows(Ok({"migrate", "--status"}));
  ASSERT_EQ(rows.size(), embedded.size() + 1);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"VERSION", "NAME", "STATUS", "APPLIED_AT", "NOTE"}));
  for (size_t i = 0; i < embedded.size(); ++i) {
    EXPECT_EQ(rows[i + 1][0], std::to_string(embedded[i].version));
    EXPECT_EQ(rows[i + 1][1], embedded[i].name);
    EXPECT_EQ(rows[i + 1][2], "applied");
    EXPECT_EQ(rows[i + 1][3].back(), 'Z');
    EXPECT_EQ(rows[i + 1][4], "-");
  }

  Q("UPDATE isorun_migrations.applied SET checksum = 'edited' WHERE version = " +
    std::to_string(embedded[0].version));
  Q("DELETE FROM isorun_migrations.applied WHERE version = " +
    std::to_string(embedded.back().version));
  rows = Rows(Ok({"migrate", "--status"}));
  ASSERT_EQ(rows.size(), embedded.size() + 1);
  EXPECT_EQ(rows[1][2], "applied");
  EXPECT_EQ(rows[1][4], "CHANGED");
  EXPECT_EQ(rows.back()[2], "pending");
  EXPECT_EQ(rows.back()[3], "-");

  // An edited applied migration stops `migrate` with a message that names it.
  Result refused = Ctl({"migrate"});
  EXPECT_EQ(refused.code, kExitFailure);
  EXPECT_TRUE(Contains(refused.err, embedded[0].name)) << refused.err;
}

TEST(IsorunctlMigrate, AppliesEverythingToAnEmptyDatabase) {
  std::string admin = isorun::testing::AdminDatabaseUrl();
  std::string name = "isorunctl_bare_" + RandomHex(6);
  auto slash = admin.find('/', admin.find("://") + 3);
  auto query = admin.find('?');
  std::string url =
      admin.substr(0, slash) + "/" + name + (query == std::string::npos ? "" : admin.substr(query));
  {
    pqxx::connection conn(admin);
    pqxx::nontransaction nt(conn);
    nt.exec("CREATE DATABASE " + name);
  }
  std::ostringstream out, err;
  std::ostringstream before;
  EXPECT_EQ(ctl::Run({"migrate", "--status"}, url, before, err), kExitOk) << err.str();
  EXPECT_TRUE(Contains(before.str(), "pending"));
  EXPECT_FALSE(Contains(before.str(), "applied "));
  EXPECT_EQ(ctl::Run({"migrate"}, url, out, err), kExitOk) << err.str();
  std::string expected;
  for (const Migration& m : EmbeddedMigrations()) expected += "applied " + m.name + "\n";
  EXPECT_EQ(out.str(), expected);
  std::ostringstream again;
  EXPECT_EQ(ctl::Run({"migrate", "--database-url", url}, "", again, err), kExitOk);
  EXPECT_EQ(again.str(), "up to date\n");
  pqxx::connection conn(admin);
  pqxx::nontransaction nt(conn);
  nt.exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)");
}

}  // namespace
}  // namespace isorun::ctl
