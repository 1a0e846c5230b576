#include "services/runner/image_ref.h"

#include <gtest/gtest.h>

namespace isorun::runner {
namespace {

const std::string kDigest = "sha256:" + std::string(64, 'a');

TEST(ImageRef, UnqualifiedNamesUseTheDefaultRegistry) {
  auto r = ParseImageRef("busybox:1.36", "127.0.0.1:5000");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->registry, "127.0.0.1:5000");
  EXPECT_EQ(r->repository, "busybox");
  EXPECT_EQ(r->tag, "1.36");
  EXPECT_EQ(r->digest, "");
  EXPECT_EQ(r->ToString(), "127.0.0.1:5000/busybox:1.36");
  auto nested = ParseImageRef("team/app:2", "reg:1");
  ASSERT_TRUE(nested.ok());
  EXPECT_EQ(nested->ToString(), "reg:1/team/app:2");
}

TEST(ImageRef, QualifiedNamesAreUsedAsGiven) {
  for (const auto& [in, registry, repo] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"host:5000/app:2", "host:5000", "app"},
           {"registry.example.org/team/app:2", "registry.example.org", "team/app"},
           {"localhost/app:2", "localhost", "app"},
           {"[::1]:5000/app:2", "[::1]:5000", "app"}}) {
    auto r = ParseImageRef(in, "default:1");
    ASSERT_TRUE(r.ok()) << in << ": " << r.status();
    EXPECT_EQ(r->registry, registry) << in;
    EXPECT_EQ(r->repository, repo) << in;
    EXPECT_EQ(r->ToString(), in);
  }
}

TEST(ImageRef, DigestsArePinsAndWinOverTags) {
  auto r = ParseImageRef("busybox@" + kDigest, "reg:1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->digest, kDigest);
  EXPECT_EQ(r->tag, "");
  EXPECT_EQ(r->PullReference(""), "reg:1/busybox@" + kDigest);
  auto both = ParseImageRef("host:5/busybox:1.36@" + kDigest, "reg:1");
  ASSERT_TRUE(both.ok());
  EXPECT_EQ(both->PullReference("sha256:" + std::string(64, 'b')), "host:5/busybox@" + kDigest);
  auto tagged = ParseImageRef("busybox:1.36", "reg:1");
  EXPECT_EQ(tagged->PullReference(kDigest), "reg:1/busybox@" + kDigest);
}

TEST(ImageRef, RejectsMalformedAndUnpinned) {
  for (const char* bad :
       {"", "busybox", "Busybox:1", "busybox:", ":1", "bad..name:1", "a/../b:1", "-x:1",
        "busybox@sha256:abc",
        "busybox@md5:"
        "0123",
        "busy box:1", "busybox:1/x", "/busybox:1", "busybox:-1", "host:5000/:1"}) {
    auto r = ParseImageRef(bad, "reg:1");
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    }
  }
  EXPECT_FALSE(ParseImageRef(std::string(600, 'a') + ":1", "reg:1").ok());
}

TEST(ImageRef, UnqualifiedWithoutDefaultRegistryIsAPreconditionFailure) {
  auto r = ParseImageRef("busybox:1.36", "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("busybox:1.36"), std::string::npos);
  EXPECT_TRUE(ParseImageRef("host:1/busybox:1.36", "").ok());
}

TEST(ImageRef, TheLengthLimitHoldsForTheResolvedReferenceToo) {
  // 500 characters pass alone, but not once the default registry is put in front.
  const std::string name = std::string(496, 'a') + ":1.0";
  ASSERT_EQ(name.size(), 500u);
  EXPECT_TRUE(ParseImageRef(name, "r:1").ok());
  auto r = ParseImageRef(name, "127.0.0.1:5000");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
}

TEST(ImageRef, Sha256Digest) {
  EXPECT_TRUE(IsSha256Digest(kDigest));
  EXPECT_FALSE(IsSha256Digest("sha256:" + std::string(64, 'A')));
  EXPECT_FALSE(IsSha256Digest("sha256:" + std::string(63, 'a')));
  EXPECT_FALSE(IsSha256Digest("sha512:" + std::string(64, 'a')));
}

}  // namespace
}  // namespace isorun::runner
