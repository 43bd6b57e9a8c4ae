#include "storage/file_sink.hpp"

#include "core/error.hpp"
#include "core/fault.hpp"
#include "storage/aligned_buffers.hpp"
#include "storage/landing.hpp"
#include "storage/posix_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <new>
#include <thread>
#include <utility>
#include <vector>

namespace dcpp {

item_sink::~item_sink() {
  // nop
}

caf::error string_sink::append(const void* data, size_t size) {
  buf_.append(static_cast<const char*>(data), size);
  return {};
}

namespace {

constexpr size_t sink_capacity = size_t{1} << 20;
constexpr size_t sink_direct = size_t{256} << 10;
constexpr uint64_t writeback_step = uint64_t{8} << 20;

/// O_DIRECT needs offsets, lengths and addresses aligned to the logical
/// block size; 4096 covers every device in use.
constexpr size_t direct_align = 4096;
constexpr size_t direct_buffer_size = size_t{8} << 20;
constexpr size_t direct_buffers_per_sink = 3;
constexpr size_t direct_buffers_cached = 4;

caf::error write_error(const std::string& path, uint64_t offset, int err) {
  return make_error(detail::errno_code(err),
                    path + ": write at offset " + std::to_string(offset)
                      + " failed: " + detail::errno_text(err));
}

caf::error short_write_error(const std::string& path, uint64_t offset) {
  return make_error(errc::storage_failure,
                    path + ": short write at offset " + std::to_string(offset));
}

/// Staging buffers for direct writes, kept across sinks so that a save
/// does not fault in fresh memory for every file.
class direct_buffer_pool {
public:
  static direct_buffer_pool& instance() {
    static direct_buffer_pool pool;
    return pool;
  }

  /// Returns a buffer of `direct_buffer_size` bytes, 2 MiB aligned (huge
  /// pages); nullptr if memory is exhausted.
  char* take() {
    {
      std::lock_guard<std::mutex> guard{mx_};
      if (!free_.empty()) {
        auto p = free_.back();
        free_.pop_back();
        return p;
      }
    }
    void* p = nullptr;
    if (posix_memalign(&p, size_t{2} << 20, direct_buffer_size) != 0)
      return nullptr;
    detail::advise_huge_pages(p, direct_buffer_size);
    return static_cast<char*>(p);
  }

  void give(char* p) {
    {
      std::lock_guard<std::mutex> guard{mx_};
      if (free_.size() < direct_buffers_cached) {
        free_.push_back(p);
        return;
      }
    }
    std::free(p);
  }

private:
  std::mutex mx_;
  std::vector<char*> free_;
};

/// pwrite of whole aligned blocks (O_DIRECT); returns 0 or an errno, with
/// -1 for a write that stores nothing. An unaligned short write switches
/// the file to buffered writes and goes on.
int pwrite_fully(int fd, const char* data, size_t size, uint64_t offset) {
  uint64_t done = 0;
  return detail::transfer_fully(size, done, [&](uint64_t pos, size_t n) {
    auto res = fault::pwrite(fd, data + pos, n,
                             static_cast<off_t>(offset + pos));
    if (res > 0 && static_cast<size_t>(res) % direct_align != 0) {
      // A short write of an unaligned count: O_DIRECT cannot go on from
      // there, so this file continues buffered (the final fsync still
      // makes it durable).
      auto flags = ::fcntl(fd, F_GETFL);
      if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_DIRECT) != 0)
        return ssize_t{0}; // reported as a write that stores nothing
    }
    return res;
  });
}

} // namespace

/// The staging buffers and the background thread of a direct-mode sink.
struct file_sink::direct_state {
  struct job {
    char* data;
    size_t size;
    uint64_t offset;
  };

  int fd = -1;
  /// The buffer being filled, its fill level and its file offset.
  char* cur = nullptr;
  size_t cur_used = 0;
  uint64_t cur_start = 0;

  std::mutex mx;
  std::condition_variable cv;
  std::vector<char*> owned;
  std::vector<char*> free;
  std::deque<job> queue;
  size_t pending = 0;
  bool stop = false;
  /// First failure of the background thread: errno (-1: short write).
  int err = 0;
  uint64_t err_offset = 0;
  std::thread io;

  ~direct_state() {
    {
      std::lock_guard<std::mutex> guard{mx};
      stop = true;
    }
    cv.notify_all();
    if (io.joinable())
      io.join();
    for (auto p : owned)
      direct_buffer_pool::instance().give(p);
  }

  void run() {
    for (;;) {
      job j;
      {
        std::unique_lock<std::mutex> guard{mx};
        cv.wait(guard, [&] { return stop || !queue.empty(); });
        if (queue.empty())
          return;
        j = queue.front();
        queue.pop_front();
      }
      int res = 0;
      {
        std::lock_guard<std::mutex> guard{mx};
        res = err; // after a failure, only recycle buffers
      }
      if (res == 0)
        res = pwrite_fully(fd, j.data, j.size, j.offset);
      {
        std::lock_guard<std::mutex> guard{mx};
        if (res != 0 && err == 0) {
          err = res;
          err_offset = j.offset;
        }
        free.push_back(j.data);
        --pending;
      }
      cv.notify_all();
    }
  }

  caf::error error_of(const std::string& path) {
    if (err == -1)
      return short_write_error(path, err_offset);
    return write_error(path, err_offset, err);
  }

  /// A free buffer: from the free list, a new one (up to the limit), or
  /// the next one the background thread finishes.
  caf::expected<char*> acquire(const std::string& path) {
    std::unique_lock<std::mutex> guard{mx};
    for (;;) {
      if (err != 0)
        return error_of(path);
      if (!free.empty()) {
        auto p = free.back();
        free.pop_back();
        return p;
      }
      if (owned.size() < direct_buffers_per_sink) {
        auto p = direct_buffer_pool::instance().take();
        if (p == nullptr)
          return make_error(errc::storage_failure,
                            path + ": cannot allocate write buffers");
        owned.push_back(p);
        return p;
      }
      cv.wait(guard);
    }
  }

  void submit(char* data, size_t size, uint64_t offset) {
    {
      std::lock_guard<std::mutex> guard{mx};
      queue.push_back(job{data, size, offset});
      ++pending;
    }
    if (!io.joinable())
      io = std::thread{[this, rank = fault::io_rank()] {
        fault::io_scope scope{rank};
        run();
      }};
    cv.notify_all();
  }

  /// Waits until every submitted buffer is written.
  caf::error drain(const std::string& path) {
    std::unique_lock<std::mutex> guard{mx};
    cv.wait(guard, [&] { return pending == 0; });
    if (err != 0)
      return error_of(path);
    return {};
  }
};

file_sink::file_sink(int fd, std::string path, uint64_t position,
                     file_sink_options opts)
  : fd_(fd), path_(std::move(path)), pos_(position), written_(position),
    kicked_(position), opts_(opts) {
  if (opts_.direct && position % direct_align != 0) {
    // Direct I/O cannot continue at an unaligned offset: write buffered.
    opts_.direct = false;
    auto flags = ::fcntl(fd_, F_GETFL);
    if (flags >= 0)
      ::fcntl(fd_, F_SETFL, flags & ~O_DIRECT);
  }
  if (opts_.direct) {
    direct_ = std::make_unique<direct_state>();
    direct_->fd = fd_;
    direct_->cur_start = position;
  } else {
    // Huge pages (scratch_buffer from one block on): what bounced writes
    // are written from.
    buf_ = buffer_.get(sink_capacity);
    if (buf_ == nullptr)
      throw std::bad_alloc{};
    bounce_ = detail::resolve_write_landing(opts_.landing)
              == landing_mode::bounce;
  }
}

file_sink::~file_sink() {
  if (direct_ && direct_->cur != nullptr) {
    std::lock_guard<std::mutex> guard{direct_->mx};
    direct_->free.push_back(direct_->cur);
    direct_->cur = nullptr;
  }
}

caf::error file_sink::write_all(const char* data, size_t size) {
  uint64_t done = 0;
  auto res = detail::write_fully(fd_, data, size, done);
  written_ += done;
  if (res == -1)
    return short_write_error(path_, written_);
  if (res != 0)
    return write_error(path_, written_, res);
  if (opts_.early_writeback && written_ - kicked_ >= writeback_step) {
    // Start writeback of what is complete; a later fsync then waits less.
    // Best effort: errors show up at fsync.
    (void)::sync_file_range(fd_, static_cast<off64_t>(kicked_),
                            static_cast<off64_t>(written_ - kicked_),
                            SYNC_FILE_RANGE_WRITE);
    kicked_ = written_;
  }
  return {};
}

caf::error file_sink::append(const void* data, size_t size) {
  auto p = static_cast<const char*>(data);
  if (direct_)
    return append_direct(p, size);
  if (size >= sink_direct && (!bounce_ || detail::is_huge_memory(p, size))) {
    // Straight from the caller's memory.
    if (auto err = flush())
      return err;
    if (auto err = write_all(p, size))
      return err;
    pos_ += size;
    return {};
  }
  // Gathered in the buffer (small pieces; every piece when writes from
  // the caller's memory bounce, storage/landing.hpp).
  if (size >= sink_direct)
    detail::count_bounced(size);
  for (size_t done = 0; done < size;) {
    if (used_ == sink_capacity)
      if (auto err = flush())
        return err;
    auto n = std::min(size - done, sink_capacity - used_);
    std::memcpy(buf_ + used_, p + done, n);
    used_ += n;
    done += n;
  }
  pos_ += size;
  return {};
}

caf::error file_sink::append_direct(const char* data, size_t size) {
  auto& d = *direct_;
  while (size > 0) {
    if (d.cur == nullptr) {
      auto buf = d.acquire(path_);
      if (!buf)
        return std::move(buf.error());
      d.cur = *buf;
      d.cur_used = 0;
    }
    auto n = std::min(size, direct_buffer_size - d.cur_used);
    std::memcpy(d.cur + d.cur_used, data, n);
    d.cur_used += n;
    data += n;
    size -= n;
    pos_ += n;
    if (d.cur_used == direct_buffer_size) {
      d.submit(d.cur, direct_buffer_size, d.cur_start);
      d.cur_start += direct_buffer_size;
      d.cur = nullptr;
      d.cur_used = 0;
    }
  }
  return {};
}

caf::error file_sink::flush_direct() {
  auto& d = *direct_;
  if (auto err = d.drain(path_))
    return err;
  if (d.cur != nullptr && d.cur_used > 0) {
    // The last partial block goes out padded; the buffer stays, so later
    // appends rewrite that block with more data.
    auto padded = (d.cur_used + direct_align - 1) / direct_align * direct_align;
    std::memset(d.cur + d.cur_used, 0, padded - d.cur_used);
    auto res = pwrite_fully(fd_, d.cur, padded, d.cur_start);
    if (res == -1)
      return short_write_error(path_, d.cur_start);
    if (res != 0)
      return write_error(path_, d.cur_start, res);
  }
  int rc;
  do {
    rc = ::ftruncate(fd_, static_cast<off_t>(pos_));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    auto err = errno;
    return make_error(errc::io_error,
                      path_ + ": truncate to " + std::to_string(pos_)
                        + " failed: " + detail::errno_text(err));
  }
  return {};
}

caf::error file_sink::flush() {
  if (direct_)
    return flush_direct();
  if (used_ == 0)
    return {};
  auto n = used_;
  used_ = 0;
  return write_all(buf_, n);
}

} // namespace dcpp
