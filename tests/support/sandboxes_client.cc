#include "tests/support/sandboxes_client.h"

#include <chrono>

#include "services/kit/server.h"
#include "services/kit/status.h"

namespace isorun::testing {
namespace {

void SetDeadline(grpc::ClientContext& ctx, int seconds) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

}  // namespace

SandboxesClient::SandboxesClient(const std::string& address)
    : stub_(v1::Sandboxes::NewStub(MakeChannel(address))) {}

absl::StatusOr<v1::Sandbox> SandboxesClient::Create(const std::string& tenant, int timeout_sec,
                                                    const std::string& image) {
  v1::CreateSandboxRequest req;
  req.set_tenant_id(tenant);
  req.set_image(image);
  req.set_timeout_sec(timeout_sec);
  grpc::ClientContext ctx;
  SetDeadline(ctx, 30);
  v1::Sandbox sb;
  grpc::Status s = stub_->CreateSandbox(&ctx, req, &sb);
  if (!s.ok()) return FromGrpcStatus(s);
  return sb;
}

absl::StatusOr<v1::Sandbox> SandboxesClient::Get(const std::string& tenant,
                                                 const std::string& id) {
  v1::GetSandboxRequest req;
  req.set_tenant_id(tenant);
  req.set_id(id);
  grpc::ClientContext ctx;
  SetDeadline(ctx, 10);
  v1::Sandbox sb;
  grpc::Status s = stub_->GetSandbox(&ctx, req, &sb);
  if (!s.ok()) return FromGrpcStatus(s);
  return sb;
}

}  // namespace isorun::testing
