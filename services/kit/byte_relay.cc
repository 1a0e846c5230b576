#include "services/kit/byte_relay.h"

#include <sys/socket.h>

#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <string>
#include <vector>

namespace isorun::http {
namespace {

// What a pump reads into: one per thread, since a relay runs on one thread and keeps nothing in
// it between two of its handlers.
char* Scratch(size_t bytes) {
  thread_local std::vector<char> scratch;
  if (scratch.size() < bytes) scratch.resize(bytes);
  return scratch.data();
}

// How many pieces a busy direction moves before it lets the thread's other connections run.
constexpr int kPiecesPerTurn = 16;

struct Relay : std::enable_shared_from_this<Relay> {
  struct Pump {
    Stream* from = nullptr;
    Stream* to = nullptr;
    beast::flat_buffer* pending = nullptr;
    std::string backlog;  // what `to` could not take at once
    bool busy = false;    // an operation of this pump is outstanding
    bool ended = false;
  };
  Pump pumps[2];
  Executor executor;
  std::function<void()> done;
  size_t piece_bytes;
  bool failed = false;

  Relay(Executor e, std::function<void()> d, size_t bytes)
      : executor(std::move(e)), done(std::move(d)), piece_bytes(bytes) {}

  void Start(int i) {
    Pump& p = pumps[i];
    if (p.pending->size() > 0) {
      p.busy = true;
      asio::async_write(*p.to, p.pending->data(),
                        [self = shared_from_this(), i](beast::error_code ec, size_t) {
                          Pump& p = self->pumps[i];
                          p.busy = false;
                          p.pending->consume(p.pending->size());
                          if (self->failed) return self->Finish(i);
                          if (ec) return self->Fail();
                          self->Move(i);
                        });
      return;
    }
    Move(i);
  }

  // Moves what the source has now; waits for more once it has none (never before: readiness is
  // reported on edges, so only a read that found nothing guarantees a later event).
  void Move(int i) {
    Pump& p = pumps[i];
    for (int turn = 0; turn < kPiecesPerTurn; ++turn) {
      // Read fresh each time: a closed socket's handle is -1, never a reused descriptor.
      const int in = p.from->socket().native_handle();
      const int out = p.to->socket().native_handle();
      char* buf = Scratch(piece_bytes);
      const ssize_t n = ::recv(in, buf, piece_bytes, MSG_DONTWAIT);
      if (n == 0) return End(i);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return Wait(i);
        return Fail();
      }
      ssize_t w = ::send(out, buf, static_cast<size_t>(n), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return Fail();
        w = 0;
      }
      if (w < n) {
        p.backlog.assign(buf + w, buf + n);
        p.busy = true;
        asio::async_write(*p.to, asio::buffer(p.backlog),
                          [self = shared_from_this(), i](beast::error_code ec, size_t) {
                            Pump& p = self->pumps[i];
                            p.busy = false;
                            p.backlog.clear();
                            p.backlog.shrink_to_fit();
                            if (self->failed) return self->Finish(i);
                            if (ec) return self->Fail();
                            self->Move(i);
                          });
        return;
      }
    }
    p.busy = true;
    asio::post(executor, [self = shared_from_this(), i] {
      self->pumps[i].busy = false;
      if (self->failed) return self->Finish(i);
      self->Move(i);
    });
  }

  void Wait(int i) {
    Pump& p = pumps[i];
    p.busy = true;
    p.from->socket().async_wait(tcp::socket::wait_read,
                                [self = shared_from_this(), i](beast::error_code ec) {
                                  self->pumps[i].busy = false;
                                  if (self->failed) return self->Finish(i);
                                  if (ec) return self->Fail();
                                  self->Move(i);
                                });
  }

  void End(int i) {
    // Half-close: the other side sees EOF too; the opposite direction goes on.
    beast::error_code ignored;
    pumps[i].to->socket().shutdown(tcp::socket::shutdown_send, ignored);
    Finish(i);
  }

  void Fail() {
    if (!failed) {
      failed = true;
      beast::error_code ignored;
      pumps[0].from->socket().close(ignored);
      pumps[1].from->socket().close(ignored);
    }
    // A pump with an operation outstanding finishes when that operation comes back (cancelled).
    for (int i = 0; i < 2; ++i) {
      if (!pumps[i].busy) Finish(i);
    }
  }

  void Finish(int i) {
    if (pumps[i].ended) return;
    pumps[i].ended = true;
    if (!pumps[0].ended || !pumps[1].ended) return;
    auto d = std::move(done);
    done = nullptr;
    if (d) d();
  }
};

// Both directions with asynchronous reads and writes (a TLS side involved).
template <class A, class B>
struct AsyncRelay : std::enable_shared_from_this<AsyncRelay<A, B>> {
  static constexpr size_t kPiece = 16 * 1024;
  A& a;
  B& b;
  beast::flat_buffer& a_pending;
  beast::flat_buffer& b_pending;
  std::function<void()> done;
  std::unique_ptr<char[]> piece[2];
  bool ended[2] = {false, false};
  bool failed = false;

  AsyncRelay(A& a_, beast::flat_buffer& ap, B& b_, beast::flat_buffer& bp, std::function<void()> d)
      : a(a_), b(b_), a_pending(ap), b_pending(bp), done(std::move(d)) {}

  void Start() {
    Flush(0, a, b, a_pending);
    Flush(1, b, a, b_pending);
  }

  template <class F, class T>
  void Flush(int i, F& from, T& to, beast::flat_buffer& pending) {
    if (pending.size() == 0) return Read(i, from, to);
    asio::async_write(to, pending.data(),
                      [self = this->shared_from_this(), i, &from, &to, &pending](
                          beast::error_code ec, size_t) {
                        pending.consume(pending.size());
                        if (ec || self->failed) return self->Fail(i);
                        self->Read(i, from, to);
                      });
  }

  template <class F, class T>
  void Read(int i, F& from, T& to) {
    if (!piece[i]) piece[i].reset(new char[kPiece]);
    from.async_read_some(
        asio::buffer(piece[i].get(), kPiece),
        [self = this->shared_from_this(), i, &from, &to](beast::error_code ec, size_t n) {
          if (self->failed) return self->Fail(i);
          if (ec == asio::error::eof) {
            beast::error_code ignored;
            to.socket().shutdown(tcp::socket::shutdown_send, ignored);
            return self->Finish(i);
          }
          if (ec) return self->Fail(i);
          asio::async_write(to, asio::buffer(self->piece[i].get(), n),
                            [self, i, &from, &to](beast::error_code ec, size_t) {
                              if (ec || self->failed) return self->Fail(i);
                              self->Read(i, from, to);
                            });
        });
  }

  // Closes both sides; the other direction's operation comes back cancelled and ends it.
  void Fail(int i) {
    if (!failed) {
      failed = true;
      beast::error_code ignored;
      a.socket().close(ignored);
      b.socket().close(ignored);
    }
    Finish(i);
  }

  void Finish(int i) {
    if (ended[i]) return;
    ended[i] = true;
    piece[i].reset();
    if (!ended[0] || !ended[1]) return;
    auto d = std::move(done);
    done = nullptr;
    if (d) d();
  }
};

template <class A, class B>
void StartAsyncRelay(A& a, beast::flat_buffer& a_pending, B& b, beast::flat_buffer& b_pending,
                     Executor executor, std::function<void()> done) {
  a.expires_never();
  b.expires_never();
  auto relay = std::make_shared<AsyncRelay<A, B>>(a, a_pending, b, b_pending, std::move(done));
  asio::dispatch(executor, [relay] { relay->Start(); });
}

}  // namespace

void RelayBothWays(Stream& a, beast::flat_buffer& a_pending, TunnelStream& b,
                   beast::flat_buffer& b_pending, Executor executor, std::function<void()> done) {
  if (!b.tls()) return RelayBothWays(a, a_pending, b.tcp(), b_pending, executor, std::move(done));
  StartAsyncRelay(a, a_pending, b, b_pending, executor, std::move(done));
}

void RelayBothWays(TunnelStream& a, beast::flat_buffer& a_pending, Stream& b,
                   beast::flat_buffer& b_pending, Executor executor, std::function<void()> done) {
  if (!a.tls()) return RelayBothWays(a.tcp(), a_pending, b, b_pending, executor, std::move(done));
  StartAsyncRelay(a, a_pending, b, b_pending, executor, std::move(done));
}

void RelayBothWays(Stream& a, beast::flat_buffer& a_pending, Stream& b,
                   beast::flat_buffer& b_pending, Executor executor, std::function<void()> done,
                   size_t piece_bytes) {
  a.expires_never();
  b.expires_never();
  auto relay = std::make_shared<Relay>(executor, std::move(done), piece_bytes);
  relay->pumps[0].from = &a;
  relay->pumps[0].to = &b;
  relay->pumps[0].pending = &a_pending;
  relay->pumps[1].from = &b;
  relay->pumps[1].to = &a;
  relay->pumps[1].pending = &b_pending;
  asio::dispatch(executor, [relay] {
    relay->Start(0);
    if (!relay->failed) relay->Start(1);
  });
}

}  // namespace isorun::http
