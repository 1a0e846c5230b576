#pragma once

// Small filesystem helpers for the runner's on-disk state (image cache, sandbox bundles).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace isorun::runner {

// mkdir -p with `mode` for the directories it creates.
absl::Status MakeDirs(const std::string& path, unsigned mode = 0755);
// rm -rf, never following symlinks and never crossing into other filesystems (a mount left
// under `path` is skipped, not emptied). OK when `path` does not exist.
absl::Status RemoveTree(const std::string& path);
// Bytes used on disk by the files under `path` (st_blocks), not crossing filesystems.
int64_t DiskUsage(const std::string& path);
// Writes `data` to a temporary file beside `path` and renames it over `path`: readers see the
// old or the new content, never a mix. With `sync`, the data is on disk first (survives a host
// crash, not only a process crash); that costs milliseconds, so hot paths leave it out.
absl::Status WriteFileAtomic(const std::string& path, const std::string& data, bool sync = false);
absl::StatusOr<std::string> ReadFile(const std::string& path);
// Names of the entries of a directory (not . or ..); empty when it does not exist.
std::vector<std::string> ListDir(const std::string& path);
bool PathExists(const std::string& path);

}  // namespace isorun::runner
