#include "services/runner/sim_driver.h"

#include "absl/strings/str_cat.h"
#include "services/kit/ids.h"

namespace isorun::runner {

std::string SimulatedDigest(const std::string& image) {
  auto at = image.find("@sha256:");
  if (at != std::string::npos) return image.substr(at + 1);
  return "sha256:" + Sha256Hex(image);
}

absl::StatusOr<StartResult> SimDriver::Start(const v1::StartSandboxRequest& request) {
  if (!options_.fail_images_containing.empty() &&
      request.image().find(options_.fail_images_containing) != std::string::npos) {
    return absl::InternalError(absl::StrCat("simulated start failure for image ", request.image()));
  }
  bool warm;
  {
    absl::MutexLock lock(&mu_);
    if (sandboxes_.count(request.sandbox_id()) > 0) {
      return StartResult{SimulatedDigest(request.image()), true};
    }
    warm = images_.count(request.image()) > 0;
  }
  absl::SleepFor(options_.start_delay + (warm ? absl::ZeroDuration() : options_.pull_delay));
  absl::MutexLock lock(&mu_);
  images_.insert(request.image());
  sandboxes_[request.sandbox_id()] = request.image();
  return StartResult{SimulatedDigest(request.image()), warm};
}

absl::StatusOr<CachedImageInfo> SimDriver::Pull(const std::string& image) {
  if (image.empty()) return absl::InvalidArgumentError("image is required");
  bool cached;
  {
    absl::MutexLock lock(&mu_);
    cached = images_.count(image) > 0;
  }
  if (!cached) absl::SleepFor(options_.pull_delay);
  absl::MutexLock lock(&mu_);
  images_.insert(image);
  CachedImageInfo info;
  info.digest = SimulatedDigest(image);
  info.refs = {image};
  return info;
}

absl::StatusOr<bool> SimDriver::Stop(const std::string& sandbox_id) {
  absl::MutexLock lock(&mu_);
  paused_.erase(sandbox_id);
  return sandboxes_.erase(sandbox_id) > 0;
}

absl::Status SimDriver::Pause(const std::string& sandbox_id) {
  absl::MutexLock lock(&mu_);
  if (sandboxes_.count(sandbox_id) == 0) {
    return absl::NotFoundError(absl::StrCat("no sandbox ", sandbox_id, " on this runner"));
  }
  paused_.insert(sandbox_id);
  return absl::OkStatus();
}

absl::Status SimDriver::Unpause(const std::string& sandbox_id) {
  absl::MutexLock lock(&mu_);
  if (sandboxes_.count(sandbox_id) == 0) {
    return absl::NotFoundError(absl::StrCat("no sandbox ", sandbox_id, " on this runner"));
  }
  paused_.erase(sandbox_id);
  return absl::OkStatus();
}

absl::Status SimDriver::SetNetwork(const std::string& sandbox_id, const v1::NetworkPolicy&) {
  absl::MutexLock lock(&mu_);
  if (sandboxes_.count(sandbox_id) == 0) {
    return absl::NotFoundError(absl::StrCat("no sandbox ", sandbox_id, " on this runner"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::EgressLogEntry>> SimDriver::EgressLog(
    const std::string& sandbox_id) {
  absl::MutexLock lock(&mu_);
  if (sandboxes_.count(sandbox_id) == 0) {
    return absl::NotFoundError(absl::StrCat("no sandbox ", sandbox_id, " on this runner"));
  }
  return std::vector<v1::EgressLogEntry>{};
}

bool SimDriver::IsPaused(const std::string& sandbox_id) {
  absl::MutexLock lock(&mu_);
  return paused_.count(sandbox_id) > 0;
}

std::vector<std::string> SimDriver::Sandboxes() {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [id, image] : sandboxes_) out.push_back(id);
  return out;
}

std::vector<CachedImageInfo> SimDriver::Images() {
  absl::MutexLock lock(&mu_);
  std::vector<CachedImageInfo> out;
  for (const auto& image : images_) {
    CachedImageInfo info;
    info.digest = SimulatedDigest(image);
    info.refs = {image};
    out.push_back(std::move(info));
  }
  return out;
}

absl::StatusOr<v1::ExecResponse> SimDriver::Exec(const std::string& sandbox_id,
                                                 const v1::ExecRequest&) {
  absl::MutexLock lock(&mu_);
  if (sandboxes_.count(sandbox_id) == 0) {
    return absl::NotFoundError(absl::StrCat("no sandbox ", sandbox_id, " on this runner"));
  }
  return absl::UnimplementedError(
      "the simulated runner driver runs no processes; use the runc driver to exec");
}

absl::StatusOr<int> SimDriver::ExecStream(const std::string& sandbox_id,
                                          const v1::ExecRequest& request, const ExecSink&,
                                          const std::function<bool()>&) {
  auto result = Exec(sandbox_id, request);
  if (!result.ok()) return result.status();
  return result->exit_code();
}

}  // namespace isorun::runner
