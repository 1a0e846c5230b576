#include "services/runner/runc_config.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

namespace isorun::runner {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

Struct Parse(const std::string& json) {
  Struct s;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(json, &s).ok()) << json;
  return s;
}

const Value& At(const Struct& s, std::initializer_list<const char*> path) {
  const Struct* cur = &s;
  const Value* v = nullptr;
  for (const char* key : path) {
    auto it = cur->fields().find(key);
    if (it == cur->fields().end()) {
      ADD_FAILURE() << "missing " << key;
      static const Value* empty = new Value();
      return *empty;
    }
    v = &it->second;
    cur = &v->struct_value();
  }
  return *v;
}

std::set<std::string> Strings(const Value& list) {
  std::set<std::string> out;
  for (const auto& v : list.list_value().values()) out.insert(v.string_value());
  return out;
}

ContainerSpec Spec() {
  ContainerSpec spec;
  spec.rootfs = "/data/sandboxes/sbx_1/rootfs";
  spec.args = {"/dev/init"};
  spec.env = {"PATH=/bin", "A=1"};
  spec.cwd = "/work";
  spec.init_path = "/opt/isorun/isorun-sandbox-init";
  spec.host_id = 100000;
  spec.id_count = 65536;
  spec.cgroups_path = "/isorun/sbx_1";
  spec.cpu_millis = 500;
  spec.memory_mb = 256;
  spec.pids_limit = 512;
  return spec;
}

TEST(RuncConfig, NamespacesIncludeUserAndNetworkWithNoPaths) {
  Struct c = Parse(RuncConfigJson(Spec()));
  std::set<std::string> types;
  for (const auto& ns : At(c, {"linux", "namespaces"}).list_value().values()) {
    types.insert(ns.struct_value().fields().at("type").string_value());
    EXPECT_EQ(ns.struct_value().fields().count("path"), 0u) << "joins an existing namespace";
  }
  EXPECT_EQ(types, (std::set<std::string>{"pid", "network", "ipc", "uts", "mount", "user"}));
}

TEST(RuncConfig, RootMapsToTheUnprivilegedRange) {
  Struct c = Parse(RuncConfigJson(Spec()));
  for (const char* key : {"uidMappings", "gidMappings"}) {
    const auto& maps = At(c, {"linux", key}).list_value();
    ASSERT_EQ(maps.values_size(), 1);
    const auto& m = maps.values(0).struct_value().fields();
    EXPECT_EQ(m.at("containerID").number_value(), 0);
    EXPECT_EQ(m.at("hostID").number_value(), 100000);
    EXPECT_EQ(m.at("size").number_value(), 65536);
  }
  EXPECT_EQ(At(c, {"process", "user", "uid"}).number_value(), 0);
}

TEST(RuncConfig, NoNewPrivilegesAndAMinimalCapabilitySet) {
  Struct c = Parse(RuncConfigJson(Spec()));
  EXPECT_TRUE(At(c, {"process", "noNewPrivileges"}).bool_value());
  EXPECT_FALSE(At(c, {"process", "terminal"}).bool_value());
  const auto& caps = At(c, {"process", "capabilities"}).struct_value().fields();
  EXPECT_EQ(caps.count("ambient"), 0u);
  EXPECT_EQ(caps.count("inheritable"), 0u);
  for (const char* set : {"bounding", "effective", "permitted"}) {
    std::set<std::string> got = Strings(caps.at(set));
    for (const char* dangerous :
         {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_SYS_MODULE",
          "CAP_MKNOD", "CAP_SYS_TIME", "CAP_DAC_READ_SEARCH"}) {
      EXPECT_EQ(got.count(dangerous), 0u) << set << " has " << dangerous;
    }
    EXPECT_EQ(got.size(), SandboxCapabilities().size());
  }
}

TEST(RuncConfig, CgroupLimitsFromTheRequest) {
  Struct c = Parse(RuncConfigJson(Spec()));
  EXPECT_EQ(At(c, {"linux", "cgroupsPath"}).string_value(), "/isorun/sbx_1");
  EXPECT_EQ(At(c, {"linux", "resources", "memory", "limit"}).number_value(), 256.0 * 1024 * 1024);
  EXPECT_EQ(At(c, {"linux", "resources", "memory", "swap"}).number_value(), 256.0 * 1024 * 1024);
  EXPECT_EQ(At(c, {"linux", "resources", "cpu", "quota"}).number_value(), 50000);
  EXPECT_EQ(At(c, {"linux", "resources", "cpu", "period"}).number_value(), 100000);
  EXPECT_EQ(At(c, {"linux", "resources", "pids", "limit"}).number_value(), 512);
  // Devices: deny all; runc adds its fixed allow list (null, zero, random, ...).
  const auto& dev = At(c, {"linux", "resources", "devices"}).list_value();
  ASSERT_EQ(dev.values_size(), 1);
  EXPECT_FALSE(dev.values(0).struct_value().fields().at("allow").bool_value());
}

TEST(RuncConfig, NoLimitsWhenZeroAndNoSwapLimitWithoutAccounting) {
  ContainerSpec spec = Spec();
  spec.cpu_millis = 0;
  spec.pids_limit = 0;
  spec.limit_swap = false;
  Struct c = Parse(RuncConfigJson(spec));
  const auto& res = At(c, {"linux", "resources"}).struct_value().fields();
  EXPECT_EQ(res.count("cpu"), 0u);
  EXPECT_EQ(res.count("pids"), 0u);
  EXPECT_EQ(res.at("memory").struct_value().fields().count("swap"), 0u);
}

TEST(RuncConfig, ProcessRootAndInitMount) {
  Struct c = Parse(RuncConfigJson(Spec()));
  EXPECT_EQ(At(c, {"root", "path"}).string_value(), "/data/sandboxes/sbx_1/rootfs");
  EXPECT_EQ(At(c, {"process", "cwd"}).string_value(), "/work");
  EXPECT_EQ(Strings(At(c, {"process", "args"})), (std::set<std::string>{"/dev/init"}));
  EXPECT_EQ(Strings(At(c, {"process", "env"})), (std::set<std::string>{"PATH=/bin", "A=1"}));
  bool init = false, proc = false, sys_ro = false;
  for (const auto& m : At(c, {"mounts"}).list_value().values()) {
    const auto& f = m.struct_value().fields();
    std::set<std::string> options = Strings(f.at("options"));
    if (f.at("destination").string_value() == "/dev/init") {
      init = true;
      EXPECT_EQ(f.at("source").string_value(), "/opt/isorun/isorun-sandbox-init");
      EXPECT_EQ(options.count("ro"), 1u);
    }
    if (f.at("destination").string_value() == "/proc") proc = true;
    if (f.at("destination").string_value() == "/sys") sys_ro = options.count("ro") == 1;
  }
  EXPECT_TRUE(init);
  EXPECT_TRUE(proc);
  EXPECT_TRUE(sys_ro);
  EXPECT_EQ(Strings(At(c, {"linux", "maskedPaths"})).count("/proc/kcore"), 1u);
  EXPECT_EQ(Strings(At(c, {"linux", "readonlyPaths"})).count("/proc/sys"), 1u);
}

TEST(RuncConfig, StringsAreEscaped) {
  ContainerSpec spec = Spec();
  spec.env = {"Q=\"quoted\"\n\\"};
  Struct c = Parse(RuncConfigJson(spec));
  EXPECT_EQ(Strings(At(c, {"process", "env"})), (std::set<std::string>{"Q=\"quoted\"\n\\"}));
}

TEST(RuncConfig, SeccompDeniesByDefaultAndNeverAllowsTheDangerousCalls) {
  Struct c = Parse(RuncConfigJson(Spec()));
  const Struct& seccomp = At(c, {"linux", "seccomp"}).struct_value();
  EXPECT_EQ(At(seccomp, {"defaultAction"}).string_value(), "SCMP_ACT_ERRNO");
  EXPECT_EQ(At(seccomp, {"defaultErrnoRet"}).number_value(), 1);  // EPERM
  std::set<std::string> unconditional;
  std::map<std::string, int> conditional;
  for (const auto& rule : At(seccomp, {"syscalls"}).list_value().values()) {
    const Struct& r = rule.struct_value();
    for (const auto& name : Strings(At(r, {"names"}))) {
      if (At(r, {"action"}).string_value() != "SCMP_ACT_ALLOW") continue;
      if (r.fields().count("args") > 0) {
        ++conditional[name];
      } else {
        unconditional.insert(name);
      }
    }
  }
  for (const char* denied : {"mount",
                             "umount2",
                             "pivot_root",
                             "setns",
                             "bpf",
                             "keyctl",
                             "add_key",
                             "request_key",
                             "userfaultfd",
                             "perf_event_open",
                             "kexec_load",
                             "kexec_file_load",
                             "init_module",
                             "finit_module",
                             "delete_module",
                             "io_uring_setup",
                             "io_uring_enter",
                             "io_uring_register",
                             "open_by_handle_at",
                             "fsopen",
                             "move_mount",
                             "reboot",
                             "swapon",
                             "clone3"}) {
    EXPECT_EQ(unconditional.count(denied), 0u) << denied;
    EXPECT_EQ(conditional.count(denied), 0u) << denied;
  }
  // Only with arguments checked.
  for (const char* checked : {"clone", "unshare", "personality"}) {
    EXPECT_EQ(unconditional.count(checked), 0u) << checked;
    EXPECT_GT(conditional[checked], 0) << checked;
  }
  for (const char* everyday : {"read", "write", "openat", "execve", "mmap", "futex", "socket",
                               "wait4", "exit_group", "rt_sigaction", "pipe", "pipe2"}) {
    EXPECT_EQ(unconditional.count(everyday), 1u) << everyday;
  }
  // clone3 answers ENOSYS so the C library falls back to clone, whose flags are checked.
  bool clone3_enosys = false;
  for (const auto& rule : At(seccomp, {"syscalls"}).list_value().values()) {
    const Struct& r = rule.struct_value();
    if (Strings(At(r, {"names"})).count("clone3") > 0) {
      clone3_enosys = At(r, {"action"}).string_value() == "SCMP_ACT_ERRNO" &&
                      At(r, {"errnoRet"}).number_value() == 38;
    }
  }
  EXPECT_TRUE(clone3_enosys);
  // The clone and unshare masks cover every namespace flag.
  for (const auto& rule : At(seccomp, {"syscalls"}).list_value().values()) {
    const Struct& r = rule.struct_value();
    auto names = Strings(At(r, {"names"}));
    if (names.count("clone") == 0 && names.count("unshare") == 0) continue;
    const Struct& arg = At(r, {"args"}).list_value().values(0).struct_value();
    EXPECT_EQ(At(arg, {"op"}).string_value(), "SCMP_CMP_MASKED_EQ");
    const auto mask = static_cast<uint64_t>(At(arg, {"value"}).number_value());
    for (uint64_t flag : {0x00020000u, 0x02000000u, 0x04000000u, 0x08000000u, 0x10000000u,
                          0x20000000u, 0x40000000u}) {
      EXPECT_NE(mask & flag, 0u) << *names.begin() << " flag " << flag;
    }
    EXPECT_EQ(At(arg, {"valueTwo"}).number_value(), 0);
  }
}

TEST(MergeEnv, LaterListsOverrideByKey) {
  EXPECT_EQ(MergeEnv({{"PATH=/bin", "HOME=/root"}, {"A=1", "PATH=/usr/bin"}, {"A=2", "B="}}),
            (std::vector<std::string>{"PATH=/usr/bin", "HOME=/root", "A=2", "B="}));
}

}  // namespace
}  // namespace isorun::runner
