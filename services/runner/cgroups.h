#pragma once

// Finding a process's cgroup v1 directories (freezer, memory, pids) and reading the counters the
// runner reports: OOM kills and failed forks at the pids limit. On a host without a v1 hierarchy
// for a controller the directory is empty and the features that need it degrade (see users).

#include <cstdint>
#include <map>
#include <string>

namespace isorun::runner {

// controller -> directory of `pid`'s cgroup in it, from the texts of /proc/self/mountinfo and
// /proc/PID/cgroup (pure, for tests).
std::map<std::string, std::string> CgroupDirsFrom(const std::string& mountinfo,
                                                  const std::string& proc_cgroup);
// The same for a live process.
std::map<std::string, std::string> CgroupDirsOf(int pid);

// "oom_kill N" of memory.oom_control, 0 when unknown.
int64_t OomKills(const std::string& memory_dir);
// "max N" of pids.events (forks refused at the limit), 0 when unknown.
int64_t PidsLimitHits(const std::string& pids_dir);

// Tasks (threads) in the cgroup `dir` and below it.
int CountTasks(const std::string& dir);

// Kills every process in the freezer cgroup `dir` (and below it): freeze so nothing can fork
// meanwhile, SIGKILL each, thaw, and wait up to a second for them to be gone. Returns how many
// were signalled.
int KillFreezerCgroup(const std::string& dir);

}  // namespace isorun::runner
