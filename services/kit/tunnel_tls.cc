#include "services/kit/tunnel_tls.h"

#include <openssl/x509v3.h>

#include <boost/asio/post.hpp>
#include <boost/asio/ssl/error.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "services/kit/tls.h"

namespace isorun::http {

absl::StatusOr<std::shared_ptr<ssl::context>> TunnelTlsContext(bool server) {
  if (!TlsEnabled()) return std::shared_ptr<ssl::context>();
  std::string cert, key, ca;
  if (absl::Status s = TlsPem(&cert, &key, &ca); !s.ok()) return s;
  try {
    auto ctx = std::make_shared<ssl::context>(server ? ssl::context::tls_server
                                                     : ssl::context::tls_client);
    SSL_CTX* native = ctx->native_handle();
    // 1.2 at least; 1.3 is negotiated whenever both ends have it (OpenSSL's default maximum).
    SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
    ctx->set_options(ssl::context::default_workarounds | ssl::context::no_compression);
    // An idle tunnel (a kept-alive connection, a quiet WebSocket) keeps no record buffers.
    SSL_CTX_set_mode(native, SSL_MODE_RELEASE_BUFFERS);
    ctx->use_certificate_chain(asio::buffer(cert));
    ctx->use_private_key(asio::buffer(key), ssl::context::pem);
    ctx->add_certificate_authority(asio::buffer(ca));
    // The peer must present a certificate of the CA (a client without one fails the handshake).
    ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
    if (server) {
      // Tunnels are long-lived and few per gateway; a ticket per handshake buys nothing.
      SSL_CTX_set_num_tickets(native, 0);
    }
    return ctx;
  } catch (const boost::system::system_error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use the TLS files for the public-URL tunnel: ", e.what()));
  }
}

std::string CertificateIdentity(X509* cert) {
  if (cert == nullptr) return "";
  constexpr std::string_view kScheme = "isorun://";
  std::string identity;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names) && identity.empty(); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
      if (name->type != GEN_URI) continue;
      const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
      std::string_view v(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                         static_cast<size_t>(ASN1_STRING_length(uri)));
      if (v.starts_with(kScheme)) identity = std::string(v.substr(kScheme.size()));
    }
    GENERAL_NAMES_free(names);
  }
  if (!identity.empty()) return identity;
  X509_NAME* subject = X509_get_subject_name(cert);
  const int at = subject == nullptr ? -1 : X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (at < 0) return "";
  const ASN1_STRING* cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(cn)),
                     static_cast<size_t>(ASN1_STRING_length(cn)));
}

TunnelStream::TunnelStream(Executor executor, ssl::context* tls) {
  if (tls) {
    tls_ = std::make_shared<ssl::stream<Stream>>(Stream(executor), *tls);
  } else {
    plain_.emplace(executor);
  }
}

TunnelStream::TunnelStream(Stream&& tcp, ssl::context* tls) {
  if (tls) {
    tls_ = std::make_shared<ssl::stream<Stream>>(std::move(tcp), *tls);
  } else {
    plain_.emplace(std::move(tcp));
  }
}

void TunnelStream::Handshake(ssl::stream_base::handshake_type type, std::string identity,
                             std::function<void(beast::error_code, std::string)> done) {
  if (!tls_) {
    asio::post(get_executor(), [done = std::move(done)] { done({}, ""); });
    return;
  }
  tls_->async_handshake(type, [tls = tls_, identity = std::move(identity),
                               done = std::move(done)](beast::error_code ec) {
    if (ec) return done(ec, "");
    X509* cert = SSL_get1_peer_certificate(tls->native_handle());
    std::string peer = CertificateIdentity(cert);
    X509_free(cert);
    if (peer != identity) return done(asio::error::access_denied, peer);
    done({}, peer);
  });
}

}  // namespace isorun::http
