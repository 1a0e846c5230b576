#include <gtest/gtest.h>

#include <thread>

#include "services/kit/migrate.h"
#include "services/kit/pg.h"
#include "tests/support/test_database.h"

namespace isorun {
namespace {

TEST(Migrations, AppliedOnceRecordedWithChecksums) {
  testing::TestDatabase db;
  auto again = ApplyMigrations(db.url());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->empty()) << "second run applied something";
  EXPECT_EQ(db.Scalar("SELECT count(*) FROM isorun_migrations.applied"),
            std::to_string(EmbeddedMigrations().size()));
  auto status = GetMigrationStatus(db.url());
  ASSERT_TRUE(status.ok());
  for (const auto& m : *status) EXPECT_TRUE(m.applied && !m.checksum_mismatch) << m.name;
}

TEST(Migrations, AnEditedAppliedMigrationIsAnError) {
  testing::TestDatabase db;
  db.Scalar("UPDATE isorun_migrations.applied SET checksum = 'x' WHERE version = 1");
  auto result = ApplyMigrations(db.url());
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(result.status().message().find("0001_accounts.sql"), std::string::npos);
}

TEST(Migrations, ServicesRefuseAnOlderSchema) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  EXPECT_TRUE(RequireSchemaVersion(pool, LatestMigrationVersion()).ok());
  db.Scalar("DELETE FROM isorun_migrations.applied WHERE version > 1");
  absl::Status s = RequireSchemaVersion(pool, LatestMigrationVersion());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("isorunctl migrate"), std::string::npos);
}

TEST(PgPool, MapsErrorsAndRecoversFromABrokenConnection) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  pool.Prepare("one", "SELECT 1");
  absl::Status dup = pool.Transact([](pqxx::work& tx) {
    tx.exec("INSERT INTO accounts.tenants (name) VALUES ('a'), ('a')");
    return absl::OkStatus();
  });
  EXPECT_EQ(dup.code(), absl::StatusCode::kAlreadyExists);
  // Kill every other backend of this database: pooled connections break, the pool reconnects.
  int pid = 0;
  ASSERT_TRUE(pool.Transact([&](pqxx::work& tx) {
                    pid = tx.exec("SELECT pg_backend_pid()")[0][0].as<int>();
                    return absl::OkStatus();
                  }).ok());
  db.Scalar("SELECT pg_terminate_backend(" + std::to_string(pid) + ")");
  int one = 0;
  absl::Status s = pool.Transact([&](pqxx::work& tx) {
    one = tx.exec_prepared("one")[0][0].as<int>();
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(one, 1);
}

TEST(PgTextArray, RoundTripsOddStringsThroughPostgres) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 1);
  const std::vector<std::string> values = {"plain", "", "with space", "quo\"te", "back\\slash",
                                           "{braces,commas}", "NULL", "\xc3\xa9t\xc3\xa9"};
  std::vector<std::string> back;
  ASSERT_TRUE(pool.Execute([&](pqxx::nontransaction& tx) {
                    back.clear();
                    for (const auto& row : tx.exec_params(
                             "SELECT x IS NULL, coalesce(x, '') FROM unnest($1::text[]) "
                             "WITH ORDINALITY AS u(x, n) ORDER BY n",
                             PgTextArray(values))) {
                      EXPECT_FALSE(row[0].as<bool>());
                      back.push_back(row[1].as<std::string>());
                    }
                    return absl::OkStatus();
                  }).ok());
  EXPECT_EQ(back, values);
}

TEST(PgPool, ConcurrentTransactionsShareFewConnections) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 3);
  db.Scalar("CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)");
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        ASSERT_TRUE(pool.Transact([](pqxx::work& tx) {
                          tx.exec("UPDATE counter SET n = n + 1");
                          return absl::OkStatus();
                        }, Durability::kAsync).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(db.Scalar("SELECT n FROM counter"), "200");
}

}  // namespace
}  // namespace isorun
