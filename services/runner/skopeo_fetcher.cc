#include "services/runner/skopeo_fetcher.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <stdio.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "services/kit/log.h"
#include "services/kit/status.h"
#include "services/runner/fs_util.h"
#include "services/runner/process.h"

namespace isorun::runner {
namespace {

// The last non-empty line of a tool's stderr, without logrus' `time="..." level=fatal msg=`.
std::string LastLine(const std::string& text) {
  std::string t(absl::StripAsciiWhitespace(text));
  size_t nl = t.rfind('\n');
  if (nl != std::string::npos) t = t.substr(nl + 1);
  size_t msg = t.find("msg=");
  if (msg != std::string::npos) t = t.substr(msg + 4);
  if (t.size() > 400) t = t.substr(0, 400) + "...";
  return t;
}

// The image as clients see it in errors: repository and tag or digest, without the registry's
// host (an unqualified name's registry is the operator's business).
std::string Shown(const ImageRef& ref) {
  std::string out = ref.repository;
  if (!ref.tag.empty()) absl::StrAppend(&out, ":", ref.tag);
  if (!ref.digest.empty()) absl::StrAppend(&out, "@", ref.digest);
  return out;
}

}  // namespace

absl::Status SkopeoError(const std::string& image, const std::string& registry,
                         const std::string& stderr_text) {
  const std::string lower = absl::AsciiStrToLower(stderr_text);
  LogWarn("image pull failed", {{"image", image}, {"error", LastLine(stderr_text)}});
  for (const char* marker :
       {"manifest unknown", "name unknown", "not found", "404", "repository name not known"}) {
    if (absl::StrContains(lower, marker)) {
      return Error(absl::StatusCode::kNotFound, "IMAGE_NOT_FOUND",
                   absl::StrCat("image ", image, " not found in its registry"));
    }
  }
  return Error(absl::StatusCode::kUnavailable, "IMAGE_PULL_FAILED",
               absl::StrCat("cannot pull image ", image, " from its registry; retry later"));
}

absl::Status ImageTooLarge(const std::string& image, int64_t max_bytes) {
  return Error(absl::StatusCode::kInvalidArgument, "IMAGE_TOO_LARGE",
               absl::StrCat("image ", image, " is larger than this runner accepts (",
                            max_bytes >> 20, " MiB, compressed or unpacked)"));
}

absl::StatusOr<ImageConfig> ImageConfigFromRuntimeSpec(const std::string& config_json) {
  google::protobuf::Struct spec;
  auto parsed = google::protobuf::util::JsonStringToMessage(config_json, &spec);
  if (!parsed.ok()) {
    return absl::InternalError(absl::StrCat("bad runtime config: ", parsed.ToString()));
  }
  ImageConfig config;
  auto process = spec.fields().find("process");
  if (process == spec.fields().end() || !process->second.has_struct_value()) return config;
  const auto& fields = process->second.struct_value().fields();
  if (auto env = fields.find("env"); env != fields.end() && env->second.has_list_value()) {
    for (const auto& v : env->second.list_value().values()) {
      if (v.has_string_value() && v.string_value() != "TERM=xterm") {
        config.env.push_back(v.string_value());
      }
    }
  }
  if (auto cwd = fields.find("cwd"); cwd != fields.end() && cwd->second.has_string_value() &&
                                     !cwd->second.string_value().empty()) {
    config.cwd = cwd->second.string_value();
  }
  return config;
}

absl::StatusOr<std::string> SkopeoFetcher::Resolve(const ImageRef& ref) {
  auto run = RunCaptured({options_.skopeo_path, "inspect", "--no-tags",
                          absl::StrCat("--tls-verify=", TlsVerify(ref) ? "true" : "false"),
                          "--format", "{{.Digest}}", absl::StrCat("docker://", ref.ToString())},
                         options_.resolve_timeout);
  if (!run.ok()) return run.status();
  if (run->timed_out) {
    LogWarn("image lookup timed out", {{"image", ref.ToString()}});
    return Error(absl::StatusCode::kUnavailable, "IMAGE_PULL_FAILED",
                 absl::StrCat("the registry did not answer for image ", Shown(ref)));
  }
  if (run->exit_code != 0) return SkopeoError(Shown(ref), ref.registry, run->err);
  std::string digest(absl::StripAsciiWhitespace(run->out));
  if (!IsSha256Digest(digest)) {
    LogWarn("registry gave an unusable digest", {{"image", ref.ToString()}, {"digest", digest}});
    return Error(absl::StatusCode::kUnavailable, "IMAGE_PULL_FAILED",
                 absl::StrCat("the registry gave image ", Shown(ref), " an unusable digest"));
  }
  return digest;
}

int64_t ManifestBlobBytes(const std::string& manifest_json) {
  google::protobuf::Struct manifest;
  if (!google::protobuf::util::JsonStringToMessage(manifest_json, &manifest).ok()) return 0;
  auto size_of = [](const google::protobuf::Value& v) -> int64_t {
    if (!v.has_struct_value()) return 0;
    auto f = v.struct_value().fields().find("size");
    if (f == v.struct_value().fields().end() || !f->second.has_number_value()) return 0;
    return f->second.number_value() > 0 ? static_cast<int64_t>(f->second.number_value()) : 0;
  };
  const auto& fields = manifest.fields();
  auto layers = fields.find("layers");
  if (layers == fields.end() || !layers->second.has_list_value()) return 0;
  int64_t total = 0;
  for (const auto& layer : layers->second.list_value().values()) total += size_of(layer);
  if (auto config = fields.find("config"); config != fields.end()) total += size_of(config->second);
  return total;
}

absl::StatusOr<int64_t> SkopeoFetcher::CompressedSize(const ImageRef& ref,
                                                      const std::string& digest) {
  auto run = RunCaptured({options_.skopeo_path, "inspect", "--raw",
                          absl::StrCat("--tls-verify=", TlsVerify(ref) ? "true" : "false"),
                          absl::StrCat("docker://", ref.PullReference(digest))},
                         options_.resolve_timeout);
  if (!run.ok()) return run.status();
  if (run->timed_out || run->exit_code != 0) {
    return absl::UnavailableError("the registry did not give the manifest");
  }
  return ManifestBlobBytes(run->out);
}

bool SkopeoFetcher::TlsVerify(const ImageRef& ref) const {
  const std::string host = absl::AsciiStrToLower(ref.registry);
  for (const auto& insecure : options_.insecure_registries) {
    if (insecure == host) return false;
  }
  return true;
}

absl::StatusOr<CapturedOutput> SkopeoFetcher::RunWatched(const std::vector<std::string>& argv,
                                                         absl::Time deadline,
                                                         const std::string& watch,
                                                         bool* too_large) const {
  CapturedOutput out;
  ProcessOptions po;
  po.argv = argv;
  po.deadline = deadline;
  po.on_output = [&](int fd, std::string_view data) {
    std::string& dst = fd == 1 ? out.out : out.err;
    if (dst.size() < 65536) dst.append(data.data(), std::min<size_t>(data.size(), 65536));
    return true;
  };
  absl::Time next_check = absl::InfinitePast();
  po.cancelled = [&] {
    if (options_.max_image_bytes <= 0 || watch.empty()) return false;
    // A walk of the tree costs a little: a few times a second is early enough.
    const absl::Time now = absl::Now();
    if (now < next_check) return false;
    next_check = now + absl::Milliseconds(100);
    if (DiskUsage(watch) <= options_.max_image_bytes) return false;
    *too_large = true;
    return true;
  };
  auto run = RunProcess(po);
  if (!run.ok()) return run.status();
  out.exit_code = run->exit_code;
  out.timed_out = run->timed_out;
  return out;
}

absl::StatusOr<ImageConfig> SkopeoFetcher::Fetch(const ImageRef& ref, const std::string& digest,
                                                 const std::string& dir) {
  const std::string layout = absl::StrCat(dir, "/layout");
  const std::string bundle = absl::StrCat(dir, "/bundle");
  const absl::Time deadline = absl::Now() + options_.pull_timeout;
  bool too_large = false;
  // By digest: what is unpacked is exactly what was resolved, even if the tag moves meanwhile.
  auto copy = RunWatched({options_.skopeo_path, "copy", "-q",
                          absl::StrCat("--src-tls-verify=", TlsVerify(ref) ? "true" : "false"),
                          absl::StrCat("docker://", ref.PullReference(digest)),
                          absl::StrCat("oci:", layout, ":image")},
                         deadline, layout, &too_large);
  if (!copy.ok()) return copy.status();
  if (too_large) return ImageTooLarge(Shown(ref), options_.max_image_bytes);
  if (copy->timed_out) {
    LogWarn("image pull timed out", {{"image", ref.ToString()}});
    return Error(absl::StatusCode::kUnavailable, "IMAGE_PULL_FAILED",
                 absl::StrCat("pulling image ", Shown(ref), " took longer than ",
                              absl::FormatDuration(options_.pull_timeout)));
  }
  if (copy->exit_code != 0) return SkopeoError(Shown(ref), ref.registry, copy->err);
  const std::string idmap = absl::StrCat("0:", options_.uid_base, ":", options_.id_count);
  auto unpack = RunWatched({options_.umoci_path, "unpack", "--uid-map", idmap, "--gid-map", idmap,
                            "--image", absl::StrCat(layout, ":image"), bundle},
                           deadline, bundle, &too_large);
  if (!unpack.ok()) return unpack.status();
  if (too_large) return ImageTooLarge(Shown(ref), options_.max_image_bytes);
  if (unpack->exit_code != 0 || unpack->timed_out) {
    LogWarn("image unpack failed", {{"image", ref.ToString()}, {"error", LastLine(unpack->err)}});
    return Error(absl::StatusCode::kUnavailable, "IMAGE_PULL_FAILED",
                 absl::StrCat("cannot unpack image ", Shown(ref)));
  }
  auto spec = ReadFile(absl::StrCat(bundle, "/config.json"));
  if (!spec.ok()) return spec.status();
  auto config = ImageConfigFromRuntimeSpec(*spec);
  if (!config.ok()) return config.status();
  const std::string rootfs = absl::StrCat(dir, "/rootfs");
  if (::rename(absl::StrCat(bundle, "/rootfs").c_str(), rootfs.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot move the unpacked image to ", rootfs));
  }
  // Keep only the tree: the compressed blobs would double the disk use.
  (void)RemoveTree(layout);
  (void)RemoveTree(bundle);
  return config;
}

}  // namespace isorun::runner
