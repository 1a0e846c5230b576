#include "quotas/quota_service.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "services/kit/status.h"

namespace isorun::quota {
namespace {

int BurstFor(double per_sec) { return std::max(1, static_cast<int>(std::ceil(per_sec))); }

}  // namespace

QuotaService::QuotaService(QuotaStore& store, prometheus::Registry& registry,
                           QuotaServiceOptions options, Clock clock)
    : store_(store),
      options_(options),
      clock_(std::move(clock)),
      admissions_(prometheus::BuildCounter()
                      .Name("isorun_quota_admissions_total")
                      .Help("Admission decisions by outcome")
                      .Register(registry)),
      rate_checks_(prometheus::BuildCounter()
                       .Name("isorun_quota_rate_checks_total")
                       .Help("Rate-limit checks by policy kind and outcome")
                       .Register(registry)) {
  // Every series exists from the start, so dashboards see zeros rather than gaps.
  for (const char* outcome : {"admitted", "retry", "refused", "error"}) {
    admissions_.Add({{"outcome", outcome}});
  }
  for (const char* kind : {"request", "create"}) {
    for (const char* outcome : {"allowed", "limited"}) {
      rate_checks_.Add({{"kind", kind}, {"outcome", outcome}});
    }
  }
}

absl::StatusOr<TenantLimits> QuotaService::CachedLimits(const std::string& tenant_id) {
  absl::Time now = clock_();
  {
    absl::MutexLock lock(&mu_);
    auto it = limits_.find(tenant_id);
    if (it != limits_.end() && now - it->second.fetched < options_.limits_ttl) {
      return it->second.limits;
    }
  }
  auto limits = store_.GetLimits(tenant_id);
  if (!limits.ok()) return limits.status();
  absl::MutexLock lock(&mu_);
  limits_[tenant_id] = CachedEntry{*limits, now};
  return *limits;
}

grpc::Status QuotaService::CheckRate(grpc::ServerContext*, const v1::CheckRateRequest* req,
                                     v1::CheckRateResponse* resp) {
  if (req->tenant_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "tenant_id is required");
  }
  auto limits = CachedLimits(req->tenant_id());
  if (!limits.ok()) return ToGrpcStatus(limits.status());
  RateParams requests{limits->requests_per_sec, BurstFor(limits->requests_per_sec)};
  std::vector<Bucket> buckets;
  if (!req->key_id().empty()) buckets.push_back({"k:" + req->key_id(), "requests", requests});
  buckets.push_back({"t:" + req->tenant_id(), "requests", requests});
  const bool create = req->kind() == v1::CREATE;
  if (create) {
    buckets.push_back({"c:" + req->tenant_id(), "creates",
                       RateParams{limits->creates_per_sec, BurstFor(limits->creates_per_sec)}});
  }
  RateDecision d = limiter_.Check(buckets, clock_());
  v1::RateWindow window;
  window.set_policy(d.policy);
  window.set_limit_per_sec(d.params.per_sec);
  window.set_burst(d.params.burst);
  window.set_window_sec(std::max(1, static_cast<int>(std::ceil(d.params.burst / d.params.per_sec))));
  window.set_remaining(d.remaining);
  window.set_reset_sec(absl::ToDoubleSeconds(d.reset));
  rate_checks_.Add({{"kind", create ? "create" : "request"}, {"outcome", d.allowed ? "allowed" : "limited"}})
      .Increment();
  if (!d.allowed) {
    int retry = std::max(1, static_cast<int>(std::ceil(absl::ToDoubleSeconds(d.retry_after))));
    return ToGrpcStatus(Error(
        absl::StatusCode::kResourceExhausted, "RATE_LIMIT",
        absl::StrCat("rate limit of ", d.params.per_sec, " ", d.policy,
                     " per second exceeded; retry in ", retry, " s"),
        d.params.burst, d.params.burst, retry, &window));
  }
  *resp->mutable_window() = window;
  return grpc::Status::OK;
}

void QuotaService::CountAdmission(const absl::StatusOr<AdmitResult>& result) {
  admissions_
      .Add({{"outcome", result.ok() ? (result->already_admitted ? "retry" : "admitted")
                        : result.status().code() == absl::StatusCode::kResourceExhausted
                            ? "refused"
                            : "error"}})
      .Increment();
}

namespace {

void FillAdmit(const AdmitResult& result, v1::AdmitResponse* resp) {
  resp->set_active(result.active);
  resp->set_limit(result.limit);
  resp->set_already_admitted(result.already_admitted);
}

}  // namespace

grpc::Status QuotaService::Admit(grpc::ServerContext*, const v1::AdmitRequest* req,
                                 v1::AdmitResponse* resp) {
  auto result = store_.Admit(req->tenant_id(), req->sandbox_id());
  CountAdmission(result);
  if (!result.ok()) return ToGrpcStatus(result.status());
  FillAdmit(*result, resp);
  return grpc::Status::OK;
}

grpc::Status QuotaService::Release(grpc::ServerContext*, const v1::ReleaseRequest* req,
                                   v1::ReleaseResponse* resp) {
  auto released = store_.Release(req->sandbox_id());
  if (!released.ok()) return ToGrpcStatus(released.status());
  resp->set_released(*released);
  return grpc::Status::OK;
}

grpc::Status QuotaService::AdmitBatch(grpc::ServerContext*, const v1::AdmitBatchRequest* req,
                                      v1::AdmitBatchResponse* resp) {
  std::vector<QuotaStore::AdmitItem> items;
  for (const auto& item : req->items()) items.push_back({item.tenant_id(), item.sandbox_id()});
  for (const auto& result : store_.AdmitMany(items)) {
    CountAdmission(result);
    v1::AdmitResult* out = resp->add_results();
    *out->mutable_status() = ToItemStatus(result.status());
    if (result.ok()) FillAdmit(*result, out->mutable_response());
  }
  return grpc::Status::OK;
}

grpc::Status QuotaService::ReleaseBatch(grpc::ServerContext*, const v1::ReleaseBatchRequest* req,
                                        v1::ReleaseBatchResponse* resp) {
  std::vector<std::string> ids;
  for (const auto& item : req->items()) ids.push_back(item.sandbox_id());
  for (const auto& result : store_.ReleaseMany(ids)) {
    v1::ReleaseResult* out = resp->add_results();
    *out->mutable_status() = ToItemStatus(result.status());
    if (result.ok()) out->mutable_response()->set_released(*result);
  }
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
  resp->mutable_limits()->set_max_concurrent_execs(usage->limits.max_concurrent_execs);
  resp->mutable_limits()->set_max_hibernated(usage->limits.max_hibernated);
  resp->mutable_limits()->set_hibernation_retention_sec(usage->limits.hibernation_retention_sec);
  return grpc::Status::OK;
}

grpc::Status QuotaService::ListReservations(grpc::ServerContext*,
                                            const v1::ListReservationsRequest* req,
                                            v1::ListReservationsResponse* resp) {
  int limit = req->page_size() <= 0 ? 500 : std::min(req->page_size(), 5000);
  auto rows = store_.ListReservations(std::max(0, req->older_than_sec()), req->page_token(), limit);
  if (!rows.ok()) return ToGrpcStatus(rows.status());
  for (const auto& r : *rows) {
    auto* out = resp->add_reservations();
    out->set_sandbox_id(r.sandbox_id);
    out->set_tenant_id(r.tenant_id);
  }
  if (static_cast<int>(rows->size()) == limit) resp->set_next_page_token(rows->back().sandbox_id);
  return grpc::Status::OK;
}

namespace {

// A lease's TTL as asked, within sane bounds (a holder renews every third of it).
absl::Duration LeaseTtl(int ttl_ms) {
  return absl::Milliseconds(std::clamp(ttl_ms <= 0 ? 10000 : ttl_ms, 500, 600000));
}

std::vector<ExecLeaseTable::Key> LeaseKeys(
    const google::protobuf::RepeatedPtrField<v1::ExecLease>& leases) {
  std::vector<ExecLeaseTable::Key> keys;
  keys.reserve(leases.size());
  for (const auto& l : leases) {
    if (!l.tenant_id().empty() && !l.lease_id().empty()) {
      keys.push_back({l.tenant_id(), l.lease_id()});
    }
  }
  return keys;
}

}  // namespace

grpc::Status QuotaService::AcquireExecLease(grpc::ServerContext*,
                                            const v1::AcquireExecLeaseRequest* req,
                                            v1::AcquireExecLeaseResponse* resp) {
  if (req->lease().tenant_id().empty() || req->lease().lease_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "tenant_id and lease_id are required");
  }
  // The cap is this service's view of the tenant's limits (isorunctl changes apply within
  // limits_ttl), not the caller's.
  auto limits = CachedLimits(req->lease().tenant_id());
  if (!limits.ok()) return ToGrpcStatus(limits.status());
  auto running = exec_leases_.Acquire({req->lease().tenant_id(), req->lease().lease_id()},
                                      limits->max_concurrent_execs, LeaseTtl(req->ttl_ms()),
                                      clock_());
  if (!running.ok()) return ToGrpcStatus(running.status());
  resp->set_running(*running);
  resp->set_limit(limits->max_concurrent_execs);
  return grpc::Status::OK;
}

grpc::Status QuotaService::RenewExecLeases(grpc::ServerContext*,
                                           const v1::RenewExecLeasesRequest* req,
                                           v1::RenewExecLeasesResponse* resp) {
  resp->set_restored(
      exec_leases_.Renew(LeaseKeys(req->leases()), LeaseTtl(req->ttl_ms()), clock_()));
  return grpc::Status::OK;
}

grpc::Status QuotaService::ReleaseExecLeases(grpc::ServerContext*,
                                             const v1::ReleaseExecLeasesRequest* req,
                                             v1::ReleaseExecLeasesResponse* resp) {
  resp->set_released(exec_leases_.Release(LeaseKeys(req->leases())));
  return grpc::Status::OK;
}

}  // namespace isorun::quota
