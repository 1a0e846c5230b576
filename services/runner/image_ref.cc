#include "services/runner/image_ref.h"

#include <cctype>

#include "absl/strings/str_cat.h"

namespace isorun::runner {
namespace {

constexpr size_t kMaxRef = 512;

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// One path component of a repository: [a-z0-9]+ separated by '.', '_', '__' or '-'+.
bool ValidComponent(std::string_view c) {
  if (c.empty() || !IsLowerAlnum(c.front()) || !IsLowerAlnum(c.back())) return false;
  char prev = 'a';
  for (char ch : c) {
    if (IsLowerAlnum(ch)) {
      prev = ch;
      continue;
    }
    if (ch != '.' && ch != '_' && ch != '-') return false;
    // Two separators in a row only as "__" or "--..."; never ".." (no path tricks).
    if (!IsLowerAlnum(prev) && !(ch == prev && ch != '.')) return false;
    prev = ch;
  }
  return true;
}

bool ValidTag(std::string_view t) {
  if (t.empty() || t.size() > 128) return false;
  for (size_t i = 0; i < t.size(); ++i) {
    char c = t[i];
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '_' ||
              (i > 0 && (c == '.' || c == '-'));
    if (!ok) return false;
  }
  return true;
}

bool ValidRegistry(std::string_view r) {
  if (r.empty() || r.size() > 255) return false;
  for (char c : r) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != ':' &&
        c != '[' && c != ']') {
      return false;
    }
  }
  return r.front() != '.' && r.front() != '-' && r.front() != ':';
}

absl::Status Invalid(std::string_view ref, std::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("invalid image reference \"", std::string(ref), "\": ", std::string(why)));
}

}  // namespace

bool IsSha256Digest(std::string_view digest) {
  constexpr std::string_view kPrefix = "sha256:";
  if (digest.size() != kPrefix.size() + 64 || digest.substr(0, kPrefix.size()) != kPrefix) {
    return false;
  }
  for (char c : digest.substr(kPrefix.size())) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string ImageRef::Name() const { return absl::StrCat(registry, "/", repository); }

std::string ImageRef::ToString() const {
  std::string out = Name();
  if (!tag.empty()) absl::StrAppend(&out, ":", tag);
  if (!digest.empty()) absl::StrAppend(&out, "@", digest);
  return out;
}

std::string ImageRef::PullReference(const std::string& resolved_digest) const {
  const std::string& d = digest.empty() ? resolved_digest : digest;
  if (d.empty()) return absl::StrCat(Name(), ":", tag);
  return absl::StrCat(Name(), "@", d);
}

absl::StatusOr<ImageRef> ParseImageRef(std::string_view ref, std::string_view default_registry) {
  if (ref.empty()) return Invalid(ref, "empty");
  if (ref.size() > kMaxRef) return Invalid(ref, "longer than 512 characters");
  ImageRef out;
  std::string_view rest = ref;
  if (auto at = rest.find('@'); at != std::string_view::npos) {
    out.digest = std::string(rest.substr(at + 1));
    rest = rest.substr(0, at);
    if (!IsSha256Digest(out.digest))
      return Invalid(ref, "digest must be sha256:<64 lowercase hex>");
  }
  // The registry is the first component when it looks like a host.
  std::string_view path = rest;
  if (auto slash = rest.find('/'); slash != std::string_view::npos) {
    std::string_view first = rest.substr(0, slash);
    if (first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos ||
        first == "localhost") {
      if (!ValidRegistry(first)) return Invalid(ref, "bad registry host");
      out.registry = std::string(first);
      path = rest.substr(slash + 1);
    }
  }
  // A tag follows the last ':' of the path.
  if (auto colon = path.rfind(':'); colon != std::string_view::npos) {
    out.tag = std::string(path.substr(colon + 1));
    path = path.substr(0, colon);
    if (!ValidTag(out.tag)) return Invalid(ref, "bad tag");
  }
  if (path.empty()) return Invalid(ref, "no repository name");
  size_t start = 0;
  while (true) {
    size_t slash = path.find('/', start);
    std::string_view component = path.substr(
        start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (!ValidComponent(component)) {
      return Invalid(ref, "repository names are lowercase letters, digits and . _ - separators");
    }
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  out.repository = std::string(path);
  if (out.tag.empty() && out.digest.empty()) return Invalid(ref, "needs a tag or a digest");
  if (out.registry.empty()) {
    if (default_registry.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("image \"", std::string(ref),
                       "\" names no registry and this runner has no default (--registry)"));
    }
    out.registry = std::string(default_registry);
  }
  // The limit holds for the reference as resolved too: what is pulled and stored is the full
  // reference, which must parse again (found by the image_ref fuzz target).
  if (out.ToString().size() > kMaxRef) return Invalid(ref, "longer than 512 characters");
  return out;
}

}  // namespace isorun::runner
