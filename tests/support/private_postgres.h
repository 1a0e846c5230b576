#pragma once

// A PostgreSQL server of the test's own, for tests that stop, freeze or crash the database
// (never the shared server `./isorun test` starts). Started with the project's scripts
// (scripts/pg.sh: initdb in a temporary folder, a free loopback port, run as a non-root user),
// so it behaves like the server of `./isorun up`.

#include <sys/types.h>

#include <string>
#include <vector>

namespace isorun::testing {

class PrivatePostgres {
 public:
  // Starts a fresh server; throws std::runtime_error (with the script's output) if it cannot.
  PrivatePostgres();
  // Stops the server (immediate) and removes its folder.
  ~PrivatePostgres();
  PrivatePostgres(const PrivatePostgres&) = delete;
  PrivatePostgres& operator=(const PrivatePostgres&) = delete;

  // The superuser URL of the maintenance database (for TestDatabase / ClusterOptions).
  std::string admin_url() const;
  int port() const { return port_; }

  // pg_ctl stop -m MODE (fast, immediate, ...). Throws if it fails.
  void Stop(const std::string& mode);
  // Crashes the server as `pg_ctl stop -m immediate` does (SIGQUIT to the postmaster), straight
  // from this process, so nothing has time to flush in between; returns once it is gone.
  void Crash();
  // SIGSTOP to the processes that write WAL and data in the background (walwriter, background
  // writer, checkpointer): from then on only a synchronous commit makes anything durable, until
  // Crash() (which lets them go only after the crash signal).
  void FreezeBackgroundWriters();
  // Runs one SQL statement on the maintenance database as the superuser.
  void Sql(const std::string& sql);
  // Starts the server again on the same port and data (after Stop). Throws if it fails.
  void Start();
  // SIGSTOP / SIGCONT to every process of the server (postmaster and backends).
  void Freeze();
  void Thaw();

 private:
  // Runs `script` in bash with scripts/pg.sh sourced and PG_DATA prepared; returns its stdout.
  std::string Run(const std::string& script) const;
  std::vector<pid_t> ServerPids() const;
  std::vector<pid_t> stopped_;  // by FreezeBackgroundWriters

  std::string dir_;
  std::string data_;  // PG_DATA
  int port_ = 0;
  bool frozen_ = false;
};

}  // namespace isorun::testing
