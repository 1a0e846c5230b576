#include "services/kit/image_policy.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"

namespace isorun {

std::string ImageRegistryHost(absl::string_view image) {
  size_t slash = image.find('/');
  if (slash == absl::string_view::npos) return "";
  absl::string_view first = image.substr(0, slash);
  if (first.find_first_of(".:") == absl::string_view::npos && first != "localhost") return "";
  return absl::AsciiStrToLower(first);
}

std::vector<std::string> ParseRegistryList(absl::string_view list) {
  std::vector<std::string> out;
  for (absl::string_view part :
       absl::StrSplit(list, absl::ByAnyChar(", \t\n"), absl::SkipEmpty())) {
    out.push_back(absl::AsciiStrToLower(part));
  }
  return out;
}

bool ImageRegistryAllowed(absl::string_view image, const std::vector<std::string>& allowed) {
  const std::string host = ImageRegistryHost(image);
  if (host.empty()) return true;
  for (const auto& a : allowed) {
    if (a == host) return true;
  }
  return false;
}

bool PathUnderProc(absl::string_view path) {
  std::vector<absl::string_view> parts;
  for (absl::string_view part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    if (part == ".") continue;
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  return !parts.empty() && parts.front() == "proc";
}

}  // namespace isorun
