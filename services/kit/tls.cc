#include "services/kit/tls.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "services/kit/log.h"

ABSL_FLAG(bool, tls, true,
          "mutual TLS on gRPC when --tls_cert_file, --tls_key_file and --tls_ca_file are set; "
          "false: plain text even then (e.g. to measure what TLS costs)");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate of this process's identity (URI SAN isorun://<identity>); empty: no TLS");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM certificate of the CA that signs every identity; peers must present one it signed");

namespace isorun {
namespace {

struct TlsMaterial {
  absl::Mutex mu;
  bool loaded ABSL_GUARDED_BY(mu) = false;
  absl::Status status ABSL_GUARDED_BY(mu);
  std::string cert ABSL_GUARDED_BY(mu);
  std::string key ABSL_GUARDED_BY(mu);
  std::string ca ABSL_GUARDED_BY(mu);
};

TlsMaterial& Material() {
  static auto* m = new TlsMaterial;
  return *m;
}

absl::Status ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("cannot read ", path));
  std::ostringstream s;
  s << in.rdbuf();
  *out = s.str();
  if (out->empty()) return absl::FailedPreconditionError(absl::StrCat(path, " is empty"));
  return absl::OkStatus();
}

// The PEM material, loaded once; exits when it cannot be read (a misconfigured process must not
// fall back to plain text).
void Get(std::string* cert, std::string* key, std::string* ca) {
  absl::Status status = LoadTls();
  if (!status.ok()) {
    LogError("cannot load the TLS files", {{"error", status.ToString()}});
    std::exit(2);
  }
  TlsMaterial& m = Material();
  absl::MutexLock lock(&m.mu);
  *cert = m.cert;
  *key = m.key;
  *ca = m.ca;
}

// Who calls what (DESIGN's call graph). "*" is any identity with a valid certificate.
struct Rule {
  std::string_view prefix;
  std::vector<std::string> identities;
};

const std::vector<Rule>& Rules() {
  static const auto* rules = new std::vector<Rule>{
      {"/grpc.health.v1.Health/", {"*"}},
      {"/grpc.reflection.", {"admin"}},
      // isorunctl's `sandboxes set-network` acts for the operator.
      {"/isorun.v1.Sandboxes/SetNetwork", {"gateway", "admin"}},
      {"/isorun.v1.Sandboxes/", {"gateway"}},
      {"/isorun.v1.PublicUrls/", {"gateway"}},  // the public-URL proxy's lookups
      {"/isorun.v1.Keys/", {"gateway", "admin"}},  // tenants managing their API keys
      {"/isorun.v1.Quotas/CheckRate", {"gateway"}},
      {"/isorun.v1.Quotas/GetUsage", {"gateway", "lifecycle", "admin"}},
      {"/isorun.v1.Quotas/ListReservations", {"lifecycle", "admin"}},
      {"/isorun.v1.Quotas/", {"lifecycle"}},
      {"/isorun.v1.Scheduler/RegisterRunner", {"runner"}},
      {"/isorun.v1.Scheduler/Heartbeat", {"runner"}},  // and HeartbeatStream
      {"/isorun.v1.Scheduler/ListRunners", {"lifecycle", "admin"}},
      {"/isorun.v1.Scheduler/ListPlacements", {"lifecycle", "admin"}},
      {"/isorun.v1.Scheduler/", {"lifecycle"}},
      {"/isorun.v1.Runner/PullImage", {"lifecycle", "scheduler"}},
      {"/isorun.v1.Runner/", {"lifecycle"}},
  };
  return *rules;
}

}  // namespace

bool TlsEnabled() {
  return absl::GetFlag(FLAGS_tls) && !absl::GetFlag(FLAGS_tls_cert_file).empty() &&
         !absl::GetFlag(FLAGS_tls_key_file).empty() && !absl::GetFlag(FLAGS_tls_ca_file).empty();
}

absl::Status LoadTls() {
  if (!TlsEnabled()) {
    const bool some = !absl::GetFlag(FLAGS_tls_cert_file).empty() ||
                      !absl::GetFlag(FLAGS_tls_key_file).empty() ||
                      !absl::GetFlag(FLAGS_tls_ca_file).empty();
    if (some && absl::GetFlag(FLAGS_tls)) {
      return absl::InvalidArgumentError(
          "--tls_cert_file, --tls_key_file and --tls_ca_file go together (or --tls=false)");
    }
    return absl::OkStatus();
  }
  TlsMaterial& m = Material();
  absl::MutexLock lock(&m.mu);
  if (!m.loaded) {
    m.loaded = true;
    m.status = ReadFile(absl::GetFlag(FLAGS_tls_cert_file), &m.cert);
    if (m.status.ok()) m.status = ReadFile(absl::GetFlag(FLAGS_tls_key_file), &m.key);
    if (m.status.ok()) m.status = ReadFile(absl::GetFlag(FLAGS_tls_ca_file), &m.ca);
  }
  return m.status;
}

absl::Status TlsPem(std::string* cert, std::string* key, std::string* ca) {
  if (!TlsEnabled()) return absl::FailedPreconditionError("TLS is off");
  if (absl::Status s = LoadTls(); !s.ok()) return s;
  TlsMaterial& m = Material();
  absl::MutexLock lock(&m.mu);
  *cert = m.cert;
  *key = m.key;
  *ca = m.ca;
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> GrpcServerCredentials() {
  if (!TlsEnabled()) return grpc::InsecureServerCredentials();
  std::string cert, key, ca;
  Get(&cert, &key, &ca);
  grpc::SslServerCredentialsOptions options(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = ca;
  options.pem_key_cert_pairs.push_back({key, cert});
  auto credentials = grpc::SslServerCredentials(options);
  credentials->SetAuthMetadataProcessor(std::make_shared<IdentityAuthorizer>());
  return credentials;
}

std::shared_ptr<grpc::ChannelCredentials> GrpcChannelCredentials() {
  if (!TlsEnabled()) return grpc::InsecureChannelCredentials();
  std::string cert, key, ca;
  Get(&cert, &key, &ca);
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ca;
  options.pem_private_key = key;
  options.pem_cert_chain = cert;
  return grpc::SslCredentials(options);
}

std::vector<std::string> AuthorizedIdentities(std::string_view method) {
  for (const Rule& rule : Rules()) {
    if (method.starts_with(rule.prefix)) return rule.identities;
  }
  return {};
}

std::string PeerIdentity(const grpc::AuthContext& context) {
  constexpr std::string_view kScheme = "isorun://";
  for (const auto& uri : context.FindPropertyValues("peer_uri")) {
    std::string_view v(uri.data(), uri.size());
    if (v.starts_with(kScheme)) return std::string(v.substr(kScheme.size()));
  }
  for (const auto& cn : context.FindPropertyValues("x509_common_name")) {
    return std::string(cn.data(), cn.size());
  }
  return "";
}

grpc::Status IdentityAuthorizer::Process(const InputMetadata& auth_metadata,
                                         grpc::AuthContext* context, OutputMetadata*,
                                         OutputMetadata*) {
  std::string method;
  auto path = auth_metadata.find(":path");
  if (path != auth_metadata.end()) method.assign(path->second.data(), path->second.size());
  const std::string identity = context == nullptr ? "" : PeerIdentity(*context);
  if (identity.empty()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "no client certificate identity");
  }
  for (const std::string& allowed : AuthorizedIdentities(method)) {
    if (allowed == "*" || allowed == identity) return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      absl::StrCat("identity ", identity, " may not call ", method));
}

}  // namespace isorun
