#include "scheduler/fleet_state.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"

namespace isorun::scheduler {
namespace {

CachedImage Image(int k, const std::string& tag = "") {
  CachedImage img;
  img.digest = absl::StrCat("sha256:d", k);
  img.size_bytes = k * 100;
  img.refs = {tag.empty() ? absl::StrCat("img", k, ":1") : tag};
  return img;
}

RunnerView View(const std::string& id, const std::string& region = "local") {
  RunnerView v;
  v.id = id;
  v.name = id;
  v.region = region;
  v.capacity = {1000, 1000, 10};
  return v;
}

// The index must always agree with a brute-force look at every runner's images.
void ExpectIndexConsistent(const FleetState& fleet) {
  for (ImageId id = 0; id < static_cast<ImageId>(fleet.image_count()); ++id) {
    std::set<RunnerIndex> want;
    for (RunnerIndex r = 0; r < fleet.size(); ++r) {
      for (const auto& img : fleet.record(r).images) {
        if (fleet.Resolve(img.digest) == id) want.insert(r);
      }
    }
    const auto& holders = fleet.Holders(id);
    std::set<RunnerIndex> got(holders.begin(), holders.end());
    ASSERT_EQ(got.size(), holders.size()) << "a runner is listed twice for image " << id;
    ASSERT_EQ(got, want) << "image " << id;
    for (RunnerIndex r : want) ASSERT_TRUE(fleet.Holds(r, id));
  }
  // Every reference resolves while some runner reports it, and only then.
  for (int k = 0; k < 12; ++k) {
    const ImageId id = fleet.Resolve(absl::StrCat("sha256:d", k));
    const bool held = id != kNoImage && !fleet.Holders(id).empty();
    ASSERT_EQ(fleet.Resolve(absl::StrCat("img", k, ":1")), held ? id : kNoImage) << k;
  }
}

TEST(FleetState, ImageIndexFollowsRandomChanges) {
  FleetState fleet;
  for (int i = 0; i < 30; ++i) fleet.Upsert(View(absl::StrCat("r", i)));
  std::mt19937 rng(11);
  for (int step = 0; step < 2000; ++step) {
    RunnerIndex r = rng() % 30;
    switch (rng() % 3) {
      case 0: {
        std::vector<CachedImage> images;
        for (int k = 0; k < 12; ++k) {
          if (rng() % 3 == 0) images.push_back(Image(k));
        }
        std::shuffle(images.begin(), images.end(), rng);
        fleet.SetImages(r, images);
        break;
      }
      case 1:
        fleet.AddImage(r, Image(static_cast<int>(rng() % 12)));
        break;
      default:
        fleet.SetImages(r, {});
    }
    if (step % 50 == 0) ExpectIndexConsistent(fleet);
  }
  ExpectIndexConsistent(fleet);
}

TEST(FleetState, TagsResolveToTheDigestMostRunnersReport) {
  FleetState fleet;
  for (int i = 0; i < 3; ++i) fleet.Upsert(View(absl::StrCat("r", i)));
  fleet.SetImages(0, {Image(1, "app:2")});
  fleet.SetImages(1, {Image(2, "app:2")});  // the tag moved on this runner
  fleet.SetImages(2, {Image(2, "app:2")});
  EXPECT_EQ(fleet.Resolve("app:2"), fleet.Resolve("sha256:d2"));
  EXPECT_EQ(fleet.Resolve("app@sha256:d1"), fleet.Resolve("sha256:d1"));
  EXPECT_NE(fleet.Resolve("sha256:d1"), kNoImage);
  fleet.SetImages(1, {});
  fleet.SetImages(2, {});
  EXPECT_EQ(fleet.Resolve("app:2"), fleet.Resolve("sha256:d1"));
  fleet.SetImages(0, {});
  EXPECT_EQ(fleet.Resolve("app:2"), kNoImage) << "no runner reports the tag any more";
  EXPECT_TRUE(fleet.Holders(fleet.Resolve("sha256:d1")).empty());
}

TEST(FleetState, AddImageMergesReferences) {
  FleetState fleet;
  fleet.Upsert(View("r"));
  fleet.AddImage(0, Image(1, "busybox:1.36"));
  fleet.AddImage(0, Image(1, "registry:5000/busybox:1.36"));
  ASSERT_EQ(fleet.record(0).images.size(), 1u);
  EXPECT_EQ(fleet.record(0).images[0].refs.size(), 2u);
  EXPECT_TRUE(fleet.Holds(0, fleet.Resolve("busybox:1.36")));
  EXPECT_TRUE(fleet.Holds(0, fleet.Resolve("registry:5000/busybox:1.36")));
}

TEST(FleetState, ImagesWithoutDigestAreKnownByTheirReference) {
  FleetState fleet;
  fleet.Upsert(View("r"));
  CachedImage img;
  img.refs = {"local/thing:1"};
  fleet.SetImages(0, {img});
  EXPECT_TRUE(fleet.Holds(0, fleet.Resolve("local/thing:1")));
}

TEST(FleetState, RegionsAndReRegistration) {
  FleetState fleet;
  fleet.Upsert(View("a", "eu"));
  fleet.Upsert(View("b", "us"));
  fleet.Upsert(View("c", "eu"));
  EXPECT_EQ(fleet.InRegion(fleet.RegionId("eu")).size(), 2u);
  EXPECT_EQ(fleet.InRegion(fleet.RegionId("")).size(), 3u);
  EXPECT_EQ(fleet.RegionId("mars"), -2);
  EXPECT_TRUE(fleet.InRegion(-2).empty());
  fleet.Reserve(0, {100, 100, 1});
  RunnerView moved = View("a", "us");
  moved.capacity = {2000, 2000, 20};
  EXPECT_EQ(fleet.Upsert(moved), 0u) << "same id, same index";
  EXPECT_EQ(fleet.slot(0).reserved.sandboxes, 1) << "reservations survive re-registration";
  EXPECT_EQ(fleet.slot(0).capacity.sandboxes, 20);
  EXPECT_EQ(fleet.InRegion(fleet.RegionId("eu")).size(), 1u);
  EXPECT_EQ(fleet.InRegion(fleet.RegionId("us")).size(), 2u);
}

}  // namespace
}  // namespace isorun::scheduler
