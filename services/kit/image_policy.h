#pragma once

// What a tenant may ask a sandbox to run, checked the same way by the lifecycle (before any quota
// or placement work) and by the runner (before it fetches anything): which registry an image
// reference names, whether that registry is on the operator's allow list, and whether a working
// directory lies under /proc.

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace isorun {

// The registry host[:port] an image reference names, lowercased: its first path component when
// that has a '.' or ':' or is "localhost" (the distribution rules); "" for an unqualified name
// (busybox:1.36), which goes to the operator's configured registry.
std::string ImageRegistryHost(absl::string_view image);

// Splits a comma- or space-separated list of registry hosts (a flag's value), lowercased, blanks
// dropped.
std::vector<std::string> ParseRegistryList(absl::string_view list);

// Whether `image` may be pulled: unqualified names always (they go to the configured registry);
// otherwise its host must be on `allowed`, exactly (host and port). Addresses get no special
// treatment, so a loopback or link-local address is refused unless the operator listed it.
bool ImageRegistryAllowed(absl::string_view image, const std::vector<std::string>& allowed);

// Whether `path` (absolute, as a sandbox process would resolve it lexically: "//", "." and ".."
// folded) is /proc or lies below it. The runc working-directory escapes went through /proc
// (/proc/self/fd/N of a host file descriptor), so no exec may start there.
bool PathUnderProc(absl::string_view path);

}  // namespace isorun
