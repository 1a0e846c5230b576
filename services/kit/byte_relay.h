#pragma once

// Relays bytes both ways between two connected streams (a proxied WebSocket or other Upgrade,
// the runner's tunnel into a sandbox): two half-duplex pumps. Each waits until its source is
// readable, then moves what is there with plain non-blocking reads and writes through a scratch
// buffer of its thread; only bytes the destination cannot take at once are copied aside, and the
// source is not read again until they are written (backpressure). So an idle relay holds no
// buffer at all, a busy one at most one piece per direction, and a small message costs one read
// and one write. When one side ends its sending (EOF), the other side's sending is shut down and
// the opposite pump goes on; an error on either side closes both. No thread is held while a
// direction is quiet.

#include <functional>
#include <memory>

#include "services/kit/http_front.h"

namespace isorun::http {

// `a_pending` holds bytes already read from `a` that belong to `b` (and `b_pending` the other
// way); they are written first. Both streams must belong to `executor` (one thread runs it); the
// relay's handlers run there. The caller keeps both streams and buffers alive until `done` runs
// (captured in it, say); `done` runs once, on that thread, when both directions have ended.
void RelayBothWays(Stream& a, beast::flat_buffer& a_pending, Stream& b,
                   beast::flat_buffer& b_pending, Executor executor, std::function<void()> done,
                   size_t piece_bytes = 64 * 1024);

}  // namespace isorun::http
