// Image references from create bodies: the runner's parser and the lifecycle's pinning check
// never crash, and a reference the parser accepts prints to one that parses to the same parts.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz/fuzz_check.h"
#include "services/lifecycle/validate.h"
#include "services/runner/image_ref.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)isorun::lifecycle::CheckImagePinned(std::string(text));
  auto ref = isorun::runner::ParseImageRef(text, "127.0.0.1:5000");
  if (ref.ok()) {
    FUZZ_CHECK(!ref->registry.empty() && !ref->repository.empty());
    FUZZ_CHECK(!ref->tag.empty() || isorun::runner::IsSha256Digest(ref->digest));
    auto again = isorun::runner::ParseImageRef(ref->ToString(), "127.0.0.1:5000");
    FUZZ_CHECK(again.ok());
    FUZZ_CHECK(again->registry == ref->registry && again->repository == ref->repository &&
               again->tag == ref->tag && again->digest == ref->digest);
  }
  return 0;
}
