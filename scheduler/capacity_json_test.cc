#include "scheduler/capacity_json.h"

#include <gtest/gtest.h>

#include "scheduler/admin_http.h"

namespace isorun::scheduler {
namespace {

TEST(CapacityJson, RunnersAndTotals) {
  RunnerStatus r;
  r.view.id = "rn_1";
  r.view.name = "runner-1";
  r.view.region = "local";
  r.view.capacity = {4000, 8192, 10};
  r.view.allocated = {1500, 1024, 3};
  r.view.sandbox_ids = {"sbx_a", "sbx_\"b"};
  r.view.image_cache_bytes = 1000;
  r.view.image_cache_used_bytes = 400;
  r.view.last_heartbeat = absl::FromUnixSeconds(1'800'000'000);
  CachedImage img;
  img.digest = "sha256:aa";
  img.size_bytes = 400;
  img.refs = {"busybox:1.36"};
  r.view.images = {img};
  r.state = "HEALTHY";
  r.reserved = {1000, 512, 2};
  r.placements_warm = 2;
  FleetTotals t;
  t.runners_by_state = {{"HEALTHY", 1}, {"LOST", 0}};
  t.capacity = r.view.capacity;
  t.allocated = r.view.allocated;
  t.free = {2500, 7168, 7};
  t.schedulable_free = t.free;
  t.images = 1;
  const absl::Time now = absl::FromUnixSeconds(1'800'000'002);
  std::string json = CapacityJson({r}, t, now);
  for (const char* want :
       {R"("totals":{"runners":1,"runnersByState":{"HEALTHY":1,"LOST":0})",
        R"("sandboxes":{"capacity":10,"allocated":3,"free":7})",
        R"("schedulable":{"cpuMillisFree":2500)", R"("name":"runner-1")",
        R"("cpuMillis":{"capacity":4000,"allocated":1500,"reserved":1000,"free":2500})",
        R"("ids":["sbx_a","sbx_\"b"])", R"("placements":{"warm":2,"cold":0})",
        R"("budgetBytes":1000,"usedBytes":400)", R"("refs":["busybox:1.36"])",
        R"("heartbeatAgeSec":2)", R"("generatedAt":"2027-01-15T08:00:02.000Z")"}) {
    EXPECT_NE(json.find(want), std::string::npos) << want << "\nin " << json;
  }
  CapacityJsonOptions summary;
  summary.runners = false;
  EXPECT_EQ(CapacityJson({r}, t, now, summary).find("runner-1"), std::string::npos);
  CapacityJsonOptions other;
  other.runner = "runner-2";
  EXPECT_NE(CapacityJson({r}, t, now, other).find(R"("runners":[])"), std::string::npos);
}

TEST(AdminHttp, ParsesQueries) {
  auto q = ParseQuery("summary=1&runner=a%20b&x=&plus=a+b&=z");
  EXPECT_EQ(q["summary"], "1");
  EXPECT_EQ(q["runner"], "a b");
  EXPECT_EQ(q["plus"], "a b");
  EXPECT_EQ(q["x"], "");
}

}  // namespace
}  // namespace isorun::scheduler
