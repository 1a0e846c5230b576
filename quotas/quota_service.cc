#include "quotas/quota_service.h"

#include "services/kit/status.h"

namespace isorun::quota {

grpc::Status QuotaService::Admit(grpc::ServerContext*, const v1::AdmitRequest* req,
                                 v1::AdmitResponse* resp) {
  auto result = store_.Admit(req->tenant_id(), req->sandbox_id());
  if (!result.ok()) return ToGrpcStatus(result.status());
  resp->set_active(result->active);
  resp->set_limit(result->limit);
  resp->set_already_admitted(result->already_admitted);
  return grpc::Status::OK;
}

grpc::Status QuotaService::Release(grpc::ServerContext*, const v1::ReleaseRequest* req,
                                   v1::ReleaseResponse* resp) {
  auto released = store_.Release(req->sandbox_id());
  if (!released.ok()) return ToGrpcStatus(released.status());
  resp->set_released(*released);
  return grpc::Status::OK;
}

grpc::Status QuotaService::GetUsage(grpc::ServerContext*, const v1::GetUsageRequest* req,
                                    v1::Usage* resp) {
  auto usage = store_.GetUsage(req->tenant_id());
  if (!usage.ok()) return ToGrpcStatus(usage.status());
  resp->set_tenant_id(req->tenant_id());
  resp->set_active_sandboxes(usage->active);
  resp->mutable_limits()->set_max_concurrent(usage->limits.max_concurrent);
  resp->mutable_limits()->set_creates_per_sec(usage->limits.creates_per_sec);
  resp->mutable_limits()->set_requests_per_sec(usage->limits.requests_per_sec);
  return grpc::Status::OK;
}

}  // namespace isorun::quota
