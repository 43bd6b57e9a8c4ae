#include "actors/transport/tcp_store_rendezvous.hpp"

#include "core/error.hpp"
#include "core/printable.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

// The wire protocol of c10d's TCPStore, as PyTorch's sources define it
// (torch/csrc/distributed/c10d: TCPStore.cpp in 1.13, TCPStoreBackend.hpp
// and TCPStore.cpp in 2.x) and as real 1.13 and 2.6 servers answer it:
//
//   query:  type (uint8) | argument | argument ...
//   string, bytes: length (uint64) | the bytes
//   integers in the host's byte order (little-endian wherever torch runs)
//
//   query        1.x  2.x  arguments               reply
//   VALIDATE      -    0   magic (uint32)          none
//   SET           0    1   key, value              none
//   GET           2    3   key                     value (bytes)
//   CHECK         4    5   count (uint64), keys    0 ready, 1 not ready
//   WAIT          5    6   count (uint64), keys    0 once all are set
//   GETNUMKEYS    6    7   -                       count (int64)
//
// 2.x put VALIDATE first and shifted every other query by one; its server
// drops a connection whose first query is not VALIDATE with the magic
// 0x3C85F7CE (the libuv server instead ignores it until the client closes
// its side). A 1.x server would read VALIDATE as a SET whose key length
// begins with the magic: a key of at least 0x3C85F7CE bytes, which it
// allocates and then waits for. So a client must know the protocol before
// it sends a 2.x query; see probe().

namespace dcpp {

std::string to_string(tcp_store_protocol x) {
  return x == tcp_store_protocol::torch1 ? "torch 1.x" : "torch 2.x";
}

namespace {

using clock_type = std::chrono::steady_clock;

enum class query { validate, set, get, check, wait, num_keys };

uint8_t type_of(query q, tcp_store_protocol p) {
  bool v1 = p == tcp_store_protocol::torch1;
  switch (q) {
    case query::validate: return 0;
    case query::set: return v1 ? 0 : 1;
    case query::get: return v1 ? 2 : 3;
    case query::check: return v1 ? 4 : 5;
    case query::wait: return v1 ? 5 : 6;
    case query::num_keys: return v1 ? 6 : 7;
  }
  return 0xff;
}

constexpr uint32_t validation_magic = 0x3C85F7CE;
constexpr uint8_t check_ready = 0;
constexpr uint8_t check_not_ready = 1;
constexpr uint8_t stop_waiting = 0;

/// torch's TCPStore puts this before every key it sends.
constexpr const char* key_prefix = "/";

/// A query as it goes on the wire.
class query_bytes {
public:
  query_bytes(query q, tcp_store_protocol p) {
    bytes_.push_back(static_cast<char>(type_of(q, p)));
  }

  template <class T>
  query_bytes& value(T x) {
    char raw[sizeof(T)];
    std::memcpy(raw, &x, sizeof(T));
    bytes_.append(raw, sizeof(T));
    return *this;
  }

  query_bytes& string(const std::string& s) {
    value<uint64_t>(s.size());
    bytes_ += s;
    return *this;
  }

  const std::string& bytes() const {
    return bytes_;
  }

private:
  std::string bytes_;
};

std::string ms_text(std::chrono::milliseconds ms) {
  return std::to_string(ms.count()) + " ms";
}

/// Milliseconds to `deadline` for poll(), at least 0.
int poll_ms(clock_type::time_point deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline
                                                           - clock_type::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
}

} // namespace

/// One TCP connection with deadlines: a non-blocking socket and poll().
/// Errors carry only the why (the client names store and request).
class tcp_store_client::connection {
public:
  explicit connection(int fd) : fd_(fd) {
    // nop
  }

  ~connection() {
    ::close(fd_);
  }

  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// Connects to the first address of host:port that accepts.
  static caf::expected<std::unique_ptr<connection>>
  open(const std::string& host, uint16_t port, clock_type::time_point deadline,
       std::chrono::milliseconds timeout) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    auto service = std::to_string(port);
    if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
        rc != 0)
      return make_error(errc::io_error, "cannot resolve '" + printable(host)
                                          + "': " + ::gai_strerror(rc));
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard{res,
                                                               ::freeaddrinfo};
    std::string why = "no address";
    for (auto* ai = res; ai != nullptr; ai = ai->ai_next) {
      int fd = ::socket(ai->ai_family,
                        ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        ai->ai_protocol);
      if (fd < 0) {
        why = std::strerror(errno);
        continue;
      }
      auto conn = std::make_unique<connection>(fd);
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return conn;
      if (errno != EINPROGRESS) {
        why = std::strerror(errno);
        continue;
      }
      pollfd pfd{fd, POLLOUT, 0};
      int n = ::poll(&pfd, 1, poll_ms(deadline));
      if (n == 0)
        return make_error(errc::timeout,
                          "no connection within " + ms_text(timeout));
      int err = 0;
      socklen_t len = sizeof err;
      if (n < 0)
        err = errno;
      else if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
      if (err == 0)
        return conn;
      why = std::strerror(err);
    }
    return make_error(errc::io_error, why);
  }

  caf::error send_all(const std::string& bytes, clock_type::time_point deadline,
                      std::chrono::milliseconds timeout) {
    size_t done = 0;
    while (done < bytes.size()) {
      auto n = ::send(fd_, bytes.data() + done, bytes.size() - done,
                      MSG_NOSIGNAL);
      if (n > 0) {
        done += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (auto err = wait_for(POLLOUT, deadline, timeout, "sent"))
          return err;
        continue;
      }
      return make_error(errc::io_error, std::strerror(errno));
    }
    return caf::none;
  }

  /// Reads exactly `n` bytes; `got` says how many came before a failure.
  caf::error recv_exact(char* out, size_t n, clock_type::time_point deadline,
                        std::chrono::milliseconds timeout,
                        size_t* got = nullptr) {
    size_t done = 0;
    auto result = [&](caf::error err) {
      if (got != nullptr)
        *got = done;
      return err;
    };
    while (done < n) {
      auto r = ::recv(fd_, out + done, n - done, 0);
      if (r > 0) {
        done += static_cast<size_t>(r);
        continue;
      }
      if (r == 0)
        return result(
          make_error(errc::io_error, "the store closed the connection"));
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (auto err = wait_for(POLLIN, deadline, timeout, "answered"))
          return result(std::move(err));
        continue;
      }
      return result(make_error(errc::io_error, std::strerror(errno)));
    }
    return result(caf::none);
  }

  /// No more queries on this connection (the server sees the end).
  void shutdown_send() {
    ::shutdown(fd_, SHUT_WR);
  }

private:
  caf::error wait_for(short events, clock_type::time_point deadline,
                      std::chrono::milliseconds timeout, const char* what) {
    pollfd pfd{fd_, events, 0};
    int n = ::poll(&pfd, 1, poll_ms(deadline));
    if (n == 0)
      return make_error(errc::timeout, std::string{"not "} + what + " within "
                                         + ms_text(timeout));
    if (n < 0 && errno != EINTR)
      return make_error(errc::io_error, std::strerror(errno));
    return caf::none;
  }

  int fd_;
};

namespace {

using connection_ptr = std::unique_ptr<tcp_store_client::connection>;

/// Which protocol the server at host:port speaks. A connection of its own
/// sends 1.x's GETNUMKEYS (one byte) and closes its sending side: a 1.x
/// server answers with 8 bytes (then sees the end and closes); a 2.x server
/// closes without an answer, because the first query is not VALIDATE (the
/// libuv server on seeing the end). Neither is left in a bad state: the
/// 1.x server has read a whole query, the 2.x server drops the connection.
caf::expected<tcp_store_protocol> probe(const std::string& host, uint16_t port,
                                        clock_type::time_point deadline,
                                        std::chrono::milliseconds timeout) {
  auto conn = tcp_store_client::connection::open(host, port, deadline, timeout);
  if (!conn)
    return conn.error();
  auto q = query_bytes{query::num_keys, tcp_store_protocol::torch1};
  if (auto err = (*conn)->send_all(q.bytes(), deadline, timeout))
    return err;
  (*conn)->shutdown_send();
  char reply[8];
  size_t got = 0;
  auto err = (*conn)->recv_exact(reply, sizeof reply, deadline, timeout, &got);
  if (!err)
    return tcp_store_protocol::torch1;
  if (got == 0 && code_of(err) == errc::io_error)
    return tcp_store_protocol::torch2; // closed or reset, no answer
  if (got == 0)
    return make_error(code_of(err),
                      "neither a torch 1.x nor a torch 2.x TCPStore: "
                        + context_of(err));
  return make_error(errc::protocol_error,
                    "neither a torch 1.x nor a torch 2.x TCPStore: "
                    "it answered "
                      + std::to_string(got) + " of 8 bytes");
}

} // namespace

tcp_store_client::tcp_store_client(std::string host, uint16_t port,
                                   options opts, tcp_store_protocol protocol)
  : host_(std::move(host)), port_(port), opts_(std::move(opts)),
    protocol_(protocol) {
  // nop
}

tcp_store_client::~tcp_store_client() = default;

caf::error tcp_store_client::fail(errc code, const std::string& request,
                                  const std::string& why) {
  conn_.reset(); // a failed request leaves the stream out of step
  return make_error(code, opts_.name + ": " + request + ": " + why);
}

caf::expected<std::unique_ptr<tcp_store_client>>
tcp_store_client::connect(const std::string& host, uint16_t port,
                          options opts) {
  if (opts.name.empty())
    opts.name = "TCPStore at " + printable(host) + ":" + std::to_string(port);
  auto deadline = clock_type::now() + opts.request_timeout;
  auto protocol = probe(host, port, deadline, opts.request_timeout);
  if (!protocol)
    return make_error(code_of(protocol.error()),
                      opts.name + ": connect: " + context_of(protocol.error()));
  std::unique_ptr<tcp_store_client> client{
    new tcp_store_client(host, port, std::move(opts), *protocol)};
  std::lock_guard<std::mutex> guard{client->mx_};
  if (auto err = client->open("connect"))
    return err;
  return client;
}

/// Opens the connection of the requests: 2.x's VALIDATE first, then a
/// GETNUMKEYS whose answer shows that the server took the connection.
caf::error tcp_store_client::open(const std::string& request) {
  auto deadline = clock_type::now() + opts_.request_timeout;
  auto conn = connection::open(host_, port_, deadline, opts_.request_timeout);
  if (!conn)
    return fail(code_of(conn.error()), request, context_of(conn.error()));
  conn_ = std::move(*conn);
  std::string opening;
  if (protocol_ == tcp_store_protocol::torch2)
    opening = query_bytes{query::validate, protocol_}
                .value<uint32_t>(validation_magic)
                .bytes();
  opening += query_bytes{query::num_keys, protocol_}.bytes();
  char count[8];
  auto err = conn_->send_all(opening, deadline, opts_.request_timeout);
  if (!err)
    err = conn_->recv_exact(count, sizeof count, deadline,
                            opts_.request_timeout);
  if (err)
    return fail(code_of(err), request,
                context_of(err) + " (the server seemed to speak "
                  + to_string(protocol_) + "'s protocol)");
  return caf::none;
}

caf::error tcp_store_client::round_trip(const std::string& request,
                                        const std::string& query, char* reply,
                                        size_t reply_size,
                                        clock_type::time_point deadline) {
  if (!conn_)
    if (auto err = open(request))
      return err;
  auto err = conn_->send_all(query, deadline, opts_.request_timeout);
  if (!err && reply_size > 0)
    err = conn_->recv_exact(reply, reply_size, deadline, opts_.request_timeout);
  if (err)
    return fail(code_of(err), request, context_of(err));
  return caf::none;
}

caf::error tcp_store_client::set(const std::string& key,
                                 const std::string& value) {
  std::lock_guard<std::mutex> guard{mx_};
  auto request = "set '" + printable(key) + "'";
  auto q
    = query_bytes{query::set, protocol_}.string(key_prefix + key).string(value);
  if (auto err = round_trip(request, q.bytes(), nullptr, 0,
                            clock_type::now() + opts_.request_timeout))
    return err;
  auto kept = check_locked(key, request);
  if (!kept)
    return kept.error();
  if (!*kept)
    return fail(errc::protocol_error, request,
                "the store does not hold the key right after the set");
  return caf::none;
}

caf::expected<bool> tcp_store_client::check(const std::string& key) {
  std::lock_guard<std::mutex> guard{mx_};
  return check_locked(key, "check '" + printable(key) + "'");
}

caf::expected<bool> tcp_store_client::check_locked(const std::string& key,
                                                   const std::string& request) {
  auto q = query_bytes{query::check, protocol_}.value<uint64_t>(1).string(
    key_prefix + key);
  char reply = 0;
  if (auto err = round_trip(request, q.bytes(), &reply, 1,
                            clock_type::now() + opts_.request_timeout))
    return err;
  auto answer = static_cast<uint8_t>(reply);
  if (answer != check_ready && answer != check_not_ready)
    return fail(errc::protocol_error, request,
                "the store answered " + std::to_string(answer)
                  + ", neither ready (0) nor not ready (1)");
  return answer == check_ready;
}

caf::expected<std::string> tcp_store_client::get(const std::string& key) {
  std::lock_guard<std::mutex> guard{mx_};
  return get_locked(key, "get '" + printable(key) + "'");
}

caf::expected<std::string>
tcp_store_client::get_locked(const std::string& key,
                             const std::string& request) {
  auto deadline = clock_type::now() + opts_.request_timeout;
  auto q = query_bytes{query::get, protocol_}.string(key_prefix + key);
  uint64_t size = 0;
  if (auto err = round_trip(request, q.bytes(), reinterpret_cast<char*>(&size),
                            sizeof size, deadline))
    return err;
  // What the store holds is outside input, and this is where it enters:
  // its size is checked before anything is allocated, and the value goes
  // only to the caller, never into a message.
  if (size > opts_.max_value_size)
    return fail(errc::too_large, request,
                "the value is " + std::to_string(size) + " bytes (at most "
                  + std::to_string(opts_.max_value_size) + " accepted)");
  std::string value(static_cast<size_t>(size), '\0');
  if (auto err = conn_->recv_exact(value.data(), value.size(), deadline,
                                   opts_.request_timeout))
    return fail(code_of(err), request, context_of(err));
  return value;
}

caf::expected<std::string>
tcp_store_client::wait_get(const std::string& key,
                           std::chrono::milliseconds timeout) {
  std::lock_guard<std::mutex> guard{mx_};
  auto request = "wait for '" + printable(key) + "'";
  auto q = query_bytes{query::wait, protocol_}.value<uint64_t>(1).string(
    key_prefix + key);
  char reply = 0;
  if (auto err = round_trip(request, q.bytes(), &reply, 1,
                            clock_type::now() + timeout)) {
    if (code_of(err) != errc::timeout)
      return err;
    // 1.x has no query that takes a wait back (2.x's CANCEL_WAIT): the
    // connection, dropped by round_trip, ends it on both.
    return make_error(errc::timeout, opts_.name + ": " + request
                                       + ": not set within "
                                       + ms_text(timeout));
  }
  if (static_cast<uint8_t>(reply) != stop_waiting)
    return fail(errc::protocol_error, request,
                "the store answered "
                  + std::to_string(static_cast<uint8_t>(reply))
                  + ", not stop waiting (0)");
  return get_locked(key, "get '" + printable(key) + "'");
}

namespace {

/// The job's endpoint directory in torchrun's store. The transport's
/// messages name the directory; the client's errors name the store too, so
/// that part is left out of them here.
class tcp_store_directory final : public endpoint_directory {
public:
  explicit tcp_store_directory(std::unique_ptr<tcp_store_client> client)
    : client_(std::move(client)) {
    // nop
  }

  caf::error publish(const std::string& key,
                     const std::string& value) override {
    return without_name(client_->set(key, value));
  }

  caf::expected<std::string>
  lookup(const std::string& key, std::chrono::milliseconds timeout) override {
    auto value = client_->wait_get(key, timeout);
    if (!value && code_of(value.error()) == errc::timeout)
      return make_error(errc::timeout,
                        context_of(without_name(value.error()))
                          + " (is the coordinator's rank running dcpp?)");
    if (!value)
      return without_name(value.error());
    return value;
  }

  std::string name() const override {
    return client_->name();
  }

private:
  caf::error without_name(caf::error err) const {
    if (!err)
      return err;
    auto context = context_of(err);
    auto prefix = client_->name() + ": ";
    if (context.compare(0, prefix.size(), prefix) == 0)
      context.erase(0, prefix.size());
    return make_error(code_of(err), context);
  }

  std::unique_ptr<tcp_store_client> client_;
};

} // namespace

caf::expected<std::shared_ptr<endpoint_directory>>
make_tcp_store_directory(const std::string& host, uint16_t port,
                         std::chrono::milliseconds timeout) {
  tcp_store_client::options opts;
  opts.request_timeout = timeout;
  opts.max_value_size = 4096; // an endpoint: tcp://HOST:PORT
  opts.name = "torchrun's store at " + printable(host) + ":"
              + std::to_string(port);
  auto client = tcp_store_client::connect(host, port, std::move(opts));
  if (!client)
    return client.error();
  return std::shared_ptr<endpoint_directory>{
    std::make_shared<tcp_store_directory>(std::move(*client))};
}

caf::expected<std::shared_ptr<endpoint_directory>>
launcher_directory(const launch_env& env, std::chrono::milliseconds timeout) {
  if (!env.agent_store)
    return std::shared_ptr<endpoint_directory>{};
  return make_tcp_store_directory(env.master_addr, env.master_port, timeout);
}

} // namespace dcpp
