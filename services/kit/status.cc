#include "services/kit/status.h"

#include "absl/strings/cord.h"

namespace isorun {
namespace {
constexpr absl::string_view kDetailUrl = "type.googleapis.com/isorun.v1.ErrorDetail";
}

absl::Status Error(absl::StatusCode code, std::string_view reason, std::string_view message,
                   int limit, int current, int retry_after_sec, const v1::RateWindow* rate) {
  absl::Status status(code, absl::string_view(message.data(), message.size()));
  v1::ErrorDetail detail;
  detail.set_reason(std::string(reason));
  detail.set_limit(limit);
  detail.set_current(current);
  detail.set_retry_after_sec(retry_after_sec);
  if (rate != nullptr) *detail.mutable_rate() = *rate;
  status.SetPayload(kDetailUrl, absl::Cord(detail.SerializeAsString()));
  return status;
}

std::optional<v1::ErrorDetail> ErrorDetailOf(const absl::Status& status) {
  auto payload = status.GetPayload(kDetailUrl);
  if (!payload) return std::nullopt;
  v1::ErrorDetail detail;
  if (!detail.ParseFromString(std::string(*payload))) return std::nullopt;
  return detail;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  auto detail = ErrorDetailOf(status);
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()),
                      detail ? detail->SerializeAsString() : std::string());
}

v1::ItemStatus ToItemStatus(const absl::Status& status) {
  v1::ItemStatus out;
  if (status.ok()) return out;
  out.set_code(static_cast<int>(status.code()));
  out.set_message(std::string(status.message()));
  if (auto detail = ErrorDetailOf(status)) *out.mutable_detail() = *detail;
  return out;
}

absl::Status FromItemStatus(const v1::ItemStatus& status) {
  if (status.code() == 0) return absl::OkStatus();
  absl::Status out(static_cast<absl::StatusCode>(status.code()), status.message());
  if (status.has_detail()) {
    out.SetPayload(kDetailUrl, absl::Cord(status.detail().SerializeAsString()));
  }
  return out;
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  auto code = static_cast<absl::StatusCode>(status.error_code());
  if (!status.error_details().empty()) {
    v1::ErrorDetail detail;
    if (detail.ParseFromString(status.error_details())) {
      return Error(code, detail.reason(), status.error_message(), detail.limit(), detail.current(),
                   detail.retry_after_sec(), detail.has_rate() ? &detail.rate() : nullptr);
    }
  }
  return absl::Status(code, status.error_message());
}

std::string_view CodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return "OK";
    case absl::StatusCode::kCancelled: return "CANCELLED";
    case absl::StatusCode::kUnknown: return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound: return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted: return "ABORTED";
    case absl::StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal: return "INTERNAL";
    case absl::StatusCode::kUnavailable: return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss: return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 200;
    case absl::StatusCode::kCancelled: return 499;
    case absl::StatusCode::kInvalidArgument: return 400;
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kDeadlineExceeded: return 504;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAlreadyExists: return 409;
    case absl::StatusCode::kAborted: return 409;
    case absl::StatusCode::kFailedPrecondition: return 409;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kUnimplemented: return 501;
    case absl::StatusCode::kUnavailable: return 503;
    default: return 500;
  }
}

std::string DefaultReason(absl::StatusCode code) { return std::string(CodeName(code)); }

}  // namespace isorun
