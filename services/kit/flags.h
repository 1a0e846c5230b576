#pragma once

// Flag handling shared by every binary: each absl flag `--foo_bar` can also be set through the
// environment variable `ISORUN_FOO_BAR` (so the Helm chart and the local cluster script can set
// them); a flag given on the command line wins over the environment.

#include <string>
#include <vector>

namespace isorun {

// Applies ISORUN_* environment variables to registered flags, then parses argv. Exits with a
// message on a bad value. Returns the positional arguments (argv[0] first).
std::vector<char*> ParseFlags(int argc, char** argv, const char* usage);

// The environment variable that backs `flag_name`.
std::string EnvNameForFlag(const std::string& flag_name);

}  // namespace isorun
