#pragma once

// Validation of create requests, pure and authoritative (the gateway checks only HTTP shape).
// Errors are INVALID_ARGUMENT with reason IMAGE_NOT_PINNED or INVALID_ARGUMENT and a message that
// names the field and the allowed range.

#include <string>

#include "absl/status/statusor.h"
#include "isorun/v1/sandboxes.pb.h"

namespace isorun::lifecycle {

inline constexpr int kDefaultTimeoutSec = 300;
inline constexpr int kMinTimeoutSec = 1;
inline constexpr int kMaxTimeoutSec = 86400;
inline constexpr int kDefaultCpuMillis = 1000;
inline constexpr int kMinCpuMillis = 100;
inline constexpr int kMaxCpuMillis = 16000;
inline constexpr int kDefaultMemoryMb = 512;
inline constexpr int kMinMemoryMb = 64;
inline constexpr int kMaxMemoryMb = 65536;
inline constexpr int kDefaultDiskMb = 2048;
inline constexpr int kMinDiskMb = 64;
inline constexpr int kMaxDiskMb = 65536;
inline constexpr int kMaxMapEntries = 64;
inline constexpr int kMaxMapKeyBytes = 128;
inline constexpr int kMaxMapValueBytes = 4096;

// `name:tag` (tag other than latest/lts) or `name@sha256:<64 hex>`; `name` may carry a registry
// host[:port] and path. OK or INVALID_ARGUMENT/IMAGE_NOT_PINNED.
absl::Status CheckImagePinned(const std::string& image);

// Validates and fills defaults: the returned request has every sizing field set and a network
// policy with egress set.
absl::StatusOr<v1::CreateSandboxRequest> NormalizeCreate(const v1::CreateSandboxRequest& request);

absl::Status CheckTimeout(int timeout_sec);

}  // namespace isorun::lifecycle
