#include "services/lifecycle/validate.h"

#include <gtest/gtest.h>

#include "services/kit/status.h"

namespace isorun::lifecycle {
namespace {

std::string ReasonOf(const absl::Status& s) {
  auto d = ErrorDetailOf(s);
  return d ? d->reason() : "";
}

TEST(Validate, PinnedImagesPass) {
  for (const char* image :
       {"busybox:1.36", "library/busybox:1.36.1", "127.0.0.1:5000/busybox:1.36",
        "registry.example:443/team/app:v2-rc.1",
        "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "busybox:1.36@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}) {
    EXPECT_TRUE(CheckImagePinned(image).ok()) << image << ": " << CheckImagePinned(image);
  }
}

TEST(Validate, UnpinnedImagesAreRejectedWithTheirReason) {
  for (const char* image : {"busybox", "busybox:latest", "busybox:lts", "busybox:",
                            "127.0.0.1:5000/busybox", "busybox@sha256:abc",
                            "busybox@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"}) {
    absl::Status s = CheckImagePinned(image);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << image;
    EXPECT_EQ(ReasonOf(s), "IMAGE_NOT_PINNED") << image;
  }
}

TEST(Validate, MalformedImageNamesAreInvalid) {
  for (const char* image : {"BusyBox:1", "busy box:1", "busybox:1 2", "/busybox:1", "a//b:1",
                            "busybox:\xC3\xA9"}) {
    absl::Status s = CheckImagePinned(image);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << image;
  }
  EXPECT_EQ(ReasonOf(CheckImagePinned("")), "INVALID_ARGUMENT");
}

TEST(Validate, DefaultsAreFilled) {
  v1::CreateSandboxRequest r;
  r.set_image("busybox:1.36");
  auto n = NormalizeCreate(r);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->timeout_sec(), 300);
  EXPECT_EQ(n->cpu_millis(), 1000);
  EXPECT_EQ(n->memory_mb(), 512);
  EXPECT_EQ(n->network().egress(), "open");
}

TEST(Validate, RangesAreEnforcedWithTheFieldNamed) {
  struct Case {
    int timeout, cpu, mem;
    const char* field;
  };
  for (const Case& c : {Case{86401, 0, 0, "timeoutSec"}, Case{-1, 0, 0, "timeoutSec"},
                        Case{0, 99, 0, "cpuMillis"}, Case{0, 16001, 0, "cpuMillis"},
                        Case{0, 0, 63, "memoryMb"}, Case{0, 0, 65537, "memoryMb"}}) {
    v1::CreateSandboxRequest r;
    r.set_image("busybox:1.36");
    r.set_timeout_sec(c.timeout);
    r.set_cpu_millis(c.cpu);
    r.set_memory_mb(c.mem);
    auto n = NormalizeCreate(r);
    ASSERT_FALSE(n.ok()) << c.field;
    EXPECT_NE(n.status().message().find(c.field), std::string::npos) << n.status();
  }
}

TEST(Validate, PinningIsCheckedBeforeEverythingElse) {
  v1::CreateSandboxRequest r;
  r.set_image("busybox:latest");
  r.set_timeout_sec(-5);
  EXPECT_EQ(ReasonOf(NormalizeCreate(r).status()), "IMAGE_NOT_PINNED");
}

TEST(Validate, EnvMetadataAndNetwork) {
  v1::CreateSandboxRequest r;
  r.set_image("busybox:1.36");
  (*r.mutable_env())["1BAD"] = "x";
  EXPECT_FALSE(NormalizeCreate(r).ok());
  r.clear_env();
  (*r.mutable_metadata())["k"] = std::string(5000, 'x');
  EXPECT_FALSE(NormalizeCreate(r).ok());
  r.clear_metadata();
  r.mutable_network()->set_egress("sometimes");
  EXPECT_FALSE(NormalizeCreate(r).ok());
  r.mutable_network()->set_egress("none");
  r.mutable_network()->add_allow("example.org");
  EXPECT_FALSE(NormalizeCreate(r).ok());
  r.mutable_network()->set_egress("allowlist");
  r.mutable_network()->add_allow("10.1.0.0/16");
  EXPECT_TRUE(NormalizeCreate(r).ok());
  r.mutable_network()->add_allow("bad host");
  EXPECT_FALSE(NormalizeCreate(r).ok());
}

}  // namespace
}  // namespace isorun::lifecycle
