#pragma once

// The TCP ports a sandbox listens on, read from its network namespace's /proc/<pid>/net/tcp and
// tcp6 (state 0A, LISTEN), whatever address they are bound to.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace isorun::runner {

// Appends the local ports of LISTEN entries of one /proc/net/tcp or tcp6 file to `ports`.
void AppendListeningPorts(absl::string_view proc_net_tcp, std::vector<int>& ports);

// Ports (ascending, no duplicates) listened on in the network namespace of process `pid`.
absl::StatusOr<std::vector<int>> ListeningPorts(int pid);

}  // namespace isorun::runner
