#include "services/lifecycle/page_token.h"

#include <gtest/gtest.h>

#include "absl/strings/escaping.h"

namespace isorun::lifecycle {
namespace {

TEST(PageToken, RoundTrips) {
  PageCursor c{"2026-12-01 13:54:36.269123+00", "sbx_AbC-1.2"};
  auto back = DecodePageToken(EncodePageToken(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->created_at, c.created_at);
  EXPECT_EQ(back->id, c.id);
}

TEST(PageToken, RefusesWhatItDidNotMake) {
  for (std::string raw : {std::string("no bar"), std::string("|id"), std::string("2026-01-01|"),
                          std::string("2026-01-01'; DROP|id"), std::string("2026\0|id", 9),
                          std::string("2026-01-01|id\n"), std::string(100, '1') + "|id"}) {
    auto d = DecodePageToken(absl::WebSafeBase64Escape(raw));
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << raw;
  }
  EXPECT_FALSE(DecodePageToken("").ok());
  EXPECT_FALSE(DecodePageToken("!!!").ok());
  EXPECT_FALSE(DecodePageToken(std::string(1000, 'A')).ok());
}

}  // namespace
}  // namespace isorun::lifecycle
