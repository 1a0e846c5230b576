#include <gtest/gtest.h>

#include <thread>

#include "services/gateway/pg_key_store.h"
#include "services/kit/api_key.h"
#include "services/kit/status.h"
#include "tests/support/test_database.h"

namespace isorun::gateway {
namespace {

class PgKeyStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<isorun::testing::TestDatabase>();
    pool_ = std::make_unique<PgPool>(db_->url(), 4);
    store_ = std::make_unique<PgKeyStore>(*pool_);
    tenant_ = db_->Scalar("INSERT INTO accounts.tenants (name) VALUES ('acme') RETURNING id");
  }
  void TearDown() override {
    store_.reset();
    pool_.reset();
    db_.reset();
  }

  // Inserts a key for the tenant; returns it.
  ApiKey Insert(const std::string& region = "local") {
    ApiKey key = NewApiKey(region);
    db_->Scalar("INSERT INTO accounts.api_keys (key_id, tenant_id, region, secret_hash) VALUES ('" +
                key.key_id + "', '" + tenant_ + "', '" + region + "', '" + HashSecret(key.secret) +
                "')");
    return key;
  }
  void Revoke(const ApiKey& key) {
    db_->Scalar("UPDATE accounts.api_keys SET revoked_at = now() WHERE key_id = '" + key.key_id +
                "'");
  }
  std::optional<StoredKey> Find(const ApiKey& key) {
    auto found = store_->Find(key.key_id);
    EXPECT_TRUE(found.ok()) << found.status();
    return found.ok() ? *found : std::nullopt;
  }
  // Waits up to `timeout` for `pred`.
  template <typename Pred>
  bool Eventually(Pred pred, absl::Duration timeout = absl::Seconds(5)) {
    absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return pred();
  }

  std::unique_ptr<isorun::testing::TestDatabase> db_;
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<PgKeyStore> store_;
  std::string tenant_;
};

TEST_F(PgKeyStoreTest, LooksUpKeysAndCachesThemWhileListening) {
  ApiKey key = Insert();
  // Not started: no listener, so nothing is cached.
  auto found = Find(key);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->tenant_id, tenant_);
  EXPECT_EQ(found->region, "local");
  EXPECT_EQ(found->secret_hash, HashSecret(key.secret));
  EXPECT_FALSE(found->revoked);
  EXPECT_FALSE(store_->IsCached(key.key_id));

  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  Find(key);
  EXPECT_TRUE(store_->IsCached(key.key_id));
  uint64_t hits = store_->cache_hits();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(Find(key)->tenant_id, tenant_);
  EXPECT_EQ(store_->cache_hits(), hits + 10);
}

TEST_F(PgKeyStoreTest, AFloodOfAForgedKeyQueriesPostgresOnce) {
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  ApiKey forged = NewApiKey("local");
  const uint64_t queries = store_->cache_misses();
  for (int i = 0; i < 1000; ++i) EXPECT_FALSE(Find(forged).has_value());
  // One query for the first lookup; the other 999 from the negative cache.
  EXPECT_EQ(store_->cache_misses(), queries + 1);
  EXPECT_EQ(store_->negative_hits(), 999u);
  EXPECT_TRUE(store_->IsNegativeCached(forged.key_id));
}

TEST_F(PgKeyStoreTest, TheNegativeCacheIsBoundedAndShort) {
  PgKeyStore::Options options;
  options.max_negative = 10;
  options.negative_ttl = absl::Milliseconds(200);
  store_ = std::make_unique<PgKeyStore>(*pool_, options);
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  std::vector<ApiKey> forged;
  for (int i = 0; i < 25; ++i) {
    forged.push_back(NewApiKey("local"));
    EXPECT_FALSE(Find(forged.back()).has_value());
  }
  int cached = 0;
  for (const auto& k : forged) cached += store_->IsNegativeCached(k.key_id) ? 1 : 0;
  EXPECT_LE(cached, 10);
  // Past its time an entry is looked up again.
  const uint64_t queries = store_->cache_misses();
  absl::SleepFor(absl::Milliseconds(250));
  EXPECT_FALSE(Find(forged.back()).has_value());
  EXPECT_EQ(store_->cache_misses(), queries + 1);
}

TEST_F(PgKeyStoreTest, AKeyCreatedAfterItsIdWasSeenUnknownIsFound) {
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  ApiKey key = NewApiKey("local");
  EXPECT_FALSE(Find(key).has_value());
  EXPECT_TRUE(store_->IsNegativeCached(key.key_id));
  // The INSERT notifies, which evicts the negative entry.
  db_->Scalar("INSERT INTO accounts.api_keys (key_id, tenant_id, region, secret_hash) VALUES ('" +
              key.key_id + "', '" + tenant_ + "', 'local', '" + HashSecret(key.secret) + "')");
  ASSERT_TRUE(Eventually([&] { return !store_->IsNegativeCached(key.key_id); }));
  auto found = Find(key);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->tenant_id, tenant_);
}

TEST_F(PgKeyStoreTest, WithoutTheListenerUnknownKeysAreNotCached) {
  ApiKey key = NewApiKey("local");
  EXPECT_FALSE(Find(key).has_value());
  EXPECT_FALSE(store_->IsNegativeCached(key.key_id));
}

TEST_F(PgKeyStoreTest, RevokedKeysAreReportedAndCached) {
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  ApiKey key = Insert();
  ASSERT_FALSE(Find(key)->revoked);
  ASSERT_TRUE(store_->IsCached(key.key_id));
  Revoke(key);
  // Wait for the notification to be applied, so that it cannot race with the next lookup.
  ASSERT_TRUE(Eventually([&] { return !store_->IsCached(key.key_id); }));
  EXPECT_TRUE(Find(key)->revoked);
  EXPECT_TRUE(store_->IsCached(key.key_id));  // revoked keys are cached too
  EXPECT_TRUE(Find(key)->revoked);
}

TEST_F(PgKeyStoreTest, RevocationFromAnotherConnectionEvictsPromptly) {
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  for (int round = 0; round < 20; ++round) {
    ApiKey key = Insert();
    ASSERT_FALSE(Find(key)->revoked);
    ASSERT_TRUE(store_->IsCached(key.key_id));
    absl::Time revoked_at = absl::Now();
    Revoke(key);  // its own connection, committed when this returns
    ASSERT_TRUE(Eventually([&] { return !store_->IsCached(key.key_id); }, absl::Seconds(1)))
        << "round " << round << ": no eviction within 1 s";
    EXPECT_LT(absl::Now() - revoked_at, absl::Milliseconds(500)) << "round " << round;
    EXPECT_TRUE(Find(key)->revoked) << "round " << round;
  }
}

// Revokes `rounds` keys from another connection, each followed at once by a lookup; counts
// the rounds where the key was cached before the revoke, and of those how many lookups right
// after it still said "not revoked".
struct RevokeRace {
  int cached = 0;
  int stale = 0;
};
RevokeRace StaleLookupsRightAfterRevoke(PgKeyStore& store, isorun::testing::TestDatabase& db,
                                        const std::string& tenant, int rounds) {
  pqxx::connection admin(db.url());
  RevokeRace race;
  for (int round = 0; round < rounds; ++round) {
    ApiKey key = NewApiKey("local");
    {
      pqxx::work tx(admin);
      tx.exec_params(
          "INSERT INTO accounts.api_keys (key_id, tenant_id, region, secret_hash) "
          "VALUES ($1, $2, 'local', $3)",
          key.key_id, tenant, HashSecret(key.secret));
      tx.commit();
    }
    auto before = store.Find(key.key_id);
    EXPECT_TRUE(before.ok() && before->has_value() && !(*before)->revoked);
    // Not cached when a late notification of an earlier round raced with that lookup.
    const bool cached = store.IsCached(key.key_id);
    race.cached += cached;
    {
      pqxx::work tx(admin);
      tx.exec_params("UPDATE accounts.api_keys SET revoked_at = now() WHERE key_id = $1",
                     key.key_id);
      tx.commit();
    }
    auto after = store.Find(key.key_id);
    EXPECT_TRUE(after.ok() && after->has_value());
    if (cached && after.ok() && after->has_value() && !(*after)->revoked) ++race.stale;
  }
  return race;
}

TEST_F(PgKeyStoreTest, TheLookupRightAfterARevokeSeesIt) {
  // API.md: revocation takes effect on the very next request. With strict revocation (the
  // default) a lookup that starts after the revoking COMMIT returned never sees the old row,
  // while the cache still serves every hit.
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  uint64_t hits = store_->cache_hits();
  RevokeRace race = StaleLookupsRightAfterRevoke(*store_, *db_, tenant_, 100);
  EXPECT_EQ(race.cached, 100);  // the barrier applied each revoke before the next round
  EXPECT_EQ(race.stale, 0);
  EXPECT_EQ(store_->cache_hits(), hits);  // each lookup after a revoke went to Postgres...
  ApiKey key = Insert();
  Find(key);
  Find(key);
  EXPECT_EQ(store_->cache_hits(), hits + 1);  // ...and an unchanged key is a hit
}

TEST_F(PgKeyStoreTest, WithoutStrictRevocationTheWindowIsOnlyNotificationLatency) {
  PgKeyStore::Options options;
  options.strict_revocation = false;
  PgKeyStore loose(*pool_, options);
  loose.Start();
  ASSERT_TRUE(loose.WaitUntilListening(absl::Seconds(5)));
  RevokeRace race = StaleLookupsRightAfterRevoke(loose, *db_, tenant_, 50);
  // Not asserted: this is the race strict mode closes. Reported to show it exists.
  std::printf(
      "notification-only cache: %d of %d cached keys were still valid right after "
      "their revoke\n",
      race.stale, race.cached);
  EXPECT_EQ(loose.barriers(), 0u);
}

TEST_F(PgKeyStoreTest, ConcurrentLookupsShareBarriers) {
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  ApiKey key = Insert();
  Find(key);
  uint64_t barriers = store_->barriers();
  constexpr int kThreads = 8;
  constexpr int kLookups = 200;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kLookups; ++i) {
        auto found = store_->Find(key.key_id);
        if (found.ok() && found->has_value() && !(*found)->revoked) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kThreads * kLookups);
  uint64_t used = store_->barriers() - barriers;
  std::printf("%d lookups used %llu barriers\n", kThreads * kLookups,
              static_cast<unsigned long long>(used));
  EXPECT_LT(used, static_cast<uint64_t>(kThreads * kLookups));
}

TEST_F(PgKeyStoreTest, DeletedKeysBecomeUnknown) {
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  ApiKey key = Insert();
  ASSERT_TRUE(Find(key).has_value());
  db_->Scalar("DELETE FROM accounts.api_keys WHERE key_id = '" + key.key_id + "'");
  ASSERT_TRUE(Eventually([&] { return !store_->IsCached(key.key_id); }, absl::Seconds(1)));
  EXPECT_FALSE(Find(key).has_value());
}

TEST_F(PgKeyStoreTest, WithoutTheListenerTheCacheIsBypassedUntilItIsBack) {
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  ApiKey key = Insert();
  Find(key);
  ASSERT_TRUE(store_->IsCached(key.key_id));

  int pid = store_->listener_backend_pid();
  ASSERT_GT(pid, 0);
  db_->Scalar("SELECT pg_terminate_backend(" + std::to_string(pid) + ")");
  // Revoked while (possibly) nobody listens: the notification may be lost.
  Revoke(key);
  EXPECT_TRUE(Find(key)->revoked);  // whichever state the listener is in, never stale
  ASSERT_TRUE(Eventually([&] { return store_->listener_backend_pid() != pid; }));

  // Back to listening on a new connection, caching again.
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  ApiKey other = Insert();
  Find(other);
  EXPECT_TRUE(store_->IsCached(other.key_id));
  Revoke(other);
  ASSERT_TRUE(Eventually([&] { return !store_->IsCached(other.key_id); }, absl::Seconds(1)));
  EXPECT_TRUE(Find(other)->revoked);
}

TEST_F(PgKeyStoreTest, WhileDownEveryLookupGoesToPostgres) {
  // Never started: the state a gateway is in while its listener reconnects.
  ApiKey key = Insert();
  uint64_t misses = store_->cache_misses();
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(Find(key)->revoked);
  EXPECT_EQ(store_->cache_misses(), misses + 5);
  EXPECT_FALSE(store_->IsCached(key.key_id));
  Revoke(key);
  EXPECT_TRUE(Find(key)->revoked);
}

TEST_F(PgKeyStoreTest, StopIsPromptAndLookupsKeepWorking) {
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  ApiKey key = Insert();
  Find(key);
  absl::Time start = absl::Now();
  store_->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_FALSE(store_->listening());
  EXPECT_FALSE(store_->IsCached(key.key_id));
  Revoke(key);
  EXPECT_TRUE(Find(key)->revoked);
}

TEST_F(PgKeyStoreTest, AuthenticateAgainstPostgres) {
  store_->Start();
  ASSERT_TRUE(store_->WaitUntilListening(absl::Seconds(5)));
  ApiKey key = Insert();
  std::string header = "Bearer " + key.ToString();
  auto p = Authenticate(Credentials{header, std::nullopt}, "local", *store_);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->tenant_id, tenant_);
  Revoke(key);
  ASSERT_TRUE(Eventually([&] { return !store_->IsCached(key.key_id); }, absl::Seconds(1)));
  p = Authenticate(Credentials{header, std::nullopt}, "local", *store_);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(ErrorDetailOf(p.status())->reason(), "KEY_REVOKED");

  // A row whose region differs from the presented key's is not that key.
  ApiKey eu = Insert("eu-west");
  ApiKey forged = eu;
  forged.region = "local";
  p = Authenticate(Credentials{"Bearer " + forged.ToString(), std::nullopt}, "local", *store_);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(ErrorDetailOf(p.status())->reason(), "KEY_UNKNOWN");
}

TEST(PgKeyStoreDown, LookupsFailAsUnavailable) {
  PgPool pool("postgresql://isorun@127.0.0.1:1/nothing?connect_timeout=1", 1);
  PgKeyStore store(pool);
  store.Start();
  auto found = store.Find("abc");
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(store.listening());
}

}  // namespace
}  // namespace isorun::gateway
