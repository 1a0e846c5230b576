#include "services/gateway/auth.h"

#include <gtest/gtest.h>

#include "services/gateway/fake_key_store.h"
#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

std::string ReasonOf(const absl::Status& status) {
  auto detail = ErrorDetailOf(status);
  return detail ? detail->reason() : "";
}

class AuthTest : public ::testing::Test {
 protected:
  absl::StatusOr<Principal> Bearer(const std::string& key) {
    std::string header = "Bearer " + key;
    return Authenticate(Credentials{header, std::nullopt}, "local", store_);
  }
  void ExpectReason(const absl::StatusOr<Principal>& result, const std::string& reason) {
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(ReasonOf(result.status()), reason) << result.status();
  }
  FakeKeyStore store_;
};

TEST_F(AuthTest, AcceptsAValidKeyInEitherHeader) {
  std::string key = store_.AddKey("tenant-a");
  auto p = Bearer(key);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->tenant_id, "tenant-a");
  EXPECT_EQ(p->key_id, ParseApiKey(key)->key_id);

  p = Authenticate(Credentials{std::nullopt, key}, "local", store_);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->tenant_id, "tenant-a");

  std::string lower = "bearer   " + key + "  ";
  p = Authenticate(Credentials{lower, std::nullopt}, "local", store_);
  EXPECT_TRUE(p.ok()) << p.status();
}

TEST_F(AuthTest, Missing) {
  ExpectReason(Authenticate(Credentials{}, "local", store_), "KEY_MISSING");
  ExpectReason(Authenticate(Credentials{std::nullopt, ""}, "local", store_), "KEY_MISSING");
  ExpectReason(Authenticate(Credentials{"Bearer ", std::nullopt}, "local", store_), "KEY_MISSING");
  EXPECT_EQ(store_.lookups(), 0);
}

TEST_F(AuthTest, Malformed) {
  std::string key = store_.AddKey("t");
  ExpectReason(Bearer("secret"), "KEY_MALFORMED");
  ExpectReason(Bearer("isr_local_abc"), "KEY_MALFORMED");
  ExpectReason(Bearer("isr_local_abc_short"), "KEY_MALFORMED");
  ExpectReason(Bearer(key + "!"), "KEY_MALFORMED");
  ExpectReason(Bearer("isr_LOCAL_" + key.substr(10)), "KEY_MALFORMED");
  ExpectReason(Authenticate(Credentials{"Basic dXNlcjpwYXNz", std::nullopt}, "local", store_),
               "KEY_MALFORMED");
  ExpectReason(Authenticate(Credentials{"Token " + key, std::nullopt}, "local", store_),
               "KEY_MALFORMED");
  EXPECT_EQ(store_.lookups(), 0);
  // A non-Bearer Authorization (a proxy's) does not hide a key in X-API-Key.
  EXPECT_TRUE(Authenticate(Credentials{"Basic dXNlcjpwYXNz", key}, "local", store_).ok());
}

TEST_F(AuthTest, WrongRegionIsDecidedBeforeAnyLookup) {
  std::string key = store_.AddKey("t", "eu-west");
  auto result = Bearer(key);
  ExpectReason(result, "KEY_WRONG_REGION");
  EXPECT_NE(result.status().message().find("eu-west"), absl::string_view::npos);
  EXPECT_EQ(store_.lookups(), 0);
}

TEST_F(AuthTest, UnknownIdAndWrongSecretAreIndistinguishable) {
  std::string key = store_.AddKey("t");
  ApiKey parsed = *ParseApiKey(key);
  ApiKey unknown_id = NewApiKey("local");
  ApiKey wrong_secret = parsed;
  wrong_secret.secret = NewApiKey("local").secret;
  auto a = Bearer(unknown_id.ToString());
  auto b = Bearer(wrong_secret.ToString());
  ExpectReason(a, "KEY_UNKNOWN");
  ExpectReason(b, "KEY_UNKNOWN");
  EXPECT_EQ(a.status().message(), b.status().message());
  EXPECT_EQ(a.status().message().find(parsed.key_id), absl::string_view::npos);
}

TEST_F(AuthTest, RevokedOnlyAfterTheSecretMatched) {
  std::string key = store_.AddKey("t");
  store_.Revoke(key);
  ExpectReason(Bearer(key), "KEY_REVOKED");
  // Someone without the secret learns nothing about the revoked key.
  ApiKey guess = *ParseApiKey(key);
  guess.secret = NewApiKey("local").secret;
  ExpectReason(Bearer(guess.ToString()), "KEY_UNKNOWN");
}

TEST_F(AuthTest, StoreDownIsUnavailableNotUnauthenticated) {
  std::string key = store_.AddKey("t");
  store_.SetUnavailable(true);
  auto result = Bearer(key);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace isorun::gateway
