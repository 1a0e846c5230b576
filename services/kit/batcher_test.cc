#include "services/kit/batcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"

namespace isorun {
namespace {

TEST(BatcherTest, LoneCallRunsAtOnceAsABatchOfOne) {
  Batcher<int, int> b([](std::vector<int>& in) {
    std::vector<int> out;
    for (int v : in) out.push_back(v * 2);
    return out;
  });
  EXPECT_EQ(b.Call(21), 42);
  EXPECT_EQ(b.batches(), 1u);
  EXPECT_EQ(b.calls(), 1u);
}

TEST(BatcherTest, CallsArrivingDuringABatchShareTheNextOneAndGetTheirOwnOutputs) {
  absl::Notification first_running, release_first;
  std::atomic<int> largest{0};
  Batcher<int, int> b([&](std::vector<int>& in) {
    if (in.size() == 1 && in[0] == -1) {
      first_running.Notify();
      release_first.WaitForNotification();
    }
    largest = std::max<int>(largest, static_cast<int>(in.size()));
    std::vector<int> out;
    for (int v : in) out.push_back(v + 1000);
    return out;
  });
  std::thread first([&] { EXPECT_EQ(b.Call(-1), 999); });
  first_running.WaitForNotification();
  // Ten callers queue behind the running batch.
  std::vector<std::thread> others;
  std::vector<int> got(10, 0);
  for (int i = 0; i < 10; ++i) others.emplace_back([&, i] { got[i] = b.Call(i); });
  while (b.queued() < 10) std::this_thread::yield();
  release_first.Notify();
  first.join();
  for (auto& t : others) t.join();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(got[i], i + 1000);
  EXPECT_EQ(b.calls(), 11u);
  EXPECT_EQ(largest.load(), 10);
  EXPECT_EQ(b.batches(), 2u);
}

TEST(BatcherTest, BatchesAreCappedAndEveryCallerIsServedUnderLoad) {
  std::atomic<int> in_flight{0}, most_in_flight{0};
  Batcher<int, int> b(
      [&](std::vector<int>& in) {
        int now = ++in_flight;
        most_in_flight = std::max<int>(most_in_flight, now);
        EXPECT_LE(in.size(), 4u);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        --in_flight;
        return in;
      },
      /*max_batch=*/4, /*max_inflight=*/2);
  std::vector<std::thread> threads;
  std::atomic<long> sum{0};
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) sum += b.Call(t * 1000 + i);
    });
  }
  for (auto& t : threads) t.join();
  long want = 0;
  for (int t = 0; t < 16; ++t)
    for (int i = 0; i < 200; ++i) want += t * 1000 + i;
  EXPECT_EQ(sum.load(), want);
  EXPECT_EQ(b.calls(), 3200u);
  EXPECT_LE(most_in_flight.load(), 2);
  EXPECT_LT(b.batches(), 3200u);  // some calls shared a batch
}

}  // namespace
}  // namespace isorun
