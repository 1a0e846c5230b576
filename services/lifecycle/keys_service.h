#pragma once

// isorun.v1.Keys: tenants' API keys over gRPC, beside isorun.v1.Sandboxes on the lifecycle's
// private listener. The caller (the gateway or an API gateway) has authenticated the tenant's key
// and fills `tenant_id` and `caller_role`; only "admin" callers get past the role check. The keys
// themselves are read and written by the same code as the gateway's /v1/keys routes
// (gateway/key_admin.h), so both forms share every rule: the secret shown once, the last admin
// key kept (FAILED_PRECONDITION, reason LAST_ADMIN_KEY), revocation through the table's NOTIFY
// (every gateway fails the key's very next request).

#include "isorun/v1/keys.grpc.pb.h"
#include "services/gateway/key_admin.h"

namespace isorun::lifecycle {

class KeysService final : public v1::Keys::Service {
 public:
  explicit KeysService(gateway::PgKeyAdmin& keys) : keys_(keys) {}

  grpc::Status ListKeys(grpc::ServerContext*, const v1::ListKeysRequest*,
                        v1::ListKeysResponse*) override;
  grpc::Status CreateKey(grpc::ServerContext*, const v1::CreateKeyRequest*,
                         v1::CreateKeyResponse*) override;
  grpc::Status RevokeKey(grpc::ServerContext*, const v1::RevokeKeyRequest*,
                         v1::RevokeKeyResponse*) override;

 private:
  gateway::PgKeyAdmin& keys_;
};

}  // namespace isorun::lifecycle
