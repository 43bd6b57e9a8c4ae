#include "actors/progress.hpp"

#include <atomic>
#include <memory>
#include <mutex>
#include <utility>

namespace dcpp {

namespace {

std::mutex listener_mx;
std::shared_ptr<const progress_listener> listener;
std::atomic<bool> listening{false};

} // namespace

void set_progress_listener(progress_listener fn) {
  std::lock_guard<std::mutex> guard{listener_mx};
  if (fn)
    listener = std::make_shared<const progress_listener>(std::move(fn));
  else
    listener.reset();
  listening = listener != nullptr;
}

bool has_progress_listener() {
  return listening.load(std::memory_order_relaxed);
}

void publish_progress(const progress_update& u) {
  std::shared_ptr<const progress_listener> fn;
  {
    std::lock_guard<std::mutex> guard{listener_mx};
    fn = listener;
  }
  if (fn)
    (*fn)(u);
}

} // namespace dcpp
