#include "actors/transport/zmq_transport.hpp"

#include "actors/coordinator.hpp"
#include "actors/peers.hpp"
#include "actors/rank_agent.hpp"
#include "actors/transport/curve_keys.hpp"
#include "actors/transport/endpoint.hpp"
#include "actors/transport/log_limiter.hpp"
#include "core/error.hpp"
#include "core/printable.hpp"
#include "messages/wire.hpp"

#include <caf/all.hpp>

#include <sodium.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

namespace dcpp {

namespace {

using clock_type = std::chrono::steady_clock;

// Control frames: one tag byte outside the range of wire_tag.
constexpr char tag_hello = static_cast<char>(0xA0);
constexpr char tag_welcome = static_cast<char>(0xA1);
constexpr char tag_refuse = static_cast<char>(0xA2);
constexpr char tag_heartbeat = static_cast<char>(0xA3);
constexpr char tag_bye = static_cast<char>(0xA4);

// Version 2 added the job id (launch_env::job_id); version 3 drops the
// secret (CURVE authenticates the peer; the hello is encrypted); version 4
// salts the CURVE keys with the job id (curve_keys.hpp).
constexpr const char* hello_magic = "dcpp-zmq-4";

// ZeroMQ's fixed endpoint of the ZAP handler in a context, and the domain
// our server sockets name in their requests.
constexpr const char* zap_endpoint = "inproc://zeromq.zap.01";
constexpr const char* zap_domain = "dcpp";

// Refusal reasons (first byte after the tag).
constexpr char refuse_protocol = 'P';
constexpr char refuse_other_job = 'J';

std::string control(char tag, const std::string& body = {}) {
  std::string out;
  out.reserve(body.size() + 1);
  out.push_back(tag);
  out += body;
  return out;
}

/// What a monitor event's code means, for log lines and errors.
std::string handshake_failure(uint16_t event, uint32_t value) {
  switch (event) {
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
      return "the key was refused (ZAP status " + std::to_string(value) + ")";
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
      if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
        return "the peer's CURVE keys do not match";
      if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        return "the peer does not speak CURVE (security mechanism mismatch)";
      return "protocol error 0x" + [&] {
        char buf[16];
        std::snprintf(buf, sizeof(buf), "%x", value);
        return std::string{buf};
      }();
    default:
      return std::string{"the connection closed during the handshake ("}
             + zmq_strerror(static_cast<int>(value)) + ")";
  }
}

constexpr int handshake_failed_events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                        | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                                        | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;

std::string endpoint_of(const std::string& addr, uint16_t port) {
  return "tcp://" + addr + ":" + std::to_string(port);
}

/// Frames from bridge actors (any thread) to the I/O thread.
struct outbox {
  std::mutex mx;
  std::deque<std::pair<int32_t, std::string>> items;
  std::unique_ptr<zmq::socket_t> wake;
  bool closed = false;
  size_t max_frame = 0;

  void post(int32_t peer, std::string frame) {
    if (frame.size() > max_frame) {
      spdlog::error("dcpp zmq: dropped an outbound frame of {} bytes for "
                    "peer {} (limit {} bytes)",
                    frame.size(), peer, max_frame);
      return;
    }
    std::lock_guard<std::mutex> guard{mx};
    if (closed)
      return;
    items.emplace_back(peer, std::move(frame));
    wake->send(zmq::buffer("w", 1), zmq::send_flags::dontwait);
  }

  std::deque<std::pair<int32_t, std::string>> take() {
    std::lock_guard<std::mutex> guard{mx};
    std::deque<std::pair<int32_t, std::string>> out;
    out.swap(items);
    return out;
  }

  void close() {
    std::lock_guard<std::mutex> guard{mx};
    closed = true;
    if (wake)
      wake->close();
  }
};

template <class... Ts>
caf::behavior bridge_behavior(std::shared_ptr<outbox> box, int32_t peer) {
  return caf::behavior{
    [box, peer](const Ts& msg) { box->post(peer, to_wire(msg)); }...};
}

/// Stands in for a remote coordinator or rank agent: encodes every protocol
/// message and hands it to the I/O thread. Quits (with errc::rank_lost)
/// when the transport loses its peer.
caf::behavior bridge_actor(caf::event_based_actor*, std::shared_ptr<outbox> box,
                           int32_t peer) {
  return bridge_behavior<
    local_save_plan_msg, global_save_step_msg, global_save_step_done_msg,
    central_save_plan_msg, write_done_msg, commit_msg, commit_done_msg,
    local_load_plan_msg, global_load_step_msg, global_load_step_done_msg,
    central_load_plan_msg, read_done_msg, op_outcome_msg>(std::move(box), peer);
}

enum class peer_state { waiting, connected, gone };

/// One process's end of the star: the ROUTER (hub) or a DEALER (spoke),
/// owned by one I/O thread.
class zmq_link {
public:
  zmq_link(caf::actor_system& sys, bool hub, const launch_env& env,
           const zmq_options& opts)
    : sys_(sys), hub_(hub), env_(env), opts_(opts), ctx_(1) {
    static std::atomic<uint64_t> instances{0};
    wake_endpoint_ = "inproc://dcpp-zmq-wake-" + std::to_string(++instances);
    box_ = std::make_shared<outbox>();
    box_->max_frame = opts.max_frame_bytes;
    int32_t n = hub ? env.world_size : 1;
    peers_.resize(static_cast<size_t>(n));
    endpoint_ = endpoint_of(env.master_addr, env.master_port);
  }

  ~zmq_link() {
    stop();
  }

  zmq_link(const zmq_link&) = delete;
  zmq_link& operator=(const zmq_link&) = delete;

  /// Spawns a bridge toward `peer` (a rank for the hub, -1 = the hub for a
  /// spoke).
  caf::actor spawn_bridge(int32_t peer) {
    auto hdl = sys_.spawn(bridge_actor, box_, peer);
    if (hub_)
      peers_[static_cast<size_t>(peer)].bridge = hdl;
    else
      peers_[0].bridge = hdl;
    return hdl;
  }

  /// Where inbound protocol messages go (the local coordinator for the hub,
  /// the local agent for a spoke).
  void set_target(caf::actor target) {
    target_ = std::move(target);
  }

  /// The frame limit, enforced by ZeroMQ itself (ZMQ_MAXMSGSIZE): a peer
  /// that announces a larger message is disconnected as soon as its frame
  /// header arrives, before anything is buffered (the check in `deliver`
  /// alone came after libzmq had received the whole message).
  void limit_frames() {
    sock_->set(zmq::sockopt::maxmsgsize,
               static_cast<int64_t>(opts_.max_frame_bytes));
  }

  /// Makes the socket a CURVE server (hub) or client (spoke) with the
  /// job's keys; the hub also starts answering ZAP requests. Without a
  /// secret: refuses unless insecure, and then says so.
  caf::error secure() {
    auto who = hub_ ? std::string{"the coordinator"}
                    : "rank " + std::to_string(env_.rank);
    if (env_.secret.empty()) {
      if (!opts_.insecure)
        return make_error(
          errc::unauthorized,
          who
            + ": no DCPP_SECRET (or DCPP_SECRET_FILE) is set; set the same "
              "secret on every rank (dcpp-launch draws one), or pass "
              "--insecure to run without encryption and authentication");
      spdlog::warn("dcpp zmq: {} runs without a secret (--insecure): the "
                   "connection is neither encrypted nor authenticated, and "
                   "anyone who reaches {} can join",
                   who, endpoint_);
      return caf::none;
    }
    if (hub_)
      warn_if_weak();
    auto keys = detail::derive_curve_keys(env_.secret, env_.job_id);
    if (!keys)
      return keys.error();
    auto key = [](const std::array<uint8_t, 32>& k) {
      return zmq::const_buffer(k.data(), k.size());
    };
    if (hub_) {
      client_key_ = keys->client.public_key;
      zap_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::rep);
      zap_->set(zmq::sockopt::linger, 0);
      zap_->bind(zap_endpoint);
      sock_->set(zmq::sockopt::curve_server, true);
      sock_->set(zmq::sockopt::curve_secretkey, key(keys->server.secret_key));
      sock_->set(zmq::sockopt::zap_domain, zap_domain);
    } else {
      sock_->set(zmq::sockopt::curve_serverkey, key(keys->server.public_key));
      sock_->set(zmq::sockopt::curve_publickey, key(keys->client.public_key));
      sock_->set(zmq::sockopt::curve_secretkey, key(keys->client.secret_key));
    }
    return caf::none;
  }

  /// The coordinator's warning about a secret that could be guessed from a
  /// captured handshake: once per process and secret (a process makes
  /// many groups), and only by the coordinator, so once per job.
  void warn_if_weak() {
    static std::mutex mx;
    static std::set<std::string> warned;
    auto why = detail::weak_secret_reason(env_.secret);
    if (why.empty())
      return;
    {
      std::lock_guard<std::mutex> guard{mx};
      if (!warned.insert(env_.secret).second)
        return;
    }
    spdlog::warn("dcpp zmq: {} is a weak secret ({}): anyone who captures "
                 "a handshake of this job can try to guess it offline; use "
                 "16 random bytes (`openssl rand -hex 16`), or leave "
                 "DCPP_SECRET unset under dcpp-launch, which draws one",
                 env_.secret_source.empty() ? std::string{"the job's secret"}
                                            : env_.secret_source,
                 why);
  }

  /// Watches the socket's connections (monitor events), before it binds or
  /// connects so that no event is missed.
  void watch() {
    auto ep = wake_endpoint_ + "-monitor";
    int events = handshake_failed_events | ZMQ_EVENT_HANDSHAKE_SUCCEEDED;
    if (hub_)
      events |= ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED;
    if (zmq_socket_monitor(sock_->handle(), ep.c_str(), events) != 0)
      throw zmq::error_t{};
    monitor_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::pair);
    // Unbounded: a dropped ACCEPTED or DISCONNECTED would skew the count
    // of open connections.
    monitor_->set(zmq::sockopt::rcvhwm, 0);
    monitor_->connect(ep);
  }

  /// Binds or connects, then starts the I/O thread.
  caf::error start() {
    try {
      wake_pull_ = std::make_unique<zmq::socket_t>(ctx_,
                                                   zmq::socket_type::pull);
      wake_pull_->bind(wake_endpoint_);
      box_->wake = std::make_unique<zmq::socket_t>(ctx_,
                                                   zmq::socket_type::push);
      box_->wake->connect(wake_endpoint_);
      sock_ = std::make_unique<zmq::socket_t>(
        ctx_, hub_ ? zmq::socket_type::router : zmq::socket_type::dealer);
      sock_->set(zmq::sockopt::linger, 2000);
      limit_frames();
      if (auto err = secure())
        return err;
      watch();
      if (hub_) {
        if (auto err = bind())
          return err;
      } else {
        if (auto err = connect())
          return err;
        std::ostringstream hello;
        hello << hello_magic << '\n'
              << env_.rank << '\n'
              << env_.world_size << '\n'
              << env_.job_id;
        // Queued until CURVE's handshake completes: only the coordinator
        // holding the job's key can read it.
        sock_->send(zmq::buffer(control(tag_hello, hello.str())),
                    zmq::send_flags::dontwait);
      }
    } catch (const zmq::error_t& e) {
      return make_error(errc::io_error, std::string{"zmq endpoint "} + endpoint_
                                          + ": " + e.what());
    }
    io_ = std::thread{[this] { run(); }};
    return caf::none;
  }

  /// Hub: binds DCPP_BIND_ADDR or MASTER_ADDR (resolved), at MASTER_PORT,
  /// or with a directory at a free port, which it then publishes there.
  caf::error bind() {
    const auto& host = env_.bind_addr.empty() ? env_.master_addr
                                              : env_.bind_addr;
    auto addr = resolve_host(host);
    if (!addr)
      return make_error(errc::io_error, "the coordinator cannot bind: "
                                          + context_of(addr.error()));
    bool publish = opts_.directory && !directory_key_.empty();
    uint16_t port = publish ? 0 : env_.master_port;
    endpoint_ = tcp_endpoint(*addr, port);
    if (addr->ipv6)
      sock_->set(zmq::sockopt::ipv6, true);
    sock_->set(zmq::sockopt::handshake_ivl,
               static_cast<int>(opts_.handshake_timeout.count()));
    sock_->bind(endpoint_);
    endpoint_ = sock_->get(zmq::sockopt::last_endpoint);
    spdlog::debug("dcpp zmq: coordinator listening on {} for {} ranks{}",
                  endpoint_, env_.world_size,
                  env_.secret.empty() ? " (insecure)" : " (CURVE)");
    if (!publish)
      return caf::none;
    // Bound to every interface: the ranks reach this host by its name.
    auto published = endpoint_;
    if (addr->address == "*") {
      char name[256] = {};
      ::gethostname(name, sizeof name - 1);
      auto hp = parse_tcp_endpoint(endpoint_);
      if (!hp)
        return hp.error();
      published = "tcp://" + std::string{name} + ":" + std::to_string(hp->port);
    }
    if (auto err = opts_.directory->publish(directory_key_, published))
      return make_error(errc::io_error,
                        "the coordinator cannot publish its endpoint "
                          + published + " in " + opts_.directory->name() + ": "
                          + describe(err));
    return caf::none;
  }

  /// Spoke: connects to MASTER_ADDR:MASTER_PORT (resolved), or to what
  /// the coordinator published in the directory.
  caf::error connect() {
    auto who = "rank " + std::to_string(env_.rank);
    std::string host = env_.master_addr;
    uint16_t port = env_.master_port;
    if (opts_.directory && !directory_key_.empty()
        && !opts_.external_coordinator) {
      auto value = opts_.directory->lookup(directory_key_,
                                           opts_.connect_timeout);
      if (!value)
        return make_error(code_of(value.error()),
                          who + ": no coordinator endpoint under '"
                            + printable(directory_key_) + "' in "
                            + opts_.directory->name() + ": "
                            + context_of(value.error()));
      auto hp = parse_tcp_endpoint(*value);
      if (!hp)
        return make_error(errc::protocol_error,
                          who + ": the value under '"
                            + printable(directory_key_) + "' in "
                            + opts_.directory->name()
                            + " is not an endpoint: " + context_of(hp.error()));
      host = hp->host;
      port = hp->port;
    }
    auto addr = resolve_host(host);
    if (!addr)
      return make_error(errc::io_error,
                        who + " cannot connect: " + context_of(addr.error()));
    if (addr->address == "*")
      return make_error(errc::invalid_argument,
                        who + " cannot connect to '" + host
                          + "' (every interface): set MASTER_ADDR to the "
                            "coordinator's host");
    endpoint_ = tcp_endpoint(*addr, port);
    if (addr->ipv6)
      sock_->set(zmq::sockopt::ipv6, true);
    sock_->connect(endpoint_);
    return caf::none;
  }

  /// The directory key of this group (set before start()).
  void set_directory_key(std::string key) {
    directory_key_ = std::move(key);
  }

  /// Spoke: waits for the hub's answer to the hello.
  caf::error await_welcome() {
    std::unique_lock<std::mutex> guard{mx_};
    auto ok = cv_.wait_for(guard, opts_.connect_timeout,
                           [&] { return welcome_ != 0; });
    if (!ok)
      return make_error(
        errc::timeout, "rank " + std::to_string(env_.rank)
                         + ": no answer from the coordinator at " + endpoint_
                         + " within "
                         + std::to_string(opts_.connect_timeout.count()) + " ms"
                         + (last_failure_.empty()
                              ? std::string{}
                              : " (last handshake: " + last_failure_ + ")"));
    if (welcome_ == 1)
      return caf::none;
    return refusal_;
  }

  /// Hub: waits until no rank is connected any more (and, if `once`, at
  /// least one rank connected before), or until `pred_stop` or the timeout.
  /// A collective operation cannot end before all its ranks joined, so
  /// "some rank came, none is left" means the job is over.
  bool await_ranks_gone(std::chrono::milliseconds timeout, bool once,
                        const std::atomic<bool>* pred_stop = nullptr) {
    std::unique_lock<std::mutex> guard{mx_};
    auto done = [&] {
      if (pred_stop && pred_stop->load())
        return true;
      bool any = false;
      for (auto& p : peers_) {
        if (p.state == peer_state::connected)
          return false;
        if (p.state == peer_state::gone)
          any = true;
      }
      return any || !once;
    };
    if (timeout.count() <= 0) {
      while (!done())
        cv_.wait_for(guard, std::chrono::milliseconds(100));
      return true;
    }
    auto deadline = clock_type::now() + timeout;
    while (!done()) {
      if (clock_type::now() >= deadline)
        return false;
      cv_.wait_for(guard, std::chrono::milliseconds(100));
    }
    return true;
  }

  /// Stops the I/O thread (a spoke says goodbye first) and quits bridges.
  void stop() {
    if (stopped_.exchange(true))
      return;
    stop_flag_ = true;
    if (io_.joinable()) {
      box_->post(-2, std::string{}); // wake the loop
      io_.join();
    }
    box_->close();
    for (auto& p : peers_)
      if (p.bridge)
        caf::anon_send_exit(p.bridge, caf::exit_reason::user_shutdown);
    monitor_.reset();
    sock_.reset();
    zap_.reset();
    wake_pull_.reset();
  }

private:
  struct peer {
    peer_state state = peer_state::waiting;
    std::string rid;
    clock_type::time_point last_seen;
    caf::actor bridge;
  };

  // -- I/O thread -------------------------------------------------------------

  void run() {
    std::vector<zmq::pollitem_t> items{{sock_->handle(), 0, ZMQ_POLLIN, 0},
                                       {wake_pull_->handle(), 0, ZMQ_POLLIN, 0},
                                       {monitor_->handle(), 0, ZMQ_POLLIN, 0}};
    if (zap_)
      items.push_back({zap_->handle(), 0, ZMQ_POLLIN, 0});
    auto tick = std::min(opts_.heartbeat_interval,
                         std::chrono::milliseconds(100));
    auto last_beat = clock_type::now();
    while (!stop_flag_.load()) {
      try {
        zmq::poll(items, tick);
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR)
          continue;
        spdlog::error("dcpp zmq: poll failed: {}", e.what());
        break;
      }
      // Connection events and authentication first: a connection over the
      // cap is closed before its peer can send anything.
      if (items[2].revents & ZMQ_POLLIN)
        read_monitor();
      if (zap_ && (items[3].revents & ZMQ_POLLIN))
        answer_zap();
      if (items[0].revents & ZMQ_POLLIN)
        read_all();
      if (items[1].revents & ZMQ_POLLIN) {
        zmq::message_t token;
        while (wake_pull_->recv(token, zmq::recv_flags::dontwait)) {
          // drain
        }
      }
      flush();
      auto now = clock_type::now();
      if (now - last_beat >= opts_.heartbeat_interval) {
        last_beat = now;
        beat();
      }
      check_timeouts(now);
      check_handshakes(now);
    }
    flush();
    // Say goodbye to the peers still there. Frames for peers known to be
    // gone must not hold up closing the socket (its linger): a rank that
    // lost its coordinator exits at once instead of after the linger.
    bool anyone_left = false;
    {
      std::lock_guard<std::mutex> guard{mx_};
      for (auto& p : peers_)
        if (p.state == peer_state::connected)
          anyone_left = true;
    }
    if (!anyone_left) {
      try {
        sock_->set(zmq::sockopt::linger, 0);
      } catch (const zmq::error_t&) {
        // keep the default linger
      }
    } else if (!hub_) {
      send_to_hub(control(tag_bye));
    } else {
      for (auto& p : peers_)
        if (p.state == peer_state::connected)
          send_to_rid(p.rid, control(tag_bye));
    }
  }

  void send_to_rid(const std::string& rid, const std::string& frame) {
    try {
      sock_->send(zmq::buffer(rid), zmq::send_flags::sndmore);
      sock_->send(zmq::buffer(frame), zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
      spdlog::error("dcpp zmq: send failed: {}", e.what());
    }
  }

  void send_to_hub(const std::string& frame) {
    try {
      sock_->send(zmq::buffer(frame), zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
      spdlog::error("dcpp zmq: send failed: {}", e.what());
    }
  }

  void flush() {
    for (auto& [to, frame] : box_->take()) {
      if (to == -2)
        continue; // wake-up only
      if (!hub_) {
        send_to_hub(frame);
        continue;
      }
      std::string rid;
      {
        std::lock_guard<std::mutex> guard{mx_};
        auto& p = peers_[static_cast<size_t>(to)];
        if (p.state == peer_state::connected)
          rid = p.rid;
      }
      if (rid.empty()) {
        spdlog::warn("dcpp zmq: dropped a frame for rank {} (not connected)",
                     to);
        continue;
      }
      send_to_rid(rid, frame);
    }
  }

  void beat() {
    if (!hub_) {
      send_to_hub(control(tag_heartbeat));
      return;
    }
    std::vector<std::string> rids;
    {
      std::lock_guard<std::mutex> guard{mx_};
      for (auto& p : peers_)
        if (p.state == peer_state::connected)
          rids.push_back(p.rid);
    }
    for (auto& rid : rids)
      send_to_rid(rid, control(tag_heartbeat));
  }

  void check_timeouts(clock_type::time_point now) {
    std::vector<int32_t> lost;
    {
      std::lock_guard<std::mutex> guard{mx_};
      for (size_t i = 0; i < peers_.size(); ++i) {
        auto& p = peers_[i];
        if (p.state == peer_state::connected
            && now - p.last_seen > opts_.peer_timeout)
          lost.push_back(static_cast<int32_t>(i));
      }
    }
    for (auto i : lost)
      lose(i, "silent for more than "
                + std::to_string(opts_.peer_timeout.count()) + " ms");
  }

  /// Marks peer slot `i` gone and quits its bridge.
  void lose(int32_t i, const std::string& why) {
    caf::actor bridge;
    {
      std::lock_guard<std::mutex> guard{mx_};
      auto& p = peers_[static_cast<size_t>(i)];
      if (p.state == peer_state::gone)
        return;
      p.state = peer_state::gone;
      rid_to_rank_.erase(p.rid);
      bridge = p.bridge;
    }
    cv_.notify_all();
    std::string who = hub_ ? "rank " + std::to_string(i) : "the coordinator";
    if (why == "said goodbye")
      spdlog::debug("dcpp zmq: {} {}", who, why);
    else
      spdlog::error("dcpp zmq: lost {}: {}", who, why);
    if (bridge)
      caf::anon_send(bridge, caf::exit_msg{caf::actor_addr{},
                                           make_error(errc::rank_lost,
                                                      who + " " + why)});
  }

  void read_all() {
    for (;;) {
      std::vector<zmq::message_t> frames;
      std::optional<size_t> got;
      try {
        got = zmq::recv_multipart(*sock_, std::back_inserter(frames),
                                  zmq::recv_flags::dontwait);
      } catch (const zmq::error_t& e) {
        spdlog::error("dcpp zmq: receive failed: {}", e.what());
        return;
      }
      if (!got)
        return;
      if (hub_) {
        if (frames.size() != 2) {
          peer_error("dcpp zmq: dropped a message of {} parts", frames.size());
          continue;
        }
        on_hub_frame(frames[0].to_string(), frames[1]);
      } else {
        if (frames.size() != 1) {
          peer_error("dcpp zmq: dropped a message of {} parts", frames.size());
          continue;
        }
        on_spoke_frame(frames[0]);
      }
    }
  }

  /// An error line that a peer caused (a refused hello, a dropped frame):
  /// rate-limited, so that a peer sending garbage in a loop cannot flood
  /// the log.
  template <class... Ts>
  void peer_error(const char* fmt, Ts&&... xs) {
    uint64_t suppressed = 0;
    if (!peer_log_.allow(detail::log_limiter::clock::now(), suppressed))
      return;
    if (suppressed > 0)
      spdlog::error("dcpp zmq: {} more lines like the next one suppressed",
                    suppressed);
    spdlog::error(fmt, std::forward<Ts>(xs)...);
  }

  /// Connection events: counts the hub's open connections and closes those
  /// beyond the cap; turns a failed handshake into a log line (hub) or the
  /// rank's refusal (spoke).
  void read_monitor() {
    for (;;) {
      zmq::message_t head;
      zmq::message_t addr;
      try {
        if (!monitor_->recv(head, zmq::recv_flags::dontwait))
          return;
        (void)monitor_->recv(addr); // always follows its head
      } catch (const zmq::error_t& e) {
        spdlog::error("dcpp zmq: monitor failed: {}", e.what());
        return;
      }
      if (head.size() < 6)
        continue;
      uint16_t event = 0;
      uint32_t value = 0;
      std::memcpy(&event, head.data(), sizeof(event));
      std::memcpy(&value, static_cast<const char*>(head.data()) + 2,
                  sizeof(value));
      if (event == ZMQ_EVENT_ACCEPTED) {
        on_accepted(static_cast<int>(value));
      } else if (event == ZMQ_EVENT_DISCONNECTED) {
        open_.erase(static_cast<int>(value));
      } else if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
        first_failure_.reset();
      } else if (event & handshake_failed_events) {
        on_handshake_failed(event, value);
      }
    }
  }

  void on_accepted(int fd) {
    open_.insert(fd);
    auto cap = static_cast<size_t>(env_.world_size)
               + opts_.max_pending_connections;
    if (open_.size() <= cap)
      return;
    // Over the cap: close this (the newest) connection, so established
    // ranks keep theirs. shutdown(), not close(): libzmq owns the
    // descriptor, sees the end of the stream and closes it itself (and
    // reports DISCONNECTED). Should the descriptor already have been
    // closed and reused, shutdown() of a file fails harmlessly, and a
    // reused socket is a newer incoming connection that reconnects.
    ::shutdown(fd, SHUT_RDWR);
    peer_error("dcpp zmq: closed an incoming connection: {} connections "
               "open, at most {} ({} ranks + {} in their handshake)",
               open_.size(), cap, env_.world_size,
               opts_.max_pending_connections);
  }

  void on_handshake_failed(uint16_t event, uint32_t value) {
    auto why = handshake_failure(event, value);
    if (hub_) {
      peer_error("dcpp zmq: refused a peer at the handshake: {} (another "
                 "DCPP_SECRET or job id, or not a dcpp rank)",
                 why);
      return;
    }
    // A refused key (ZAP) or a mismatched mechanism or key is final. A
    // connection that merely closed during the handshake is what both a
    // coordinator with another secret (it cannot decrypt our hello) and
    // one shedding a flood of connections (over its cap) look like: final
    // only once no handshake succeeded for twice the handshake timeout, in
    // which any flood's idle connections have been closed (checked in
    // check_timeouts, since the coordinator may go away meanwhile).
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
      if (!first_failure_)
        first_failure_ = clock_type::now();
      std::lock_guard<std::mutex> guard{mx_};
      last_failure_ = why;
      return;
    }
    give_up(why);
  }

  /// A spoke whose handshakes keep failing gives up (see
  /// on_handshake_failed).
  void check_handshakes(clock_type::time_point now) {
    if (hub_ || !first_failure_
        || now - *first_failure_ < 2 * opts_.handshake_timeout)
      return;
    std::string why;
    {
      std::lock_guard<std::mutex> guard{mx_};
      why = last_failure_;
    }
    auto secs = std::chrono::duration_cast<std::chrono::seconds>(
                  now - *first_failure_)
                  .count();
    first_failure_.reset();
    give_up(why + " (every try for " + std::to_string(secs) + " s)");
  }

  /// Fails a spoke's wait for the welcome: its handshake was refused.
  void give_up(const std::string& why) {
    {
      std::lock_guard<std::mutex> guard{mx_};
      if (welcome_ != 0)
        return; // after the welcome: the heartbeat timeout reports the loss
      welcome_ = 2;
      peers_[0].state = peer_state::gone;
      refusal_ = make_error(
        errc::unauthorized,
        "rank " + std::to_string(env_.rank)
          + ": the secure handshake with the coordinator at " + endpoint_
          + " failed: " + why
          + "; the coordinator holds another DCPP_SECRET or another job id "
            "(this rank's is '"
          + printable(env_.job_id)
          + "', from DCPP_JOB_ID or the launcher), or what listens there is "
            "not this job's coordinator (nothing was sent to it)");
    }
    cv_.notify_all();
  }

  /// ZAP (ZeroMQ's authentication protocol, RFC 27): admits a CURVE client
  /// only if it holds the ranks' key of this job.
  void answer_zap() {
    for (;;) {
      std::vector<zmq::message_t> req;
      try {
        if (!zmq::recv_multipart(*zap_, std::back_inserter(req),
                                 zmq::recv_flags::dontwait))
          return;
      } catch (const zmq::error_t& e) {
        spdlog::error("dcpp zmq: ZAP handler failed: {}", e.what());
        return;
      }
      // version, request id, domain, address, identity, mechanism, key
      bool ok = req.size() == 7 && req[0].to_string_view() == "1.0"
                && req[2].to_string_view() == zap_domain
                && req[5].to_string_view() == "CURVE"
                && req[6].size() == client_key_.size()
                && sodium_memcmp(req[6].data(), client_key_.data(),
                                 client_key_.size())
                     == 0;
      std::array<std::string, 6> reply{"1.0",
                                       req.size() > 1 ? req[1].to_string()
                                                      : std::string{},
                                       ok ? "200" : "400",
                                       ok ? "OK" : "not a key of this job",
                                       "",
                                       ""};
      try {
        for (size_t i = 0; i < reply.size(); ++i)
          zap_->send(zmq::buffer(reply[i]), i + 1 < reply.size()
                                              ? zmq::send_flags::sndmore
                                              : zmq::send_flags::none);
      } catch (const zmq::error_t& e) {
        spdlog::error("dcpp zmq: ZAP reply failed: {}", e.what());
      }
    }
  }

  void refuse(const std::string& rid, char code, const std::string& why) {
    peer_error("dcpp zmq: refused a rank: {}", why);
    send_to_rid(rid, control(tag_refuse, std::string(1, code) + why));
  }

  void on_hello(const std::string& rid, const std::string& body) {
    std::istringstream in{body};
    std::string magic, rank_str, world_str, job;
    std::getline(in, magic);
    std::getline(in, rank_str);
    std::getline(in, world_str);
    std::getline(in, job, '\0');
    // Only a peer holding the job's key gets here; what it sent is still
    // quoted only bounded and escaped.
    auto rank_text = printable(rank_str, 32);
    auto world_text = printable(world_str, 32);
    if (magic != hello_magic) {
      refuse(rid, refuse_protocol, "unknown hello (protocol mismatch)");
      return;
    }
    // With a secret, only a peer that completed the CURVE handshake with
    // the job's key gets here: it may learn the ids.
    if (job != env_.job_id) {
      refuse(rid, refuse_other_job,
             "rank " + rank_text + " belongs to job '" + printable(job)
               + "', this coordinator to job '" + printable(env_.job_id)
               + "' (DCPP_JOB_ID)");
      return;
    }
    int32_t rank = -1;
    int32_t world = -1;
    try {
      rank = std::stoi(rank_str);
      world = std::stoi(world_str);
    } catch (...) {
      refuse(rid, refuse_protocol, "malformed hello");
      return;
    }
    if (world != env_.world_size) {
      refuse(rid, refuse_protocol,
             "rank " + rank_text + " has world size " + world_text
               + ", the coordinator " + std::to_string(env_.world_size));
      return;
    }
    if (rank < 0 || rank >= env_.world_size) {
      refuse(rid, refuse_protocol, "rank " + rank_text + " out of range");
      return;
    }
    {
      std::lock_guard<std::mutex> guard{mx_};
      auto& p = peers_[static_cast<size_t>(rank)];
      if (p.state != peer_state::waiting || !p.bridge) {
        // fall through to the refusal below, outside the lock
        rank = -rank - 1;
      } else {
        p.state = peer_state::connected;
        p.rid = rid;
        p.last_seen = clock_type::now();
        rid_to_rank_[rid] = rank;
      }
    }
    if (rank < 0) {
      refuse(rid, refuse_protocol,
             "rank " + rank_text + " is already connected, gone or local");
      return;
    }
    cv_.notify_all();
    spdlog::debug("dcpp zmq: rank {} connected", rank);
    send_to_rid(rid, control(tag_welcome));
  }

  void on_hub_frame(const std::string& rid, const zmq::message_t& msg) {
    if (msg.size() == 0)
      return;
    auto tag = static_cast<const char*>(msg.data())[0];
    if (tag == tag_hello) {
      on_hello(rid, std::string{static_cast<const char*>(msg.data()) + 1,
                                msg.size() - 1});
      return;
    }
    int32_t rank = -1;
    {
      std::lock_guard<std::mutex> guard{mx_};
      auto i = rid_to_rank_.find(rid);
      if (i != rid_to_rank_.end()) {
        rank = i->second;
        peers_[static_cast<size_t>(rank)].last_seen = clock_type::now();
      }
    }
    if (rank < 0) {
      if (tag != tag_heartbeat && tag != tag_bye)
        peer_error("dcpp zmq: dropped a frame from an unauthenticated "
                   "peer");
      return;
    }
    if (tag == tag_heartbeat)
      return;
    if (tag == tag_bye) {
      lose(rank, "said goodbye");
      return;
    }
    deliver(msg, rank, true);
  }

  void on_spoke_frame(const zmq::message_t& msg) {
    if (msg.size() == 0)
      return;
    auto data = static_cast<const char*>(msg.data());
    auto tag = data[0];
    if (tag == tag_welcome || tag == tag_refuse) {
      {
        std::lock_guard<std::mutex> guard{mx_};
        if (welcome_ != 0)
          return;
        if (tag == tag_welcome) {
          welcome_ = 1;
          peers_[0].state = peer_state::connected;
          peers_[0].last_seen = clock_type::now();
        } else {
          welcome_ = 2;
          peers_[0].state = peer_state::gone;
          std::string why{data + std::min<size_t>(2, msg.size()),
                          msg.size() - std::min<size_t>(2, msg.size())};
          auto reason = msg.size() > 1 ? data[1] : refuse_protocol;
          auto code = reason == refuse_other_job ? errc::unauthorized
                                                 : errc::protocol_error;
          refusal_ = make_error(code, "rank " + std::to_string(env_.rank)
                                        + " refused by the coordinator: "
                                        + printable(why, 1024));
        }
      }
      cv_.notify_all();
      return;
    }
    {
      std::lock_guard<std::mutex> guard{mx_};
      if (peers_[0].state != peer_state::connected)
        return;
      peers_[0].last_seen = clock_type::now();
    }
    if (tag == tag_heartbeat)
      return;
    if (tag == tag_bye) {
      lose(0, "closed the connection");
      return;
    }
    deliver(msg, env_.rank, false);
  }

  /// Decodes a protocol frame and sends it to the local target.
  void deliver(const zmq::message_t& msg, int32_t peer_rank, bool from_rank) {
    if (msg.size() > opts_.max_frame_bytes) {
      peer_error("dcpp zmq: dropped an inbound frame of {} bytes (limit "
                 "{} bytes)",
                 msg.size(), opts_.max_frame_bytes);
      return;
    }
    std::string frame = msg.to_string();
    auto hdr = envelope_from_wire(frame);
    if (!hdr) {
      peer_error("dcpp zmq: dropped an undecodable frame: {}",
                 describe(hdr.error()));
      return;
    }
    if (from_rank ? hdr->from != peer_rank : hdr->to != peer_rank) {
      peer_error("dcpp zmq: dropped a misrouted frame ({})", to_string(*hdr));
      return;
    }
    if (from_rank && hdr->to != opts_.coordinator_rank) {
      peer_error("dcpp zmq: dropped a frame for coordinator rank {}; this "
                 "group's coordinator is rank {}",
                 hdr->to, opts_.coordinator_rank);
      return;
    }
    auto m = message_from_wire(frame);
    if (!m) {
      peer_error("dcpp zmq: dropped an undecodable frame: {}",
                 describe(m.error()));
      return;
    }
    if (target_)
      caf::anon_send(target_, std::move(*m));
  }

  /// Lines that peers cause: 20 per 10 seconds.
  detail::log_limiter peer_log_{20, std::chrono::seconds(10)};
  caf::actor_system& sys_;
  bool hub_;
  launch_env env_;
  zmq_options opts_;
  zmq::context_t ctx_;
  std::string wake_endpoint_;
  /// Where the hub listens, for messages: MASTER_ADDR:MASTER_PORT until
  /// bound or connected, then the numeric endpoint.
  std::string endpoint_;
  std::string directory_key_;
  std::shared_ptr<outbox> box_;
  std::unique_ptr<zmq::socket_t> wake_pull_;
  std::unique_ptr<zmq::socket_t> sock_;
  /// Connection events of sock_ (see watch()).
  std::unique_ptr<zmq::socket_t> monitor_;
  /// The hub's ZAP handler socket (with a secret only).
  std::unique_ptr<zmq::socket_t> zap_;
  /// The public key clients must present (hub).
  std::array<uint8_t, 32> client_key_{};
  /// The hub's open connections by descriptor (I/O thread only).
  std::set<int> open_;
  /// A spoke's failed handshakes since the last success (I/O thread only;
  /// last_failure_ also read by await_welcome under mx_ after a timeout).
  std::optional<clock_type::time_point> first_failure_;
  std::string last_failure_;
  std::thread io_;
  std::atomic<bool> stop_flag_{false};
  std::atomic<bool> stopped_{false};
  caf::actor target_;

  // Guarded by mx_ (read without it only by the I/O thread where noted).
  std::mutex mx_;
  std::condition_variable cv_;
  std::vector<peer> peers_;
  std::map<std::string, int32_t> rid_to_rank_;
  int welcome_ = 0; // 0: waiting, 1: welcome, 2: refused
  caf::error refusal_;
};

class zmq_process_group final : public process_group {
public:
  zmq_process_group(caf::actor_system& sys, int32_t rank, zmq_options opts)
    : sys_(sys), rank_(rank), opts_(std::move(opts)) {
    // nop
  }

  ~zmq_process_group() override {
    if (link_ && hosts_hub_) {
      // Let the remote ranks receive the outcome of the last operation and
      // say goodbye before the coordinator goes.
      link_->await_ranks_gone(opts_.drain_timeout, false);
    }
    if (link_)
      link_->stop();
    for (auto& a : local_)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  }

  int32_t rank() const override {
    return rank_;
  }

  int32_t world_size() const override {
    return peers_->world_size();
  }

  caf::actor_system& system() const override {
    return sys_;
  }

  rank_agent_actor agent() const override {
    return agent_;
  }

  coordinator_actor coordinator() const override {
    return peers_->coordinators[static_cast<size_t>(rank_)];
  }

  caf::actor_system& sys_;
  int32_t rank_;
  zmq_options opts_;
  bool hosts_hub_ = false;
  peer_table_ptr peers_;
  std::unique_ptr<zmq_link> link_;
  rank_agent_actor agent_;
  std::vector<caf::actor> local_;
};

} // namespace

namespace {

/// 1, 2, ... for the groups that `env.rank` of `env.job_id` makes (one rank
/// per process in a job; several when ranks are threads, as in tests).
uint64_t next_group_instance(const launch_env& env) {
  static std::mutex mx;
  static std::map<std::pair<std::string, int32_t>, uint64_t> made;
  std::lock_guard<std::mutex> guard{mx};
  return ++made[{env.job_id, env.rank}];
}

} // namespace

caf::expected<process_group_ptr> make_zmq_process_group(caf::actor_system& sys,
                                                        const launch_env& env,
                                                        zmq_options opts) {
  auto n = env.world_size;
  if (n < 1 || env.rank < 0 || env.rank >= n)
    return make_error(errc::invalid_argument, "rank " + std::to_string(env.rank)
                                                + " of world size "
                                                + std::to_string(n));
  if (opts.coordinator_rank < 0 || opts.coordinator_rank >= n)
    return make_error(errc::invalid_argument,
                      "coordinator rank "
                        + std::to_string(opts.coordinator_rank)
                        + " out of range");
  auto group = std::make_shared<zmq_process_group>(sys, env.rank, opts);
  auto peers = std::make_shared<peer_table>();
  group->peers_ = peers;
  bool hub = !opts.external_coordinator && env.rank == opts.coordinator_rank;
  group->hosts_hub_ = hub;
  group->link_ = std::make_unique<zmq_link>(sys, hub, env, opts);
  auto& link = *group->link_;
  // Every rank of the job makes its groups in the same order, so the n-th
  // group of each rank is the same group: its key in the directory is new
  // for each group and each restart of the job's workers.
  link.set_directory_key(
    "dcpp/" + env.job_id + "/restart-" + std::to_string(env.restart_count)
    + "/group-" + std::to_string(next_group_instance(env)) + "/coordinator");
  auto agent = spawn_rank_agent(sys, env.rank, peers, opts.group.agent);
  group->agent_ = agent;
  group->local_.push_back(caf::actor_cast<caf::actor>(agent));
  if (hub) {
    auto coord = spawn_coordinator(sys, opts.coordinator_rank, peers);
    group->local_.push_back(caf::actor_cast<caf::actor>(coord));
    for (int32_t r = 0; r < n; ++r) {
      peers->coordinators.push_back(coord);
      if (r == env.rank)
        peers->ranks.push_back(agent);
      else
        peers->ranks.push_back(
          caf::actor_cast<rank_endpoint_actor>(link.spawn_bridge(r)));
    }
    // The local rank's slot has no bridge: a hello for it is refused.
    link.set_target(caf::actor_cast<caf::actor>(coord));
  } else {
    auto bridge = link.spawn_bridge(-1);
    for (int32_t r = 0; r < n; ++r) {
      peers->coordinators.push_back(caf::actor_cast<coordinator_actor>(bridge));
      if (r == env.rank)
        peers->ranks.push_back(agent);
      else
        peers->ranks.push_back(caf::actor_cast<rank_endpoint_actor>(bridge));
    }
    link.set_target(caf::actor_cast<caf::actor>(agent));
  }
  if (auto err = link.start())
    return err; // the group's destructor stops what was spawned
  if (!hub)
    if (auto err = link.await_welcome())
      return err;
  return process_group_ptr{std::move(group)};
}

caf::error serve_zmq_coordinator(caf::actor_system& sys, const launch_env& env,
                                 zmq_options opts,
                                 const std::atomic<bool>& stop) {
  auto n = env.world_size;
  if (n < 1 || opts.coordinator_rank < 0 || opts.coordinator_rank >= n)
    return make_error(errc::invalid_argument,
                      "coordinator rank "
                        + std::to_string(opts.coordinator_rank)
                        + " of world size " + std::to_string(n));
  auto peers = std::make_shared<peer_table>();
  zmq_link link{sys, true, env, opts};
  auto coord = spawn_coordinator(sys, opts.coordinator_rank, peers);
  for (int32_t r = 0; r < n; ++r) {
    peers->coordinators.push_back(coord);
    peers->ranks.push_back(
      caf::actor_cast<rank_endpoint_actor>(link.spawn_bridge(r)));
  }
  link.set_target(caf::actor_cast<caf::actor>(coord));
  caf::error result;
  if (auto err = link.start()) {
    result = std::move(err);
  } else {
    link.await_ranks_gone(std::chrono::milliseconds(0), true, &stop);
    if (stop.load())
      result = make_error(errc::aborted, "coordinator stopped by a signal");
  }
  link.stop();
  caf::anon_send_exit(coord, caf::exit_reason::user_shutdown);
  return result;
}

} // namespace dcpp
