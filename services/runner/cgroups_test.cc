#include "services/runner/cgroups.h"

#include <gtest/gtest.h>

namespace isorun::runner {
namespace {

constexpr char kMountinfo[] =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "36 31 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "37 31 0:34 /nested /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n"
    "38 31 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

TEST(Cgroups, DirsFromMountinfoAndProcCgroup) {
  auto dirs = CgroupDirsFrom(kMountinfo,
                             "9:freezer:/nested/isorun/sbx_1\n"
                             "5:memory:/isorun/sbx_1\n"
                             "3:cpu,cpuacct:/isorun/sbx_1\n"
                             "0::/isorun/sbx_1\n"
                             "2:pids:/isorun/sbx_1\n");
  EXPECT_EQ(dirs["freezer"], "/sys/fs/cgroup/freezer/isorun/sbx_1");
  EXPECT_EQ(dirs["memory"], "/sys/fs/cgroup/memory/isorun/sbx_1");
  EXPECT_EQ(dirs["cpu"], "/sys/fs/cgroup/cpu,cpuacct/isorun/sbx_1");
  EXPECT_EQ(dirs.count("pids"), 0u) << "no pids hierarchy is mounted";
}

TEST(Cgroups, RootCgroup) {
  auto dirs = CgroupDirsFrom(kMountinfo, "5:memory:/\n");
  EXPECT_EQ(dirs["memory"], "/sys/fs/cgroup/memory");
}

TEST(Cgroups, CountersOfMissingDirsAreZero) {
  EXPECT_EQ(OomKills(""), 0);
  EXPECT_EQ(OomKills("/nonexistent"), 0);
  EXPECT_EQ(PidsLimitHits("/nonexistent"), 0);
}

}  // namespace
}  // namespace isorun::runner
