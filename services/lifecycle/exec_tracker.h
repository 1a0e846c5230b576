#pragma once

// The exec and exec:stream calls running through this lifecycle process: the sandboxes they keep
// active (a running command is activity for its whole run, so the idle reaper never takes a
// sandbox from under a command, however its timeoutSec compares with the command's length), and
// this process's own count per tenant.
//
// The caps that hold cluster-wide live elsewhere: per tenant in the quota service (exec leases,
// exec_leases.h), per sandbox in the runner that holds the sandbox. The count here caps a tenant
// only while no quota replica answers (then each lifecycle replica caps on its own calls).
//
// Thread-safe.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace isorun::lifecycle {

class ExecTracker {
 public:
  // A running call; ends it when destroyed.
  class Ticket {
   public:
    ~Ticket();
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;

   private:
    friend class ExecTracker;
    Ticket(ExecTracker* tracker, std::string tenant, std::string sandbox)
        : tracker_(tracker), tenant_(std::move(tenant)), sandbox_(std::move(sandbox)) {}
    ExecTracker* tracker_;
    std::string tenant_, sandbox_;
  };

  ExecTracker() = default;

  // RESOURCE_EXHAUSTED (EXEC_LIMIT, with limit, current and retry-after) when the tenant already
  // runs `tenant_limit` calls through this process (0: no cap here). `timeout_sec` is the
  // sandbox's idle timeout: its deadline is moved well within that while the call runs.
  absl::StatusOr<std::unique_ptr<Ticket>> Begin(const std::string& tenant,
                                                const std::string& sandbox, int tenant_limit,
                                                int timeout_sec);

  // The sandboxes with calls running whose deadline is due to be moved (a third of their
  // timeout, at most 5 s, after the last move); they count as moved now.
  std::vector<std::string> DueForTouch(absl::Time now);

  int running(const std::string& tenant);

 private:
  void End(const std::string& tenant, const std::string& sandbox);

  struct SandboxCalls {
    int running = 0;
    absl::Duration touch_every;
    absl::Time last_touch;
  };
  absl::Mutex mu_;
  std::map<std::string, int> tenants_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, SandboxCalls> sandboxes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace isorun::lifecycle
