#include "services/gateway/bodies.h"

#include <gtest/gtest.h>

#include <string>

#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

// The body error `message` contains `needle`, with code and reason INVALID_ARGUMENT.
template <typename T>
void ExpectInvalid(const absl::StatusOr<T>& result, std::string_view needle,
                   std::string_view body) {
  ASSERT_FALSE(result.ok()) << "accepted: " << body;
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << body;
  auto detail = ErrorDetailOf(result.status());
  ASSERT_TRUE(detail.has_value()) << body;
  EXPECT_EQ(detail->reason(), "INVALID_ARGUMENT") << body;
  EXPECT_NE(result.status().message().find(absl::string_view(needle.data(), needle.size())),
            absl::string_view::npos)
      << "body " << body << " gave: " << result.status().message();
}

TEST(ParseCreateBody, ReadsEveryField) {
  auto req = ParseCreateBody(R"({
    "image": "busybox:1.36", "timeoutSec": 600, "cpuMillis": 500, "memoryMb": 256,
    "env": {"A": "1", "B": ""}, "metadata": {"team": "ci", "run": "42"},
    "network": {"egress": "allowlist", "allow": ["example.org", "10.1.0.0/16"]}})");
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->image(), "busybox:1.36");
  EXPECT_EQ(req->timeout_sec(), 600);
  EXPECT_EQ(req->cpu_millis(), 500);
  EXPECT_EQ(req->memory_mb(), 256);
  EXPECT_EQ(req->env().at("A"), "1");
  EXPECT_EQ(req->env().at("B"), "");
  EXPECT_EQ(req->metadata().at("team"), "ci");
  EXPECT_EQ(req->network().egress(), "allowlist");
  ASSERT_EQ(req->network().allow_size(), 2);
  EXPECT_EQ(req->network().allow(1), "10.1.0.0/16");
  EXPECT_TRUE(req->tenant_id().empty());
}

TEST(ParseCreateBody, OptionalFieldsMayBeAbsentOrNull) {
  auto req = ParseCreateBody(R"({"image":"a:1"})");
  ASSERT_TRUE(req.ok());
  EXPECT_EQ(req->timeout_sec(), 0);
  req = ParseCreateBody(R"({"image":"a:1","timeoutSec":null,"env":null,"network":null})");
  ASSERT_TRUE(req.ok()) << req.status();
  // Image checks (pinning, presence) belong to the lifecycle service.
  EXPECT_TRUE(ParseCreateBody("{}").ok());
}

TEST(ParseCreateBody, AcceptsIntegralDecimals) {
  auto req = ParseCreateBody(R"({"timeoutSec": 30.0, "cpuMillis": 1e3, "memoryMb": 2.56e2})");
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->timeout_sec(), 30);
  EXPECT_EQ(req->cpu_millis(), 1000);
  EXPECT_EQ(req->memory_mb(), 256);
}

TEST(ParseCreateBody, NeverTakesTheTenantFromTheBody) {
  ExpectInvalid(ParseCreateBody(R"({"image":"a:1","tenantId":"t"})"), "unknown field \"tenantId\"",
                "tenantId");
  ExpectInvalid(ParseCreateBody(R"({"image":"a:1","tenant_id":"t"})"), "unknown field", "");
}

TEST(ParseCreateBody, RejectsBadBodies) {
  struct Case {
    const char* body;
    const char* needle;
  } cases[] = {
      {"", "body is empty"},
      {"   ", "body is empty"},
      {"not json", "malformed JSON"},
      {R"({"image":"a:1",})", "malformed JSON"},
      {R"({"image":"a:1"} {})", "malformed JSON"},
      {"[]", "must be a JSON object, not array"},
      {"null", "must be a JSON object, not null"},
      {R"("image")", "must be a JSON object, not string"},
      {"42", "must be a JSON object, not number"},
      {R"({"image":"a:1","bogus":1})", "unknown field \"bogus\""},
      {R"({"Image":"a:1"})", "unknown field \"Image\""},
      {R"({"timeout_sec":5})", "unknown field \"timeout_sec\""},
      {R"({"image":5})", "field \"image\" must be a string, not number"},
      {R"({"image":["a"]})", "field \"image\" must be a string, not array"},
      {R"({"image":{"name":"a"}})", "field \"image\" must be a string, not object"},
      {R"({"image":true})", "must be a string, not boolean"},
      {R"({"timeoutSec":"30"})", "field \"timeoutSec\" must be an integer, not string"},
      {R"({"timeoutSec":true})", "must be an integer, not boolean"},
      {R"({"timeoutSec":1.5})", "field \"timeoutSec\" must be an integer, got 1.5"},
      {R"({"timeoutSec":0.0001})", "must be an integer"},
      {R"({"timeoutSec":-5})", "must be a positive integer, got -5"},
      {R"({"timeoutSec":0})", "must be a positive integer, got 0"},
      {R"({"timeoutSec":-0})", "must be a positive integer"},
      {R"({"cpuMillis":2147483648})", "at most 2147483647"},
      {R"({"cpuMillis":99999999999999999999999999})", "at most 2147483647"},
      {R"({"cpuMillis":-99999999999999999999999999})", "positive integer"},
      {R"({"memoryMb":1e400})", "at most 2147483647"},
      {R"({"memoryMb":1e10})", "at most 2147483647"},
      {R"({"memoryMb":-1e10})", "positive integer"},
      {R"({"env":[]})", "field \"env\" must be an object of strings, not array"},
      {R"({"env":"A=1"})", "must be an object of strings, not string"},
      {R"({"env":{"A":1}})", "field \"env.A\" must be a string, not number"},
      {R"({"env":{"A":{"B":"c"}}})", "field \"env.A\" must be a string, not object"},
      {R"({"env":{"A":null}})", "field \"env.A\" must be a string, not null"},
      {R"({"metadata":{"k":["v"]}})", "field \"metadata.k\" must be a string"},
      {R"({"network":"open"})", "field \"network\" must be an object"},
      {R"({"network":{"egress":1}})", "field \"network.egress\" must be a string"},
      {R"({"network":{"allow":"example.org"}})", "field \"network.allow\" must be an array"},
      {R"({"network":{"allow":[1]}})", "field \"network.allow[0]\" must be a string"},
      {R"({"network":{"allow":["a",["b"]]}})", "field \"network.allow[1]\" must be a string"},
      {R"({"network":{"bogus":[]}})", "unknown field \"network.bogus\""},
      {R"({"image":"a:1","image":"b:2"})", "duplicate key \"image\""},
      {R"({"image":"a\u0000b"})", "must not contain NUL"},
      {R"({"env":{"A\u0000":"x"}})", "must not contain NUL"},
      {"{\"image\":\"\xFF\"}", "invalid UTF-8"},
      {"{\"image\":\"\xED\xA0\x80\"}", "invalid UTF-8"},
      {R"({"image":"\ud800"})", "surrogate"},
      {"{\"metadata\":{\"\xC0\xAF\":\"v\"}}", "invalid UTF-8"},
  };
  for (const Case& c : cases) ExpectInvalid(ParseCreateBody(c.body), c.needle, c.body);
}

TEST(ParseCreateBody, SurvivesNestedGarbage) {
  std::string deep = R"({"env":)" + std::string(5000, '[') + std::string(5000, ']') + "}";
  ExpectInvalid(ParseCreateBody(deep), "nested too deeply", "deep");
  std::string wide = R"({"metadata":{)";
  for (int i = 0; i < 20000; ++i) wide += "\"k" + std::to_string(i) + "\":\"v\",";
  wide += R"("last":"v"}})";
  auto req = ParseCreateBody(wide);
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->metadata_size(), 20001);
}

TEST(ParseExecBody, ReadsEveryField) {
  auto req = ParseExecBody(
      R"({"cmd":"echo hi","timeoutSec":5,"env":{"X":"y"},"cwd":"/tmp","stdin":"line\u0000two"})");
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->cmd(), "echo hi");
  EXPECT_EQ(req->timeout_sec(), 5);
  EXPECT_EQ(req->env().at("X"), "y");
  EXPECT_EQ(req->cwd(), "/tmp");
  EXPECT_EQ(req->stdin(), std::string("line\0two", 8));  // stdin is data: NUL allowed
}

TEST(ParseExecBody, RejectsBadBodies) {
  ExpectInvalid(ParseExecBody(R"({"cmd":["ls"]})"), "field \"cmd\" must be a string", "");
  ExpectInvalid(ParseExecBody(R"({"cmd":"ls","args":[]})"), "unknown field \"args\"", "");
  ExpectInvalid(ParseExecBody(R"({"cmd":"ls","timeoutSec":1.5})"), "must be an integer", "");
  ExpectInvalid(ParseExecBody(R"({"cmd":"ls","timeoutSec":-1})"), "positive integer", "");
  ExpectInvalid(ParseExecBody(R"({"cmd":"ls","stdin":5})"), "field \"stdin\" must be a string", "");
  ExpectInvalid(ParseExecBody(R"({"cmd":"ls","cwd":"/\u0000"})"), "NUL", "");
  ExpectInvalid(ParseExecBody(""), "body is empty", "");
}

TEST(ParseSetTimeoutBody, RequiresAPositiveTimeout) {
  auto t = ParseSetTimeoutBody(R"({"timeoutSec":120})");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, 120);
  ExpectInvalid(ParseSetTimeoutBody("{}"), "\"timeoutSec\" is required", "{}");
  ExpectInvalid(ParseSetTimeoutBody(R"({"timeoutSec":null})"), "is required", "");
  ExpectInvalid(ParseSetTimeoutBody(R"({"timeoutSec":0})"), "positive integer", "");
  ExpectInvalid(ParseSetTimeoutBody(R"({"timeoutSec":"60"})"), "must be an integer", "");
  ExpectInvalid(ParseSetTimeoutBody(R"({"timeout":60})"), "unknown field \"timeout\"", "");
}

TEST(ParseEmptyBody, AcceptsNothingOrAnEmptyObject) {
  EXPECT_TRUE(ParseEmptyBody("").ok());
  EXPECT_TRUE(ParseEmptyBody(" \n").ok());
  EXPECT_TRUE(ParseEmptyBody("{}").ok());
  ExpectInvalid(absl::StatusOr<int>(ParseEmptyBody(R"({"force":true})")), "unknown field \"force\"",
                "");
  ExpectInvalid(absl::StatusOr<int>(ParseEmptyBody("[]")), "must be a JSON object", "");
}

TEST(ParseEventsQuery, PagingOnly) {
  auto req = ParseEventsQuery("");
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->page_size(), 50);
  EXPECT_TRUE(req->page_token().empty());
  req = ParseEventsQuery("pageSize=2&pageToken=ZXYxOjU%3D");
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->page_size(), 2);
  EXPECT_EQ(req->page_token(), "ZXYxOjU=");
  for (const char* bad : {"pageSize=0", "pageSize=1001", "pageSize=two", "state=RUNNING",
                          "metadata.a=b", "pageSize=1&pageSize=2"}) {
    auto r = ParseEventsQuery(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(ParseListQuery, DefaultsAndFilters) {
  auto req = ParseListQuery("");
  ASSERT_TRUE(req.ok());
  EXPECT_EQ(req->page_size(), 50);
  EXPECT_EQ(req->states_size(), 0);

  req = ParseListQuery(
      "state=RUNNING,hibernated&state=FAILED&metadata.team=ci&metadata.run%20id=4%2B2&pageSize=10"
      "&pageToken=abc%3D");
  ASSERT_TRUE(req.ok()) << req.status();
  ASSERT_EQ(req->states_size(), 3);
  EXPECT_EQ(req->states(0), v1::RUNNING);
  EXPECT_EQ(req->states(1), v1::HIBERNATED);
  EXPECT_EQ(req->states(2), v1::FAILED);
  EXPECT_EQ(req->metadata().at("team"), "ci");
  EXPECT_EQ(req->metadata().at("run id"), "4+2");
  EXPECT_EQ(req->page_size(), 10);
  EXPECT_EQ(req->page_token(), "abc=");

  req = ParseListQuery("state=&pageSize=&metadata.k=a+b");
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->states_size(), 0);
  EXPECT_EQ(req->page_size(), 50);
  EXPECT_EQ(req->metadata().at("k"), "a b");
}

TEST(ParseListQuery, RejectsBadParameters) {
  ExpectInvalid(ParseListQuery("state=SLEEPING"), "unknown state \"SLEEPING\"", "");
  ExpectInvalid(ParseListQuery("state=SANDBOX_STATE_UNSPECIFIED"), "unknown state", "");
  ExpectInvalid(ParseListQuery("pageSize=0"), "pageSize", "");
  ExpectInvalid(ParseListQuery("pageSize=1001"), "from 1 to 1000", "");
  ExpectInvalid(ParseListQuery("pageSize=ten"), "pageSize", "");
  ExpectInvalid(ParseListQuery("pageSize=5&pageSize=6"), "given twice", "");
  ExpectInvalid(ParseListQuery("pageSize=99999999999999999999"), "pageSize", "");
  ExpectInvalid(ParseListQuery("limit=5"), "unknown query parameter \"limit\"", "");
  ExpectInvalid(ParseListQuery("metadata.=x"), "needs a key", "");
  ExpectInvalid(ParseListQuery("metadata.a=1&metadata.a=2"), "given twice", "");
  ExpectInvalid(ParseListQuery("metadata.a=%zz"), "percent-escape", "");
  ExpectInvalid(ParseListQuery("metadata.a=%"), "percent-escape", "");
  ExpectInvalid(ParseListQuery("metadata.a=%FF"), "not valid UTF-8", "");
  ExpectInvalid(ParseListQuery("metadata.a=%00"), "NUL", "");
}

TEST(Headers, ContentTypeAndIdempotencyKey) {
  EXPECT_TRUE(IsJsonContentType("application/json"));
  EXPECT_TRUE(IsJsonContentType("Application/JSON; charset=utf-8"));
  EXPECT_TRUE(IsJsonContentType("application/merge-patch+json"));
  EXPECT_FALSE(IsJsonContentType("text/plain"));
  EXPECT_FALSE(IsJsonContentType("application/x-www-form-urlencoded"));
  EXPECT_FALSE(IsJsonContentType("application/+json"));
  EXPECT_FALSE(IsJsonContentType(""));

  EXPECT_TRUE(IsValidIdempotencyKey("a"));
  EXPECT_TRUE(IsValidIdempotencyKey("retry 1 / job:42"));
  EXPECT_TRUE(IsValidIdempotencyKey(std::string(255, 'k')));
  EXPECT_FALSE(IsValidIdempotencyKey(""));
  EXPECT_FALSE(IsValidIdempotencyKey(std::string(256, 'k')));
  EXPECT_FALSE(IsValidIdempotencyKey("tab\there"));
  EXPECT_FALSE(IsValidIdempotencyKey("caf\xC3\xA9"));
}

TEST(Bodies, NetworkBody) {
  auto n = ParseNetworkBody(R"({"egress":"allowlist","allow":["example.org","198.18.0.0/15"]})");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->egress(), "allowlist");
  ASSERT_EQ(n->allow_size(), 2);
  EXPECT_EQ(n->allow(1), "198.18.0.0/15");
  for (const char* bad : {"", "[]", R"({"allow":[]})", R"({"egress":"open","bogus":1})",
                          R"({"egress":5})", R"({"egress":"allowlist","allow":"x"})"}) {
    auto r = ParseNetworkBody(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(ParseNetworkBody(R"({"allow":[]})").status().message().find("egress"),
            std::string::npos);
}

}  // namespace
}  // namespace isorun::gateway
