#include "services/runner/skopeo_fetcher.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <stdio.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

}  // namespace

absl::Status SkopeoError(const std::string& image, const std::string& registry,
                         const std::string& stderr_text) {
  const std::string lower = absl::AsciiStrToLower(stderr_text);
  for (const char* marker :
       {"manifest unknown", "name unknown", "not found", "404", "repository name not known"}) {
    if (absl::StrContains(lower, marker)) {
      return Error(absl::StatusCode::kNotFound, "IMAGE_NOT_FOUND",
                   absl::StrCat("image ", image, " not found in registry ", registry));
    }
  }
  for (const char* marker : {"connection refused", "no such host", "i/o timeout",
                             "network is unreachable", "connection reset", "timeout"}) {
    if (absl::StrContains(lower, marker)) {
      return Error(absl::StatusCode::kUnavailable, "REGISTRY_UNAVAILABLE",
                   absl::StrCat("cannot reach registry ", registry, " to pull image ", image, ": ",
                                LastLine(stderr_text)));
    }
  }
  return absl::UnavailableError(
      absl::StrCat("cannot pull image ", image, ": ", LastLine(stderr_text)));
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
                          absl::StrCat("--tls-verify=", options_.tls_verify ? "true" : "false"),
                          "--format", "{{.Digest}}", absl::StrCat("docker://", ref.ToString())},
                         options_.resolve_timeout);
  if (!run.ok()) return run.status();
  if (run->timed_out) {
    return absl::UnavailableError(
        absl::StrCat("registry ", ref.registry, " did not answer for ", ref.ToString()));
  }
  if (run->exit_code != 0) return SkopeoError(ref.ToString(), ref.registry, run->err);
  std::string digest(absl::StripAsciiWhitespace(run->out));
  if (!IsSha256Digest(digest)) {
    return absl::UnavailableError(absl::StrCat("registry ", ref.registry, " gave ", ref.ToString(),
                                               " an unusable digest: ", digest));
  }
  return digest;
}

absl::StatusOr<ImageConfig> SkopeoFetcher::Fetch(const ImageRef& ref, const std::string& digest,
                                                 const std::string& dir) {
  const std::string layout = absl::StrCat(dir, "/layout");
  const std::string bundle = absl::StrCat(dir, "/bundle");
  const absl::Time deadline = absl::Now() + options_.pull_timeout;
  // By digest: what is unpacked is exactly what was resolved, even if the tag moves meanwhile.
  auto copy =
      RunCaptured({options_.skopeo_path, "copy", "-q",
                   absl::StrCat("--src-tls-verify=", options_.tls_verify ? "true" : "false"),
                   absl::StrCat("docker://", ref.PullReference(digest)),
                   absl::StrCat("oci:", layout, ":image")},
                  options_.pull_timeout);
  if (!copy.ok()) return copy.status();
  if (copy->timed_out) {
    return absl::UnavailableError(absl::StrCat("pulling ", ref.ToString(), " took longer than ",
                                               absl::FormatDuration(options_.pull_timeout)));
  }
  if (copy->exit_code != 0) return SkopeoError(ref.ToString(), ref.registry, copy->err);
  const std::string idmap = absl::StrCat("0:", options_.uid_base, ":", options_.id_count);
  auto unpack = RunCaptured({options_.umoci_path, "unpack", "--uid-map", idmap, "--gid-map", idmap,
                             "--image", absl::StrCat(layout, ":image"), bundle},
                            deadline - absl::Now());
  if (!unpack.ok()) return unpack.status();
  if (unpack->exit_code != 0 || unpack->timed_out) {
    return absl::InternalError(
        absl::StrCat("cannot unpack image ", ref.ToString(), ": ", LastLine(unpack->err)));
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
