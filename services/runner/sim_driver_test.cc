#include "services/runner/sim_driver.h"

#include <gtest/gtest.h>

namespace isorun::runner {
namespace {

v1::StartSandboxRequest Start(const std::string& id, const std::string& image) {
  v1::StartSandboxRequest r;
  r.set_sandbox_id(id);
  r.set_image(image);
  return r;
}

TEST(SimDriver, FirstStartOfAnImageIsColdThenWarm) {
  SimDriver driver;
  auto a = driver.Start(Start("a", "busybox:1.36"));
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->warm);
  EXPECT_EQ(a->image_digest.rfind("sha256:", 0), 0u);
  auto b = driver.Start(Start("b", "busybox:1.36"));
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->warm);
  EXPECT_EQ(a->image_digest, b->image_digest);
  EXPECT_EQ(driver.Sandboxes().size(), 2u);
  ASSERT_EQ(driver.Images().size(), 1u);
  EXPECT_EQ(driver.Images()[0].refs[0], "busybox:1.36");
}

TEST(SimDriver, StopIsIdempotentAndStartIsIdempotent) {
  SimDriver driver;
  ASSERT_TRUE(driver.Start(Start("a", "img:1")).ok());
  ASSERT_TRUE(driver.Start(Start("a", "img:1")).ok());
  EXPECT_EQ(driver.Sandboxes().size(), 1u);
  EXPECT_TRUE(*driver.Stop("a"));
  EXPECT_FALSE(*driver.Stop("a"));
  EXPECT_TRUE(driver.Sandboxes().empty());
}

TEST(SimDriver, InjectedFailuresLeaveNothing) {
  SimOptions options;
  options.fail_images_containing = "broken";
  SimDriver driver(options);
  EXPECT_EQ(driver.Start(Start("a", "broken:1")).status().code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(driver.Sandboxes().empty());
  EXPECT_TRUE(driver.Images().empty());
}

TEST(SimDriver, PauseAndUnpause) {
  SimDriver driver;
  ASSERT_TRUE(driver.Start(Start("a", "img:1")).ok());
  ASSERT_TRUE(driver.Pause("a").ok());
  EXPECT_TRUE(driver.IsPaused("a"));
  ASSERT_TRUE(driver.Pause("a").ok());
  ASSERT_TRUE(driver.Unpause("a").ok());
  EXPECT_FALSE(driver.IsPaused("a"));
  EXPECT_EQ(driver.Pause("nope").code(), absl::StatusCode::kNotFound);
}

TEST(SimDriver, DigestPinnedImagesKeepTheirDigest) {
  std::string digest = "sha256:" + std::string(64, 'a');
  EXPECT_EQ(SimulatedDigest("busybox@" + digest), digest);
}

}  // namespace
}  // namespace isorun::runner
