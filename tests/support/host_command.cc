#include "tests/support/host_command.h"

#include <sys/wait.h>

#include <cstdio>

namespace isorun::testing {

std::string Host(const std::string& cmd, int* status) {
  std::string out;
  if (status != nullptr) *status = -1;
  if (FILE* p = ::popen(cmd.c_str(), "r"); p != nullptr) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int st = ::pclose(p);
    if (status != nullptr) *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }
  return out;
}

}  // namespace isorun::testing
