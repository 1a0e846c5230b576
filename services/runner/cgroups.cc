#include "services/runner/cgroups.h"

#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "services/runner/fs_util.h"

namespace isorun::runner {
namespace {

int64_t CounterIn(const std::string& path, absl::string_view key) {
  auto text = ReadFile(path);
  if (!text.ok()) return 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
    int64_t n = 0;
    if (parts.size() == 2 && parts[0] == key && absl::SimpleAtoi(parts[1], &n)) return n;
  }
  return 0;
}

bool WriteString(const std::string& path, const std::string& value) {
  FILE* f = ::fopen(path.c_str(), "we");
  if (f == nullptr) return false;
  bool ok = ::fputs(value.c_str(), f) >= 0;
  ok = (::fclose(f) == 0) && ok;
  return ok;
}

}  // namespace

std::map<std::string, std::string> CgroupDirsFrom(const std::string& mountinfo,
                                                  const std::string& proc_cgroup) {
  // controller -> (mount root within the hierarchy, mount point)
  std::map<std::string, std::pair<std::string, std::string>> mounts;
  for (absl::string_view line : absl::StrSplit(mountinfo, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> halves = absl::StrSplit(line, " - ");
    if (halves.size() != 2) continue;
    std::vector<absl::string_view> pre = absl::StrSplit(halves[0], ' ', absl::SkipEmpty());
    std::vector<absl::string_view> post = absl::StrSplit(halves[1], ' ', absl::SkipEmpty());
    if (pre.size() < 5 || post.size() < 3 || post[0] != "cgroup") continue;
    for (absl::string_view opt : absl::StrSplit(post[2], ',')) {
      mounts[std::string(opt)] = {std::string(pre[3]), std::string(pre[4])};
    }
  }
  std::map<std::string, std::string> out;
  for (absl::string_view line : absl::StrSplit(proc_cgroup, '\n', absl::SkipEmpty())) {
    // "4:freezer:/isorun/sbx_1" or "5:cpu,cpuacct:/x"
    std::vector<absl::string_view> parts = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (parts.size() != 3) continue;
    for (absl::string_view controller : absl::StrSplit(parts[1], ',')) {
      auto m = mounts.find(std::string(controller));
      if (m == mounts.end()) continue;
      std::string path(parts[2]);
      const std::string& root = m->second.first;
      if (root != "/" && path.rfind(root, 0) == 0) path = path.substr(root.size());
      out[std::string(controller)] = absl::StrCat(m->second.second, path == "/" ? "" : path);
    }
  }
  return out;
}

std::map<std::string, std::string> CgroupDirsOf(int pid) {
  auto mountinfo = ReadFile("/proc/self/mountinfo");
  auto cgroup = ReadFile(absl::StrCat("/proc/", pid, "/cgroup"));
  if (!mountinfo.ok() || !cgroup.ok()) return {};
  return CgroupDirsFrom(*mountinfo, *cgroup);
}

int64_t OomKills(const std::string& memory_dir) {
  if (memory_dir.empty()) return 0;
  return CounterIn(absl::StrCat(memory_dir, "/memory.oom_control"), "oom_kill");
}

int64_t PidsLimitHits(const std::string& pids_dir) {
  if (pids_dir.empty()) return 0;
  return CounterIn(absl::StrCat(pids_dir, "/pids.events"), "max");
}

int CountTasks(const std::string& dir) {
  int n = 0;
  std::vector<std::string> dirs = {dir};
  for (size_t i = 0; i < dirs.size(); ++i) {
    for (const auto& name : ListDir(dirs[i])) {
      std::string sub = absl::StrCat(dirs[i], "/", name);
      if (PathExists(absl::StrCat(sub, "/tasks"))) dirs.push_back(sub);
    }
    auto tasks = ReadFile(absl::StrCat(dirs[i], "/tasks"));
    if (!tasks.ok()) continue;
    for (absl::string_view t : absl::StrSplit(*tasks, '\n', absl::SkipEmpty())) {
      (void)t;
      ++n;
    }
  }
  return n;
}

int KillFreezerCgroup(const std::string& dir) {
  const std::string state = absl::StrCat(dir, "/freezer.state");
  WriteString(state, "FROZEN");
  // Freezing is asynchronous; killing frozen tasks is fine either way (they die when thawed),
  // but waiting a little means no task forks a child we would miss.
  for (int i = 0; i < 100; ++i) {
    auto s = ReadFile(state);
    if (!s.ok() || s->rfind("FROZEN", 0) == 0) break;
    absl::SleepFor(absl::Milliseconds(1));
  }
  int killed = 0;
  std::vector<std::string> dirs = {dir};
  for (size_t i = 0; i < dirs.size(); ++i) {
    for (const auto& name : ListDir(dirs[i])) {
      std::string sub = absl::StrCat(dirs[i], "/", name);
      if (PathExists(absl::StrCat(sub, "/cgroup.procs"))) dirs.push_back(sub);
    }
    auto procs = ReadFile(absl::StrCat(dirs[i], "/cgroup.procs"));
    if (!procs.ok()) continue;
    for (absl::string_view p : absl::StrSplit(*procs, '\n', absl::SkipEmpty())) {
      int pid = 0;
      if (absl::SimpleAtoi(p, &pid) && pid > 1 && ::kill(pid, SIGKILL) == 0) ++killed;
    }
  }
  WriteString(state, "THAWED");
  // SIGKILL is delivered on thaw; wait (briefly) until they are all gone, so that the caller's
  // answer is true when it is sent.
  for (int i = 0; i < 200 && CountTasks(dir) > 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  return killed;
}

}  // namespace isorun::runner
