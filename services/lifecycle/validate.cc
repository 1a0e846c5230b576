#include "services/lifecycle/validate.h"

#include <cctype>

#include "absl/strings/str_cat.h"
#include "services/kit/egress_policy.h"
#include "services/kit/status.h"

namespace isorun::lifecycle {
namespace {

absl::Status Invalid(const std::string& message) {
  return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT", message);
}

absl::Status NotPinned(const std::string& image, const std::string& why) {
  return Error(absl::StatusCode::kInvalidArgument, "IMAGE_NOT_PINNED",
               absl::StrCat("image '", image, "' is not pinned (", why,
                            "): use name:tag with a tag other than latest or lts, or "
                            "name@sha256:<digest>"));
}

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// A repository path per the OCI distribution spec, with an optional registry host[:port] first.
bool ValidRepository(const std::string& name) {
  if (name.empty() || name.size() > 255) return false;
  size_t start = 0;
  auto first_slash = name.find('/');
  if (first_slash != std::string::npos) {
    std::string host = name.substr(0, first_slash);
    if (host.find_first_of(".:") != std::string::npos || host == "localhost") {
      for (char c : host) {
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != ':' && c != '-') {
          return false;
        }
      }
      start = first_slash + 1;
    }
  }
  std::string path = name.substr(start);
  if (path.empty()) return false;
  char prev = '/';
  for (char c : path) {
    if (IsLowerAlnum(c)) {
      prev = c;
      continue;
    }
    if (c == '/' || c == '.' || c == '_' || c == '-') {
      if (!IsLowerAlnum(prev)) return false;
      prev = c;
      continue;
    }
    return false;
  }
  return IsLowerAlnum(prev);
}

absl::Status CheckMap(const google::protobuf::Map<std::string, std::string>& map,
                      const std::string& field, bool env) {
  if (map.size() > static_cast<size_t>(kMaxMapEntries)) {
    return Invalid(absl::StrCat(field, " has ", map.size(), " entries; at most ", kMaxMapEntries));
  }
  for (const auto& [k, v] : map) {
    if (k.empty() || k.size() > static_cast<size_t>(kMaxMapKeyBytes)) {
      return Invalid(absl::StrCat(field, " keys must be 1 to ", kMaxMapKeyBytes, " bytes"));
    }
    if (v.size() > static_cast<size_t>(kMaxMapValueBytes)) {
      return Invalid(absl::StrCat(field, " value of '", k, "' is over ", kMaxMapValueBytes,
                                  " bytes"));
    }
    if (env) {
      bool ok = !std::isdigit(static_cast<unsigned char>(k[0]));
      for (char c : k) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
      if (!ok) return Invalid(absl::StrCat("env name '", k, "' must match [A-Za-z_][A-Za-z0-9_]*"));
      if (v.find('\0') != std::string::npos) return Invalid("env values cannot contain NUL");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckImagePinned(const std::string& image) {
  if (image.empty()) return Invalid("image is required");
  if (image.size() > 512) return Invalid("image reference is over 512 characters");
  auto at = image.find('@');
  if (at != std::string::npos) {
    std::string digest = image.substr(at + 1);
    std::string name = image.substr(0, at);
    bool hex = digest.size() == 71 && digest.rfind("sha256:", 0) == 0;
    for (size_t i = 7; hex && i < digest.size(); ++i) {
      hex = std::isxdigit(static_cast<unsigned char>(digest[i])) && !std::isupper(digest[i]);
    }
    if (!hex) return NotPinned(image, "a digest must be sha256: and 64 lowercase hex digits");
    // name may itself carry a tag (name:tag@sha256:...): the digest wins.
    auto colon = name.rfind(':');
    if (colon != std::string::npos && name.find('/', colon) == std::string::npos) {
      name = name.substr(0, colon);
    }
    if (!ValidRepository(name)) return Invalid(absl::StrCat("image name '", name, "' is invalid"));
    return absl::OkStatus();
  }
  auto colon = image.rfind(':');
  if (colon == std::string::npos || image.find('/', colon) != std::string::npos) {
    return NotPinned(image, "no tag");
  }
  std::string name = image.substr(0, colon);
  std::string tag = image.substr(colon + 1);
  if (tag.empty()) return NotPinned(image, "empty tag");
  if (tag == "latest" || tag == "lts") return NotPinned(image, absl::StrCat("tag '", tag, "' moves"));
  if (tag.size() > 128) return Invalid("image tag is over 128 characters");
  for (char c : tag) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-') {
      return Invalid(absl::StrCat("image tag '", tag, "' is invalid"));
    }
  }
  if (!ValidRepository(name)) return Invalid(absl::StrCat("image name '", name, "' is invalid"));
  return absl::OkStatus();
}

absl::Status CheckTimeout(int timeout_sec) {
  if (timeout_sec < kMinTimeoutSec || timeout_sec > kMaxTimeoutSec) {
    return Invalid(absl::StrCat("timeoutSec must be from ", kMinTimeoutSec, " to ", kMaxTimeoutSec,
                                ", got ", timeout_sec));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::CreateSandboxRequest> NormalizeCreate(const v1::CreateSandboxRequest& request) {
  // Pinning first: an unpinned image is rejected before anything else is looked at.
  if (absl::Status s = CheckImagePinned(request.image()); !s.ok()) return s;
  v1::CreateSandboxRequest out = request;
  if (out.timeout_sec() == 0) out.set_timeout_sec(kDefaultTimeoutSec);
  if (absl::Status s = CheckTimeout(out.timeout_sec()); !s.ok()) return s;
  if (out.cpu_millis() == 0) out.set_cpu_millis(kDefaultCpuMillis);
  if (out.cpu_millis() < kMinCpuMillis || out.cpu_millis() > kMaxCpuMillis) {
    return Invalid(absl::StrCat("cpuMillis must be from ", kMinCpuMillis, " to ", kMaxCpuMillis,
                                ", got ", out.cpu_millis()));
  }
  if (out.memory_mb() == 0) out.set_memory_mb(kDefaultMemoryMb);
  if (out.memory_mb() < kMinMemoryMb || out.memory_mb() > kMaxMemoryMb) {
    return Invalid(absl::StrCat("memoryMb must be from ", kMinMemoryMb, " to ", kMaxMemoryMb,
                                ", got ", out.memory_mb()));
  }
  if (out.disk_mb() == 0) out.set_disk_mb(kDefaultDiskMb);
  if (out.disk_mb() < kMinDiskMb || out.disk_mb() > kMaxDiskMb) {
    return Invalid(absl::StrCat("diskMb must be from ", kMinDiskMb, " to ", kMaxDiskMb, ", got ",
                                out.disk_mb()));
  }
  if (absl::Status s = CheckMap(out.env(), "env", true); !s.ok()) return s;
  if (absl::Status s = CheckMap(out.metadata(), "metadata", false); !s.ok()) return s;
  if (absl::Status s = NormalizeNetworkPolicy(*out.mutable_network()); !s.ok()) return s;
  if (out.idempotency_key().size() > 255) return Invalid("Idempotency-Key is over 255 bytes");
  return out;
}

}  // namespace isorun::lifecycle
