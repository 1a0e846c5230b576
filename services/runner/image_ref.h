#pragma once

// Image references as users write them, resolved against the runner's default registry:
//   busybox:1.36                       -> REGISTRY/busybox:1.36
//   team/app:2                         -> REGISTRY/team/app:2
//   host:5000/app:2, registry.io/app:2 -> as given (the first component names a host: it has a
//                                         '.' or a ':' or is "localhost")
//   busybox@sha256:<64 hex>            -> REGISTRY/busybox@sha256:... (pinned by digest)
// A reference must carry a tag or a digest; with both, the digest is what is pulled.

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace isorun::runner {

struct ImageRef {
  std::string registry;    // host[:port]
  std::string repository;  // path below the registry, e.g. "busybox" or "team/app"
  std::string tag;         // may be empty when digest is set
  std::string digest;      // "sha256:<64 hex>" or empty

  // registry/repository
  std::string Name() const;
  // The full reference: registry/repository[:tag][@digest].
  std::string ToString() const;
  // What to pull: by digest when known, else by tag.
  std::string PullReference(const std::string& resolved_digest) const;
};

// Parses `ref`; unqualified names use `default_registry` (FAILED_PRECONDITION when that is empty).
// INVALID_ARGUMENT for malformed references or ones with neither tag nor digest.
absl::StatusOr<ImageRef> ParseImageRef(std::string_view ref, std::string_view default_registry);

// True for "sha256:" followed by 64 lowercase hex digits.
bool IsSha256Digest(std::string_view digest);

}  // namespace isorun::runner
