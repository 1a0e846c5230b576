#include "services/runner/ports.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace isorun::runner {

void AppendListeningPorts(absl::string_view text, std::vector<int>& ports) {
  bool header = true;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (header) {  // "  sl  local_address rem_address   st ..."
      header = false;
      continue;
    }
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    // sl, local_address (ADDR:PORT in hex), rem_address, st
    if (f.size() < 4 || f[3] != "0A") continue;
    size_t colon = f[1].rfind(':');
    if (colon == absl::string_view::npos) continue;
    uint32_t port = 0;
    if (!absl::SimpleHexAtoi(f[1].substr(colon + 1), &port) || port == 0 || port > 65535) continue;
    ports.push_back(static_cast<int>(port));
  }
}

absl::StatusOr<std::vector<int>> ListeningPorts(int pid) {
  std::vector<int> ports;
  bool any = false;
  for (const char* file : {"tcp", "tcp6"}) {
    std::ifstream in(absl::StrCat("/proc/", pid, "/net/", file));
    if (!in) continue;  // no IPv6 in this namespace, say
    any = true;
    std::stringstream text;
    text << in.rdbuf();
    AppendListeningPorts(text.str(), ports);
  }
  if (!any) return absl::NotFoundError(absl::StrCat("no network namespace for process ", pid));
  std::sort(ports.begin(), ports.end());
  ports.erase(std::unique(ports.begin(), ports.end()), ports.end());
  return ports;
}

}  // namespace isorun::runner
