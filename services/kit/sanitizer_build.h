#pragma once

// Whether this binary is built with AddressSanitizer or ThreadSanitizer (./isorun test
// --sanitize=...). Their shadow memory, redzones and the quarantine of freed blocks multiply a
// process's resident memory, so a test's bound on RSS says nothing there: such tests print the
// figure and check the bound only in the regular build. Everything else they check still holds.

namespace isorun {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitizerBuild = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kSanitizerBuild = true;
#else
inline constexpr bool kSanitizerBuild = false;
#endif
#else
inline constexpr bool kSanitizerBuild = false;
#endif

// Memory bounds of tests apply to this build.
inline constexpr bool kMemoryBoundsApply = !kSanitizerBuild;

}  // namespace isorun
