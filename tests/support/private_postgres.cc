#include "tests/support/private_postgres.h"

#include "tests/support/host_command.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <pqxx/pqxx>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace isorun::testing {
namespace {

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace

PrivatePostgres::PrivatePostgres() {
  char tmpl[] = "/tmp/isorun-private-pg-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
  dir_ = tmpl;
  // As root the server runs as the user `isorun`, which must reach its data folder.
  ::chmod(dir_.c_str(), 0755);
  std::string out = Run("pg_throwaway " + Quote(dir_) + " && printf '%s %s\\n' \"$PG_DATA\" \"$PG_PORT\"");
  auto space = out.rfind(' ');
  auto line_start = out.rfind('\n', out.size() >= 2 ? out.size() - 2 : 0);
  std::string line = out.substr(line_start == std::string::npos ? 0 : line_start + 1);
  space = line.find(' ');
  if (space == std::string::npos) throw std::runtime_error("pg_throwaway printed: " + out);
  data_ = line.substr(0, space);
  port_ = std::stoi(line.substr(space + 1));
}

PrivatePostgres::~PrivatePostgres() {
  try {
    if (frozen_) Thaw();
    Run("pg_as_user \"$(pg_bindir)/pg_ctl\" -D \"$PG_DATA\" -w -t 60 stop -m immediate "
        ">/dev/null 2>&1 || true");
  } catch (const std::exception& e) {
    fprintf(stderr, "stopping the private PostgreSQL: %s\n", e.what());
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
  // pg_prepare's fallback folder, if the server's user could not reach dir_.
  if (!data_.empty() && data_.rfind(dir_, 0) != 0) std::filesystem::remove_all(data_, ec);
}

std::string PrivatePostgres::admin_url() const {
  return "postgresql://isorun@127.0.0.1:" + std::to_string(port_) + "/postgres";
}

std::string PrivatePostgres::Run(const std::string& script) const {
  std::string full = "set -o pipefail; source " + Quote(std::string(ISORUN_SOURCE_DIR) + "/scripts/pg.sh") + "; ";
  if (!data_.empty()) full += "export PG_DATA=" + Quote(data_) + "; ";
  full += script;
  std::string cmd = "bash -c " + Quote(full) + " 2>>" + Quote(dir_ + "/scripts.log");
  int rc = 0;
  std::string out = Host(cmd, &rc);
  if (rc != 0) {
    std::ifstream log(dir_ + "/scripts.log");
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    throw std::runtime_error("scripts/pg.sh: `" + script + "` failed (status " +
                             std::to_string(rc) + "): " + text);
  }
  return out;
}

void PrivatePostgres::Stop(const std::string& mode) {
  Run("pg_as_user \"$(pg_bindir)/pg_ctl\" -D \"$PG_DATA\" -w -t 60 stop -m " + mode +
      " >/dev/null");
}

void PrivatePostgres::FreezeBackgroundWriters() {
  for (pid_t pid : ServerPids()) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline");
    std::string cmd((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    for (const char* role : {"walwriter", "background writer", "checkpointer"}) {
      if (cmd.find(role) != std::string::npos) {
        ::kill(pid, SIGSTOP);
        stopped_.push_back(pid);
      }
    }
  }
  if (stopped_.size() != 3) {
    throw std::runtime_error("found " + std::to_string(stopped_.size()) +
                             " of PostgreSQL's 3 background writers");
  }
}

void PrivatePostgres::Crash() {
  std::vector<pid_t> pids = ServerPids();
  ::kill(pids[0], SIGQUIT);
  // A stopped process handles the pending SIGQUIT (and exits) as soon as it runs again.
  for (pid_t pid : stopped_) {
    ::kill(pid, SIGQUIT);
    ::kill(pid, SIGCONT);
  }
  stopped_.clear();
  for (int i = 0; i < 600; ++i) {
    bool alive = false;
    for (pid_t pid : pids) alive = alive || ::kill(pid, 0) == 0;
    if (!alive) return;
    ::usleep(50'000);
  }
  throw std::runtime_error("PostgreSQL did not exit within 30 s of SIGQUIT");
}

void PrivatePostgres::Sql(const std::string& sql) {
  pqxx::connection conn(admin_url());
  pqxx::nontransaction nt(conn);
  nt.exec(sql);
}

void PrivatePostgres::Start() {
  Run("pg_start " + std::to_string(port_) + " " + Quote(dir_ + "/postgres.log"));
}

std::vector<pid_t> PrivatePostgres::ServerPids() const {
  std::ifstream pidfile(data_ + "/postmaster.pid");
  pid_t postmaster = 0;
  pidfile >> postmaster;
  if (postmaster <= 0) throw std::runtime_error("no postmaster.pid in " + data_);
  std::vector<pid_t> pids = {postmaster};
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
    auto close = text.rfind(')');
    if (close == std::string::npos) continue;
    char state = 0;
    int ppid = 0;
    if (sscanf(text.c_str() + close + 1, " %c %d", &state, &ppid) == 2 && ppid == postmaster) {
      pids.push_back(std::stoi(name));
    }
  }
  return pids;
}

void PrivatePostgres::Freeze() {
  for (pid_t pid : ServerPids()) ::kill(pid, SIGSTOP);
  frozen_ = true;
}

void PrivatePostgres::Thaw() {
  for (pid_t pid : ServerPids()) ::kill(pid, SIGCONT);
  frozen_ = false;
}

}  // namespace isorun::testing
