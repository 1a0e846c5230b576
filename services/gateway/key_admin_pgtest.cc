#include "services/gateway/key_admin.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "services/gateway/pg_key_store.h"
#include "services/kit/api_key.h"
#include "services/kit/migrate.h"
#include "services/kit/status.h"
#include "tests/support/test_database.h"

namespace isorun::gateway {
namespace {

std::string ReasonOf(const absl::Status& st) {
  auto detail = ErrorDetailOf(st);
  return detail ? detail->reason() : "";
}

class KeyAdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<isorun::testing::TestDatabase>();
    pool_ = std::make_unique<PgPool>(db_->url(), 4);
    store_ = std::make_unique<PgKeyStore>(*pool_);
    admin_ = std::make_unique<PgKeyAdmin>(*pool_);
    tenant_ = db_->Scalar("INSERT INTO accounts.tenants (name) VALUES ('acme') RETURNING id");
    other_ = db_->Scalar("INSERT INTO accounts.tenants (name) VALUES ('other') RETURNING id");
  }
  void TearDown() override {
    admin_.reset();
    store_.reset();
    pool_.reset();
    db_.reset();
  }
  CreatedKey Make(const std::string& tenant, const std::string& role,
                  const std::string& name = "k") {
    auto made = admin_->Create(tenant, name, role, "local");
    EXPECT_TRUE(made.ok()) << made.status();
    return made.ok() ? *made : CreatedKey{};
  }
  std::string Revoked(const std::string& key_id) {
    return db_->Scalar("SELECT revoked_at IS NOT NULL FROM accounts.api_keys WHERE key_id = '" +
                       key_id + "'");
  }

  std::unique_ptr<isorun::testing::TestDatabase> db_;
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<PgKeyStore> store_;
  std::unique_ptr<PgKeyAdmin> admin_;
  std::string tenant_, other_;
};

TEST_F(KeyAdminTest, CreatedKeyAuthenticatesWithItsRoleAndOnlyItsHashIsStored) {
  CreatedKey made = Make(tenant_, "sandbox", "ci bot");
  auto parsed = ParseApiKey(made.key);
  ASSERT_TRUE(parsed.has_value()) << made.key;
  EXPECT_EQ(parsed->key_id, made.info.key_id);
  EXPECT_EQ(parsed->region, "local");
  EXPECT_EQ(made.info.name, "ci bot");
  EXPECT_EQ(made.info.role, "sandbox");
  EXPECT_EQ(made.info.created_at.size(), 20u) << made.info.created_at;
  EXPECT_TRUE(made.info.revoked_at.empty());

  auto principal = Authenticate(Credentials{"Bearer " + made.key, std::nullopt}, "local", *store_);
  ASSERT_TRUE(principal.ok()) << principal.status();
  EXPECT_EQ(principal->tenant_id, tenant_);
  EXPECT_EQ(principal->role, "sandbox");
  EXPECT_FALSE(principal->is_admin());
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM accounts.api_keys WHERE secret_hash = '" +
                        HashSecret(parsed->secret) + "'"),
            "1");
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM accounts.api_keys WHERE secret_hash LIKE '%" +
                        parsed->secret + "%'"),
            "0");
}

TEST_F(KeyAdminTest, ListShowsTheTenantsKeysOldestFirstWithLastUse) {
  CreatedKey a = Make(tenant_, "admin", "first");
  CreatedKey b = Make(tenant_, "sandbox", "second");
  Make(other_, "admin", "theirs");
  db_->Scalar("UPDATE accounts.api_keys SET created_at = created_at - interval '1 min' "
              "WHERE key_id = '" + a.info.key_id + "'");
  admin_->Touch(b.info.key_id);
  auto keys = admin_->List(tenant_);
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_EQ((*keys)[0].key_id, a.info.key_id);
  EXPECT_EQ((*keys)[0].role, "admin");
  EXPECT_TRUE((*keys)[0].last_used_at.empty());
  EXPECT_EQ((*keys)[1].key_id, b.info.key_id);
  EXPECT_EQ((*keys)[1].name, "second");
  EXPECT_EQ((*keys)[1].last_used_at.size(), 20u) << "List flushes this gateway's uses first";
}

TEST_F(KeyAdminTest, RecordingUsesDoesNotEvictCachedKeysButRevokingDoes) {
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(10)));
  CreatedKey a = Make(tenant_, "admin");
  CreatedKey b = Make(tenant_, "admin");
  ASSERT_TRUE(store_->Find(a.info.key_id).ok());
  ASSERT_TRUE(store_->IsCached(a.info.key_id));
  admin_->Touch(a.info.key_id);
  ASSERT_TRUE(admin_->Flush().ok());
  // A barrier round trip applies every notification committed before it.
  auto again = store_->Find(a.info.key_id);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(store_->IsCached(a.info.key_id)) << "last_used_at must not notify";
  EXPECT_EQ(db_->Scalar("SELECT last_used_at IS NOT NULL FROM accounts.api_keys WHERE key_id = '" +
                        a.info.key_id + "'"),
            "t");

  ASSERT_TRUE(admin_->Revoke(tenant_, a.info.key_id).ok());
  auto principal = Authenticate(Credentials{"Bearer " + a.key, std::nullopt}, "local", *store_);
  ASSERT_FALSE(principal.ok());
  EXPECT_EQ(ReasonOf(principal.status()), "KEY_REVOKED") << "revoked on the very next lookup";
  store_->Stop();
}

TEST_F(KeyAdminTest, TheLastAdminKeyCannotBeRevoked) {
  CreatedKey a = Make(tenant_, "admin");
  CreatedKey s = Make(tenant_, "sandbox");
  absl::Status st = admin_->Revoke(tenant_, a.info.key_id);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(ReasonOf(st), "LAST_ADMIN_KEY");
  EXPECT_EQ(Revoked(a.info.key_id), "f");

  EXPECT_TRUE(admin_->Revoke(tenant_, s.info.key_id).ok());
  EXPECT_EQ(Revoked(s.info.key_id), "t");
  EXPECT_TRUE(admin_->Revoke(tenant_, s.info.key_id).ok()) << "revoking again is not an error";

  CreatedKey b = Make(tenant_, "admin");
  EXPECT_TRUE(admin_->Revoke(tenant_, a.info.key_id).ok());
  st = admin_->Revoke(tenant_, b.info.key_id);
  EXPECT_EQ(ReasonOf(st), "LAST_ADMIN_KEY") << st;
  EXPECT_EQ(Revoked(b.info.key_id), "f");
}

TEST_F(KeyAdminTest, AnotherTenantsKeyIsNotFoundAndStaysUsable) {
  Make(tenant_, "admin");
  CreatedKey theirs = Make(other_, "sandbox");
  absl::Status st = admin_->Revoke(tenant_, theirs.info.key_id);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_EQ(Revoked(theirs.info.key_id), "f");
  EXPECT_EQ(admin_->Revoke(tenant_, "nosuchkey").code(), absl::StatusCode::kNotFound);
}

TEST_F(KeyAdminTest, AdminsRevokingEachOtherAtOnceLeaveOneAdmin) {
  for (int round = 0; round < 10; ++round) {
    std::string tenant = db_->Scalar("INSERT INTO accounts.tenants (name) VALUES ('r" +
                                     std::to_string(round) + "') RETURNING id");
    CreatedKey a = Make(tenant, "admin");
    CreatedKey b = Make(tenant, "admin");
    std::atomic<int> ok{0};
    std::thread t1([&] { ok += admin_->Revoke(tenant, a.info.key_id).ok() ? 1 : 0; });
    std::thread t2([&] { ok += admin_->Revoke(tenant, b.info.key_id).ok() ? 1 : 0; });
    t1.join();
    t2.join();
    EXPECT_EQ(ok.load(), 1) << "round " << round;
    EXPECT_EQ(db_->Scalar("SELECT count(*) FROM accounts.api_keys WHERE tenant_id = '" + tenant +
                          "' AND role = 'admin' AND revoked_at IS NULL"),
              "1");
  }
}

TEST_F(KeyAdminTest, BadRoleIsRefusedAndAddsNothing) {
  auto made = admin_->Create(tenant_, "x", "root", "local");
  EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM accounts.api_keys"), "0");
}

// The migration itself: keys made before it become admin (nothing a tenant does today breaks);
// keys inserted without a role afterwards are sandbox keys.
TEST(KeyRolesMigration, ExistingKeysBecomeAdminNewOnesSandbox) {
  isorun::testing::TestDatabase db;
  const Migration* accounts = nullptr;
  const Migration* roles = nullptr;
  for (const Migration& m : EmbeddedMigrations()) {
    if (m.name == "0001_accounts.sql") accounts = &m;
    if (m.name.find("_api_key_roles.sql") != std::string::npos) roles = &m;
  }
  ASSERT_NE(accounts, nullptr);
  ASSERT_NE(roles, nullptr);
  db.Scalar("DROP SCHEMA accounts CASCADE");
  db.Scalar(accounts->sql);
  std::string tenant = db.Scalar("INSERT INTO accounts.tenants (name) VALUES ('old') RETURNING id");
  db.Scalar("INSERT INTO accounts.api_keys (key_id, tenant_id, region, secret_hash) VALUES "
            "('old1', '" + tenant + "', 'local', 'h')");
  db.Scalar(roles->sql);
  EXPECT_EQ(db.Scalar("SELECT role FROM accounts.api_keys WHERE key_id = 'old1'"), "admin");
  db.Scalar("INSERT INTO accounts.api_keys (key_id, tenant_id, region, secret_hash) VALUES "
            "('new1', '" + tenant + "', 'local', 'h')");
  EXPECT_EQ(db.Scalar("SELECT role FROM accounts.api_keys WHERE key_id = 'new1'"), "sandbox");
}

}  // namespace
}  // namespace isorun::gateway
