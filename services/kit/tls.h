#pragma once

// Mutual TLS between the services. Every process has one identity, the certificate of
// --tls_cert_file (signed by the CA of --tls_ca_file), named by its URI SAN isorun://<identity>
// (else its common name): gateway, lifecycle, quota, scheduler, runner or admin. With the three
// files set (and --tls not false) servers accept only clients with a certificate of that CA,
// clients present theirs and verify the server's, and each method admits only the identities
// of the call graph (AuthorizedIdentities). Without them everything is plain text as before.

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/auth_metadata_processor.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace isorun {

// True when --tls is on and --tls_cert_file, --tls_key_file and --tls_ca_file are set.
bool TlsEnabled();

// Reads the certificate files once; an error names the file. With TLS off: OK.
absl::Status LoadTls();

// The PEM material of --tls_cert_file, --tls_key_file and --tls_ca_file (for the public-URL
// tunnel, which speaks TLS outside gRPC). Requires TlsEnabled(); an error names the file.
absl::Status TlsPem(std::string* cert, std::string* key, std::string* ca);

// Credentials for servers and channels: mutual TLS when enabled, else plain text. Call LoadTls()
// first (a process whose files cannot be read exits with status 2 here otherwise).
std::shared_ptr<grpc::ServerCredentials> GrpcServerCredentials();
std::shared_ptr<grpc::ChannelCredentials> GrpcChannelCredentials();

// The identities that may call a full method name ("/isorun.v1.Sandboxes/CreateSandbox");
// {"*"}: every identity with a valid certificate. Unknown methods: none.
std::vector<std::string> AuthorizedIdentities(std::string_view method);

// The identity of a peer from its certificate's properties (peer_uri isorun://NAME, else
// x509_common_name); empty when it has none.
std::string PeerIdentity(const grpc::AuthContext& context);

// The server side check: a call is let through when its :path admits the peer's identity.
class IdentityAuthorizer : public grpc::AuthMetadataProcessor {
 public:
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;
};

}  // namespace isorun
