// Shell commands on the test host (ip, nft, du, ...) for end-to-end tests.
#pragma once

#include <string>

namespace isorun::testing {

// Runs `cmd` with /bin/sh on the host and returns its stdout (stderr is the test's own unless
// the command redirects it). With `status`, stores the exit status (-1 when it did not exit).
std::string Host(const std::string& cmd, int* status = nullptr);

}  // namespace isorun::testing
