#include "services/kit/api_key.h"

#include <gtest/gtest.h>

#include <vector>

namespace isorun {
namespace {

TEST(ApiKey, RoundTrips) {
  ApiKey key = NewApiKey("local");
  auto parsed = ParseApiKey(key.ToString());
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->region, "local");
  EXPECT_EQ(parsed->key_id, key.key_id);
  EXPECT_EQ(parsed->secret, key.secret);
  EXPECT_GE(key.secret.size(), 43u);
  EXPECT_TRUE(SecretMatches(key.secret, HashSecret(key.secret)));
  EXPECT_FALSE(SecretMatches(key.secret + "x", HashSecret(key.secret)));
}

TEST(ApiKey, RejectsMalformedKeys) {
  std::string secret(43, 'a');
  EXPECT_TRUE(ParseApiKey("isr_eu-west-1_abc_" + secret).has_value());
  const std::vector<std::string> bad_keys = {"", "isr_", "isr_local_abc",
                                 "isr_local__" + secret, "isr_Local_abc_" + secret,
                                 "isr_local_a-b_" + secret, "isr_local_abc_" + secret + "_x",
                                 "isr_local_abc_short", "xyz_local_abc_" + secret,
                                 "isr__abc_" + secret, "isr_local_abc_" + secret + "\xC3\xA9"};
  for (const std::string& bad : bad_keys) {
    EXPECT_FALSE(ParseApiKey(bad).has_value()) << bad;
  }
}

}  // namespace
}  // namespace isorun
