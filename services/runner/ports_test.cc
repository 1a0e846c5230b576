#include "services/runner/ports.h"

#include <unistd.h>

#include "gtest/gtest.h"

namespace isorun::runner {
namespace {

TEST(Ports, ReadsListenEntriesOnly) {
  // Taken from a real /proc/net/tcp and tcp6: 127.0.0.1:8080 and *:3000 listen; one entry is
  // an established connection (01) from port 40000, which is not a listener.
  const char* tcp =
      "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
      "inode\n"
      "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
      "1 1 0000000000000000 100 0 0 10 0\n"
      "   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 "
      "2 1 0000000000000000 20 4 30 10 -1\n";
  const char* tcp6 =
      "  sl  local_address                         remote_address                        st\n"
      "   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A "
      "00000000:00000000 00:00000000 00000000     0        0 3 1\n";
  std::vector<int> ports;
  AppendListeningPorts(tcp, ports);
  AppendListeningPorts(tcp6, ports);
  EXPECT_EQ(ports, (std::vector<int>{8080, 3000}));
}

TEST(Ports, IgnoresGarbage) {
  std::vector<int> ports;
  AppendListeningPorts("header\nnot a line\n 0: zz:zz 0 0A\n 1: 00:0000 00:0000 0A\n", ports);
  EXPECT_TRUE(ports.empty());
}

TEST(Ports, ReadsThisProcess) {
  auto ports = ListeningPorts(static_cast<int>(::getpid()));
  ASSERT_TRUE(ports.ok()) << ports.status();
  EXPECT_TRUE(std::is_sorted(ports->begin(), ports->end()));
}

}  // namespace
}  // namespace isorun::runner
