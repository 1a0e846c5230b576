#pragma once

// Test support for suites that run real sandboxes (*_e2etest.cc): host checks, a registry with
// the test images, and scratch directories that are cleaned up with their containers.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/runner/skopeo_fetcher.h"

namespace isorun::runner::testing {

// Why real sandboxes cannot run here ("" when they can): root, user namespaces, overlayfs,
// runc, skopeo, umoci, docker-registry, busybox-static, loop devices and mkfs.ext4.
const std::string& RuncUnavailableReason();

// Skips the current test, saying why, on hosts that cannot run real sandboxes.
#define ISORUN_REQUIRE_RUNC()                                                    \
  do {                                                                           \
    const std::string& why = ::isorun::runner::testing::RuncUnavailableReason(); \
    if (!why.empty()) GTEST_SKIP() << "needs real sandboxes: " << why;           \
  } while (0)

// host:port of this process's registry, with busybox:1.36 and fat:1.0 pushed. Started on first
// use on a free loopback port (scripts/registry.sh serve, in a temporary directory; images built
// once into $ISORUN_TEST_IMAGES_DIR, default /tmp/isorun-test-images); killed when the process
// exits, even by a crash (PR_SET_PDEATHSIG).
absl::StatusOr<std::string> TestRegistryAddress();

// Fetcher options for this process's registry: it serves plain HTTP, so it is the one registry
// reached without TLS verification.
SkopeoOptions TestSkopeoOptions();

// The static sandbox init built beside the tests.
std::string SandboxInitPath();

// A new directory under /tmp that sandboxes can traverse (mode 0711).
std::string MakeScratchDir(const std::string& prefix);

// Deletes every container of runc root `dir`/runc, unmounts the overlays of `dir`/sandboxes/*,
// and removes `dir`.
void RemoveScratchDir(const std::string& dir);

// A TCP port on 127.0.0.1 that is free right now.
int FreeLoopbackPort();

// Whether something accepts connections on 127.0.0.1:`port`.
bool LoopbackPortOpen(int port);

// Host pids whose command line is exactly `cmdline` (arguments joined by spaces).
std::vector<int> HostPidsRunning(const std::string& cmdline);

}  // namespace isorun::runner::testing
