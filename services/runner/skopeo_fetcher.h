#pragma once

// The real ImageFetcher: `skopeo inspect` resolves a tag to its manifest digest, `skopeo copy`
// pulls by that digest into a throwaway OCI layout (skopeo verifies the manifest against the
// digest and every blob against its digest), and `umoci unpack` makes the root filesystem, with
// ownership shifted into the sandboxes' user namespace range (root in the image -> host uid
// `uid_base`). The layout is deleted afterwards: only the unpacked tree is kept.

#include <string>

#include "absl/time/time.h"
#include "services/runner/image_cache.h"

namespace isorun::runner {

struct SkopeoOptions {
  std::string skopeo_path = "skopeo";
  std::string umoci_path = "umoci";
  bool tls_verify = false;  // the local registry serves plain HTTP on loopback
  uint32_t uid_base = 100000;
  uint32_t id_count = 65536;
  absl::Duration resolve_timeout = absl::Seconds(30);
  absl::Duration pull_timeout = absl::Minutes(10);
};

class SkopeoFetcher final : public ImageFetcher {
 public:
  explicit SkopeoFetcher(SkopeoOptions options) : options_(std::move(options)) {}
  absl::StatusOr<std::string> Resolve(const ImageRef& ref) override;
  absl::StatusOr<ImageConfig> Fetch(const ImageRef& ref, const std::string& digest,
                                    const std::string& dir) override;

 private:
  const SkopeoOptions options_;
};

// Maps a failed skopeo run to a status naming the image: NOT_FOUND (reason IMAGE_NOT_FOUND)
// when the registry has no such repository, tag or digest; UNAVAILABLE (REGISTRY_UNAVAILABLE)
// when the registry cannot be reached.
absl::Status SkopeoError(const std::string& image, const std::string& registry,
                         const std::string& stderr_text);

// The env and cwd of the process in a runtime-spec config.json (what umoci unpack writes).
absl::StatusOr<ImageConfig> ImageConfigFromRuntimeSpec(const std::string& config_json);

}  // namespace isorun::runner
