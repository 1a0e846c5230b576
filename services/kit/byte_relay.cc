#include "services/kit/byte_relay.h"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/write.hpp>

namespace isorun::http {
namespace {

namespace asio = boost::asio;
using Strand = asio::strand<asio::io_context::executor_type>;

struct Relay : std::enable_shared_from_this<Relay> {
  struct Pump {
    beast::tcp_stream* from;
    beast::tcp_stream* to;
    beast::flat_buffer* pending;
    std::unique_ptr<char[]> piece;
  };
  Pump pumps[2];
  Strand strand;
  std::function<void()> done;
  size_t piece_bytes;
  int ended = 0;

  Relay(Strand s, std::function<void()> d, size_t bytes)
      : strand(std::move(s)), done(std::move(d)), piece_bytes(bytes) {}

  void Start(int i) {
    Pump& p = pumps[i];
    if (p.pending->size() > 0) {
      asio::async_write(
          *p.to, p.pending->data(),
          asio::bind_executor(strand, [self = shared_from_this(), i](beast::error_code ec, size_t) {
            self->pumps[i].pending->consume(self->pumps[i].pending->size());
            if (ec) return self->Fail(i);
            self->Read(i);
          }));
      return;
    }
    Read(i);
  }

  void Read(int i) {
    Pump& p = pumps[i];
    if (!p.piece) p.piece.reset(new char[piece_bytes]);
    p.from->async_read_some(
        asio::buffer(p.piece.get(), piece_bytes),
        asio::bind_executor(strand, [self = shared_from_this(), i](beast::error_code ec, size_t n) {
          Pump& p = self->pumps[i];
          if (n > 0) {
            asio::async_write(
                *p.to, asio::buffer(p.piece.get(), n),
                asio::bind_executor(self->strand, [self, i, ec](beast::error_code wec, size_t) {
                  if (wec) return self->Fail(i);
                  if (ec) return self->End(i, ec);
                  self->Read(i);
                }));
            return;
          }
          if (ec) return self->End(i, ec);
          self->Read(i);
        }));
  }

  void End(int i, beast::error_code ec) {
    if (ec != asio::error::eof) return Fail(i);
    // Half-close: the other side sees EOF too; the opposite direction goes on.
    beast::error_code ignored;
    pumps[i].to->socket().shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
    pumps[i].piece.reset();
    Finish();
  }

  void Fail(int) {
    beast::error_code ignored;
    pumps[0].from->socket().close(ignored);
    pumps[1].from->socket().close(ignored);
    pumps[0].piece.reset();
    pumps[1].piece.reset();
    Finish();
  }

  void Finish() {
    if (++ended < 2) return;
    auto d = std::move(done);
    done = nullptr;
    if (d) d();
  }
};

}  // namespace

void RelayBothWays(beast::tcp_stream& a, beast::flat_buffer& a_pending, beast::tcp_stream& b,
                   beast::flat_buffer& b_pending, Strand strand, std::function<void()> done,
                   size_t piece_bytes) {
  a.expires_never();
  b.expires_never();
  auto relay = std::make_shared<Relay>(strand, std::move(done), piece_bytes);
  relay->pumps[0] = {&a, &b, &a_pending, nullptr};
  relay->pumps[1] = {&b, &a, &b_pending, nullptr};
  asio::dispatch(strand, [relay] {
    relay->Start(0);
    relay->Start(1);
  });
}

}  // namespace isorun::http
