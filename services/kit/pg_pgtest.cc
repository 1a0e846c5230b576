#include <gtest/gtest.h>

#include <thread>

#include "services/kit/migrate.h"
#include "services/kit/pg.h"
#include "tests/support/eventually.h"
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

// A statement past the call's deadline fails as UNAVAILABLE (not after the statement ends), the
// pool marks the database down and its probe brings it back.
TEST(PgPool, ACallPastItsDeadlineIsUnavailableAndThePoolServesAgain) {
  testing::TestDatabase db;
  PgPoolOptions options;
  options.call_timeout = absl::Milliseconds(500);
  PgPool pool(db.url(), 2, Durability::kSync, options);
  const absl::Time start = absl::Now();
  absl::Status slow = pool.Transact([](pqxx::work& tx) {
    tx.exec("SELECT pg_sleep(30)");
    return absl::OkStatus();
  });
  EXPECT_EQ(slow.code(), absl::StatusCode::kUnavailable) << slow;
  EXPECT_LT(absl::Now() - start, absl::Seconds(20)) << "the call waited for the statement";
  ASSERT_TRUE(testing::Eventually([&] { return pool.Reachable(); }, absl::Seconds(10)));
  int one = 0;
  EXPECT_TRUE(pool.Transact([&](pqxx::work& tx) {
                    one = tx.exec("SELECT 1")[0][0].as<int>();
                    return absl::OkStatus();
                  }).ok());
  EXPECT_EQ(one, 1);
}

// A refused connection fails at once and marks the database down; calls then fail fast.
TEST(PgPool, ARefusedDatabaseIsUnavailable) {
  PgPool pool("postgresql://isorun@127.0.0.1:1/nothing", 1);
  absl::Status first = pool.Transact([](pqxx::work&) { return absl::OkStatus(); });
  EXPECT_EQ(first.code(), absl::StatusCode::kUnavailable) << first;
  EXPECT_FALSE(pool.Reachable());
  absl::Status again = pool.Execute([](pqxx::nontransaction&) { return absl::OkStatus(); });
  EXPECT_EQ(again.code(), absl::StatusCode::kUnavailable) << again;
}

TEST(PgPool, ConnectionsCarryTimeoutsAndKeepalives) {
  EXPECT_EQ(WithConnectionSafeguards("postgresql://u@h:1/d", 2),
            "postgresql://u@h:1/d?connect_timeout=2&keepalives=1&keepalives_idle=10&"
            "keepalives_interval=3&keepalives_count=3&tcp_user_timeout=10000");
  EXPECT_EQ(WithConnectionSafeguards("postgresql://u@h:1/d?connect_timeout=5", 2),
            "postgresql://u@h:1/d?connect_timeout=5&keepalives=1&keepalives_idle=10&"
            "keepalives_interval=3&keepalives_count=3&tcp_user_timeout=10000");
  EXPECT_EQ(WithConnectionSafeguards("host=h dbname=d", 3),
            "host=h dbname=d connect_timeout=3 keepalives=1 keepalives_idle=10 "
            "keepalives_interval=3 keepalives_count=3 tcp_user_timeout=10000");
  // The server applies the call deadline to each statement too.
  testing::TestDatabase db;
  PgPool pool(db.url(), 1);
  std::string timeout;
  ASSERT_TRUE(pool.Transact([&](pqxx::work& tx) {
                    timeout = tx.exec("SHOW statement_timeout")[0][0].as<std::string>();
                    return absl::OkStatus();
                  }).ok());
  EXPECT_EQ(timeout, "2s");
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
