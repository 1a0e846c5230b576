// isorunctl: the operator's command line for an Isorun control plane (see API.md, "Local cluster
// and admin CLI", and `isorunctl --help`).

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "tools/isorunctl/cli.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  const char* env = std::getenv("ISORUN_DATABASE_URL");
  return isorun::ctl::Run(args, env == nullptr ? "" : env, std::cout, std::cerr);
}
