#pragma once

// The real ImageFetcher: `skopeo inspect` resolves a tag to its manifest digest, `skopeo copy`
// pulls by that digest into a throwaway OCI layout (skopeo verifies the manifest against the
// digest and every blob against its digest), and `umoci unpack` makes the root filesystem, with
// ownership shifted into the sandboxes' user namespace range (root in the image -> host uid
// `uid_base`). The layout is deleted afterwards: only the unpacked tree is kept.

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "services/runner/image_cache.h"
#include "services/runner/process.h"

namespace isorun::runner {

struct SkopeoOptions {
  std::string skopeo_path = "skopeo";
  std::string umoci_path = "umoci";
  // Registries (host:port) reached without TLS verification: plain HTTP or self-signed (a
  // local test registry). Every other registry must present a verified certificate.
  std::vector<std::string> insecure_registries;
  // Most bytes an image may take, compressed (the downloaded layout) and unpacked (the root
  // filesystem), each checked while it is written; 0: no cap.
  int64_t max_image_bytes = 0;
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
  // `skopeo inspect --raw` of the manifest: its layers' and config's sizes. 0 for an index.
  absl::StatusOr<int64_t> CompressedSize(const ImageRef& ref, const std::string& digest) override;

 private:
  bool TlsVerify(const ImageRef& ref) const;
  // Runs a tool of the pull; when `watch` is set, stops it as soon as that directory holds more
  // than max_image_bytes (an image that expands without bound is stopped early).
  absl::StatusOr<CapturedOutput> RunWatched(const std::vector<std::string>& argv,
                                            absl::Time deadline, const std::string& watch,
                                            bool* too_large) const;

  const SkopeoOptions options_;
};

// Maps a failed skopeo run to a status naming the image, with a short fixed message (the tool's
// own output may name hosts, addresses and files of the runner; it goes to the runner's log):
// NOT_FOUND (reason IMAGE_NOT_FOUND) when the registry has no such repository, tag or digest;
// UNAVAILABLE (IMAGE_PULL_FAILED) for anything else.
absl::Status SkopeoError(const std::string& image, const std::string& registry,
                         const std::string& stderr_text);

// The bytes a manifest's blobs take (config and layers), from its JSON; 0 for an index or a
// manifest without sizes.
int64_t ManifestBlobBytes(const std::string& manifest_json);

// The env and cwd of the process in a runtime-spec config.json (what umoci unpack writes).
absl::StatusOr<ImageConfig> ImageConfigFromRuntimeSpec(const std::string& config_json);

}  // namespace isorun::runner
