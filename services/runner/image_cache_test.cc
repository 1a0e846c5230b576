#include "services/runner/image_cache.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "services/kit/ids.h"
#include "services/runner/fs_util.h"

namespace isorun::runner {
namespace {

// Images by repository:tag, each with a size; pulls take `delay` so concurrent calls overlap.
class FakeFetcher final : public ImageFetcher {
 public:
  void Add(const std::string& repo_tag, int64_t bytes) {
    absl::MutexLock lock(&mu_);
    sizes_[repo_tag] = bytes;
  }
  static std::string DigestOf(const std::string& repo_tag) {
    return "sha256:" + Sha256Hex(repo_tag);
  }
  absl::StatusOr<std::string> Resolve(const ImageRef& ref) override {
    resolves++;
    absl::SleepFor(delay);
    absl::MutexLock lock(&mu_);
    std::string key = ref.repository + ":" + ref.tag;
    if (sizes_.count(key) == 0) return absl::NotFoundError("image " + key + " not found");
    return DigestOf(key);
  }
  absl::StatusOr<ImageConfig> Fetch(const ImageRef& ref, const std::string& digest,
                                    const std::string& dir) override {
    fetches++;
    absl::SleepFor(delay);
    int64_t bytes = -1;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [key, size] : sizes_) {
        if (DigestOf(key) == digest) bytes = size;
      }
    }
    if (bytes < 0 || fail_fetches) return absl::UnavailableError("registry says no");
    if (absl::Status s = MakeDirs(dir + "/rootfs"); !s.ok()) return s;
    std::ofstream(dir + "/rootfs/blob") << std::string(static_cast<size_t>(bytes), 'x');
    ImageConfig config;
    config.env = {"FROM=" + ref.repository};
    config.cwd = "/srv";
    return config;
  }

  std::atomic<int> resolves{0};
  std::atomic<int> fetches{0};
  std::atomic<bool> fail_fetches{false};
  absl::Duration delay = absl::ZeroDuration();

 private:
  absl::Mutex mu_;
  std::map<std::string, int64_t> sizes_ ABSL_GUARDED_BY(mu_);
};

class ImageCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/isorun-image-cache-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    fetcher_.Add("busybox:1.36", 100 << 10);
    fetcher_.Add("fat:1.0", 1 << 20);
    fetcher_.Add("other:1", 300 << 10);
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  ImageCacheOptions Options(int64_t budget = int64_t{1} << 30) {
    return {dir_ + "/images", budget, "reg:5000"};
  }
  bool Cached(ImageCache& cache, const std::string& repo_tag) {
    for (const auto& img : cache.Images()) {
      if (img.digest == FakeFetcher::DigestOf(repo_tag)) return true;
    }
    return false;
  }

  std::string dir_;
  FakeFetcher fetcher_;
};

TEST_F(ImageCacheTest, FirstAcquireIsColdThenWarmWithoutTheRegistry) {
  ImageCache cache(Options(), fetcher_);
  ASSERT_TRUE(cache.Load().ok());
  auto a = cache.Acquire("busybox:1.36", "sb1");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE(a->warm);
  EXPECT_EQ(a->digest, FakeFetcher::DigestOf("busybox:1.36"));
  EXPECT_TRUE(PathExists(a->rootfs + "/blob"));
  EXPECT_EQ(a->config.cwd, "/srv");
  auto b = cache.Acquire("busybox:1.36", "sb2");
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->warm);
  EXPECT_EQ(b->rootfs, a->rootfs);
  // The same image by its full name and by digest is warm too.
  EXPECT_TRUE(cache.Acquire("reg:5000/busybox:1.36", "sb3")->warm);
  EXPECT_TRUE(cache.Acquire("busybox@" + a->digest, "sb4")->warm);
  EXPECT_EQ(fetcher_.resolves.load(), 1);
  EXPECT_EQ(fetcher_.fetches.load(), 1);
  auto images = cache.Images();
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0].sandboxes, 4);
  EXPECT_GT(images[0].size_bytes, 100 << 10);
  std::set<std::string> refs(images[0].refs.begin(), images[0].refs.end());
  EXPECT_EQ(refs.count("busybox:1.36"), 1u);
  EXPECT_EQ(refs.count("reg:5000/busybox:1.36"), 1u);
  EXPECT_EQ(refs.count("busybox@" + a->digest), 1u);
}

TEST_F(ImageCacheTest, ConcurrentColdAcquiresPullOnce) {
  fetcher_.delay = absl::Milliseconds(200);
  ImageCache cache(Options(), fetcher_);
  ASSERT_TRUE(cache.Load().ok());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0}, warm{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto lease =
          cache.Acquire(i % 2 ? "busybox:1.36" : "reg:5000/busybox:1.36", absl::StrCat("sb", i));
      if (lease.ok()) ++ok;
      if (lease.ok() && lease->warm) ++warm;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 8);
  EXPECT_EQ(warm.load(), 0) << "every caller waited for the one pull";
  EXPECT_EQ(fetcher_.fetches.load(), 1);
  EXPECT_EQ(cache.stats().pulls, 1);
  EXPECT_EQ(fetcher_.resolves.load(), 1);
}

TEST_F(ImageCacheTest, FailedPullsLeaveNothingAndEveryWaiterSeesTheError) {
  fetcher_.delay = absl::Milliseconds(100);
  ImageCache cache(Options(), fetcher_);
  ASSERT_TRUE(cache.Load().ok());
  auto missing = cache.Acquire("nope:1", "sb1");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  fetcher_.fail_fetches = true;
  std::vector<std::thread> threads;
  std::atomic<int> unavailable{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto lease = cache.Acquire("fat:1.0", absl::StrCat("sb", i));
      if (lease.status().code() == absl::StatusCode::kUnavailable) ++unavailable;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(unavailable.load(), 4);
  EXPECT_EQ(fetcher_.fetches.load(), 1);
  EXPECT_TRUE(cache.Images().empty());
  EXPECT_EQ(cache.total_bytes(), 0);
  EXPECT_TRUE(ListDir(dir_ + "/images/tmp").empty());
  std::vector<std::string> left = ListDir(dir_ + "/images");
  EXPECT_EQ(left.size(), 2u) << "only tmp and trash";
}

TEST_F(ImageCacheTest, EvictsLeastRecentlyUsedButNeverInUse) {
  ImageCache cache(Options(1200 << 10), fetcher_);  // room for fat (1 MiB) + busybox, not other
  ASSERT_TRUE(cache.Load().ok());
  auto fat = cache.Acquire("fat:1.0", "sb-fat");
  ASSERT_TRUE(fat.ok());
  auto bb = cache.Acquire("busybox:1.36", "sb-bb");
  ASSERT_TRUE(bb.ok());
  cache.Release(bb->digest, "sb-bb");  // busybox unused now, fat in use
  absl::SleepFor(absl::Milliseconds(5));
  auto other = cache.Acquire("other:1", "sb-other");
  ASSERT_TRUE(other.ok());
  // Over budget: busybox (unused) goes; fat and other are in use and stay, over budget if need be.
  EXPECT_FALSE(Cached(cache, "busybox:1.36"));
  EXPECT_TRUE(Cached(cache, "fat:1.0"));
  EXPECT_TRUE(Cached(cache, "other:1"));
  EXPECT_GT(cache.total_bytes(), 1200 << 10);
  EXPECT_TRUE(PathExists(fat->rootfs + "/blob"));
  EXPECT_FALSE(PathExists(bb->rootfs));
  // When fat is released it is the only unused one: evicted, back under budget.
  cache.Release(fat->digest, "sb-fat");
  EXPECT_FALSE(Cached(cache, "fat:1.0"));
  EXPECT_TRUE(Cached(cache, "other:1"));
  EXPECT_LE(cache.total_bytes(), 1200 << 10);
  EXPECT_EQ(cache.stats().evictions, 2);
  // An evicted image is pulled again.
  auto again = cache.Acquire("busybox:1.36", "sb-bb2");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->warm);
  EXPECT_EQ(fetcher_.fetches.load(), 4);
}

TEST_F(ImageCacheTest, LeastRecentlyUsedGoesFirst) {
  ImageCache cache(Options(1400 << 10), fetcher_);  // all three do not fit; two do
  ASSERT_TRUE(cache.Load().ok());
  for (const char* image : {"busybox:1.36", "other:1"}) {
    auto lease = cache.Acquire(image, "x");
    ASSERT_TRUE(lease.ok());
    cache.Release(lease->digest, "x");
    absl::SleepFor(absl::Milliseconds(5));
  }
  // Touch busybox: other is now the least recently used.
  auto bb = cache.Acquire("busybox:1.36", "y");
  cache.Release(bb->digest, "y");
  ASSERT_TRUE(cache.Acquire("fat:1.0", "z").ok());
  EXPECT_TRUE(Cached(cache, "busybox:1.36"));
  EXPECT_FALSE(Cached(cache, "other:1"));
}

TEST_F(ImageCacheTest, RestartKeepsTheCacheAndDropsIncompletePulls) {
  std::string digest;
  {
    ImageCache cache(Options(), fetcher_);
    ASSERT_TRUE(cache.Load().ok());
    auto lease = cache.Acquire("busybox:1.36", "sb1");
    ASSERT_TRUE(lease.ok());
    digest = lease->digest;
  }
  // An interrupted pull (no image.meta) and a leftover temp dir.
  ASSERT_TRUE(MakeDirs(dir_ + "/images/" + std::string(64, 'c') + "/rootfs").ok());
  ASSERT_TRUE(MakeDirs(dir_ + "/images/tmp/partial").ok());
  FakeFetcher fresh;
  ImageCache cache(Options(), fresh);
  ASSERT_TRUE(cache.Load().ok());
  auto images = cache.Images();
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0].digest, digest);
  EXPECT_EQ(images[0].sandboxes, 0) << "holders are re-attached by the driver, not persisted";
  EXPECT_FALSE(PathExists(dir_ + "/images/" + std::string(64, 'c')));
  EXPECT_FALSE(PathExists(dir_ + "/images/tmp/partial"));
  auto lease = cache.Acquire("busybox:1.36", "sb2");
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(lease->warm);
  EXPECT_EQ(lease->config.env, std::vector<std::string>{"FROM=busybox"});
  EXPECT_EQ(lease->config.cwd, "/srv");
  EXPECT_EQ(fresh.resolves.load() + fresh.fetches.load(), 0);
  EXPECT_TRUE(cache.AcquireDigest(digest, "sb1").ok());
  EXPECT_EQ(cache.AcquireDigest("sha256:" + std::string(64, 'd'), "x").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ImageCacheTest, AcquireAndReleaseAreIdempotentPerHolder) {
  ImageCache cache(Options(0), fetcher_);  // budget 0: anything unused goes at once
  ASSERT_TRUE(cache.Load().ok());
  auto a = cache.Acquire("busybox:1.36", "sb1");
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(cache.Acquire("busybox:1.36", "sb1").ok());
  EXPECT_EQ(cache.Images().at(0).sandboxes, 1);
  cache.Release(a->digest, "someone-else");
  EXPECT_EQ(cache.Images().size(), 1u);
  cache.Release(a->digest, "sb1");
  EXPECT_TRUE(cache.Images().empty());
  cache.Release(a->digest, "sb1");
}

TEST_F(ImageCacheTest, BadReferences) {
  ImageCache cache(Options(), fetcher_);
  ASSERT_TRUE(cache.Load().ok());
  EXPECT_EQ(cache.Acquire("Not A Ref", "x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fetcher_.resolves.load(), 0);
}

}  // namespace
}  // namespace isorun::runner
