#include "services/gateway/public_proxy.h"

#include "gtest/gtest.h"

namespace isorun::gateway {
namespace {

TEST(PublicHost, ParsesPortAndPublicId) {
  int port = 0;
  std::string id;
  ASSERT_TRUE(ParsePublicHost("8080-0123456789abcdef0123456789ABCDEF.localhost:8081", "localhost",
                              &port, &id));
  EXPECT_EQ(port, 8080);
  EXPECT_EQ(id, "0123456789abcdef0123456789abcdef");
  ASSERT_TRUE(ParsePublicHost("3-0123456789abcdef0123456789abcdef.sb.example.org.",
                              "sb.example.org", &port, &id));
  EXPECT_EQ(port, 3);
}

TEST(PublicHost, RejectsOtherHosts) {
  int port = 0;
  std::string id;
  const std::string pid = "0123456789abcdef0123456789abcdef";
  for (const std::string& host :
       {std::string("localhost"), "8080-" + pid + ".example.org", "0-" + pid + ".localhost",
        "65536-" + pid + ".localhost", "80-" + pid.substr(1) + ".localhost",
        "80-" + pid + "0.localhost", "x80-" + pid + ".localhost", "-" + pid + ".localhost",
        "80-" + pid + "xlocalhost", "a.80-" + pid + ".localhost", "+80-" + pid + ".localhost",
        "80-" + pid.substr(0, 31) + "g.localhost", std::string("")}) {
    EXPECT_FALSE(ParsePublicHost(host, "localhost", &port, &id)) << host;
  }
}

}  // namespace
}  // namespace isorun::gateway
