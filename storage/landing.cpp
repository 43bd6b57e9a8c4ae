#include "storage/landing.hpp"

#include "storage/aligned_buffers.hpp"
#include "storage/posix_file.hpp"

#include <spdlog/spdlog.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <system_error>
#include <thread>

namespace dcpp {

std::string_view to_string(landing_mode mode) {
  switch (mode) {
    case landing_mode::automatic: return "auto";
    case landing_mode::direct: return "direct";
    case landing_mode::bounce: return "bounce";
  }
  return "auto";
}

std::optional<landing_mode> parse_landing_mode(std::string_view text) {
  for (auto m :
       {landing_mode::automatic, landing_mode::direct, landing_mode::bounce})
    if (text == to_string(m))
      return m;
  return std::nullopt;
}

namespace detail {

namespace {

/// Bytes the probe moves per run, in blocks (the unit reads and writes move
/// in): more than a TLB maps in 4 KiB pages (1.5-2k entries), as a large
/// tensor is, and ~12 ms a run at the slowest speed seen (0.7 GB/s).
constexpr size_t probe_bytes = size_t{8} << 20;

/// Runs of each way, alternating.
constexpr int probe_runs = 3;

/// Bounce only when clearly faster: it adds a memcpy, and on hosts where
/// both are close direct leaves the cache to the caller. The hosts it is
/// for differ by 10-20x; on hosts without the problem a busy machine made
/// one way look 1.5x faster than the other now and then.
constexpr double bounce_margin = 2.0;

struct free_deleter {
  void operator()(void* p) const {
    std::free(p);
  }
};

/// Measures both ways of reading (`write` false) or writing `probe_bytes`
/// between a memfd (shmem pages: the same kernel copy as from or to a
/// file's page cache) and memory allocated the way PyTorch's CPU allocator
/// does (posix_memalign, 64-byte alignment, then touched: at::zeros).
host_landing probe(bool write) {
  host_landing res;
  auto fail = [&](const char* what, int err) {
    res = host_landing{};
    res.source = std::string{"probe failed: "} + what + ": " + errno_text(err);
    return res;
  };
  int raw = ::memfd_create("dcpp-landing-probe", MFD_CLOEXEC);
  if (raw < 0)
    return fail("memfd_create", errno);
  fd_guard fd{raw};
  void* mem = nullptr;
  if (::posix_memalign(&mem, 64, probe_bytes) != 0)
    return fail("posix_memalign", ENOMEM);
  std::unique_ptr<void, free_deleter> owner{mem};
  auto* user = static_cast<char*>(mem);
  std::memset(user, 0x5a, probe_bytes);
  auto* bounce = block_scratch().get(block_size);
  if (bounce == nullptr)
    return fail("bounce buffer", ENOMEM);
  std::memset(bounce, 0, block_size);
  uint64_t done = 0;
  if (int err = write_fully(fd.get(), user, probe_bytes, done); err != 0)
    return fail("write", err > 0 ? err : ENOSPC);
  auto transfer = [&](char* mem_side, size_t off) {
    auto n = write ? ::pwrite(fd.get(), mem_side, block_size,
                              static_cast<off_t>(off))
                   : ::pread(fd.get(), mem_side, block_size,
                             static_cast<off_t>(off));
    return n == static_cast<ssize_t>(block_size);
  };
  // One pass of `op(offset)` over the file, block by block; the best
  // block's GB/s (a busy machine deschedules the probe now and then: the
  // fastest block is what the path can do), 0 after an error.
  auto pass = [&](auto op) {
    double best = 0;
    for (size_t off = 0; off < probe_bytes; off += block_size) {
      auto t0 = std::chrono::steady_clock::now();
      if (!op(off))
        return 0.0;
      auto s = std::chrono::duration<double>(std::chrono::steady_clock::now()
                                             - t0)
                 .count();
      if (s > 0)
        best = std::max(best, static_cast<double>(block_size) / s / 1e9);
    }
    return best;
  };
  // Bounce only if it wins every run: a busy machine slows one pass or
  // another, the pathology it is for slows every one.
  bool bounce_wins = true;
  for (int run = 0; run < probe_runs; ++run) {
    auto direct = pass([&](size_t off) { return transfer(user + off, off); });
    auto bounced = pass([&](size_t off) {
      if (write)
        std::memcpy(bounce, user + off, block_size);
      if (!transfer(bounce, off))
        return false;
      if (!write)
        std::memcpy(user + off, bounce, block_size);
      return true;
    });
    if (direct == 0 || bounced == 0)
      return fail(write ? "pwrite on the memfd" : "pread on the memfd", errno);
    bounce_wins = bounce_wins && bounced > bounce_margin * direct;
    res.direct_GBps = std::max(res.direct_GBps, direct);
    res.bounce_GBps = std::max(res.bounce_GBps, bounced);
  }
  res.mode = bounce_wins ? landing_mode::bounce : landing_mode::direct;
  res.source = "probe";
  return res;
}

/// `DCPP_LANDING`, if it names direct or bounce (read once; a value that is
/// none of the three is reported once).
const std::optional<landing_mode>& env_landing() {
  static const std::optional<landing_mode> result =
    []() -> std::optional<landing_mode> {
    auto env = std::getenv("DCPP_LANDING");
    if (env == nullptr || *env == 0)
      return std::nullopt;
    auto mode = parse_landing_mode(env);
    if (!mode) {
      spdlog::warn("dcpp: DCPP_LANDING='{}' is not direct, bounce or auto; "
                   "measuring instead",
                   env);
      return std::nullopt;
    }
    if (*mode == landing_mode::automatic)
      return std::nullopt;
    return mode;
  }();
  return result;
}

host_landing decide(bool write) {
  if (auto& mode = env_landing()) {
    host_landing res;
    res.mode = *mode;
    res.source = std::string{"DCPP_LANDING="} + std::string{to_string(*mode)};
    return res;
  }
  return probe(write);
}

/// A probe started ahead of its first use (`prepare_landing`), joined at
/// exit at the latest.
struct background_probe {
  std::mutex mx;
  std::thread thread;
  bool started = false;

  ~background_probe() {
    if (thread.joinable())
      thread.join();
  }

  void start(const host_landing& (*which)()) {
    std::lock_guard<std::mutex> guard{mx};
    if (started)
      return;
    started = true;
    try {
      thread = std::thread{[which] { (void)which(); }};
    } catch (const std::system_error&) {
      // No thread: the first use probes instead.
    }
  }
};

std::atomic<uint64_t> bounced{0};

/// Huge-page memory dcpp allocated: start -> end.
struct huge_registry {
  std::shared_mutex mx;
  std::map<uintptr_t, uintptr_t> ranges;

  static huge_registry& instance() {
    static huge_registry reg;
    return reg;
  }
};

} // namespace

const host_landing& read_landing_of_host() {
  static const host_landing result = decide(false);
  return result;
}

const host_landing& write_landing_of_host() {
  static const host_landing result = decide(true);
  return result;
}

void prepare_landing(bool write) {
  if (env_landing())
    return; // nothing to measure
  static background_probe reads;
  static background_probe writes;
  if (write)
    writes.start(&write_landing_of_host);
  else
    reads.start(&read_landing_of_host);
}

landing_mode resolve_read_landing(landing_mode mode) {
  return mode == landing_mode::automatic ? read_landing_of_host().mode : mode;
}

landing_mode resolve_write_landing(landing_mode mode) {
  return mode == landing_mode::automatic ? write_landing_of_host().mode : mode;
}

void note_huge_memory(const void* ptr, size_t size) {
  if (ptr == nullptr || size == 0)
    return;
  auto& reg = huge_registry::instance();
  auto begin = reinterpret_cast<uintptr_t>(ptr);
  std::unique_lock<std::shared_mutex> guard{reg.mx};
  reg.ranges[begin] = begin + size;
}

void forget_huge_memory(const void* ptr) {
  auto& reg = huge_registry::instance();
  std::unique_lock<std::shared_mutex> guard{reg.mx};
  reg.ranges.erase(reinterpret_cast<uintptr_t>(ptr));
}

bool is_huge_memory(const void* ptr, size_t size) {
  auto& reg = huge_registry::instance();
  auto begin = reinterpret_cast<uintptr_t>(ptr);
  std::shared_lock<std::shared_mutex> guard{reg.mx};
  auto i = reg.ranges.upper_bound(begin);
  if (i == reg.ranges.begin())
    return false;
  --i;
  return begin < i->second && size <= i->second - begin;
}

uint64_t bounced_bytes() {
  return bounced.load(std::memory_order_relaxed);
}

void count_bounced(uint64_t bytes) {
  bounced.fetch_add(bytes, std::memory_order_relaxed);
}

} // namespace detail

} // namespace dcpp
