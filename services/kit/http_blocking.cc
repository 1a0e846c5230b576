#include "services/kit/http_blocking.h"

#include <sys/socket.h>

#include <boost/asio/write.hpp>
#include <cerrno>
#include <deque>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "services/kit/log.h"

namespace isorun::http {

struct BlockingServer::State : std::enable_shared_from_this<State> {
  BlockingServerOptions options;
  Handler handler;
  FastPath fast_path;
  std::unique_ptr<FrontEnd> front;
  std::atomic<int> in_progress{0};
  std::atomic<bool> draining{false};

  absl::Mutex mu;
  std::deque<std::function<void()>> queue ABSL_GUARDED_BY(mu);
  int workers ABSL_GUARDED_BY(mu) = 0;
  int idle ABSL_GUARDED_BY(mu) = 0;
  bool stopping ABSL_GUARDED_BY(mu) = false;

  // Queues `job` for a worker, starting one when every worker is busy; false when the line is
  // full (or the server stops).
  bool Submit(std::function<void()> job) {
    absl::MutexLock lock(&mu);
    if (stopping || static_cast<int>(queue.size()) >= options.max_queued) return false;
    queue.push_back(std::move(job));
    if (static_cast<int>(queue.size()) > idle && workers < options.max_workers) {
      try {
        std::thread([self = shared_from_this()] { self->Work(); }).detach();
        ++workers;
      } catch (const std::system_error& e) {
        // The ones running take it when they are free.
        LogError("cannot start a worker thread", {{"error", e.what()}});
      }
    }
    return true;
  }

  void Work() {
    absl::MutexLock lock(&mu);
    while (true) {
      ++idle;
      const bool got = mu.AwaitWithTimeout(
          absl::Condition(
              +[](State* s) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                return !s->queue.empty() || s->stopping;
              },
              this),
          options.worker_idle);
      --idle;
      if (queue.empty()) {
        if (stopping || (!got && workers > options.min_workers)) {
          --workers;
          return;
        }
        continue;
      }
      std::function<void()> job = std::move(queue.front());
      queue.pop_front();
      mu.Unlock();
      job();
      job = nullptr;  // what it holds goes before the lock is taken again
      mu.Lock();
    }
  }

  void Done() { in_progress.fetch_sub(1); }
};

namespace {

using State = BlockingServer::State;

Response Internal() {
  Response r;
  r.status = 500;
  r.body = ErrorJson(500, "INTERNAL", "internal error");
  return r;
}

bool HasNoBody(int status) { return status == 204 || status == 304 || status < 200; }

// What a worker hands a streaming connection, and how the I/O thread answers it.
struct StreamSync {
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  bool ok ABSL_GUARDED_BY(mu) = false;
};

// Whatever path a job takes, its reference to the connection goes back to the connection's own
// thread: a worker must never drop the last one (a connection ends on its thread, while its
// io_context and the front end's shared state still exist).
struct HandBack {
  std::shared_ptr<Connection>& c;
  ~HandBack() {
    if (!c) return;
    Connection* raw = c.get();
    raw->Post([c = std::move(c)] {});
  }
};

class BlockingSession : public ConnectionHandler {
 public:
  explicit BlockingSession(std::shared_ptr<State> state) : state_(std::move(state)) {}

  void OnRequest(std::shared_ptr<Connection> c) override {
    State& s = *state_;
    const auto& msg = c->request();
    Request req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    for (const auto& f : msg) {
      req.headers.emplace_back(
          absl::AsciiStrToLower(absl::string_view(f.name_string().data(), f.name_string().size())),
          std::string(f.value()));
    }
    req.peer = c->remote_peer();
    if (s.fast_path) {
      if (std::optional<Response> r = s.fast_path(req); r.has_value()) {
        s.in_progress.fetch_add(1);
        return Write(state_, c, std::move(*r), /*too_large=*/false);
      }
    }
    const auto& parser = c->parser();
    if (parser.content_length() && *parser.content_length() > s.options.max_body_bytes) {
      req.body_too_large = true;  // not read: the handler answers 413, then the connection ends
      return Dispatch(c, std::move(req));
    }
    if (parser.is_done()) return Dispatch(c, std::move(req));
    auto pending = std::make_shared<Request>(std::move(req));
    c->ReadBody(
        s.options.max_body_bytes,
        [this, c, pending](beast::error_code ec, std::string body) {
          if (ec == bhttp::error::body_limit) {
            pending->body_too_large = true;
          } else if (ec) {
            return;  // answered (400, 408) or gone: the front end closed the connection
          } else {
            pending->body = std::move(body);
          }
          Dispatch(c, std::move(*pending));
        },
        /*answer_too_large=*/false);
  }

 private:
  void Dispatch(const std::shared_ptr<Connection>& c, Request req) {
    std::shared_ptr<State> s = state_;
    s->in_progress.fetch_add(1);
    const bool too_large = req.body_too_large;
    // The job hands its reference to the connection back to the connection's thread when it
    // posts the answer: no worker may hold the last one (a connection must end on its thread,
    // before its io_context does).
    // (`conn = c`, not `c`: a copy of a const reference would be const, and moving it copy.)
    const bool queued = s->Submit([s, c = std::shared_ptr<Connection>(c), req = std::move(req),
                                   too_large]() mutable {
      HandBack hand_back{c};
      Response r;
      try {
        r = s->handler(req);
      } catch (const std::exception& e) {
        LogError("handler threw", {{"error", e.what()}});
        r = Internal();
      } catch (...) {
        r = Internal();
      }
      if (r.stream) return Stream(s, std::move(c), std::move(r));
      auto shared = std::make_shared<Response>(std::move(r));
      Connection* raw = c.get();
      raw->Post([s, c = std::move(c), shared, too_large] {
        Write(s, c, std::move(*shared), too_large);
      });
    });
    if (!queued) {
      Response busy;
      busy.status = 503;
      busy.headers.emplace_back("Retry-After", "1");
      busy.body = ErrorJson(503, "OVERLOADED", "the server has too many requests in progress");
      Write(s, c, std::move(busy), too_large);
    }
  }

  // On the connection's thread: the answer, then the next request (or the end).
  static void Write(const std::shared_ptr<State>& s, const std::shared_ptr<Connection>& c,
                    Response r, bool too_large) {
    StringResponse res{static_cast<bhttp::status>(r.status), 11};
    if (!r.body.empty() && !r.content_type.empty()) {
      res.set(bhttp::field::content_type, r.content_type);
    }
    for (auto& [name, value] : r.headers) res.insert(name, value);
    if (!HasNoBody(r.status)) res.body() = std::move(r.body);
    res.keep_alive(!too_large);
    c->Reply(std::move(res), [s] { s->Done(); });
  }

  // On a worker: the head, then the handler's chunks one by one (each written before the next
  // is taken), then the last chunk.
  static void Stream(const std::shared_ptr<State>& s, std::shared_ptr<Connection> c, Response r) {
    const bool keep = c->request().keep_alive() && !s->draining.load();
    std::string head = absl::StrCat("HTTP/1.1 ", r.status, " ",
                                    std::string(bhttp::obsolete_reason(
                                        static_cast<bhttp::status>(r.status))),
                                    "\r\n");
    if (!r.content_type.empty()) absl::StrAppend(&head, "Content-Type: ", r.content_type, "\r\n");
    for (const auto& [name, value] : r.headers) absl::StrAppend(&head, name, ": ", value, "\r\n");
    absl::StrAppend(&head, "Transfer-Encoding: chunked\r\n",
                    keep ? "" : "Connection: close\r\n", "\r\n");
    // Writes `bytes` on the connection's thread and waits for the outcome.
    auto write = [&c](std::string bytes) {
      auto sync = std::make_shared<StreamSync>();
      auto data = std::make_shared<std::string>(std::move(bytes));
      c->Post([c, sync, data] {
        c->stream().expires_after(absl::ToChronoNanoseconds(c->options().write_timeout));
        asio::async_write(c->stream(), asio::buffer(*data),
                          [sync, data](beast::error_code ec, size_t) {
                            absl::MutexLock lock(&sync->mu);
                            sync->done = true;
                            sync->ok = !ec;
                          });
      });
      absl::MutexLock lock(&sync->mu);
      sync->mu.Await(absl::Condition(&sync->done));
      return sync->ok;
    };
    bool failed = !write(std::move(head));
    if (failed) {
      if (r.on_client_gone) r.on_client_gone();
    } else {
      if (r.on_client_gone) WatchForHangUp(c, r.on_client_gone);
      ChunkWriter chunk = [&](std::string_view data) {
        if (failed) return false;
        if (data.empty()) return true;  // an empty chunk would end the body
        failed = !write(absl::StrCat(absl::Hex(data.size()), "\r\n",
                                     absl::string_view(data.data(), data.size()), "\r\n"));
        return !failed;
      };
      try {
        r.stream(chunk);
      } catch (const std::exception& e) {
        LogError("stream handler threw", {{"error", e.what()}});
        failed = true;  // the client cannot be told after the head: the body ends short
      }
      if (!failed) failed = !write("0\r\n\r\n");
    }
    Connection* raw = c.get();
    raw->Post([s, c = std::move(c), keep, failed] {
      if (failed) {
        c->Close();
      } else {
        c->Finish(keep);
      }
      s->Done();
    });
  }

  // While a handler streams, nobody reads the socket: a hang-up shows as readable with nothing
  // to read. (A pipelined request also makes it readable: then the watch just ends.)
  static void WatchForHangUp(const std::shared_ptr<Connection>& c, std::function<void()> gone) {
    std::weak_ptr<Connection> weak = c;
    c->Post([weak, gone = std::move(gone)] {
      auto c = weak.lock();
      if (!c) return;
      c->stream().socket().async_wait(
          tcp::socket::wait_read, [weak, gone](beast::error_code ec) {
            auto c = weak.lock();
            if (!c || ec == asio::error::operation_aborted) return;
            if (ec) return gone();  // an error on the socket (keep-alive probes unanswered)
            char byte;
            const ssize_t n =
                ::recv(c->stream().socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
              gone();
            }
          });
    });
  }

  std::shared_ptr<State> state_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<BlockingServer>> BlockingServer::Start(
    BlockingServerOptions options, Handler handler, FastPath fast_path) {
  auto state = std::make_shared<State>();
  state->options = std::move(options);
  state->handler = std::move(handler);
  state->fast_path = std::move(fast_path);
  std::weak_ptr<State> weak = state;
  State* raw = state.get();
  auto front = FrontEnd::Start(state->options.front, [raw] {
    return std::make_unique<BlockingSession>(raw->shared_from_this());
  });
  if (!front.ok()) return front.status();
  state->front = std::move(*front);
  return std::unique_ptr<BlockingServer>(new BlockingServer(std::move(state)));
}

BlockingServer::~BlockingServer() {
  const bool clean = Stop(absl::Seconds(5));
  // Connections (and the sessions in them, which hold the state) go with the front end's
  // io_contexts. When a handler still runs, it holds a connection: the front end must outlive it.
  if (clean && state_->in_progress.load() == 0) {
    state_->front.reset();
  } else {
    (void)state_->front.release();
  }
}

int BlockingServer::port() const { return state_->front->port(); }
int BlockingServer::open_connections() const { return state_->front->open_connections(); }
int BlockingServer::requests_in_progress() const { return state_->in_progress.load(); }

bool BlockingServer::Stop(absl::Duration grace, const std::function<void()>& on_grace_expired) {
  State& s = *state_;
  if (!s.front) return true;
  if (s.draining.exchange(true)) return s.in_progress.load() == 0;
  s.front->Drain();  // no new connections; idle ones closed; busy ones close after their answer
  auto wait = [&s](absl::Duration d) {
    const absl::Time end = absl::Now() + d;
    while (s.in_progress.load() > 0 && absl::Now() < end) absl::SleepFor(absl::Milliseconds(5));
    return s.in_progress.load() == 0;
  };
  bool clean = wait(grace);
  if (!clean) {
    if (on_grace_expired) on_grace_expired();
    clean = wait(absl::Seconds(5));
  }
  s.front->Stop();
  {
    absl::MutexLock lock(&s.mu);
    s.stopping = true;
  }
  return clean;
}

}  // namespace isorun::http
