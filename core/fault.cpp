#include "core/fault.hpp"

#include "core/error.hpp"

#include <spdlog/spdlog.h>

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

namespace dcpp::fault {

namespace {

enum class where_kind : uint8_t { step, io, msg };

enum class what_kind : uint8_t {
  exit,
  hang,
  fail,
  slow,
  eio,
  enospc,
  short_write,
  drop,
  delay,
};

/// Directions of a message rule.
enum class direction : uint8_t { both, to_coordinator, from_coordinator };

struct rule {
  std::string text;
  where_kind where = where_kind::step;
  step at = step::plan;
  what_kind what = what_kind::fail;
  /// -1: every rank.
  int32_t rank = -1;
  direction dir = direction::both;
  /// Milliseconds (slow, delay), K (io faults) or N (drop; 0: every one).
  int64_t arg = 0;
  // -- state --
  /// Step rules: the (rank, op) pairs it fired for.
  std::set<std::pair<int32_t, uint64_t>> fired_for;
  /// Message rules: messages seen per rank.
  std::map<int32_t, uint64_t> seen;
};

struct registry {
  std::mutex mx;
  std::condition_variable released;
  uint64_t generation = 0;
  std::string spec;
  std::vector<rule> rules;
  /// Write system calls per rank.
  std::map<int32_t, uint64_t> writes;
  /// Ranks whose disk "filled up" (io:enospc fired).
  std::set<int32_t> full;
  std::atomic<bool> on{false};
  std::atomic<uint64_t> fired{0};
  std::once_flag env_once;
};

registry& reg() {
  static registry* instance = new registry; // never destroyed: hooks may
  return *instance;                         // run during static teardown
}

thread_local int32_t tl_io_rank = -1;

void announce(const std::string& what) {
  spdlog::warn("dcpp: injected fault: {}", what);
  spdlog::default_logger()->flush();
}

std::string rank_text(int32_t rank) {
  return "rank " + std::to_string(rank);
}

std::optional<int64_t> parse_int(std::string_view s) {
  if (s.empty() || s.size() > 18)
    return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9')
      return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

/// A rank or '*' / "" (every rank: -1).
std::optional<int32_t> parse_rank(std::string_view s) {
  if (s.empty() || s == "*")
    return -1;
  auto v = parse_int(s);
  if (!v || *v > INT32_MAX)
    return std::nullopt;
  return static_cast<int32_t>(*v);
}

caf::expected<rule> parse_rule(std::string_view text) {
  rule r;
  r.text = std::string{text};
  auto bad = [&](const std::string& why) {
    return make_error(errc::invalid_argument,
                      "fault rule '" + r.text + "': " + why);
  };
  auto colon = text.find(':');
  if (colon == std::string_view::npos)
    return bad("expected WHERE:WHAT[@WHO][:ARG]");
  auto where = text.substr(0, colon);
  auto rest = text.substr(colon + 1);
  auto what_end = rest.find_first_of("@:");
  auto what = rest.substr(0, what_end);
  std::string_view who;
  std::string_view arg;
  bool has_arg = false;
  if (what_end != std::string_view::npos) {
    auto tail = rest.substr(what_end);
    if (tail[0] == '@') {
      tail.remove_prefix(1);
      auto c = tail.find(':');
      who = tail.substr(0, c);
      if (c != std::string_view::npos) {
        arg = tail.substr(c + 1);
        has_arg = true;
      }
    } else {
      arg = tail.substr(1);
      has_arg = true;
    }
  }
  std::optional<int64_t> number;
  if (has_arg) {
    number = parse_int(arg);
    if (!number)
      return bad("'" + std::string{arg} + "' is not a number");
  }
  auto need_arg = [&](const char* meaning) -> caf::error {
    if (!number)
      return bad(std::string{"needs :"} + meaning);
    return {};
  };
  auto no_arg = [&]() -> caf::error {
    if (number)
      return bad("takes no argument");
    return {};
  };
  if (where == "plan" || where == "write" || where == "read"
      || where == "commit" || where == "rename") {
    r.where = where_kind::step;
    r.at = where == "plan"     ? step::plan
           : where == "write"  ? step::write
           : where == "read"   ? step::read
           : where == "commit" ? step::commit
                               : step::rename;
    caf::error err;
    if (what == "exit") {
      r.what = what_kind::exit;
      err = no_arg();
    } else if (what == "hang") {
      r.what = what_kind::hang;
      err = no_arg();
    } else if (what == "fail") {
      r.what = what_kind::fail;
      err = no_arg();
    } else if (what == "slow") {
      r.what = what_kind::slow;
      err = need_arg("MS");
    } else {
      return bad("unknown action '" + std::string{what}
                 + "' (exit, hang, fail, slow)");
    }
    if (err)
      return err;
    auto rank = parse_rank(who);
    if (!rank)
      return bad("'" + std::string{who} + "' is not a rank");
    r.rank = *rank;
  } else if (where == "io") {
    r.where = where_kind::io;
    if (what == "eio")
      r.what = what_kind::eio;
    else if (what == "enospc")
      r.what = what_kind::enospc;
    else if (what == "short")
      r.what = what_kind::short_write;
    else if (what == "slow")
      r.what = what_kind::slow;
    else
      return bad("unknown storage fault '" + std::string{what}
                 + "' (eio, enospc, short, slow)");
    if (auto err = need_arg(r.what == what_kind::slow ? "MS" : "K"))
      return err;
    if (r.what != what_kind::slow && *number < 1)
      return bad("K counts from 1");
    auto rank = parse_rank(who);
    if (!rank)
      return bad("'" + std::string{who} + "' is not a rank");
    r.rank = *rank;
  } else if (where == "msg") {
    r.where = where_kind::msg;
    if (what == "drop") {
      r.what = what_kind::drop;
    } else if (what == "delay") {
      r.what = what_kind::delay;
      if (auto err = need_arg("MS"))
        return err;
    } else {
      return bad("unknown message fault '" + std::string{what}
                 + "' (drop, delay)");
    }
    auto gt = who.find('>');
    std::string_view side = who;
    if (gt != std::string_view::npos) {
      auto from = who.substr(0, gt);
      auto to = who.substr(gt + 1);
      if (to == "c" && from != "c") {
        r.dir = direction::to_coordinator;
        side = from;
      } else if (from == "c" && to != "c") {
        r.dir = direction::from_coordinator;
        side = to;
      } else {
        return bad("messages go between a rank and the coordinator: "
                   "write R>c or c>R");
      }
    }
    auto rank = parse_rank(side);
    if (!rank)
      return bad("'" + std::string{side} + "' is not a rank");
    r.rank = *rank;
  } else {
    return bad("unknown place '" + std::string{where}
               + "' (plan, write, read, commit, rename, io, msg)");
  }
  if (number)
    r.arg = *number;
  return r;
}

caf::error install_locked(registry& g, std::string_view spec) {
  std::vector<rule> rules;
  size_t pos = 0;
  while (pos < spec.size()) {
    auto end = spec.find_first_of(",;", pos);
    auto item = spec.substr(pos, end == std::string_view::npos
                                   ? std::string_view::npos
                                   : end - pos);
    while (!item.empty() && item.front() == ' ')
      item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ')
      item.remove_suffix(1);
    if (!item.empty()) {
      auto r = parse_rule(item);
      if (!r)
        return r.error();
      rules.push_back(std::move(*r));
    }
    if (end == std::string_view::npos)
      break;
    pos = end + 1;
  }
  g.rules = std::move(rules);
  g.spec = std::string{spec};
  g.writes.clear();
  g.full.clear();
  g.fired = 0;
  ++g.generation;
  g.on = !g.rules.empty();
  g.released.notify_all();
  return {};
}

void read_env(registry& g) {
  std::call_once(g.env_once, [&g] {
    const char* spec = std::getenv("DCPP_FAULT");
    if (spec == nullptr || *spec == '\0')
      return;
    std::lock_guard<std::mutex> guard{g.mx};
    if (auto err = install_locked(g, spec))
      spdlog::warn("dcpp: DCPP_FAULT ignored: {}", describe(err));
  });
}

/// Fast check for hooks.
bool enabled() {
  auto& g = reg();
  read_env(g);
  return g.on.load(std::memory_order_acquire);
}

bool matches(int32_t rule_rank, int32_t rank) {
  return rule_rank < 0 || rule_rank == rank;
}

} // namespace

caf::error install(std::string_view spec) {
  auto& g = reg();
  read_env(g); // consumed now, so it cannot replace these rules later
  std::lock_guard<std::mutex> guard{g.mx};
  return install_locked(g, spec);
}

void clear() {
  auto& g = reg();
  read_env(g);
  std::lock_guard<std::mutex> guard{g.mx};
  install_locked(g, "");
}

std::string current() {
  auto& g = reg();
  read_env(g);
  std::lock_guard<std::mutex> guard{g.mx};
  return g.spec;
}

bool active() {
  return enabled();
}

uint64_t fired() {
  return reg().fired.load();
}

const char* to_string(step x) {
  switch (x) {
    case step::plan: return "plan";
    case step::write: return "write";
    case step::read: return "read";
    case step::commit: return "commit";
    case step::rename: return "rename";
  }
  return "?";
}

verdict at_step(step s, int32_t rank, uint64_t op) {
  if (!enabled())
    return {};
  auto& g = reg();
  std::optional<what_kind> what;
  int64_t arg = 0;
  {
    std::lock_guard<std::mutex> guard{g.mx};
    for (auto& r : g.rules) {
      if (r.where != where_kind::step || r.at != s || !matches(r.rank, rank))
        continue;
      if (!r.fired_for.emplace(rank, op).second)
        continue;
      what = r.what;
      arg = r.arg;
      ++g.fired;
      break;
    }
  }
  if (!what)
    return {};
  switch (*what) {
    case what_kind::exit:
      announce(rank_text(rank) + " exits in step " + to_string(s));
      std::_Exit(137);
    case what_kind::hang:
      announce(rank_text(rank) + " hangs in step " + to_string(s));
      return {action::hang, {}};
    case what_kind::fail:
      announce(rank_text(rank) + " fails in step " + to_string(s));
      return {action::fail, make_error(errc::injected_fault,
                                       "injected fault: " + rank_text(rank)
                                         + " fails in step " + to_string(s))};
    case what_kind::slow:
      announce(rank_text(rank) + " is " + std::to_string(arg)
               + " ms late in step " + to_string(s));
      return {action::slow, {}, std::chrono::milliseconds(arg)};
    default: return {};
  }
}

uint64_t next_op() {
  static std::atomic<uint64_t> ops{0};
  return ++ops;
}

void block_until_released() {
  auto& g = reg();
  std::unique_lock<std::mutex> guard{g.mx};
  auto gen = g.generation;
  g.released.wait(guard, [&] { return g.generation != gen; });
}

// -- storage ------------------------------------------------------------------

io_scope::io_scope(int32_t rank) : prev_(tl_io_rank) {
  tl_io_rank = rank;
}

io_scope::~io_scope() {
  tl_io_rank = prev_;
}

int32_t io_rank() {
  return tl_io_rank;
}

namespace {

/// What one write system call does.
struct io_decision {
  enum kind_t { pass, fail, partial } kind = pass;
  int err = 0;
  size_t bytes = 0;
  int64_t sleep_ms = 0;
};

io_decision decide_io(size_t size) {
  io_decision d;
  auto& g = reg();
  auto rank = tl_io_rank;
  std::lock_guard<std::mutex> guard{g.mx};
  auto k = ++g.writes[rank];
  if (g.full.count(rank) != 0) {
    d.kind = io_decision::fail;
    d.err = ENOSPC;
    return d;
  }
  for (auto& r : g.rules) {
    if (r.where != where_kind::io || !matches(r.rank, rank))
      continue;
    if (r.what == what_kind::slow) {
      d.sleep_ms = std::max(d.sleep_ms, r.arg);
      continue;
    }
    if (static_cast<uint64_t>(r.arg) != k || d.kind != io_decision::pass)
      continue;
    ++g.fired;
    auto half = size / 2;
    switch (r.what) {
      case what_kind::eio:
        d.kind = io_decision::fail;
        d.err = EIO;
        announce(rank_text(rank) + ": write " + std::to_string(k)
                 + " fails with EIO");
        break;
      case what_kind::enospc:
        g.full.insert(rank);
        if (half > 0) {
          d.kind = io_decision::partial;
          d.bytes = half;
        } else {
          d.kind = io_decision::fail;
          d.err = ENOSPC;
        }
        announce(rank_text(rank) + ": the disk fills up at write "
                 + std::to_string(k));
        break;
      case what_kind::short_write:
        if (half > 0) {
          d.kind = io_decision::partial;
          d.bytes = half;
          announce(rank_text(rank) + ": write " + std::to_string(k)
                   + " is short (" + std::to_string(half) + " of "
                   + std::to_string(size) + " bytes)");
        }
        break;
      default: break;
    }
  }
  return d;
}

template <class Fn>
ssize_t faulty_io(size_t size, Fn&& fn) {
  if (!enabled())
    return fn(size);
  auto d = decide_io(size);
  if (d.sleep_ms > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(d.sleep_ms));
  switch (d.kind) {
    case io_decision::fail: errno = d.err; return -1;
    case io_decision::partial: return fn(d.bytes);
    default: return fn(size);
  }
}

} // namespace

ssize_t write(int fd, const void* data, size_t size) {
  return faulty_io(size, [&](size_t n) { return ::write(fd, data, n); });
}

ssize_t pwrite(int fd, const void* data, size_t size, off_t offset) {
  return faulty_io(size,
                   [&](size_t n) { return ::pwrite(fd, data, n, offset); });
}

// -- messages -----------------------------------------------------------------

delivery on_message(int32_t rank, bool to_coordinator) {
  delivery out;
  if (!enabled())
    return out;
  auto& g = reg();
  std::lock_guard<std::mutex> guard{g.mx};
  for (auto& r : g.rules) {
    if (r.where != where_kind::msg || !matches(r.rank, rank))
      continue;
    if (r.dir == direction::to_coordinator && !to_coordinator)
      continue;
    if (r.dir == direction::from_coordinator && to_coordinator)
      continue;
    auto n = ++r.seen[rank];
    auto path = to_coordinator
                  ? "from " + rank_text(rank) + " to the coordinator"
                  : "from the coordinator to " + rank_text(rank);
    if (r.what == what_kind::drop) {
      if (r.arg == 0 || static_cast<uint64_t>(r.arg) == n) {
        ++g.fired;
        out.drop = true;
        announce("message " + std::to_string(n) + " " + path + " lost");
      }
    } else if (r.what == what_kind::delay) {
      ++g.fired;
      out.delay = std::max(out.delay, std::chrono::milliseconds(r.arg));
    }
  }
  return out;
}

} // namespace dcpp::fault
