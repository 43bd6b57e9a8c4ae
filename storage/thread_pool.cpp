#include "storage/thread_pool.hpp"

#include "core/error.hpp"
#include "core/fault.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace dcpp::detail {

caf::error run_parallel(size_t n, size_t threads,
                        const std::function<caf::error(size_t)>& fn) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mx;
  caf::error first;
  auto io_rank = fault::io_rank();
  auto work = [&] {
    fault::io_scope scope{io_rank};
    for (;;) {
      if (failed.load(std::memory_order_relaxed))
        return;
      auto i = next.fetch_add(1);
      if (i >= n)
        return;
      caf::error err;
      try {
        err = fn(i);
      } catch (const std::exception& ex) {
        err = make_error(errc::invalid_argument,
                         std::string{"unexpected exception: "} + ex.what());
      }
      if (err) {
        std::lock_guard<std::mutex> guard{mx};
        if (!first)
          first = std::move(err);
        failed = true;
        return;
      }
    }
  };
  auto extra = std::min(threads, n);
  extra = extra > 0 ? extra - 1 : 0;
  std::vector<std::thread> pool;
  pool.reserve(extra);
  try {
    for (size_t i = 0; i < extra; ++i)
      pool.emplace_back(work);
  } catch (const std::system_error&) {
    // Fewer threads than asked for: the rest of the work runs here.
  }
  work();
  for (auto& t : pool)
    t.join();
  return first;
}

} // namespace dcpp::detail
