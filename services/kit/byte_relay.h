#pragma once

// Relays bytes both ways between two connected streams (a proxied WebSocket or other Upgrade,
// the runner's tunnel into a sandbox): two half-duplex pumps, each reading a bounded piece from
// one side and writing it to the other before it reads again, so a slow reader holds back its
// writer (backpressure) and memory stays at one piece per direction. When one side ends its
// sending (EOF), the other side's sending is shut down and the opposite pump goes on; an error
// on either side closes both. No thread is held while a direction is quiet.

#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <functional>
#include <memory>

namespace isorun::http {

namespace beast = boost::beast;

// `a_pending` holds bytes already read from `a` that belong to `b` (and `b_pending` the other
// way); they are written first. Both streams' handlers run on `strand`. The caller keeps both
// streams and buffers alive until `done` runs (captured in it, say); `done` runs once, on the
// strand, when both directions have ended.
void RelayBothWays(beast::tcp_stream& a, beast::flat_buffer& a_pending, beast::tcp_stream& b,
                   beast::flat_buffer& b_pending,
                   boost::asio::strand<boost::asio::io_context::executor_type> strand,
                   std::function<void()> done, size_t piece_bytes = 16 * 1024);

}  // namespace isorun::http
