#include "services/kit/status.h"

#include <gtest/gtest.h>

namespace isorun {
namespace {

TEST(Status, DetailSurvivesTheTripThroughGrpc) {
  absl::Status s = Error(absl::StatusCode::kResourceExhausted, "CONCURRENT_SANDBOX_LIMIT",
                         "tenant has 5 of 5", 5, 5, 2);
  absl::Status back = FromGrpcStatus(ToGrpcStatus(s));
  EXPECT_EQ(back.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(back.message(), "tenant has 5 of 5");
  auto detail = ErrorDetailOf(back);
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->reason(), "CONCURRENT_SANDBOX_LIMIT");
  EXPECT_EQ(detail->limit(), 5);
  EXPECT_EQ(detail->current(), 5);
  EXPECT_EQ(detail->retry_after_sec(), 2);
}

TEST(Status, DetailSurvivesTheTripThroughABatchItem) {
  absl::Status s = Error(absl::StatusCode::kResourceExhausted, "CAPACITY", "no room", 0, 0, 2);
  absl::Status back = FromItemStatus(ToItemStatus(s));
  EXPECT_EQ(back.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(back.message(), "no room");
  ASSERT_TRUE(ErrorDetailOf(back).has_value());
  EXPECT_EQ(ErrorDetailOf(back)->reason(), "CAPACITY");
  EXPECT_EQ(ErrorDetailOf(back)->retry_after_sec(), 2);
  EXPECT_TRUE(FromItemStatus(ToItemStatus(absl::OkStatus())).ok());
  EXPECT_FALSE(ErrorDetailOf(FromItemStatus(ToItemStatus(absl::NotFoundError("x")))).has_value());
}

TEST(Status, PlainStatusHasNoDetail) {
  absl::Status back = FromGrpcStatus(ToGrpcStatus(absl::NotFoundError("nope")));
  EXPECT_EQ(back.code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(ErrorDetailOf(back).has_value());
}

TEST(Status, HttpMapping) {
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kPermissionDenied), 403);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kAlreadyExists), 409);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kFailedPrecondition), 409);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kCancelled), 499);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnimplemented), 501);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInternal), 500);
  EXPECT_EQ(CodeName(absl::StatusCode::kResourceExhausted), "RESOURCE_EXHAUSTED");
}

}  // namespace
}  // namespace isorun
