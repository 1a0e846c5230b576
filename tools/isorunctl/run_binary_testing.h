#pragma once

// Test helper: runs the isorunctl binary (ISORUNCTL_BIN, set by CMake) with arguments and extra
// environment, and returns its exit code, stdout and stderr. ISORUN_DATABASE_URL is removed from
// the child's environment unless `env` sets it.

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

extern char** environ;

namespace isorun::ctl::testing {

struct BinaryResult {
  int code = -1;
  std::string out;
  std::string err;
};

inline std::string SlurpAndRemove(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  std::remove(path.c_str());
  return text.str();
}

inline BinaryResult RunBinary(const std::vector<std::string>& args,
                              const std::map<std::string, std::string>& env = {}) {
  char out_path[] = "/tmp/isorunctl_out_XXXXXX";
  char err_path[] = "/tmp/isorunctl_err_XXXXXX";
  int out_fd = mkstemp(out_path);
  int err_fd = mkstemp(err_path);
  if (out_fd < 0 || err_fd < 0) throw std::runtime_error("mkstemp failed");

  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    std::string name = entry.substr(0, entry.find('='));
    if (name == "ISORUN_DATABASE_URL" || env.count(name) > 0) continue;
    env_strings.push_back(entry);
  }
  for (const auto& [name, value] : env) env_strings.push_back(name + "=" + value);
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  std::string bin = ISORUNCTL_BIN;
  std::vector<std::string> argv_strings{bin};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_fd, STDERR_FILENO);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, bin.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out_fd);
  close(err_fd);
  BinaryResult result;
  if (rc != 0) throw std::runtime_error("cannot run " + bin);
  int status = 0;
  waitpid(pid, &status, 0);
  result.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.out = SlurpAndRemove(out_path);
  result.err = SlurpAndRemove(err_path);
  return result;
}

}  // namespace isorun::ctl::testing
