#include "services/lifecycle/keys_service.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "services/kit/api_key.h"
#include "services/kit/status.h"

namespace isorun::lifecycle {
namespace {

using google::protobuf::util::TimeUtil;

// The checks every method makes first: a tenant, and a caller whose key may manage keys.
absl::Status Allowed(const std::string& tenant_id, const std::string& caller_role) {
  // A tenant id is a UUID (accounts.tenants.id): anything else never reaches a statement.
  bool uuid = tenant_id.size() == 36;
  for (size_t i = 0; uuid && i < tenant_id.size(); ++i) {
    const char c = tenant_id[i];
    uuid = (i == 8 || i == 13 || i == 18 || i == 23)
               ? c == '-'
               : (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  }
  if (!uuid) {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                 "tenant_id must be a tenant's UUID");
  }
  if (caller_role != "admin") {
    return Error(absl::StatusCode::kPermissionDenied, "PERMISSION_DENIED",
                 absl::StrCat("the caller's key has role \"", caller_role,
                              "\"; only admin keys may manage API keys"));
  }
  return absl::OkStatus();
}

// As the gateway's POST /v1/keys: 1-128 bytes, no control characters.
absl::Status ValidName(const std::string& name) {
  bool control = false;
  for (unsigned char c : name) control = control || c < 0x20 || c == 0x7f;
  if (name.empty() || name.size() > 128 || control) {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                 "field \"name\" must be 1-128 bytes without control characters");
  }
  return absl::OkStatus();
}

void SetTime(const std::string& rfc3339, google::protobuf::Timestamp* out) {
  if (!rfc3339.empty()) (void)TimeUtil::FromString(rfc3339, out);
}

void ToProto(const gateway::KeyInfo& k, v1::ApiKey* out) {
  out->set_key_id(k.key_id);
  out->set_name(k.name);
  out->set_role(k.role);
  out->set_region(k.region);
  SetTime(k.created_at, out->mutable_created_at());
  if (!k.last_used_at.empty()) SetTime(k.last_used_at, out->mutable_last_used_at());
  if (!k.revoked_at.empty()) SetTime(k.revoked_at, out->mutable_revoked_at());
}

}  // namespace

grpc::Status KeysService::ListKeys(grpc::ServerContext*, const v1::ListKeysRequest* req,
                                   v1::ListKeysResponse* resp) {
  if (auto s = Allowed(req->tenant_id(), req->caller_role()); !s.ok()) return ToGrpcStatus(s);
  auto keys = keys_.List(req->tenant_id());
  if (!keys.ok()) return ToGrpcStatus(keys.status());
  for (const auto& k : *keys) ToProto(k, resp->add_keys());
  return grpc::Status::OK;
}

grpc::Status KeysService::CreateKey(grpc::ServerContext*, const v1::CreateKeyRequest* req,
                                    v1::CreateKeyResponse* resp) {
  if (auto s = Allowed(req->tenant_id(), req->caller_role()); !s.ok()) return ToGrpcStatus(s);
  if (auto s = ValidName(req->name()); !s.ok()) return ToGrpcStatus(s);
  if (!IsValidRegion(req->region())) {
    return ToGrpcStatus(Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                              "field \"region\" must match [a-z0-9-]+"));
  }
  const std::string role = req->role().empty() ? "sandbox" : req->role();
  auto created = keys_.Create(req->tenant_id(), req->name(), role, req->region());
  if (!created.ok()) return ToGrpcStatus(created.status());
  ToProto(created->info, resp->mutable_api_key());
  resp->set_key(created->key);
  return grpc::Status::OK;
}

grpc::Status KeysService::RevokeKey(grpc::ServerContext*, const v1::RevokeKeyRequest* req,
                                    v1::RevokeKeyResponse*) {
  if (auto s = Allowed(req->tenant_id(), req->caller_role()); !s.ok()) return ToGrpcStatus(s);
  const std::string& id = req->key_id();
  bool base62 = !id.empty() && id.size() <= 64;
  for (char c : id) {
    base62 = base62 && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
  }
  if (!base62) {
    return ToGrpcStatus(Error(absl::StatusCode::kNotFound, "NOT_FOUND",
                              absl::StrCat("no API key with id \"", id.substr(0, 64), "\"")));
  }
  return ToGrpcStatus(keys_.Revoke(req->tenant_id(), id));
}

}  // namespace isorun::lifecycle
