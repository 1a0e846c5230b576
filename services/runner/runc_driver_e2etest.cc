// The runc driver against real containers, a real registry and the real image tools. Each test
// gets its own data directory (and so a cold image cache) and removes its containers at the end.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/kit/status.h"
#include "services/runner/fs_util.h"
#include "services/runner/process.h"
#include "services/runner/runc_driver.h"
#include "services/runner/runc_test_env.h"
#include "services/runner/skopeo_fetcher.h"

namespace isorun::runner {
namespace {

using testing::RemoveScratchDir;
using testing::HostPidsRunning;

// Counts what reaches the registry.
class CountingFetcher final : public ImageFetcher {
 public:
  absl::StatusOr<std::string> Resolve(const ImageRef& ref) override {
    ++resolves;
    return real_.Resolve(ref);
  }
  absl::StatusOr<ImageConfig> Fetch(const ImageRef& ref, const std::string& digest,
                                    const std::string& dir) override {
    ++fetches;
    return real_.Fetch(ref, digest, dir);
  }
  std::atomic<int> resolves{0};
  std::atomic<int> fetches{0};

 private:
  SkopeoFetcher real_{testing::TestSkopeoOptions()};
};

v1::StartSandboxRequest StartReq(const std::string& id, const std::string& image = "busybox:1.36",
                                 int memory_mb = 256) {
  v1::StartSandboxRequest r;
  r.set_sandbox_id(id);
  r.set_image(image);
  r.set_cpu_millis(1000);
  r.set_memory_mb(memory_mb);
  return r;
}

v1::ExecRequest Cmd(const std::string& cmd, int timeout_sec = 0) {
  v1::ExecRequest r;
  r.set_cmd(cmd);
  r.set_timeout_sec(timeout_sec);
  return r;
}

std::string ReasonOf(const absl::Status& s) {
  auto d = ErrorDetailOf(s);
  return d ? d->reason() : "";
}

// HostPidsRunning, polled for up to a second until there is one (a background job of an exec
// may not have exec'd its program yet when the exec returns).
std::vector<int> WaitForHostPids(const std::string& cmdline) {
  std::vector<int> pids;
  for (int i = 0; i < 40 && pids.empty(); ++i) {
    pids = HostPidsRunning(cmdline);
    if (pids.empty()) absl::SleepFor(absl::Milliseconds(25));
  }
  return pids;
}

int HostUidOf(int pid) {
  auto status = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  if (!status.ok()) return -1;
  for (absl::string_view line : absl::StrSplit(*status, '\n')) {
    if (absl::StartsWith(line, "Uid:")) {
      std::vector<absl::string_view> f = absl::StrSplit(line, '\t', absl::SkipEmpty());
      int uid = -1;
      if (f.size() > 1 && absl::SimpleAtoi(f[1], &uid)) return uid;
    }
  }
  return -1;
}

// The command lines of a sandbox's processes other than its init and this exec's own: the shell
// the agent started (`$$`) and its children (the `ps`). The listing is taken whole into a
// variable before anything filters it, and filtered by pid and parent pid, never by name: with a
// `ps | grep` pipeline the grep runs beside the ps, and busybox starts applets by exec'ing
// /proc/self/exe, so once in a while ps caught it between the exec's new memory map and its
// arguments, as `[exe]` (comm "exe", no command line yet). That was this exec's own grep, not a
// neighbour's process; a name filter could not tell the two apart, parent pids can. A zombie
// (`[sh]`) still counts: OtherProcesses() waits for the init to reap it.
constexpr char kOtherProcesses[] =
    "l=$(ps -o pid,ppid,args) && echo \"$l\" | while read -r pid ppid args; do "
    "[ \"$pid\" = PID ] || [ \"$pid\" = 1 ] || [ \"$pid\" = $$ ] || [ \"$ppid\" = $$ ] || "
    "echo \"$args\"; done";

class RuncDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ISORUN_REQUIRE_RUNC();
    auto registry = testing::TestRegistryAddress();
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = *registry;
    dir_ = testing::MakeScratchDir("isorun-runc-test");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    driver_.reset();
    RemoveScratchDir(dir_);
  }

  RuncOptions Options() {
    RuncOptions o;
    o.data_dir = dir_;
    o.registry = registry_;
    o.init_path = testing::SandboxInitPath();
    return o;
  }
  RuncDriver& Driver(RuncOptions options) {
    driver_.reset();
    auto d = RuncDriver::Create(std::move(options), fetcher_);
    EXPECT_TRUE(d.ok()) << d.status();
    if (d.ok()) driver_ = std::move(*d);
    return *driver_;
  }
  RuncDriver& Driver() { return Driver(Options()); }
  // Starts `id` or fails the test.
  void Start(const std::string& id, const std::string& image = "busybox:1.36",
             int memory_mb = 256) {
    auto r = driver_->Start(StartReq(id, image, memory_mb));
    ASSERT_TRUE(r.ok()) << r.status();
  }
  // kOtherProcesses, polled for up to 2 s until there are none (killed processes are reaped by
  // the sandbox's init an instant after they die).
  std::string OtherProcesses(const std::string& id) {
    std::string left;
    for (int i = 0; i < 20; ++i) {
      left = Sh(id, kOtherProcesses);
      if (left.empty()) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return left;
  }
  // Runs `cmd` and returns its stdout, failing the test on an error or a non-zero exit.
  std::string Sh(const std::string& id, const std::string& cmd) {
    auto r = driver_->Exec(id, Cmd(cmd));
    EXPECT_TRUE(r.ok()) << cmd << ": " << r.status();
    if (!r.ok()) return "";
    EXPECT_EQ(r->exit_code(), 0) << cmd << ": " << r->stderr();
    return r->stdout();
  }

  std::string registry_;
  std::string dir_;
  CountingFetcher fetcher_;
  std::unique_ptr<RuncDriver> driver_;
};

TEST_F(RuncDriverTest, StartExecStop) {
  Driver();
  auto started = driver_->Start(StartReq("sbx_a"));
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_FALSE(started->warm);
  EXPECT_TRUE(absl::StartsWith(started->image_digest, "sha256:"));
  EXPECT_EQ(driver_->Sandboxes(), std::vector<std::string>{"sbx_a"});
  auto r = driver_->Exec("sbx_a", Cmd("echo hello; echo oops >&2; exit 3"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout(), "hello\n");
  EXPECT_EQ(r->stderr(), "oops\n");
  EXPECT_EQ(r->exit_code(), 3);
  EXPECT_FALSE(r->stdout_truncated());
  // Idempotent start: the same answer, one sandbox.
  auto again = driver_->Start(StartReq("sbx_a"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->image_digest, started->image_digest);
  EXPECT_EQ(driver_->Sandboxes().size(), 1u);

  auto stopped = driver_->Stop("sbx_a");
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_TRUE(*stopped);
  EXPECT_TRUE(driver_->Sandboxes().empty());
  EXPECT_FALSE(PathExists(dir_ + "/sandboxes/sbx_a")) << "writable layer and bundle removed";
  EXPECT_TRUE(ListDir(dir_ + "/runc").empty()) << "runc state removed";
  EXPECT_FALSE(*driver_->Stop("sbx_a"));
  EXPECT_EQ(driver_->Exec("sbx_a", Cmd("true")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(driver_->Pause("sbx_a").code(), absl::StatusCode::kNotFound);
}

TEST_F(RuncDriverTest, ExecEnvCwdAndStdin) {
  Driver();
  auto req = StartReq("sbx_env");
  (*req.mutable_env())["FROM_START"] = "start";
  (*req.mutable_env())["BOTH"] = "start";
  ASSERT_TRUE(driver_->Start(req).ok());
  v1::ExecRequest exec = Cmd("echo $FROM_START $BOTH $ONLY_EXEC; pwd; cat; echo $PATH");
  (*exec.mutable_env())["BOTH"] = "exec";
  (*exec.mutable_env())["ONLY_EXEC"] = "a,b c";
  exec.set_cwd("/tmp");
  exec.set_stdin("from stdin\n");
  auto r = driver_->Exec("sbx_env", exec);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout(),
            "start exec a,b c\n/tmp\nfrom stdin\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
            "/sbin:/bin\n");
  EXPECT_EQ(r->exit_code(), 0);
  // A cwd that is not there is the caller's error, not the command's output.
  exec.set_cwd("/does/not/exist");
  auto bad = driver_->Exec("sbx_env", exec);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "/does/not/exist"));
  exec.set_cwd("relative");
  EXPECT_EQ(driver_->Exec("sbx_env", exec).status().code(), absl::StatusCode::kInvalidArgument);
  // Large stdin, larger than a pipe.
  v1::ExecRequest wc = Cmd("wc -c");
  wc.set_stdin(std::string(3 << 20, 'x'));
  auto counted = driver_->Exec("sbx_env", wc);
  ASSERT_TRUE(counted.ok());
  EXPECT_EQ(std::string(absl::StripAsciiWhitespace(counted->stdout())), "3145728");
}

TEST_F(RuncDriverTest, FilesPersistBetweenExecs) {
  Driver();
  Start("sbx_files");
  Sh("sbx_files", "echo kept > /root/note; mkdir -p /srv/data && echo 42 > /srv/data/x");
  EXPECT_EQ(Sh("sbx_files", "cat /root/note /srv/data/x"), "kept\n42\n");
  // The write went to the sandbox's own layer, not the shared image.
  EXPECT_TRUE(PathExists(dir_ + "/sandboxes/sbx_files/layer/upper/root/note"));
}

TEST_F(RuncDriverTest, TimeoutKillsTheWholeGroupWithExecTimeout) {
  Driver();
  Start("sbx_to");
  const absl::Time t0 = absl::Now();
  auto r = driver_->Exec("sbx_to", Cmd("sleep 101 & setsid sleep 102 & sleep 103", 2));
  const absl::Duration took = absl::Now() - t0;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_EQ(ReasonOf(r.status()), "EXEC_TIMEOUT");
  EXPECT_TRUE(absl::StrContains(r.status().message(), "after 2 s")) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "exec:stream")) << r.status();
  EXPECT_GE(took, absl::Seconds(2));
  EXPECT_LT(took, absl::Seconds(4));
  // Nothing the command started survives, not even what left its process group.
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(Sh("sbx_to", "ps -o args | grep -c '^sleep 10[123]' || true"), "0\n");
  for (const char* c : {"sleep 101", "sleep 102", "sleep 103"}) {
    EXPECT_TRUE(HostPidsRunning(c).empty()) << c;
  }
  // A command that exits normally may leave a daemon running, even one that keeps writing to
  // the exec's output.
  Sh("sbx_to", "sleep 317 >/dev/null 2>&1 &");
  ASSERT_EQ(WaitForHostPids("sleep 317").size(), 1u);
  EXPECT_EQ(Sh("sbx_to", "ps -o args | grep -c '^sleep 317'"), "1\n");
  const absl::Time t1 = absl::Now();
  // (What it writes in the moment after the shell exits may come along; the rest is dropped.)
  EXPECT_TRUE(absl::StrContains(
      Sh("sbx_to", "(while :; do echo tick; sleep 0.117; done) & echo started"), "started\n"));
  EXPECT_LT(absl::Now() - t1, absl::Seconds(1));
  absl::SleepFor(absl::Milliseconds(500));
  // (0.117: a marker no other test's process on this host carries.)
  EXPECT_EQ(WaitForHostPids("sleep 0.117").size(), 1u) << "the background writer died";
}

TEST_F(RuncDriverTest, DefaultTimeoutApplies) {
  RuncOptions o = Options();
  o.exec_default_timeout = absl::Seconds(1);  // 30 s in production; timeout_sec 0 means it
  Driver(o);
  Start("sbx_def");
  auto r = driver_->Exec("sbx_def", Cmd("sleep 10"));
  EXPECT_EQ(ReasonOf(r.status()), "EXEC_TIMEOUT");
  EXPECT_TRUE(absl::StrContains(r.status().message(), "after 1 s")) << r.status();
}

TEST_F(RuncDriverTest, OutputIsCappedAt16MiBAndMarkedTruncated) {
  Driver();
  Start("sbx_cap");
  auto r = driver_->Exec("sbx_cap", Cmd("head -c 20000000 /dev/zero; echo small >&2"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout().size(), size_t{16} << 20);
  EXPECT_TRUE(r->stdout_truncated());
  EXPECT_EQ(r->stderr(), "small\n");
  EXPECT_FALSE(r->stderr_truncated());
  EXPECT_EQ(r->exit_code(), 0);
}

TEST_F(RuncDriverTest, StreamDeliversOutputAsItComes) {
  Driver();
  Start("sbx_stream");
  const absl::Time t0 = absl::Now();
  std::vector<std::pair<absl::Duration, v1::ExecChunk>> chunks;
  auto code = driver_->ExecStream(
      "sbx_stream", Cmd("echo first; sleep 1.5; echo second >&2; exit 4"),
      [&](const v1::ExecChunk& c) {
        chunks.emplace_back(absl::Now() - t0, c);
        return true;
      },
      [] { return false; });
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 4);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].second.stdout(), "first\n");
  EXPECT_LT(chunks[0].first, absl::Seconds(1)) << "first line arrived only at the end";
  EXPECT_EQ(chunks[1].second.stderr(), "second\n");
  EXPECT_GE(chunks[1].first, absl::Milliseconds(1400));
}

TEST_F(RuncDriverTest, StreamHasNoDefaultTimeoutAndCancelKillsTheCommand) {
  RuncOptions o = Options();
  o.exec_default_timeout = absl::Seconds(1);
  Driver(o);
  Start("sbx_cancel");
  std::atomic<bool> cancel{false};
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(2500));  // past the (shortened) Exec default
    cancel = true;
  });
  std::string out;
  const absl::Time t0 = absl::Now();
  auto code = driver_->ExecStream(
      "sbx_cancel", Cmd("echo go; sleep 104 & sleep 105"),
      [&](const v1::ExecChunk& c) {
        out += c.stdout();
        return true;
      },
      [&] { return cancel.load(); });
  canceller.join();
  EXPECT_EQ(code.status().code(), absl::StatusCode::kCancelled) << code.status();
  EXPECT_EQ(out, "go\n");
  EXPECT_LT(absl::Now() - t0, absl::Seconds(4));
  EXPECT_TRUE(HostPidsRunning("sleep 104").empty());
  EXPECT_TRUE(HostPidsRunning("sleep 105").empty());
  // A receiver that goes away (Write fails) stops the command too.
  auto gone = driver_->ExecStream(
      "sbx_cancel", Cmd("while :; do echo tick; sleep 0.1; done"),
      [](const v1::ExecChunk&) { return false; }, [] { return false; });
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kCancelled);
}

TEST_F(RuncDriverTest, HibernateFreezesProcessesAndResumeContinuesThem) {
  Driver();
  Start("sbx_h");
  // A counter that lives in memory and writes its value out.
  Sh("sbx_h",
     "(i=0; while :; do i=$((i+1)); echo $i > /tmp/c; mv /tmp/c /tmp/count; "
     "sleep 0.05; done) >/dev/null 2>&1 &");
  const std::string count_file = dir_ + "/sandboxes/sbx_h/layer/upper/tmp/count";
  auto read_count = [&] {
    auto text = ReadFile(count_file);
    int n = -1;
    if (text.ok()) (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &n);
    return n;
  };
  absl::SleepFor(absl::Milliseconds(400));
  const int before = read_count();
  EXPECT_GT(before, 0);
  absl::Status paused = driver_->Pause("sbx_h");
  ASSERT_TRUE(paused.ok()) << paused;
  ASSERT_TRUE(driver_->Pause("sbx_h").ok()) << "idempotent";
  absl::SleepFor(absl::Milliseconds(200));
  const int frozen = read_count();
  absl::SleepFor(absl::Milliseconds(800));
  EXPECT_EQ(read_count(), frozen) << "the counter advanced while hibernated";
  auto exec = driver_->Exec("sbx_h", Cmd("true"));
  EXPECT_EQ(exec.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReasonOf(exec.status()), "SANDBOX_NOT_RUNNING");
  EXPECT_EQ(driver_->Sandboxes().size(), 1u) << "a hibernated sandbox is still reported";
  ASSERT_TRUE(driver_->Unpause("sbx_h").ok());
  ASSERT_TRUE(driver_->Unpause("sbx_h").ok()) << "idempotent";
  absl::SleepFor(absl::Milliseconds(400));
  const int after = read_count();
  // It continued from its in-memory value rather than starting over.
  EXPECT_GT(after, frozen);
  EXPECT_LT(after, frozen + 20);
  EXPECT_EQ(Sh("sbx_h", "echo alive"), "alive\n");
  // A paused sandbox can be destroyed.
  ASSERT_TRUE(driver_->Pause("sbx_h").ok());
  EXPECT_TRUE(*driver_->Stop("sbx_h"));
  EXPECT_FALSE(PathExists(dir_ + "/sandboxes/sbx_h"));
}

TEST_F(RuncDriverTest, RootInsideIsAnUnprivilegedUserOnTheHost) {
  Driver();
  Start("sbx_uid");
  EXPECT_EQ(Sh("sbx_uid", "id -u; id -g"), "0\n0\n");
  const int init = driver_->InitPid("sbx_uid");
  ASSERT_GT(init, 0);
  EXPECT_EQ(HostUidOf(init), 100000);
  Sh("sbx_uid", "sleep 106 >/dev/null 2>&1 &");
  auto pids = WaitForHostPids("sleep 106");
  ASSERT_EQ(pids.size(), 1u);
  EXPECT_EQ(HostUidOf(pids[0]), 100000);
  Sh("sbx_uid", "touch /root/mine");
  struct stat st;
  ASSERT_EQ(::stat((dir_ + "/sandboxes/sbx_uid/layer/upper/root/mine").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 100000u);
  // Root inside cannot do what needs host privileges.
  auto r = driver_->Exec("sbx_uid", Cmd("mount -t tmpfs none /mnt 2>&1; echo rc=$?"));
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(absl::StrContains(r->stdout(), "rc=0")) << r->stdout();
  auto caps = driver_->Exec("sbx_uid", Cmd("grep CapEff /proc/self/status"));
  ASSERT_TRUE(caps.ok());
  // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT
  EXPECT_EQ(caps->stdout(), "CapEff:\t00000000000405fb\n");
  EXPECT_EQ(Sh("sbx_uid", "grep NoNewPrivs /proc/self/status"), "NoNewPrivs:\t1\n");
}

TEST_F(RuncDriverTest, SandboxesShareNoFilesAndSeeNoOtherProcesses) {
  Driver();
  Start("sbx_one");
  Start("sbx_two");
  Sh("sbx_one", "echo secret > /tmp/secret; sleep 107 >/dev/null 2>&1 &");
  ASSERT_EQ(WaitForHostPids("sleep 107").size(), 1u);
  auto peek = driver_->Exec("sbx_two", Cmd("cat /tmp/secret"));
  ASSERT_TRUE(peek.ok());
  EXPECT_NE(peek->exit_code(), 0);
  EXPECT_EQ(peek->stdout(), "");
  // sbx_two sees only its own processes: its init and the ps itself.
  std::string ps = Sh("sbx_two", "ps -o pid,args");
  EXPECT_FALSE(absl::StrContains(ps, "sleep 107")) << ps;
  EXPECT_FALSE(absl::StrContains(ps, "runc")) << ps;
  EXPECT_FALSE(absl::StrContains(ps, "runner")) << ps;
  EXPECT_EQ(OtherProcesses("sbx_two"), "") << ps;
  EXPECT_EQ(Sh("sbx_one", kOtherProcesses), "sleep 107\n") << Sh("sbx_one", "ps -o pid,stat,args");
  EXPECT_EQ(Sh("sbx_two", "cat /proc/1/cmdline"), std::string("/dev/init\0agent\0", 16));
  EXPECT_EQ(Sh("sbx_two", "hostname"), "sandbox\n");
  // The host's files are not there either.
  EXPECT_EQ(Sh("sbx_two", "ls /work /var/lib/isorun 2>/dev/null | wc -l"), "0\n");
}

TEST_F(RuncDriverTest, CannotReachAServerOnTheHostsLoopback) {
  Driver();
  Start("sbx_net");
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 8), 0);
  socklen_t len = sizeof addr;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  auto r = driver_->Exec("sbx_net", Cmd(absl::StrCat("wget -q -T 2 -O - http://127.0.0.1:", port,
                                                     "/ 2>&1; echo rc=$?; "
                                                     "nc -w 2 127.0.0.1 ",
                                                     port, " </dev/null 2>&1; echo rc=$?")));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(std::count(r->stdout().begin(), r->stdout().end(), '\n') >= 2, true);
  EXPECT_FALSE(absl::StrContains(r->stdout(), "rc=0")) << r->stdout();
  pollfd pfd{listener, POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 200), 0) << "the host listener got a connection from the sandbox";
  ::close(listener);
  // Only loopback, up.
  std::string links = Sh("sbx_net", "ls /sys/class/net");
  EXPECT_EQ(links, "lo\n");
  EXPECT_TRUE(absl::StrContains(Sh("sbx_net", "ip addr show lo"), "127.0.0.1")) << "lo is up";
  // Loopback inside the sandbox works (a server on the sandbox's own localhost).
  EXPECT_EQ(Sh("sbx_net",
               "(echo pong | nc -l -p 8999 >/dev/null &) ; sleep 0.2; "
               "nc 127.0.0.1 8999 </dev/null"),
            "pong\n");
}

TEST_F(RuncDriverTest, AMemoryHogIsKilledAtMemoryMbAndReported) {
  Driver();
  Start("sbx_mem", "busybox:1.36", 64);
  const absl::Time t0 = absl::Now();
  auto r = driver_->Exec("sbx_mem", Cmd("dd if=/dev/zero of=/dev/null bs=200M count=1", 20));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
  EXPECT_EQ(r->exit_code(), 137) << r->stderr();
  EXPECT_TRUE(absl::StrContains(r->stderr(), "ran out of memory (memoryMb 64)")) << r->stderr();
  EXPECT_EQ(Sh("sbx_mem", "echo still here"), "still here\n");
  // Within the limit is fine.
  EXPECT_EQ(Sh("sbx_mem", "dd if=/dev/zero of=/dev/null bs=16M count=1 2>/dev/null; echo ok"),
            "ok\n");
}

TEST_F(RuncDriverTest, AForkBombIsStoppedAtThePidsLimitAndReported) {
  RuncOptions o = Options();
  o.pids_limit = 128;
  Driver(o);
  Start("sbx_bomb");
  // Forks until the limit, then keeps trying: stopped once it holds the sandbox at its limit.
  const absl::Time t0 = absl::Now();
  auto r = driver_->Exec("sbx_bomb", Cmd("while :; do sleep 108 & done", 25));
  const absl::Duration took = absl::Now() - t0;
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(took, absl::Seconds(10)) << "stopped at the limit, not at the timeout";
  EXPECT_EQ(r->exit_code(), 137);
  EXPECT_TRUE(absl::StrContains(r->stderr(), "limit of 128 processes")) << r->stderr();
  // The sandbox is usable again and nothing of the bomb is left.
  EXPECT_EQ(Sh("sbx_bomb", "echo ok"), "ok\n");
  EXPECT_EQ(OtherProcesses("sbx_bomb"), "");
  EXPECT_TRUE(HostPidsRunning("sleep 108").empty());
  // The classic exponential bomb, left running in the background by a shell that exits at once:
  // contained by the limit, and gone shortly (stopped, or dead of its own failed forks).
  auto bg = driver_->Exec("sbx_bomb", Cmd("bomb() { bomb | bomb & }; bomb", 25));
  ASSERT_TRUE(bg.ok()) << bg.status();
  std::string left = "?";
  for (int i = 0; i < 50 && !left.empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    auto ps = driver_->Exec("sbx_bomb", Cmd(kOtherProcesses));
    if (ps.ok() && ps->exit_code() == 0) left = ps->stdout();
  }
  EXPECT_EQ(left, "");
  EXPECT_EQ(Sh("sbx_bomb", "echo ok"), "ok\n");
}

TEST_F(RuncDriverTest, AnUnknownImageFailsNamingItAndLeavesNothing) {
  Driver();
  auto r = driver_->Start(StartReq("sbx_404", "nope:1.0"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "nope:1.0")) << r.status();
  EXPECT_EQ(ReasonOf(r.status()), "IMAGE_NOT_FOUND");
  auto by_digest = driver_->Start(StartReq("sbx_404", "busybox@sha256:" + std::string(64, '0')));
  EXPECT_EQ(by_digest.status().code(), absl::StatusCode::kNotFound) << by_digest.status();
  // A registry off the allow list is never contacted.
  auto unlisted = driver_->Start(StartReq("sbx_404", "127.0.0.1:1/busybox:1.36"));
  EXPECT_EQ(unlisted.status().code(), absl::StatusCode::kInvalidArgument) << unlisted.status();
  EXPECT_EQ(ReasonOf(unlisted.status()), "IMAGE_REGISTRY_NOT_ALLOWED");
  EXPECT_EQ(driver_->Start(StartReq("sbx_404", "Bad Ref")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(driver_->Start(StartReq("../escape", "busybox:1.36")).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto bad_env = StartReq("sbx_404");
  (*bad_env.mutable_env())["A=B"] = "x";
  EXPECT_EQ(driver_->Start(bad_env).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(driver_->Sandboxes().empty());
  EXPECT_TRUE(driver_->Images().empty());
  EXPECT_TRUE(ListDir(dir_ + "/sandboxes").empty());
  EXPECT_TRUE(ListDir(dir_ + "/runc").empty());
  EXPECT_TRUE(ListDir(dir_ + "/images/tmp").empty());
}

TEST_F(RuncDriverTest, ConcurrentColdStartsPullOnceAndTheNextStartIsWarm) {
  Driver();
  std::vector<std::thread> threads;
  std::atomic<int> ok{0}, warm{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto r = driver_->Start(StartReq(absl::StrCat("sbx_c", i), "fat:1.0"));
      EXPECT_TRUE(r.ok()) << r.status();
      if (r.ok()) ++ok;
      if (r.ok() && r->warm) ++warm;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4);
  EXPECT_EQ(warm.load(), 0);
  EXPECT_EQ(fetcher_.fetches.load(), 1);
  EXPECT_EQ(fetcher_.resolves.load(), 1);
  auto images = driver_->Images();
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0].sandboxes, 4);
  EXPECT_GT(images[0].size_bytes, 40 << 20);
  // All four share one copy of the image: each has only its own small writable layer (a
  // sparse filesystem image: its metadata, about 1.2 MiB), as have the two kept ready.
  EXPECT_LT(DiskUsage(dir_ + "/sandboxes") + DiskUsage(dir_ + "/layers"), 6 * (2 << 20));
  auto warm_start = driver_->Start(StartReq("sbx_c9", "fat:1.0"));
  ASSERT_TRUE(warm_start.ok());
  EXPECT_TRUE(warm_start->warm);
  EXPECT_EQ(fetcher_.fetches.load(), 1);
  EXPECT_EQ(fetcher_.resolves.load(), 1);
  // The same image by digest and by its full name: warm, no registry call.
  const std::string digest = warm_start->image_digest;
  auto pinned = driver_->Start(StartReq("sbx_c10", "fat@" + digest));
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_TRUE(pinned->warm);
  auto full = driver_->Start(StartReq("sbx_c11", registry_ + "/fat:1.0"));
  ASSERT_TRUE(full.ok());
  EXPECT_TRUE(full->warm);
  EXPECT_EQ(fetcher_.resolves.load() + fetcher_.fetches.load(), 2);
  std::vector<std::string> refs = driver_->Images()[0].refs;
  for (const std::string& want :
       {std::string("fat:1.0"), registry_ + "/fat:1.0", "fat@" + digest}) {
    EXPECT_NE(std::find(refs.begin(), refs.end(), want), refs.end()) << want;
  }
}

TEST_F(RuncDriverTest, EvictionUnderTheBudgetSkipsImagesInUse) {
  RuncOptions o = Options();
  o.image_cache_bytes = 30 << 20;  // busybox (~2 MB) fits, fat (~50 MB) does not
  Driver(o);
  Start("sbx_e1");
  ASSERT_TRUE(*driver_->Stop("sbx_e1"));
  ASSERT_EQ(driver_->Images().size(), 1u) << "busybox stays cached while under budget";
  Start("sbx_e2", "fat:1.0");  // over budget: unused busybox goes, fat is in use and stays
  auto images = driver_->Images();
  ASSERT_EQ(images.size(), 1u);
  const std::string fat = images[0].digest;
  Start("sbx_e3");  // busybox again: a new pull; both in use, so both stay, over budget
  EXPECT_EQ(driver_->Images().size(), 2u);
  EXPECT_EQ(fetcher_.fetches.load(), 3);
  EXPECT_EQ(Sh("sbx_e2", "ls -l /opt/fat/blob.bin | wc -l"), "1\n") << "fat still usable";
  ASSERT_TRUE(*driver_->Stop("sbx_e2"));  // fat unused now: evicted at once
  images = driver_->Images();
  ASSERT_EQ(images.size(), 1u);
  EXPECT_NE(images[0].digest, fat);
  EXPECT_LE(driver_->image_cache().total_bytes(), 30 << 20);
  EXPECT_FALSE(PathExists(dir_ + "/images/" + fat.substr(7)));
}

TEST_F(RuncDriverTest, ARestartKeepsTheCacheAndFindsItsSandboxes) {
  Driver();
  Start("sbx_keep");
  Start("sbx_dies");
  Start("sbx_paused");
  ASSERT_TRUE(driver_->Pause("sbx_paused").ok());
  Sh("sbx_keep", "echo survived > /root/f");
  const std::string digest = driver_->Images().at(0).digest;
  // The runner process goes away; its containers do not. One of them dies meanwhile.
  driver_.reset();
  auto kill = RunCaptured({"runc", "--root", dir_ + "/runc", "kill", "sbx_dies", "KILL"},
                          absl::Seconds(10));
  ASSERT_TRUE(kill.ok() && kill->exit_code == 0) << (kill.ok() ? kill->err : "");
  absl::SleepFor(absl::Milliseconds(200));

  CountingFetcher fresh;
  auto again = RuncDriver::Create(Options(), fresh);
  ASSERT_TRUE(again.ok()) << again.status();
  driver_ = std::move(*again);
  std::vector<std::string> ids = driver_->Sandboxes();
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<std::string>{"sbx_keep", "sbx_paused"}));
  EXPECT_FALSE(PathExists(dir_ + "/sandboxes/sbx_dies")) << "remains of the dead one removed";
  EXPECT_EQ(Sh("sbx_keep", "cat /root/f"), "survived\n");
  // Its exec agent's channel went with the old process: execs now go through `runc exec` (whose
  // command's parent is outside the sandbox's pid namespace: PPID 0), still under the filter.
  EXPECT_EQ(Sh("sbx_keep", "echo $PPID; grep Seccomp: /proc/self/status"), "0\nSeccomp:\t2\n");
  EXPECT_EQ(ReasonOf(driver_->Exec("sbx_paused", Cmd("true")).status()), "SANDBOX_NOT_RUNNING");
  ASSERT_TRUE(driver_->Unpause("sbx_paused").ok());
  EXPECT_EQ(Sh("sbx_paused", "echo back"), "back\n");
  auto images = driver_->Images();
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0].digest, digest);
  EXPECT_EQ(images[0].sandboxes, 2);
  auto warm = driver_->Start(StartReq("sbx_new"));
  ASSERT_TRUE(warm.ok());
  EXPECT_TRUE(warm->warm);
  EXPECT_EQ(Sh("sbx_new", "echo $PPID"), "1\n") << "a new sandbox has its agent";
  EXPECT_EQ(fresh.resolves.load() + fresh.fetches.load(), 0);
  EXPECT_TRUE(*driver_->Stop("sbx_keep"));
}

TEST_F(RuncDriverTest, ASandboxWhoseContainerDiedIsNoLongerReported) {
  Driver();
  Start("sbx_v1");
  Start("sbx_v2");
  auto kill =
      RunCaptured({"runc", "--root", dir_ + "/runc", "kill", "sbx_v1", "KILL"}, absl::Seconds(10));
  ASSERT_TRUE(kill.ok() && kill->exit_code == 0);
  std::vector<std::string> ids;
  for (int i = 0; i < 40; ++i) {
    ids = driver_->Sandboxes();
    if (ids.size() == 1) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(ids, std::vector<std::string>{"sbx_v2"});
  EXPECT_FALSE(PathExists(dir_ + "/sandboxes/sbx_v1"));
  EXPECT_EQ(driver_->Exec("sbx_v1", Cmd("true")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(driver_->Images().at(0).sandboxes, 1);
}

TEST_F(RuncDriverTest, ExecsRunThroughTheAgentUnderTheFilterAndLimits) {
  Driver();
  Start("sbx_ag");
  // The command is a child of the sandbox's init (PPID 1), not of a `runc exec` outside the
  // sandbox (PPID 0), runs under the syscall filter, as the sandbox's root, in a session of
  // its own, and in the sandbox's cgroups.
  EXPECT_EQ(Sh("sbx_ag",
               "echo $PPID; grep Seccomp: /proc/self/status; id -u; "
               "[ \"$(cut -d' ' -f6 /proc/$$/stat)\" = $$ ] && echo session-leader"),
            "1\nSeccomp:\t2\n0\nsession-leader\n");
  const int init = driver_->InitPid("sbx_ag");
  ASSERT_GT(init, 0);
  Sh("sbx_ag", "sleep 109 >/dev/null 2>&1 &");
  auto pids = WaitForHostPids("sleep 109");
  ASSERT_EQ(pids.size(), 1u);
  auto init_cgroup = ReadFile(absl::StrCat("/proc/", init, "/cgroup"));
  auto cmd_cgroup = ReadFile(absl::StrCat("/proc/", pids[0], "/cgroup"));
  ASSERT_TRUE(init_cgroup.ok() && cmd_cgroup.ok());
  for (absl::string_view line : absl::StrSplit(*init_cgroup, '\n', absl::SkipEmpty())) {
    // memory, pids, cpu...: the sandbox's own; freezer: the exec's, below the sandbox's.
    std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    ASSERT_EQ(f.size(), 3u);
    EXPECT_TRUE(absl::StrContains(*cmd_cgroup, absl::StrCat(f[0], ":", f[1], ":", f[2])))
        << line << " not in\n" << *cmd_cgroup;
  }
  // Many at once, each with its own output.
  std::vector<std::thread> threads;
  std::atomic<int> right{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      v1::ExecRequest r = Cmd("echo $N; cat >&2");
      (*r.mutable_env())["N"] = absl::StrCat("n", i);
      r.set_stdin(absl::StrCat("in", i));
      auto out = driver_->Exec("sbx_ag", r);
      if (out.ok() && out->stdout() == absl::StrCat("n", i, "\n") &&
          out->stderr() == absl::StrCat("in", i)) {
        ++right;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(right.load(), 8);
  // A shell that is not there is the sandbox's problem, reported as such.
  EXPECT_EQ(Sh("sbx_ag", "exit 0"), "");
  auto code = driver_->Exec("sbx_ag", Cmd("exit 7"));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(code->exit_code(), 7);
  auto killed = driver_->Exec("sbx_ag", Cmd("kill -9 $$"));
  ASSERT_TRUE(killed.ok());
  EXPECT_EQ(killed->exit_code(), 137);
}

TEST_F(RuncDriverTest, TheAgentsChannelIsOutOfTheSandboxsReach) {
  Driver();
  Start("sbx_probe");
  auto probe = ReadFile(ISORUN_CHANNEL_PROBE);
  ASSERT_TRUE(probe.ok()) << probe.status();
  v1::ExecRequest copy = Cmd("cat > /tmp/probe && chmod 755 /tmp/probe");
  copy.set_stdin(*probe);
  auto copied = driver_->Exec("sbx_probe", copy);
  ASSERT_TRUE(copied.ok() && copied->exit_code() == 0) << copied.status();
  // Against PID 1 (the agent, holding the channel as fd 3): every way is blocked.
  auto r = driver_->Exec("sbx_probe", Cmd("/tmp/probe"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code(), 0) << r->stdout() << r->stderr();
  for (const char* way : {"readlink_proc_fd", "open_proc_fd", "open_proc_mem", "pidfd_getfd",
                          "process_vm_readv", "ptrace_seize", "inherited_fds"}) {
    EXPECT_TRUE(absl::StrContains(r->stdout(), absl::StrCat(way, " blocked"))) << way << "\n"
                                                                               << r->stdout();
  }
  // The control: against an ordinary process of the same sandbox, the /proc and ptrace ways
  // work, so what stops them above is PID 1 being non-dumpable, not the probe.
  auto control = driver_->Exec(
      "sbx_probe", Cmd("sleep 30 & p=$!; sleep 0.2; /tmp/probe $p; kill $p"));
  ASSERT_TRUE(control.ok()) << control.status();
  for (const char* way : {"readlink_proc_fd", "open_proc_fd", "open_proc_mem", "process_vm_readv",
                          "ptrace_seize"}) {
    EXPECT_TRUE(absl::StrContains(control->stdout(), absl::StrCat(way, " REACHED")))
        << way << "\n" << control->stdout();
  }
  // And the agent still serves.
  EXPECT_EQ(Sh("sbx_probe", "echo $PPID"), "1\n");
}

TEST_F(RuncDriverTest, AKilledAgentIsDetectedAndTheSandboxReported) {
  Driver();
  Start("sbx_dead");
  Start("sbx_alive");
  const int init = driver_->InitPid("sbx_dead");
  ASSERT_GT(init, 0);
  // A command running when the agent (the sandbox's PID 1) dies ends with the sandbox.
  std::atomic<bool> done{false};
  absl::Status streamed;
  std::thread running([&] {
    auto code = driver_->ExecStream(
        "sbx_dead", Cmd("echo up; sleep 60"), [](const v1::ExecChunk&) { return true; },
        [] { return false; });
    streamed = code.status();
    done = true;
  });
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_EQ(::kill(init, SIGKILL), 0);
  // Noticed without anyone asking (no Sandboxes() call): the watcher tears it down.
  for (int i = 0; i < 100 && driver_->InitPid("sbx_dead") != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(driver_->InitPid("sbx_dead"), 0);
  EXPECT_FALSE(PathExists(dir_ + "/sandboxes/sbx_dead"));
  for (int i = 0; i < 100 && !done; ++i) absl::SleepFor(absl::Milliseconds(50));
  running.join();
  EXPECT_EQ(ReasonOf(streamed), "SANDBOX_NOT_RUNNING") << streamed;
  // Reported as gone (the lifecycle marks such sandboxes LOST), and no exec falls back to runc.
  EXPECT_EQ(driver_->Sandboxes(), std::vector<std::string>{"sbx_alive"});
  EXPECT_EQ(driver_->Exec("sbx_dead", Cmd("true")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Sh("sbx_alive", "echo $PPID"), "1\n");
}

TEST_F(RuncDriverTest, PullWarmsTheCacheWithoutASandbox) {
  Driver();
  auto pulled = driver_->Pull("fat:1.0");
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_TRUE(absl::StartsWith(pulled->digest, "sha256:"));
  EXPECT_EQ(pulled->sandboxes, 0);
  EXPECT_GT(pulled->size_bytes, 40 << 20);
  EXPECT_TRUE(driver_->Sandboxes().empty());
  auto started = driver_->Start(StartReq("sbx_pw", "fat:1.0"));
  ASSERT_TRUE(started.ok());
  EXPECT_TRUE(started->warm);
  EXPECT_EQ(fetcher_.fetches.load(), 1);
  EXPECT_EQ(driver_->Pull("nope:1").status().code(), absl::StatusCode::kNotFound);
}

// Writable layers are formatted and mounted ahead of time (off the start path), one per sandbox,
// never reused: what one sandbox wrote never shows in the next one's layer.
TEST_F(RuncDriverTest, DiskLayersAreMadeAheadAndNeverShared) {
  Driver();
  auto ready = [&](int size_mb, int n) {
    for (int i = 0; i < 500 && driver_->disk_layers().ReadyCount(size_mb) < n; ++i) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    return driver_->disk_layers().ReadyCount(size_mb);
  };
  ASSERT_EQ(ready(2048, 2), 2);
  Start("sbx_l1");
  auto used_kb = [&](const std::string& id) {
    int kb = -1;
    EXPECT_TRUE(absl::SimpleAtoi(
        absl::StripAsciiWhitespace(Sh(id, "df -k / | tail -1 | awk '{print $3}'")), &kb));
    return kb;
  };
  const int fresh_kb = used_kb("sbx_l1");
  Sh("sbx_l1", "echo secret > /root/mine; dd if=/dev/zero of=/root/blob bs=1M count=4; sync");
  EXPECT_GE(used_kb("sbx_l1"), fresh_kb + 4096);
  char target[PATH_MAX];
  ssize_t n = ::readlink((dir_ + "/sandboxes/sbx_l1/layer").c_str(), target, sizeof target - 1);
  ASSERT_GT(n, 0);
  const std::string layer1(target, static_cast<size_t>(n));
  EXPECT_TRUE(absl::StartsWith(layer1, dir_ + "/layers/2048-"));
  // The pool makes up for the one taken.
  EXPECT_EQ(ready(2048, 2), 2);
  ASSERT_TRUE(*driver_->Stop("sbx_l1"));
  // The stopped sandbox's layer goes, image and all (on the pool's thread, soon after).
  for (int i = 0; i < 250 && (PathExists(layer1 + ".img") || PathExists(layer1)); ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_FALSE(PathExists(layer1 + ".img"));
  EXPECT_FALSE(PathExists(layer1));
  Start("sbx_l2");
  EXPECT_EQ(Sh("sbx_l2", "ls -A /root"), "");
  EXPECT_LT(used_kb("sbx_l2"), fresh_kb + 1024);
  n = ::readlink((dir_ + "/sandboxes/sbx_l2/layer").c_str(), target, sizeof target - 1);
  ASSERT_GT(n, 0);
  EXPECT_NE(std::string(target, static_cast<size_t>(n)), layer1);
  // Another size: made on the start path once, then kept ready too.
  auto odd = StartReq("sbx_l3");
  odd.set_disk_mb(96);
  ASSERT_TRUE(driver_->Start(odd).ok());
  EXPECT_EQ(Sh("sbx_l3", "df -m / | tail -1 | awk '{print $2 <= 96 ? \"capped\" : $2}'"),
            "capped\n");
  EXPECT_EQ(ready(96, 2), 2);
  // A new driver on the same folder (a restarted runner) keeps the running sandboxes' layers and
  // removes the ready ones the old one left.
  const std::string layer2(target, static_cast<size_t>(n));
  driver_.reset();
  Driver();
  EXPECT_TRUE(PathExists(layer2 + ".img"));
  EXPECT_EQ(Sh("sbx_l2", "echo still > /root/x && cat /root/x"), "still\n");
  int images = 0;
  for (const auto& name : ListDir(dir_ + "/layers")) images += absl::EndsWith(name, ".img");
  EXPECT_LE(images, 2 + 2);  // sbx_l2's, sbx_l3's and at most what the new pool made so far
}

TEST_F(RuncDriverTest, WarmStartAndExecTimings) {
  Driver();
  Start("sbx_t0");  // cold
  std::vector<absl::Duration> starts, execs, stops;
  for (int i = 0; i < 10; ++i) {
    const std::string id = absl::StrCat("sbx_t", i + 1);
    absl::Time t = absl::Now();
    auto r = driver_->Start(StartReq(id));
    starts.push_back(absl::Now() - t);
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r->warm);
    t = absl::Now();
    auto e = driver_->Exec(id, Cmd("true"));
    execs.push_back(absl::Now() - t);
    ASSERT_TRUE(e.ok()) << e.status();
    t = absl::Now();
    ASSERT_TRUE(*driver_->Stop(id));
    stops.push_back(absl::Now() - t);
  }
  for (int i = 0; i < 20; ++i) {
    absl::Time t = absl::Now();
    auto e = driver_->Exec("sbx_t0", Cmd("true"));
    ASSERT_TRUE(e.ok()) << e.status();
    execs.push_back(absl::Now() - t);
  }
  auto median = [](std::vector<absl::Duration> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double start_ms = absl::ToDoubleMilliseconds(median(starts));
  const double exec_ms = absl::ToDoubleMilliseconds(median(execs));
  const double stop_ms = absl::ToDoubleMilliseconds(median(stops));
  std::printf("warm_start_p50_ms=%.1f exec_p50_ms=%.1f stop_p50_ms=%.1f\n", start_ms, exec_ms,
              stop_ms);
  RecordProperty("warm_start_p50_ms", std::to_string(start_ms));
  RecordProperty("exec_p50_ms", std::to_string(exec_ms));
  // Figures only: speed is judged by `./isorun bench start` against the machine's own floor,
  // not by a fixed bound in a test (a busy machine moved these past any bound that still says
  // something: each start now also formats and mounts the sandbox's disk, and runc compiles the
  // syscall filter for every start and exec).
}

}  // namespace
}  // namespace isorun::runner
