// Tenants managing their API keys over HTTP (GET, POST and DELETE /v1/keys) and over gRPC
// (isorun.v1.Keys on the lifecycle's listener): roles, the secret shown once, revocation on the
// very next request, the last admin key kept. A whole cluster as processes, real Postgres, real
// HTTP and gRPC.

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>

#include "isorun/v1/errors.pb.h"
#include "isorun/v1/keys.grpc.pb.h"
#include "services/kit/server.h"
#include "tests/support/cluster.h"
#include "tests/support/http_client.h"
#include "tests/support/json_fields.h"

namespace isorun {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::HttpRequest;
using testing::HttpResponse;
using testing::Json;
using testing::Num;
using testing::Obj;
using testing::Str;

class Keys : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    try {
      cluster_ = new Cluster(ClusterOptions{});
    } catch (const std::exception& e) {
      setup_error_ = new std::string(e.what());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_EQ(setup_error_, nullptr) << "the cluster did not start: " << *setup_error_;
    static std::atomic<int> n{0};
    tenant_ = cluster_->CreateTenant("k" + std::to_string(n++), 5);
    cluster_->db().Scalar(
        "UPDATE quota.limits SET creates_per_sec = 1000, requests_per_sec = 1000 "
        "WHERE tenant_id = '" + tenant_ + "'");
    admin_ = cluster_->CreateKey(tenant_, "local", "admin");
  }

  HttpResponse Call(const std::string& method, const std::string& path, const std::string& key,
                    const std::string& body = "") {
    std::map<std::string, std::string> headers = {{"Authorization", "Bearer " + key}};
    if (!body.empty()) headers["Content-Type"] = "application/json";
    return HttpRequest(method, cluster_->gateway_url() + path, body, headers);
  }
  static std::string Reason(const HttpResponse& r) {
    return Str(Obj(Json(r.body), "error"), "reason");
  }
  static std::string KeyIdOf(const std::string& key) {
    // isr_<region>_<keyId>_<secret>
    size_t a = key.find('_', 4);
    size_t b = key.find('_', a + 1);
    return key.substr(a + 1, b - a - 1);
  }
  std::string KeyCount() {
    return cluster_->db().Scalar("SELECT count(*) FROM accounts.api_keys WHERE tenant_id = '" +
                                 tenant_ + "'");
  }

  static Cluster* cluster_;
  static std::string* setup_error_;
  std::string tenant_, admin_;
};

Cluster* Keys::cluster_ = nullptr;
std::string* Keys::setup_error_ = nullptr;

TEST_F(Keys, AdminCreatesAKeyShownOnceThatWorksAndIsListedWithoutItsSecret) {
  auto created = Call("POST", "/v1/keys", admin_, R"({"name":"ci bot"})");
  ASSERT_EQ(created.status, 201) << created.body;
  EXPECT_EQ(created.Header("Cache-Control"), "no-store");
  auto body = Json(created.body);
  std::string key = Str(body, "key");
  ASSERT_EQ(key.rfind("isr_local_", 0), 0u) << created.body;
  EXPECT_EQ(Str(body, "keyId"), KeyIdOf(key));
  EXPECT_EQ(Str(body, "name"), "ci bot");
  EXPECT_EQ(Str(body, "role"), "sandbox") << "new keys are sandbox keys by default";
  EXPECT_EQ(Str(body, "region"), "local");
  EXPECT_EQ(Str(body, "createdAt").back(), 'Z');

  auto usage = Call("GET", "/v1/usage", key);
  EXPECT_EQ(usage.status, 200) << usage.body;

  auto list = Call("GET", "/v1/keys", admin_);
  ASSERT_EQ(list.status, 200) << list.body;
  std::string secret = key.substr(key.rfind('_') + 1);
  EXPECT_EQ(list.body.find(secret), std::string::npos) << "a list never shows a secret";
  const auto keys_doc = Json(list.body);
  const auto& keys = keys_doc.fields().at("keys").list_value().values();
  ASSERT_EQ(keys.size(), 2);
  const auto& first = keys[0].struct_value();
  const auto& second = keys[1].struct_value();
  EXPECT_EQ(Str(first, "keyId"), KeyIdOf(admin_));
  EXPECT_EQ(Str(first, "role"), "admin");
  EXPECT_EQ(Str(first, "lastUsedAt").back(), 'Z') << "the admin key was just used";
  EXPECT_EQ(first.fields().count("revokedAt"), 0u);
  EXPECT_EQ(Str(second, "keyId"), KeyIdOf(key));
  EXPECT_EQ(Str(second, "name"), "ci bot");
  EXPECT_EQ(first.fields().count("key"), 0u);

  auto admin2 = Call("POST", "/v1/keys", admin_, R"({"name":"ops","role":"admin"})");
  ASSERT_EQ(admin2.status, 201) << admin2.body;
  EXPECT_EQ(Str(Json(admin2.body), "role"), "admin");
  EXPECT_EQ(Call("GET", "/v1/keys", Str(Json(admin2.body), "key")).status, 200);
}

TEST_F(Keys, SandboxKeysMayNotManageKeys) {
  std::string sandbox_key = cluster_->CreateKey(tenant_, "local", "sandbox");
  std::string before = KeyCount();
  for (auto [method, path, body] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"GET", "/v1/keys", ""},
           {"POST", "/v1/keys", R"({"name":"escalate","role":"admin"})"},
           {"DELETE", "/v1/keys/" + KeyIdOf(admin_), ""}}) {
    auto r = Call(method, path, sandbox_key, body);
    EXPECT_EQ(r.status, 403) << method << " " << path << ": " << r.body;
    EXPECT_EQ(Str(Obj(Json(r.body), "error"), "code"), "PERMISSION_DENIED") << r.body;
  }
  EXPECT_EQ(KeyCount(), before) << "a refused create adds no key";
  EXPECT_EQ(Call("GET", "/v1/usage", admin_).status, 200) << "the admin key was not revoked";
  EXPECT_EQ(Call("GET", "/v1/usage", sandbox_key).status, 200) << "sandbox routes still work";
}

TEST_F(Keys, RevokedKeyFailsItsVeryNextRequest) {
  auto created = Call("POST", "/v1/keys", admin_, R"({"name":"temp"})");
  ASSERT_EQ(created.status, 201) << created.body;
  std::string key = Str(Json(created.body), "key");
  ASSERT_EQ(Call("GET", "/v1/usage", key).status, 200);  // now in every cache
  auto revoked = Call("DELETE", "/v1/keys/" + KeyIdOf(key), admin_);
  ASSERT_EQ(revoked.status, 204) << revoked.body;
  auto next = Call("GET", "/v1/usage", key);
  EXPECT_EQ(next.status, 401) << next.body;
  EXPECT_EQ(Reason(next), "KEY_REVOKED");
  EXPECT_EQ(Call("DELETE", "/v1/keys/" + KeyIdOf(key), admin_).status, 204) << "idempotent";

  auto list = Call("GET", "/v1/keys", admin_);
  const auto keys_doc = Json(list.body);
  const auto& keys = keys_doc.fields().at("keys").list_value().values();
  ASSERT_EQ(keys.size(), 2);
  EXPECT_EQ(Str(keys[1].struct_value(), "revokedAt").back(), 'Z');
}

TEST_F(Keys, TheLastAdminKeyCannotBeRevoked) {
  auto last = Call("DELETE", "/v1/keys/" + KeyIdOf(admin_), admin_);
  EXPECT_EQ(last.status, 409) << last.body;
  EXPECT_EQ(Reason(last), "LAST_ADMIN_KEY");
  EXPECT_EQ(Call("GET", "/v1/usage", admin_).status, 200);

  auto second = Call("POST", "/v1/keys", admin_, R"({"name":"new admin","role":"admin"})");
  ASSERT_EQ(second.status, 201);
  std::string admin2 = Str(Json(second.body), "key");
  // An admin may revoke itself while another admin remains.
  EXPECT_EQ(Call("DELETE", "/v1/keys/" + KeyIdOf(admin_), admin_).status, 204);
  EXPECT_EQ(Call("GET", "/v1/usage", admin_).status, 401);
  EXPECT_EQ(Call("DELETE", "/v1/keys/" + KeyIdOf(admin2), admin2).status, 409);
}

TEST_F(Keys, AnotherTenantsKeyIsNotFound) {
  std::string other = cluster_->CreateTenant("other" + tenant_.substr(0, 8), 1);
  std::string theirs = cluster_->CreateKey(other, "local", "sandbox");
  auto r = Call("DELETE", "/v1/keys/" + KeyIdOf(theirs), admin_);
  EXPECT_EQ(r.status, 404) << r.body;
  EXPECT_EQ(Call("GET", "/v1/usage", theirs).status, 200) << "still usable";
  EXPECT_EQ(Call("DELETE", "/v1/keys/not-a-key!", admin_).status, 404);
  auto list = Call("GET", "/v1/keys", admin_);
  EXPECT_EQ(list.body.find(KeyIdOf(theirs)), std::string::npos);
}

TEST_F(Keys, BadBodiesAreRefusedAndCreateNothing) {
  std::string before = KeyCount();
  for (const std::string& body :
       {std::string(R"({})"), std::string(R"({"name":""})"), std::string(R"({"name":7})"),
        std::string(R"({"name":"x","role":"root"})"), std::string(R"({"name":"x","extra":1})"),
        std::string(R"({"name":"a\u0001b"})"), std::string(R"([1])"),
        R"({"name":")" + std::string(129, 'n') + R"("})"}) {
    auto r = Call("POST", "/v1/keys", admin_, body);
    EXPECT_EQ(r.status, 400) << body << ": " << r.body;
    EXPECT_EQ(Str(Obj(Json(r.body), "error"), "code"), "INVALID_ARGUMENT") << r.body;
  }
  EXPECT_EQ(KeyCount(), before);
}

// The reason word a failed gRPC call carries in its ErrorDetail.
std::string GrpcReason(const grpc::Status& st) {
  v1::ErrorDetail detail;
  if (!detail.ParseFromString(st.error_details())) return "";
  return detail.reason();
}

// isorun.v1.Keys: the same rules as the HTTP routes, with the tenant and the caller's role filled
// by the (trusted) caller, as for isorun.v1.Sandboxes; keys made and revoked over gRPC work and
// stop working over HTTP at once.
TEST_F(Keys, TheSameOverGrpcWithRolesAndTheLastAdminKeyKept) {
  auto stub = v1::Keys::NewStub(MakeChannel(cluster_->grpc_addr("lifecycle")));
  auto call = [&](auto method, const auto& req, auto* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return ((*stub).*method)(&ctx, req, resp);
  };
  const std::string admin_id = KeyIdOf(admin_);

  // A caller with a sandbox key is refused, and nothing changes.
  v1::ListKeysRequest list;
  list.set_tenant_id(tenant_);
  list.set_caller_role("sandbox");
  v1::ListKeysResponse keys;
  grpc::Status st = call(&v1::Keys::Stub::ListKeys, list, &keys);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_EQ(GrpcReason(st), "PERMISSION_DENIED");
  v1::CreateKeyRequest create;
  create.set_tenant_id(tenant_);
  create.set_caller_role("");
  create.set_name("over grpc");
  create.set_region("local");
  v1::CreateKeyResponse made;
  EXPECT_EQ(call(&v1::Keys::Stub::CreateKey, create, &made).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::RevokeKeyRequest revoke;
  revoke.set_tenant_id(tenant_);
  revoke.set_caller_role("sandbox");
  revoke.set_key_id(admin_id);
  v1::RevokeKeyResponse revoked;
  EXPECT_EQ(call(&v1::Keys::Stub::RevokeKey, revoke, &revoked).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Call("GET", "/v1/usage", admin_).status, 200);

  // Bad input is INVALID_ARGUMENT and creates nothing.
  create.set_caller_role("admin");
  for (auto bad : std::vector<std::function<void(v1::CreateKeyRequest&)>>{
           [](v1::CreateKeyRequest& r) { r.set_name(""); },
           [](v1::CreateKeyRequest& r) { r.set_name(std::string(129, 'n')); },
           [](v1::CreateKeyRequest& r) { r.set_name("tab\there"); },
           [](v1::CreateKeyRequest& r) { r.set_role("root"); },
           [](v1::CreateKeyRequest& r) { r.set_region("Not A Region"); },
           [](v1::CreateKeyRequest& r) { r.set_tenant_id("not-a-uuid"); }}) {
    v1::CreateKeyRequest r = create;
    bad(r);
    st = call(&v1::Keys::Stub::CreateKey, r, &made);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_EQ(GrpcReason(st), "INVALID_ARGUMENT");
  }
  EXPECT_EQ(cluster_->db().Scalar("SELECT count(*) FROM accounts.api_keys WHERE tenant_id = '" +
                                  tenant_ + "'"),
            "1");

  // An admin caller creates a key (role sandbox by default) that works over HTTP at once.
  st = call(&v1::Keys::Stub::CreateKey, create, &made);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string key = made.key();
  EXPECT_EQ(made.api_key().role(), "sandbox");
  EXPECT_EQ(made.api_key().name(), "over grpc");
  EXPECT_EQ(made.api_key().region(), "local");
  EXPECT_EQ(made.api_key().key_id(), KeyIdOf(key));
  EXPECT_TRUE(made.api_key().has_created_at());
  EXPECT_FALSE(made.api_key().has_revoked_at());
  EXPECT_EQ(Call("GET", "/v1/usage", key).status, 200);
  auto denied = Call("GET", "/v1/keys", key);  // a sandbox key, whichever API made it
  EXPECT_EQ(denied.status, 403);
  EXPECT_EQ(Reason(denied), "PERMISSION_DENIED");

  // Listed (oldest first) without any secret, as over HTTP.
  list.set_caller_role("admin");
  keys.Clear();
  st = call(&v1::Keys::Stub::ListKeys, list, &keys);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(keys.keys_size(), 2);
  EXPECT_EQ(keys.keys(0).key_id(), admin_id);
  EXPECT_EQ(keys.keys(0).role(), "admin");
  EXPECT_EQ(keys.keys(1).key_id(), made.api_key().key_id());
  EXPECT_EQ(keys.DebugString().find(key.substr(key.rfind('_') + 1)), std::string::npos);

  // Revoked over gRPC: the key's very next HTTP request fails; revoking again is OK.
  revoke.set_caller_role("admin");
  revoke.set_key_id(made.api_key().key_id());
  st = call(&v1::Keys::Stub::RevokeKey, revoke, &revoked);
  ASSERT_TRUE(st.ok()) << st.error_message();
  auto after = Call("GET", "/v1/usage", key);
  EXPECT_EQ(after.status, 401);
  EXPECT_EQ(Reason(after), "KEY_REVOKED");
  EXPECT_TRUE(call(&v1::Keys::Stub::RevokeKey, revoke, &revoked).ok());

  // The last admin key stays: FAILED_PRECONDITION, LAST_ADMIN_KEY, and it still works.
  revoke.set_key_id(admin_id);
  st = call(&v1::Keys::Stub::RevokeKey, revoke, &revoked);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_EQ(GrpcReason(st), "LAST_ADMIN_KEY");
  EXPECT_EQ(Call("GET", "/v1/keys", admin_).status, 200);

  // Another tenant's admin cannot touch this tenant's keys: NOT_FOUND, as for an unknown key.
  std::string other = cluster_->CreateTenant("kgrpc" + tenant_.substr(0, 8), 5);
  v1::RevokeKeyRequest theirs = revoke;
  theirs.set_tenant_id(other);
  st = call(&v1::Keys::Stub::RevokeKey, theirs, &revoked);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  theirs.set_key_id("NoSuchKey1");
  EXPECT_EQ(call(&v1::Keys::Stub::RevokeKey, theirs, &revoked).error_code(),
            grpc::StatusCode::NOT_FOUND);
  theirs.set_key_id("../x");
  EXPECT_EQ(call(&v1::Keys::Stub::RevokeKey, theirs, &revoked).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Call("GET", "/v1/usage", admin_).status, 200);
}

}  // namespace
}  // namespace isorun
