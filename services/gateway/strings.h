#pragma once

// On this toolchain absl::string_view is its own type, not std::string_view: convert explicitly
// where std::string_view meets absl. Cat() is absl::StrCat that also takes std::string_view.

#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace isorun::gateway {

inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }
inline std::string_view Sv(absl::string_view s) { return std::string_view(s.data(), s.size()); }

namespace internal {
template <typename T>
decltype(auto) ForStrCat(const T& v) {
  if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    return Sv(std::string_view(v));
  } else {
    return (v);
  }
}
}  // namespace internal

template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(internal::ForStrCat(args)...);
}

}  // namespace isorun::gateway
