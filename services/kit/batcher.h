#pragma once

// Groups concurrent calls of one operation into batches, so that N callers arriving together
// cost one database statement (or one RPC) instead of N.
//
// A caller queues its input and then either waits for its output or, when fewer than
// `max_inflight` batches are running, takes the queue (up to `max_batch` inputs, oldest first)
// and runs the batch function on its own thread. Nothing waits on a timer: an idle batcher runs
// a lone call at once, and batches grow only while earlier batches are in flight, so a batcher
// adds no latency at low load and amortises per-call cost at high load.
//
// The batch function gets the inputs in arrival order and must return one output for each, in
// the same order. It runs without the batcher's lock, on the caller's thread, and must not throw.

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace isorun {

template <typename In, typename Out>
class Batcher {
 public:
  using BatchFn = std::function<std::vector<Out>(std::vector<In>&)>;

  // One batch in flight (the default) makes the calls that arrive meanwhile the next, larger
  // batch: for the lifecycle's statements and RPCs that measured both faster and cheaper than two
  // smaller batches in flight.
  explicit Batcher(BatchFn fn, size_t max_batch = 64, int max_inflight = 1)
      : fn_(std::move(fn)),
        max_batch_(max_batch == 0 ? 1 : max_batch),
        max_inflight_(max_inflight < 1 ? 1 : max_inflight) {}
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  Out Call(In in) {
    Item item{this, std::move(in), std::nullopt};
    absl::MutexLock lock(&mu_);
    queue_.push_back(&item);
    while (true) {
      // Done, or free to lead the next batch.
      mu_.Await(absl::Condition(&item, &Item::Ready));
      if (item.out.has_value()) return std::move(*item.out);
      RunOneBatch();
    }
  }

  // Batches run so far, and inputs they carried (for tests and metrics).
  size_t batches() const {
    absl::MutexLock lock(&mu_);
    return batches_;
  }
  size_t calls() const {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  size_t queued() const {
    absl::MutexLock lock(&mu_);
    return queue_.size();
  }

 private:
  struct Item {
    Batcher* owner;
    In in;
    std::optional<Out> out;
    // Evaluated with owner->mu_ held.
    bool Ready() const {
      return out.has_value() ||
             (owner->inflight_ < owner->max_inflight_ && !owner->queue_.empty());
    }
  };

  // Called with mu_ held; releases it while the batch function runs.
  void RunOneBatch() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<Item*> taken;
    while (!queue_.empty() && taken.size() < max_batch_) {
      taken.push_back(queue_.front());
      queue_.pop_front();
    }
    ++inflight_;
    ++batches_;
    calls_ += taken.size();
    std::vector<In> inputs;
    inputs.reserve(taken.size());
    for (Item* it : taken) inputs.push_back(std::move(it->in));
    mu_.Unlock();
    std::vector<Out> outputs = fn_(inputs);
    if (outputs.size() != taken.size()) {
      std::fprintf(stderr, "Batcher: batch function returned %zu outputs for %zu inputs\n",
                   outputs.size(), taken.size());
      std::abort();
    }
    mu_.Lock();
    for (size_t i = 0; i < taken.size(); ++i) taken[i]->out.emplace(std::move(outputs[i]));
    --inflight_;
  }

  const BatchFn fn_;
  const size_t max_batch_;
  const int max_inflight_;
  mutable absl::Mutex mu_;
  std::deque<Item*> queue_ ABSL_GUARDED_BY(mu_);
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
  size_t batches_ ABSL_GUARDED_BY(mu_) = 0;
  size_t calls_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace isorun
