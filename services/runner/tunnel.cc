#include "services/runner/tunnel.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/kit/byte_relay.h"
#include "services/kit/tunnel_tls.h"
#include "services/kit/http_front.h"
#include "services/kit/ids.h"
#include "services/kit/log.h"

namespace isorun::runner {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using http::Executor;
using http::Socket;
using http::Stream;
using http::TunnelStream;

constexpr size_t kMaxPreamble = 512;

// One thread that only switches namespaces and makes sockets, so no other thread of the runner
// ever runs in a sandbox's namespace.
class NetnsDialer {
 public:
  NetnsDialer() : thread_([this] { Run(); }) {}
  ~NetnsDialer() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  int Socket(int pid, int family) {
    auto job = std::make_shared<Job>();
    job->pid = pid;
    job->family = family;
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(job);
    }
    cv_.notify_all();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return job->done; });
    return job->result;
  }

 private:
  struct Job {
    int pid = 0;
    int family = AF_INET;
    int result = 0;
    bool done = false;
  };

  void Run() {
    const int self_ns = ::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    while (true) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) break;
        job = jobs_.front();
        jobs_.pop_front();
      }
      int result = MakeSocket(self_ns, job->pid, job->family);
      {
        std::lock_guard<std::mutex> lock(mu_);
        job->result = result;
        job->done = true;
      }
      cv_.notify_all();
    }
    if (self_ns >= 0) ::close(self_ns);
  }

  static int MakeSocket(int self_ns, int pid, int family) {
    if (self_ns < 0) return -EBADF;
    const int ns = ::open(absl::StrCat("/proc/", pid, "/ns/net").c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0) return -errno;
    if (::setns(ns, CLONE_NEWNET) != 0) {
      int err = errno;
      ::close(ns);
      return -err;
    }
    int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err = fd < 0 ? errno : 0;
    if (::setns(self_ns, CLONE_NEWNET) != 0) {
      // This thread would stay in a sandbox's namespace: never go on like that.
      LogError("cannot return to the host's network namespace", {{"errno", std::to_string(errno)}});
      std::abort();
    }
    ::close(ns);
    return fd < 0 ? -err : fd;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> jobs_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the rest is built
};

NetnsDialer& Dialer() {
  static auto* dialer = new NetnsDialer();
  return *dialer;
}

}  // namespace

int SocketInNetns(int pid, int family) { return Dialer().Socket(pid, family); }

struct TunnelServer::Impl {
  TunnelOptions options;
  NetnsPidLookup lookup;
  // One io_context per thread (as the HTTP front end): a tunnel lives on one thread, so its
  // relay needs no strand. The acceptor runs on the first and deals tunnels out in turn.
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  std::unique_ptr<tcp::acceptor> acceptor;
  size_t next_context = 0;
  std::vector<asio::executor_work_guard<Executor>> work;
  std::vector<std::thread> threads;
  std::atomic<int> open{0};
  int port = 0;
  bool stopped = false;

  void Accept();
};

namespace {

class Tunnel : public std::enable_shared_from_this<Tunnel> {
 public:
  Tunnel(Socket socket, TunnelServer::Impl& server)
      : executor_(socket.get_executor()),
        client_(Stream(std::move(socket)), server.options.tls.get()),
        client_buf_(kMaxPreamble),
        upstream_(executor_),
        server_(server) {
    server_.open.fetch_add(1);
  }
  ~Tunnel() { server_.open.fetch_sub(1); }
  const Executor& executor() const { return executor_; }

  void Start() {
    // The handshake and the preamble share one deadline.
    client_.expires_after(absl::ToChronoNanoseconds(server_.options.preamble_timeout));
    if (!client_.tls()) return ReadPreamble();
    client_.Handshake(boost::asio::ssl::stream_base::server, "gateway",
                      [self = shared_from_this()](beast::error_code ec, std::string peer) {
                        if (ec == asio::error::access_denied) {
                          // A certificate of the CA, but not the gateway's (a runner's, say).
                          LogWarn("tunnel refused a peer that is not the gateway",
                                  {{"identity", peer}});
                          return self->Answer("ERR AUTH\n", false);
                        }
                        if (ec) return self->Close();  // no or a foreign certificate
                        self->ReadPreamble();
                      });
  }

 private:
  void ReadPreamble() {
    // asio takes a dynamic buffer by value: a string adapter refers to preamble_ (a
    // beast::flat_buffer would be copied and the bytes read into the copy).
    asio::async_read_until(
        client_, asio::dynamic_buffer(preamble_, kMaxPreamble), '\n',
        asio::bind_executor(executor_, [self = shared_from_this()](beast::error_code ec, size_t n) {
          self->OnPreamble(ec, n);
        }));
  }

  void OnPreamble(beast::error_code ec, size_t n) {
    if (ec) return Close();  // too long, too slow or gone: nothing to answer
    std::string line = preamble_.substr(0, n - 1);
    // What came after the line already belongs to the sandbox's server.
    const size_t rest = preamble_.size() - n;
    if (rest > 0) {
      auto b = client_buf_.prepare(rest);
      std::memcpy(b.data(), preamble_.data() + n, rest);
      client_buf_.commit(rest);
    }
    preamble_.clear();
    preamble_.shrink_to_fit();
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f.size() != 4 || f[0] != "ISORUN-TUNNEL/1") return Answer("ERR BAD_REQUEST\n", false);
    // Compared first and in constant time: nothing else is looked at for a wrong token.
    // With TLS the token is optional (the identity was checked); when set it must match.
    if (!server_.options.token.empty() && !ConstantTimeEquals(f[1], server_.options.token)) {
      return Answer("ERR AUTH\n", false);
    }
    sandbox_ = f[2];
    if (!absl::SimpleAtoi(f[3], &port_) || port_ < 1 || port_ > 65535) {
      return Answer("ERR BAD_REQUEST\n", false);
    }
    pid_ = server_.lookup(sandbox_);
    if (pid_ <= 0) return Answer("ERR NO_SANDBOX\n", false);
    Dial(AF_INET);
  }

  // 127.0.0.1 first, then [::1] (a server bound to IPv6 loopback only).
  void Dial(int family) {
    int fd = SocketInNetns(pid_, family);
    if (fd < 0) return Answer("ERR NO_SANDBOX\n", false);  // it ended meanwhile
    beast::error_code ec;
    upstream_.socket().assign(family == AF_INET ? tcp::v4() : tcp::v6(), fd, ec);
    if (ec) {
      ::close(fd);
      return Answer("ERR NO_SANDBOX\n", false);
    }
    tcp::endpoint ep(
        family == AF_INET ? asio::ip::make_address("127.0.0.1") : asio::ip::make_address("::1"),
        static_cast<uint16_t>(port_));
    upstream_.expires_after(absl::ToChronoNanoseconds(server_.options.connect_timeout));
    upstream_.async_connect(
        ep, asio::bind_executor(executor_, [self = shared_from_this(), family](beast::error_code ec) {
          if (!ec) {
            beast::error_code ignored;
            self->upstream_.socket().set_option(tcp::no_delay(true), ignored);
            return self->Answer("OK\n", true);
          }
          beast::error_code ignored;
          self->upstream_.socket().close(ignored);
          if (family == AF_INET) return self->Dial(AF_INET6);
          self->Answer(absl::StrCat("ERR REFUSED ", self->port_, "\n"), false);
        }));
  }

  void Answer(std::string line, bool relay) {
    auto msg = std::make_shared<std::string>(std::move(line));
    client_.expires_after(absl::ToChronoNanoseconds(server_.options.preamble_timeout));
    asio::async_write(
        client_, asio::buffer(*msg),
        asio::bind_executor(
            executor_, [self = shared_from_this(), msg, relay](beast::error_code ec, size_t) {
              if (ec || !relay) return self->Close();
              beast::error_code ignored;
              self->client_.socket().set_option(tcp::no_delay(true), ignored);
              http::RelayBothWays(self->client_, self->client_buf_, self->upstream_,
                                  self->upstream_buf_, self->executor_, [self] { self->Close(); });
            }));
  }

  void Close() {
    beast::error_code ignored;
    client_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    client_.close();
    upstream_.close();
  }

  Executor executor_;
  TunnelStream client_;
  std::string preamble_;
  beast::flat_buffer client_buf_;
  Stream upstream_;
  beast::flat_buffer upstream_buf_;
  TunnelServer::Impl& server_;
  std::string sandbox_;
  int port_ = 0;
  int pid_ = 0;
};

}  // namespace

void TunnelServer::Impl::Accept() {
  asio::io_context& target = *contexts[next_context];
  next_context = (next_context + 1) % contexts.size();
  acceptor->async_accept(target, [this](beast::error_code ec, Socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
    if (!ec) {
      auto tunnel = std::make_shared<Tunnel>(std::move(socket), *this);
      asio::dispatch(tunnel->executor(), [tunnel] { tunnel->Start(); });
    }
    Accept();
  });
}

TunnelServer::TunnelServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<TunnelServer>> TunnelServer::Start(TunnelOptions options,
                                                                  NetnsPidLookup lookup) {
  if (options.token.empty() ? !options.tls : options.token.size() < 16) {
    return absl::InvalidArgumentError(
        "the tunnel needs mutual TLS (--tls_cert_file, --tls_key_file, --tls_ca_file) or a "
        "shared token of at least 16 characters (--tunnel_token or ISORUN_TUNNEL_TOKEN)");
  }
  std::string host;
  int port = 0;
  if (!http::SplitHostPort(options.address, &host, &port)) {
    return absl::InvalidArgumentError(absl::StrCat("bad --tunnel_addr ", options.address));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->lookup = std::move(lookup);
  for (int i = 0; i < std::max(1, impl->options.threads); ++i) {
    impl->contexts.push_back(std::make_unique<asio::io_context>(1));
  }
  impl->acceptor = std::make_unique<tcp::acceptor>(*impl->contexts.front());
  beast::error_code ec;
  auto ip = asio::ip::make_address(host.empty() ? "0.0.0.0" : host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("bad tunnel host ", host));
  tcp::endpoint ep(ip, static_cast<uint16_t>(port));
  impl->acceptor->open(ep.protocol(), ec);
  if (!ec) impl->acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor->bind(ep, ec);
  if (!ec) impl->acceptor->listen(4096, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", impl->options.address, ": ", ec.message()));
  }
  impl->port = impl->acceptor->local_endpoint().port();
  impl->Accept();
  for (auto& ioc : impl->contexts) {
    // A context with no tunnel yet would return from run() at once.
    impl->work.push_back(asio::make_work_guard(*ioc));
    impl->threads.emplace_back([ioc = ioc.get()] { ioc->run(); });
  }
  return std::unique_ptr<TunnelServer>(new TunnelServer(std::move(impl)));
}

TunnelServer::~TunnelServer() { Stop(); }

int TunnelServer::port() const { return impl_->port; }
int TunnelServer::open_tunnels() const { return impl_->open.load(); }

void TunnelServer::Stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  asio::post(impl_->acceptor->get_executor(), [impl = impl_.get()] {
    beast::error_code ec;
    impl->acceptor->close(ec);
  });
  impl_->work.clear();
  for (auto& ioc : impl_->contexts) ioc->stop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
}

}  // namespace isorun::runner
