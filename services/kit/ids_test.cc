#include "services/kit/ids.h"

#include <gtest/gtest.h>

#include <cctype>
#include <set>

namespace isorun {
namespace {

TEST(Ids, Base62IsFixedWidthAlphanumericAndUnique) {
  std::set<std::string> seen;
  for (int i = 0; i < 2000; ++i) {
    std::string s = RandomBase62(32);
    EXPECT_EQ(s.size(), 43u);  // 256 bits: ceil(256 / log2(62)) digits
    for (char c : s) EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(c))) << s;
    EXPECT_TRUE(seen.insert(s).second);
  }
}

TEST(Ids, SandboxAndPublicIdsCarry128Bits) {
  std::string id = NewSandboxId();
  EXPECT_EQ(id.rfind("sbx_", 0), 0u);
  EXPECT_EQ(id.size(), 4u + 22u);
  std::string pub = NewPublicId();
  EXPECT_EQ(pub.size(), 32u);
  for (char c : pub) EXPECT_TRUE(std::isxdigit(static_cast<unsigned char>(c)) && !std::isupper(c));
  EXPECT_NE(NewPublicId(), NewPublicId());
}

TEST(Ids, Sha256AndConstantTimeCompare) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_TRUE(ConstantTimeEquals("secret", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secreT"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secrets"));
}

}  // namespace
}  // namespace isorun
