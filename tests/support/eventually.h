#pragma once

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace isorun::testing {

// Waits until `pred` holds or `timeout` passes, checking every 50 ms; returns whether it held.
template <typename Pred>
bool Eventually(Pred pred, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return pred();
}

}  // namespace isorun::testing
