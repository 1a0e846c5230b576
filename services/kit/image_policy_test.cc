#include "services/kit/image_policy.h"

#include <gtest/gtest.h>

namespace isorun {
namespace {

TEST(ImageRegistryHost, OnlyAQualifiedFirstComponentNamesAHost) {
  EXPECT_EQ(ImageRegistryHost("busybox:1.36"), "");
  EXPECT_EQ(ImageRegistryHost("team/app:2"), "");
  EXPECT_EQ(ImageRegistryHost("127.0.0.1:5050/busybox:1.36"), "127.0.0.1:5050");
  EXPECT_EQ(ImageRegistryHost("Registry.Example.com/app:2"), "registry.example.com");
  EXPECT_EQ(ImageRegistryHost("localhost/app:2"), "localhost");
  EXPECT_EQ(ImageRegistryHost("[::1]:5000/app:2"), "[::1]:5000");
}

TEST(ImageRegistryAllowed, ExactHostAndPortOnly) {
  const std::vector<std::string> allowed = ParseRegistryList("127.0.0.1:5050, reg.example.com");
  EXPECT_TRUE(ImageRegistryAllowed("busybox:1.36", allowed));
  EXPECT_TRUE(ImageRegistryAllowed("127.0.0.1:5050/busybox:1.36", allowed));
  EXPECT_TRUE(ImageRegistryAllowed("REG.example.com/a/b:1", allowed));
  for (const char* refused :
       {"127.0.0.1:5051/busybox:1.36", "127.0.0.1/busybox:1.36", "localhost:5050/busybox:1.36",
        "169.254.169.254/latest:1", "[::1]:5050/x:1", "10.0.0.1:5000/x:1",
        "reg.example.com:443/x:1", "evil.example.com/x:1"}) {
    EXPECT_FALSE(ImageRegistryAllowed(refused, allowed)) << refused;
  }
  EXPECT_FALSE(ImageRegistryAllowed("127.0.0.1:5050/busybox:1.36", {}));
  EXPECT_TRUE(ImageRegistryAllowed("busybox:1.36", {}));
}

TEST(PathUnderProc, FoldsDotsAndSlashes) {
  for (const char* p : {"/proc", "/proc/", "/proc/self/fd/7", "//proc", "/./proc/1",
                        "/tmp/../proc/self", "/../../proc", "proc/self"}) {
    EXPECT_TRUE(PathUnderProc(p)) << p;
  }
  for (const char* p : {"/", "/tmp", "/procx", "/tmp/proc", "/home/proc/x", "/proc2/..x"}) {
    EXPECT_FALSE(PathUnderProc(p)) << p;
  }
}

}  // namespace
}  // namespace isorun
