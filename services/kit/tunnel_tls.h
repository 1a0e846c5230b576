#pragma once

// Mutual TLS on the public-URL tunnel (the gateway's proxy -> a runner's tunnel listener). The
// tunnel is no gRPC connection, so it does its own TLS with the same material and the same
// identity rule as gRPC (services/kit/tls.h): with --tls_cert_file, --tls_key_file and
// --tls_ca_file set (and --tls not false) both ends speak TLS 1.2 or later (1.3 when both can),
// each presents its certificate and requires one of the CA from the other, and each admits one
// identity only: the runner the `gateway`, the gateway the `runner`.
//
// TunnelStream is a TCP stream (beast::basic_stream, so timeouts work as elsewhere) that is
// either plain or TLS (asio's ssl::stream over it); it meets Asio's AsyncReadStream and
// AsyncWriteStream, so Beast's HTTP parser and asio::async_write run on it unchanged.

#include <openssl/ssl.h>

#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "services/kit/http_front.h"

namespace isorun::http {

namespace ssl = boost::asio::ssl;

// A context for the tunnel's server (runner) or client (gateway) side from this process's TLS
// material; nullptr when TLS is off. Errors name what could not be used.
absl::StatusOr<std::shared_ptr<ssl::context>> TunnelTlsContext(bool server);

// The identity of a certificate: its URI SAN isorun://NAME, else its common name; empty if none.
std::string CertificateIdentity(X509* cert);

class TunnelStream {
 public:
  using executor_type = Executor;

  // `tls` null: plain TCP. The context must outlive the stream.
  TunnelStream(Executor executor, ssl::context* tls);
  TunnelStream(Stream&& tcp, ssl::context* tls);

  executor_type get_executor() { return tcp().get_executor(); }
  Stream& tcp() { return tls_ ? tls_->next_layer() : *plain_; }
  Socket& socket() { return tcp().socket(); }
  bool tls() const { return tls_ != nullptr; }

  template <class Duration>
  void expires_after(Duration d) {
    tcp().expires_after(d);
  }
  void expires_never() { tcp().expires_never(); }
  void close() { tcp().close(); }
  template <class Token>
  auto async_connect(const tcp::endpoint& endpoint, Token&& token) {
    return tcp().async_connect(endpoint, std::forward<Token>(token));
  }

  // The TLS handshake (a no-op that completes at once when plain), then the peer's identity
  // check: `done` gets an error when the handshake fails or the peer is not `identity` (the
  // error's message names who it was).
  void Handshake(ssl::stream_base::handshake_type type, std::string identity,
                 std::function<void(beast::error_code, std::string peer)> done);

  // A TLS peer that closes the TCP connection without close_notify reads as end of stream here,
  // as on plain TCP: what the tunnel carries (HTTP, a WebSocket) frames its own messages.
  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& buffers, Token&& token) {
    return asio::async_initiate<Token, void(beast::error_code, size_t)>(
        [this](auto handler, const MutableBuffers& b) {
          if (!tls_) return plain_->async_read_some(b, std::move(handler));
          tls_->async_read_some(
              b, [h = std::move(handler), keep = tls_](beast::error_code ec, size_t n) mutable {
                if (ec == ssl::error::stream_truncated) ec = asio::error::eof;
                std::move(h)(ec, n);
              });
        },
        token, buffers);
  }

  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& buffers, Token&& token) {
    return asio::async_initiate<Token, void(beast::error_code, size_t)>(
        [this](auto handler, const ConstBuffers& b) {
          if (!tls_) return plain_->async_write_some(b, std::move(handler));
          tls_->async_write_some(
              b, [h = std::move(handler), keep = tls_](beast::error_code ec, size_t n) mutable {
                std::move(h)(ec, n);
              });
        },
        token, buffers);
  }

 private:
  std::optional<Stream> plain_;
  // Shared with its operations in flight: an owner may drop the stream (after closing it) while
  // an operation is still pending, as it may with a plain basic_stream.
  std::shared_ptr<ssl::stream<Stream>> tls_;
};

}  // namespace isorun::http
