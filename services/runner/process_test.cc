#include "services/runner/process.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

namespace isorun::runner {
namespace {

TEST(Process, CapturesStdoutStderrAndExitCode) {
  auto r = RunCaptured({"/bin/sh", "-c", "echo out; echo err >&2; exit 7"}, absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
  EXPECT_EQ(r->exit_code, 7);
  EXPECT_FALSE(r->timed_out);
}

TEST(Process, FeedsStdin) {
  ProcessOptions o;
  o.argv = {"/bin/sh", "-c", "wc -c"};
  o.stdin_data = std::string(1 << 20, 'x');  // more than a pipe holds
  std::string out;
  o.on_output = [&](int fd, std::string_view d) {
    if (fd == 1) out.append(d);
    return true;
  };
  auto r = RunProcess(o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(std::stoi(out), 1 << 20);
}

TEST(Process, ChildThatIgnoresStdinDoesNotBlockOrKillUs) {
  ProcessOptions o;
  o.argv = {"/bin/true"};
  o.stdin_data = std::string(4 << 20, 'x');
  auto r = RunProcess(o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_code, 0);
}

TEST(Process, DeadlineKillsTheWholeSession) {
  ProcessOptions o;
  o.argv = {"/bin/sh", "-c", "sleep 100 & sleep 100; echo never"};
  o.deadline = absl::Now() + absl::Milliseconds(300);
  bool on_kill = false;
  o.on_kill = [&] { on_kill = true; };
  std::string out;
  o.on_output = [&](int, std::string_view d) {
    out.append(d);
    return true;
  };
  auto r = RunProcess(o);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->timed_out);
  EXPECT_TRUE(on_kill);
  EXPECT_EQ(r->exit_code, 128 + 9);
  EXPECT_LT(r->elapsed, absl::Seconds(2)) << "the background sleep must not hold the pipes";
  EXPECT_EQ(out, "");
}

TEST(Process, CancelStopsTheChild) {
  ProcessOptions o;
  o.argv = {"/bin/sh", "-c", "echo started; sleep 100"};
  bool seen = false;
  o.on_output = [&](int, std::string_view) {
    seen = true;
    return true;
  };
  o.cancelled = [&] { return seen; };
  auto r = RunProcess(o);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->cancelled);
  EXPECT_LT(r->elapsed, absl::Seconds(2));
}

TEST(Process, OutputArrivesBeforeExit) {
  ProcessOptions o;
  o.argv = {"/bin/sh", "-c", "echo first; sleep 1; echo second"};
  absl::Time start = absl::Now();
  absl::Duration first_at;
  o.on_output = [&](int, std::string_view d) {
    if (d.substr(0, 5) == "first") first_at = absl::Now() - start;
    return true;
  };
  auto r = RunProcess(o);
  ASSERT_TRUE(r.ok());
  EXPECT_LT(first_at, absl::Milliseconds(500));
  EXPECT_GE(r->elapsed, absl::Seconds(1));
}

TEST(Process, ABackgroundProcessHoldingThePipesDoesNotHoldTheCaller) {
  auto r = RunCaptured({"/bin/sh", "-c", "sleep 5 & echo done"}, absl::Seconds(10));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->out, "done\n");
  EXPECT_EQ(r->exit_code, 0);
}

TEST(Process, ABackgroundWriterOutlivesTheCommandWithoutSigpipe) {
  char tmpl[] = "/tmp/isorun-process-test.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string done = std::string(tmpl) + "/done";
  // Keeps writing to its stdout (our pipe) well after the shell has exited.
  auto r = RunCaptured(
      {"/bin/sh", "-c",
       "(for i in 1 2 3 4 5 6; do echo tick; sleep 0.1; done; touch " + done + ") & echo started"},
      absl::Seconds(10));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->out.substr(0, 8), "started\n");
  bool finished = false;
  for (int i = 0; i < 50 && !finished; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    finished = ::access(done.c_str(), F_OK) == 0;
  }
  EXPECT_TRUE(finished) << "the background writer died (SIGPIPE?)";
  ::unlink(done.c_str());
  ::rmdir(tmpl);
}

TEST(Process, MissingBinary) {
  auto r = RunCaptured({"/nonexistent/binary"}, absl::Seconds(1));
  EXPECT_FALSE(r.ok());
}

TEST(Process, ShellQuote) {
  EXPECT_EQ(ShellQuote({"runc", "exec", "a b", "it's"}), "runc exec 'a b' 'it'\\''s'");
}

}  // namespace
}  // namespace isorun::runner
