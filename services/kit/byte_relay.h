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
#include "services/kit/tunnel_tls.h"

namespace isorun::http {

// `a_pending` holds bytes already read from `a` that belong to `b` (and `b_pending` the other
// way); they are written first. Both streams must belong to `executor` (one thread runs it); the
// relay's handlers run there. The caller keeps both streams and buffers alive until `done` runs
// (captured in it, say); `done` runs once, on that thread, when both directions have ended.
void RelayBothWays(Stream& a, beast::flat_buffer& a_pending, Stream& b,
                   beast::flat_buffer& b_pending, Executor executor, std::function<void()> done,
                   size_t piece_bytes = 64 * 1024);

// The same between a plain stream and a tunnel stream (services/kit/tunnel_tls.h). A plain
// tunnel takes the path above. A TLS one cannot: OpenSSL may hold decrypted bytes that no
// readiness event announces, so each direction reads with an asynchronous read into a piece of
// its own (16 KiB, one TLS record) and writes it before the next read (backpressure as above);
// the piece exists for as long as the relay runs. An end of stream is passed on as a TCP
// half-close (what is relayed frames its own messages).
void RelayBothWays(Stream& a, beast::flat_buffer& a_pending, TunnelStream& b,
                   beast::flat_buffer& b_pending, Executor executor, std::function<void()> done);
void RelayBothWays(TunnelStream& a, beast::flat_buffer& a_pending, Stream& b,
                   beast::flat_buffer& b_pending, Executor executor, std::function<void()> done);

}  // namespace isorun::http
