#pragma once

// The runner's end of the public-URL proxy: a TCP listener (--tunnel_addr) that opens a
// connection to a port inside a sandbox and relays bytes both ways.
//
// Only the control plane may use it, so the listener is not an open relay into sandboxes:
// - With TLS material (--tls_cert_file/--tls_key_file/--tls_ca_file, --tls not false) every
//   connection is mutual TLS (services/kit/tunnel_tls.h): a client without a certificate of the
//   CA fails the handshake, and one whose identity is not `gateway` gets `ERR AUTH` and is closed
//   before anything else is read.
// - The shared secret (--tunnel_token, ISORUN_TUNNEL_TOKEN; the gateway has the same) is then
//   optional: when set it is checked as well. Without TLS it is required; it is compared in
//   constant time.
//
// Protocol (one connection, one tunnel). The client sends one line, at most 512 bytes:
//   ISORUN-TUNNEL/1 <token, or - without one> <sandbox id> <port>\n
// and the runner answers one line:
//   OK\n                         then bytes flow both ways until either side closes
//   ERR AUTH\n                   wrong token or identity (then closed)
//   ERR NO_SANDBOX\n             the runner has no running sandbox of that id
//   ERR REFUSED <port>\n         nothing listens on that port in the sandbox
//   ERR BAD_REQUEST\n            a malformed line
// The connection to the port is made from inside the sandbox's network namespace: a dedicated
// thread enters /proc/<init pid>/ns/net, creates the socket and returns to the host's namespace;
// the socket stays in the sandbox's namespace, so 127.0.0.1 there is the sandbox's loopback and
// servers that listen on it only are reached on the first try, with no agent in the sandbox.

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace boost::asio::ssl {
class context;
}

namespace isorun::runner {

struct TunnelOptions {
  std::string address = "127.0.0.1:0";  // host:port; port 0 picks one
  std::string token;  // required without TLS (at least 16 characters); checked when set
  // TLS material (http::TunnelTlsContext(true)); null: plain TCP.
  std::shared_ptr<boost::asio::ssl::context> tls;
  int threads = 2;
  absl::Duration preamble_timeout = absl::Seconds(5);
  absl::Duration connect_timeout = absl::Seconds(5);
};

// The pid of a process in the sandbox's network namespace (its init), 0 when the runner has no
// such running sandbox.
using NetnsPidLookup = std::function<int(const std::string& sandbox_id)>;

class TunnelServer {
 public:
  static absl::StatusOr<std::unique_ptr<TunnelServer>> Start(TunnelOptions options,
                                                             NetnsPidLookup lookup);
  ~TunnelServer();
  int port() const;
  int open_tunnels() const;
  void Stop();

  struct Impl;

 private:
  explicit TunnelServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Creates a TCP socket (non-blocking, close-on-exec) of `family` in the network namespace of
// process `pid`, on a dedicated thread (setns changes only the calling thread's namespace, and
// that thread must be back in the host's namespace before it does anything else). Returns the
// fd or -errno.
int SocketInNetns(int pid, int family);

}  // namespace isorun::runner
