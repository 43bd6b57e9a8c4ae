// Durability protocol of the file-system storage.
//
// A checkpoint directory holds one `.metadata` and data files
// `__<rank>_<n>.<tag>.distcp`. `.metadata` is the commit record: the
// directory holds the checkpoint that `.metadata` describes, and every byte
// it points to was durable before it appeared. `<tag>` (16 hex digits) is
// drawn by the coordinator in prepare_global_plan and travels to every rank
// in its plan's storage_data, so all files of one save share it and no save
// ever writes a file another save wrote. (PyTorch DCP readers only follow
// `relative_path` in the metadata, so they load these names; DCP's own
// `__<rank>_<n>.distcp`, written by PyTorch, loads here as well.) A save,
// possibly over an existing checkpoint, runs these steps:
//
// 0. One writer per directory: the coordinator's set_up takes an exclusive
//    flock on `<dir>/.dcpp.lock` (never through a symlink), writes its
//    identity into it (host, pid, time, save tag) and holds it until its
//    commit (after the garbage collection) or abort, then unlinks the file
//    and drops the lock. A second save into the directory fails in its
//    set_up with errc::storage_failure naming the directory and the holder;
//    nothing of either save is touched. The kernel drops the lock of a dead
//    process, so a lock file a crash left behind does not block. Other ranks
//    do not lock (they share the directory with their coordinator).
// 1. set_up (every rank): `mkdir -p` the directory, fsyncing the parent of
//    every directory it creates, and open it: every later step creates,
//    renames and removes files relative to that open directory (openat),
//    so a directory swapped for a link meanwhile redirects nothing; with
//    `owned_directory` (a checkpoint manager's step) a link planted under
//    the directory's own name is refused, never followed. An existing
//    checkpoint is left alone. The
//    coordinator then takes the lock (step 0) and notes the data files
//    present.
// 2. write_data (every rank): create each data file of this save (a fresh
//    name), append its items, fsync it, close it (close errors count:
//    network file systems report write errors there); then fsync the
//    directory so the new names are durable. With `direct_io`, large files
//    are written with O_DIRECT (the last block padded, then the file
//    truncated to its size, before the fsync, which then also makes the
//    size and extents durable); otherwise writeback is started early
//    (sync_file_range) so that the final fsync has little left to wait for.
// 3. finish (coordinator, only after every rank's step 2 succeeded): encode
//    the metadata, write it to `.metadata.tmp` (O_TRUNC: a leftover of an
//    aborted save is overwritten), fsync that file, rename it over
//    `.metadata` (atomic: readers see the complete old or the complete new
//    file, never a partial one or none), then fsync the directory. The
//    rename is the commit point; the directory fsync makes it durable.
// 4. garbage collection (coordinator, at the end of finish): remove every
//    `__*.distcp` that the new `.metadata` does not name (the replaced
//    checkpoint's data and leftovers of aborted saves) and that was already
//    there when the lock was taken and not modified since; nothing else is
//    ever removed. So a save that runs alongside without the lock (ranks
//    of a save whose coordinator died, an older dcpp) never loses files it
//    is writing. Best effort: failures are reported on stderr, and what
//    remains is collected by the next commit.
// 5. abort (any rank, on failure): unlink the data files this writer created
//    for the current save, unless the current `.metadata` names them (the
//    save did commit, e.g. only the final directory fsync failed) or cannot
//    be read; the coordinator also unlinks its `.metadata.tmp` and then
//    releases the lock. The old checkpoint's files are never touched.
//
// Crash analysis (O = the old checkpoint, if any; N = the new one):
//
//   crash point                          | a reader loads | left behind
//   -------------------------------------+----------------+----------------
//   during / after set_up                | O (or nothing) | a stale lock
//   during write_data, some ranks done   | O              | N's data files
//   all ranks wrote, before finish       | O              | N's data files
//   `.metadata.tmp` written, no rename   | O              | N's data, tmp
//   rename done, before the dir fsync    | O or N         | the other's data
//   rename and fsync done, before GC     | N              | O's data files
//   during / after GC                    | N              | part of O's data
//
// From set_up on, every crash point also leaves a stale `.dcpp.lock`
// (unlocked: it blocks no one).
//
// O's files are never modified before the commit, and N's `.metadata`
// names only N's files, so whichever `.metadata` the directory holds points
// at complete, durable data. Everything "left behind" is a `__*.distcp` not
// named by `.metadata` (the next commit's GC removes it) or a
// `.metadata.tmp` (never read, truncated by the next finish) or a stale
// `.dcpp.lock` (not locked by anyone, reused by the next save). With a fresh
// directory "O" is "no checkpoint" (load fails with errc::not_found). With
// `sync_files = false` step 2 skips its fsyncs (step 3 keeps them): a crash
// shortly after the commit may then leave `.metadata` pointing at data that
// never reached the disk; the checksums recorded in `.metadata` detect that
// on load.
//
// Interrupted system calls (EINTR) are retried, fsync included, and a
// directory fsync that the file system refuses (EINVAL, EROFS) counts as
// done: storage/posix_file.hpp. Reading (filesystem_reader.cpp) trusts
// nothing in `.metadata`.

#include "core/error.hpp"
#include "core/fault.hpp"
#include "core/planner.hpp"
#include "storage/file_sink.hpp"
#include "storage/filesystem.hpp"
#include "storage/filesystem_layout.hpp"
#include "storage/item_io.hpp"
#include "storage/metadata_codec.hpp"
#include "storage/posix_file.hpp"
#include "storage/thread_pool.hpp"

#include <spdlog/spdlog.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string_view>
#include <thread>
#include <utility>

namespace dcpp {

namespace {

using detail::errno_text;
using detail::fd_guard;
using detail::fsync_dir_fd;
using detail::fsync_fd;
using detail::join;
using detail::make_directories;
using detail::metadata_name;
using detail::os_error;
using detail::plain_file_name;
using detail::read_metadata_file;
using detail::run_parallel;
using detail::write_fully;
using detail::write_whole;

constexpr const char* metadata_tmp_name = ".metadata.tmp";

/// In the one-file-per-item layout, items of at least this size are
/// written with direct I/O (if enabled).
constexpr uint64_t direct_min_item = uint64_t{16} << 20;

/// Separates a plan part's file prefix from its first file number in
/// `save_plan::storage_data` ("__3_" "\t" "5f0c..." "\n" "2"); a prefix has
/// no newline.
constexpr char part_separator = '\n';

/// Name prefix of the probe files (filesystem_writer::place_probe).
constexpr std::string_view probe_prefix = ".dcpp.probe.";

/// Separates the file prefix from the save tag in `save_plan::storage_data`.
constexpr char tag_separator = '\t';

/// Characters of a save tag (lowercase hex).
constexpr size_t save_tag_size = 16;

/// A fresh save tag: 64 random bits, hex. Unique per save (with
/// overwhelming probability), so a save never reuses a data file name of an
/// earlier save in the same directory.
std::string make_save_tag() {
  uint64_t x = 0;
  try {
    std::random_device rd;
    x = (uint64_t{rd()} << 32) ^ uint64_t { rd() };
  } catch (const std::exception&) {
    // No entropy source: the clock and the process id below still differ
    // between saves.
  }
  x ^= static_cast<uint64_t>(
    std::chrono::steady_clock::now().time_since_epoch().count());
  x ^= static_cast<uint64_t>(::getpid()) << 17;
  static constexpr char digits[] = "0123456789abcdef";
  std::string result(save_tag_size, '0');
  for (size_t i = 0; i < save_tag_size; ++i) {
    result[save_tag_size - 1 - i] = digits[x & 0xf];
    x >>= 4;
  }
  return result;
}

/// The name of data file `n` of a save: `<prefix><n>.<tag>.distcp`, or
/// `<prefix><n>.distcp` without a tag (DCP's own naming).
std::string data_file_name(const std::string& prefix, const std::string& tag,
                           uint64_t n) {
  auto result = prefix + std::to_string(n);
  if (!tag.empty()) {
    result += '.';
    result += tag;
  }
  result += ".distcp";
  return result;
}

/// The save tag in a data file name (`<prefix><n>.<tag>.distcp`), or "".
std::string tag_of_file(const std::string& name) {
  static constexpr std::string_view suffix = ".distcp";
  if (name.size() <= suffix.size())
    return {};
  auto end = name.size() - suffix.size();
  auto dot = name.rfind('.', end - 1);
  if (dot == std::string::npos || dot + 1 >= end)
    return {};
  auto tag = name.substr(dot + 1, end - dot - 1);
  if (tag.find_first_not_of("0123456789abcdef") != std::string::npos)
    return {};
  return tag;
}

/// Data files as any writer names them (`__*.distcp`): the only files the
/// garbage collection after a commit may remove.
bool is_data_file_name(const std::string& name) {
  static constexpr std::string_view suffix = ".distcp";
  return name.size() > 2 + suffix.size() && name.compare(0, 2, "__") == 0
         && name.compare(name.size() - suffix.size(), suffix.size(), suffix)
              == 0
         && name.find('/') == std::string::npos;
}

// -- helpers ------------------------------------------------------------------

// -- directory lock -----------------------------------------------------------

/// The lock file of a checkpoint directory.
constexpr const char* lock_name = ".dcpp.lock";

/// One writer per checkpoint directory: an exclusive flock(2) on
/// `<dir>/.dcpp.lock`, held by the coordinator from `set_up` until its
/// commit (the end of `finish`, garbage collection included) or `abort`.
/// The file holds the holder's identity (host, pid, time, save tag) for the
/// error message of a save that finds the directory taken.
///
/// The kernel drops a flock when the last descriptor of the open file goes
/// away, so a process that dies (kill -9 included) releases its lock: a
/// lock file left behind by a dead process is stale by construction and
/// does not block anyone; no pid check is needed (and none would work
/// across hosts). On NFS, Linux emulates flock with byte-range locks,
/// which the server arbitrates across clients.
///
/// The holder unlinks the file before it releases the lock, so a finished
/// save leaves the directory as it found it. A save that opened the old
/// file just before the unlink may then lock an orphaned inode: after
/// locking, the open file must still be the one the path names, else the
/// lock is retried on the new file.
class dir_lock {
public:
  dir_lock() = default;
  dir_lock(const dir_lock&) = delete;
  dir_lock& operator=(const dir_lock&) = delete;

  ~dir_lock() {
    release();
  }

  bool held() const {
    return fd_.get() >= 0;
  }

  /// The lock file's mtime once the identity was written: a time on the
  /// file system's own clock, not earlier than any data file that existed
  /// when the lock was taken.
  const struct timespec& since() const {
    return since_;
  }

  /// Takes the lock of the directory open as `dirfd` (`dir` names it).
  caf::error acquire(int dirfd, const std::string& dir,
                     const std::string& tag) {
    release();
    dirfd_ = fd_guard{::fcntl(dirfd, F_DUPFD_CLOEXEC, 0)};
    if (dirfd_.get() < 0)
      return os_error("dup", dir, errno);
    auto path = join(dir, lock_name);
    for (int attempt = 0; attempt < 16; ++attempt) {
      fd_guard fd{::openat(dirfd_.get(), lock_name,
                           O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644)};
      if (fd.get() < 0)
        return os_error("open lock file", path, errno);
      struct stat st {};
      if (::fstat(fd.get(), &st) != 0)
        return os_error("stat lock file", path, errno);
      if (!S_ISREG(st.st_mode))
        return make_error(errc::storage_failure,
                          path + ": the lock file is not a regular file");
      int rc;
      do {
        rc = ::flock(fd.get(), LOCK_EX | LOCK_NB);
      } while (rc != 0 && errno == EINTR);
      if (rc != 0) {
        auto err = errno;
        if (err != EWOULDBLOCK)
          return os_error("flock", path, err);
        return make_error(errc::storage_failure,
                          dir
                            + ": another save is writing into this "
                              "checkpoint directory (lock "
                            + path + " held by " + holder_of(fd.get()) + ")");
      }
      // The previous holder may have unlinked the file between our open and
      // our flock: then this is a lock on nothing.
      struct stat now {};
      if (::fstatat(dirfd_.get(), lock_name, &now, AT_SYMLINK_NOFOLLOW) != 0
          || now.st_ino != st.st_ino || now.st_dev != st.st_dev)
        continue;
      if (auto err = write_identity(fd.get(), path, tag))
        return err;
      if (::fstat(fd.get(), &st) != 0)
        return os_error("stat lock file", path, errno);
      since_ = st.st_mtim;
      path_ = std::move(path);
      fd_ = std::move(fd);
      return {};
    }
    return make_error(errc::storage_failure,
                      path + ": the lock file keeps being replaced");
  }

  /// Unlinks the lock file, then drops the lock (closing the descriptor).
  void release() {
    if (!held())
      return;
    ::unlinkat(dirfd_.get(), lock_name, 0);
    (void)fd_.close();
    (void)dirfd_.close();
    path_.clear();
  }

private:
  static caf::error write_identity(int fd, const std::string& path,
                                   const std::string& tag) {
    char host[256] = {};
    if (::gethostname(host, sizeof(host) - 1) != 0)
      std::snprintf(host, sizeof(host), "?");
    auto now = std::time(nullptr);
    struct tm utc {};
    char when[32] = "?";
    if (::gmtime_r(&now, &utc) != nullptr)
      std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &utc);
    auto text = std::string{"host "} + host + " pid "
                + std::to_string(::getpid()) + " since " + when + " save " + tag
                + "\n";
    if (::ftruncate(fd, 0) != 0)
      return os_error("truncate lock file", path, errno);
    uint64_t done = 0;
    auto res
      = detail::transfer_fully(text.size(), done, [&](uint64_t off, size_t n) {
          return ::pwrite(fd, text.data() + off, n, static_cast<off_t>(off));
        });
    if (res != 0)
      return os_error("write lock file", path, res == -1 ? EIO : res);
    return {};
  }

  /// The identity a holder wrote, for the error message.
  static std::string holder_of(int fd) {
    char buf[512];
    ssize_t n;
    do {
      n = ::pread(fd, buf, sizeof(buf) - 1, 0);
    } while (n < 0 && errno == EINTR);
    if (n <= 0)
      return "a save that has not written its identity yet";
    std::string text(buf, static_cast<size_t>(n));
    while (!text.empty() && (text.back() == '\n' || text.back() == '\0'))
      text.pop_back();
    for (auto& c : text)
      if (c < 0x20 || c == 0x7f)
        c = '?';
    return text;
  }

  /// The checkpoint directory, open while the lock is held.
  fd_guard dirfd_;
  fd_guard fd_;
  std::string path_;
  struct timespec since_ {};
};

// -- writer -------------------------------------------------------------------

/// Where a plan (or a part of one) writes.
struct plan_target {
  std::string prefix;
  /// Unique to the save; part of every data file name.
  std::string tag;
  bool is_part = false;
  uint64_t first_file = 0;
};

class filesystem_writer final : public storage_writer {
public:
  filesystem_writer(std::string dir, filesystem_writer_options opts)
    : dir_(std::move(dir)), opts_(opts) {
    if (opts_.thread_count == 0)
      opts_.thread_count = 1;
  }

  caf::error reset(const std::string& checkpoint_id) override {
    if (checkpoint_id.empty())
      return make_error(errc::invalid_argument,
                        "reset: an empty checkpoint directory");
    dir_ = checkpoint_id;
    return {};
  }

  caf::error set_up(bool is_coordinator, int32_t rank) override {
    is_coordinator_ = is_coordinator;
    rank_ = rank;
    {
      std::lock_guard<std::mutex> guard{mx_};
      created_.clear();
    }
    local_tag_ = make_save_tag();
    // Nothing of a previous save's directory is touched from here on.
    (void)dirfd_.close();
    if (auto err = open_dir())
      return with_context(err, "set_up");
    if (auto err = place_probe())
      return with_context(err, "set_up");
    if (is_coordinator) {
      // One save per directory: the coordinator holds the directory lock
      // until its commit or abort. Other ranks do not lock: the lock guards
      // the commit and the garbage collection, which only the coordinator
      // does, and the ranks of one save (threads of one process, too) share
      // the directory.
      save_tag_ = make_save_tag();
      if (auto err = lock_.acquire(dirfd_.get(), dir_, save_tag_))
        return err;
      before_lock_ = data_files_present();
    }
    // An earlier checkpoint in the directory stays as it is: this save
    // writes files of its own and replaces `.metadata` only in `finish`.
    // A stale `.metadata.tmp` of an aborted save is never read; `finish`
    // truncates it.
    return {};
  }

  caf::expected<save_plan> prepare_local_plan(save_plan plan) override {
    // The coordinator looks for this rank's probe in its own directory.
    plan.storage_data = probe_;
    return plan;
  }

  caf::expected<std::vector<save_plan>>
  prepare_global_plan(std::vector<save_plan> plans) override {
    if (auto err = check_probes(plans))
      return err;
    // One tag for the whole save, the same on every rank: the one the
    // coordinator's set_up wrote into the lock file, once.
    auto tag = save_tag_.empty() ? make_save_tag()
                                 : std::exchange(save_tag_, {});
    for (size_t i = 0; i < plans.size(); ++i)
      plans[i].storage_data = "__" + std::to_string(i) + "_" + tag_separator
                              + tag;
    return plans;
  }

  std::vector<save_plan> split_plan(const save_plan& plan, size_t n) override {
    auto target = parse_target(plan);
    if (!target || target->is_part)
      return {plan};
    return split(plan, *target, std::max<size_t>(n, 1));
  }

  caf::expected<std::vector<write_result>>
  write_data(const save_plan& plan, const item_source& source) override {
    fault::io_scope scope{rank_};
    return write_data_impl(plan, source);
  }

  caf::expected<std::vector<write_result>>
  write_data_impl(const save_plan& plan, const item_source& source) {
    try {
      auto target = parse_target(plan);
      if (!target)
        return with_context(target.error(), "write_data");
      std::vector<write_result> results;
      if (target->is_part) {
        if (auto err = write_part(plan, *target, source, results))
          return with_context(err, "write_data");
      } else {
        auto parts = split(plan, *target, opts_.thread_count);
        std::vector<std::vector<write_result>> part_results(parts.size());
        auto err = run_parallel(
          parts.size(), opts_.thread_count, [&](size_t i) -> caf::error {
            auto t = parse_target(parts[i]);
            if (!t)
              return t.error();
            return write_part(parts[i], *t, source, part_results[i]);
          });
        if (err)
          return with_context(err, "write_data");
        for (auto& xs : part_results)
          for (auto& x : xs)
            results.push_back(std::move(x));
      }
      if (opts_.sync_files)
        if (auto err = fsync_dir_fd(dirfd_.get(), dir_))
          return with_context(err, "write_data");
      return results;
    } catch (const std::exception& ex) {
      return make_error(errc::invalid_argument,
                        std::string{"write_data: unexpected exception: "}
                          + ex.what());
    }
  }

  caf::error
  finish(const metadata& md,
         const std::vector<std::vector<write_result>>& results) override {
    fault::io_scope scope{rank_};
    try {
      // Commit only a checkpoint that can be loaded: every chunk and bytes
      // value has data ...
      auto record = commit_record(md, results);
      if (!record)
        return std::move(record.error());
      auto& out = *record;
      // ... and the files holding it are still there (a rank that aborted
      // removed its own; committing then would lose old and new alike).
      if (auto err = detail::check_data_files(dir_, out))
        return make_error(errc::storage_failure,
                          "finish: the data is not all there: "
                            + context_of(err));
      // Which directory this record commits, as newest PyTorch records it
      // (`StorageMeta.checkpoint_id`): a step directory copied or renamed
      // under another step's name is told apart from the steps it was
      // saved as (storage/checkpoint_root.hpp).
      if (out.checkpoint_id.empty())
        out.checkpoint_id = dir_;
      auto bytes = encode_metadata(out, opts_.flavor);
      auto tmp = join(dir_, metadata_tmp_name);
      auto final_path = join(dir_, metadata_name);
      {
        // Created afresh: a planted `.metadata.tmp` link is removed, never
        // written through (nor renamed into `.metadata`).
        fd_guard fd{detail::create_exclusive_at(dirfd_.get(), metadata_tmp_name,
                                                O_WRONLY | O_CLOEXEC, 0644)};
        if (fd.get() < 0)
          return with_context(os_error("create", tmp, errno), "finish");
        {
          std::lock_guard<std::mutex> guard{mx_};
          tmp_created_ = true;
        }
        if (auto err = write_whole(fd.get(), tmp, bytes.data(), bytes.size()))
          return with_context(err, "finish");
        if (auto err = fsync_fd(fd.get()))
          return with_context(os_error("fsync", tmp, err), "finish");
        if (fd.close() != 0)
          return with_context(os_error("close", tmp, errno), "finish");
      }
      switch (
        auto v = fault::at_step(fault::step::rename, rank_, fault::next_op());
        v.what) {
        case fault::action::fail: return v.error;
        case fault::action::hang:
          fault::block_until_released();
          return make_error(errc::aborted, "finish: released from an "
                                           "injected hang before the rename");
        case fault::action::slow: std::this_thread::sleep_for(v.delay); break;
        default: break;
      }
      // The commit: the old `.metadata` (if any) stays valid up to here.
      if (::renameat(dirfd_.get(), metadata_tmp_name, dirfd_.get(),
                     metadata_name)
          != 0)
        return with_context(os_error("rename to " + final_path, tmp, errno),
                            "finish");
      {
        std::lock_guard<std::mutex> guard{mx_};
        tmp_created_ = false;
        created_.clear();
      }
      if (auto err = fsync_dir_fd(dirfd_.get(), dir_))
        return with_context(err, "finish");
      collect_garbage(out);
      lock_.release();
      return {};
    } catch (const std::exception& ex) {
      return make_error(errc::invalid_argument,
                        std::string{"finish: unexpected exception: "}
                          + ex.what());
    }
  }

  void abort() override {
    // The directory lock goes last, after this save's files.
    struct release_on_exit {
      dir_lock& lock;
      ~release_on_exit() {
        lock.release();
      }
    } release{lock_};
    remove_probe();
    std::vector<std::string> files;
    bool tmp = false;
    {
      std::lock_guard<std::mutex> guard{mx_};
      files.swap(created_);
      tmp = tmp_created_;
      tmp_created_ = false;
    }
    if (tmp)
      ::unlinkat(dirfd_.get(), metadata_tmp_name, 0);
    if (files.empty())
      return;
    // This save's files have names no other save uses. They are removed
    // unless `.metadata` refers to them (the save was committed after all,
    // e.g. when only the directory fsync after the rename failed). If
    // `.metadata` exists but cannot be read, they stay: the garbage
    // collection of the next commit removes them.
    std::set<std::string> referenced;
    auto md = read_metadata_file(dir_);
    if (md) {
      for (const auto& [idx, info] : md->storage_data)
        referenced.insert(info.relative_path);
    } else if (code_of(md.error()) != errc::not_found) {
      return;
    }
    for (const auto& path : files) {
      auto pos = path.find_last_of('/');
      auto name = pos == std::string::npos ? path : path.substr(pos + 1);
      if (referenced.count(name) == 0)
        ::unlinkat(dirfd_.get(), name.c_str(), 0);
    }
  }

private:
  /// The data files (`__*.distcp`) in the directory now.
  std::set<std::string> data_files_present() const {
    std::set<std::string> names;
    if (auto all = names_in_dir())
      for (auto& name : *all)
        if (is_data_file_name(name))
          names.insert(std::move(name));
    return names;
  }

  /// Whether the garbage collection may remove `name`: it was in the
  /// directory when this save took the lock and was not modified since
  /// (mtime not after the lock file's, both on the file system's clock).
  bool older_than_lock(const std::string& name) const {
    if (before_lock_.count(name) == 0)
      return false;
    struct stat st {};
    if (::fstatat(dirfd_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
      return false;
    const auto& t = lock_.since();
    return st.st_mtim.tv_sec < t.tv_sec
           || (st.st_mtim.tv_sec == t.tv_sec
               && st.st_mtim.tv_nsec <= t.tv_nsec);
  }

  /// After a commit: removes every data file (`__*.distcp`, nothing else)
  /// that the new metadata does not refer to, i.e. the files of the
  /// replaced checkpoint and of aborted saves. Files of the committed save
  /// itself stay even where no item points into them (the empty per-rank
  /// files of idle writer threads). Best effort: failures are reported on
  /// stderr and leave garbage, never a broken checkpoint.
  ///
  /// Only files that existed when this save took the directory lock and
  /// were not written since are candidates: a save that runs alongside
  /// (one that ignores the lock, or ranks of a save whose coordinator died
  /// and are still writing) keeps its files; the next commit collects what
  /// is really garbage. A writer that holds no lock (its set_up was not a
  /// coordinator's) collects nothing.
  void collect_garbage(const metadata& md) {
    if (!lock_.held())
      return;
    std::set<std::string> keep;
    std::set<std::string> keep_tags;
    for (const auto& [idx, info] : md.storage_data) {
      keep.insert(info.relative_path);
      if (auto tag = tag_of_file(info.relative_path); !tag.empty())
        keep_tags.insert(std::move(tag));
    }
    auto all = names_in_dir();
    if (!all) {
      spdlog::warn("dcpp: {}: cannot list for garbage collection: {}", dir_,
                   context_of(all.error()));
      return;
    }
    std::vector<std::string> garbage;
    for (auto& name : *all)
      if (is_data_file_name(name) && keep.count(name) == 0
          && keep_tags.count(tag_of_file(name)) == 0 && older_than_lock(name))
        garbage.push_back(std::move(name));
    for (const auto& name : garbage) {
      auto path = join(dir_, name);
      if (::unlinkat(dirfd_.get(), name.c_str(), 0) != 0 && errno != ENOENT)
        spdlog::warn("dcpp: {}: cannot remove old data file: {}", path,
                     errno_text(errno));
    }
    if (!garbage.empty() && opts_.sync_files)
      if (auto err = fsync_dir_fd(dirfd_.get(), dir_))
        spdlog::warn("dcpp: {}: fsync after garbage collection: {}", dir_,
                     context_of(err));
  }

  caf::expected<plan_target> parse_target(const save_plan& plan) const {
    plan_target result;
    const auto& sd = plan.storage_data;
    auto sep = sd.find(part_separator);
    result.prefix = sd.substr(0, sep);
    if (auto tpos = result.prefix.find(tag_separator);
        tpos != std::string::npos) {
      result.tag = result.prefix.substr(tpos + 1);
      result.prefix.erase(tpos);
      if (result.tag.empty() || result.tag.size() > 64
          || result.tag.find_first_not_of("0123456789abcdef")
               != std::string::npos)
        return make_error(errc::invalid_argument,
                          "bad save tag in storage_data");
    }
    if (sep != std::string::npos) {
      result.is_part = true;
      auto num = sd.substr(sep + 1);
      if (num.empty() || num.size() > 18
          || num.find_first_not_of("0123456789") != std::string::npos)
        return make_error(errc::invalid_argument,
                          "bad plan part marker in storage_data");
      result.first_file = std::stoull(num);
    }
    if (result.prefix.empty())
      result.prefix = "__" + std::to_string(rank_) + "_";
    // A plan that did not pass through prepare_global_plan still writes
    // names of its own (unique to this writer's save).
    if (result.tag.empty())
      result.tag = local_tag_;
    if (!plain_file_name(data_file_name(result.prefix, result.tag, 0)))
      return make_error(errc::path_escape, "file prefix '" + result.prefix
                                             + "' leaves the directory");
    return result;
  }

  static uint64_t tensor_size(const write_item& item) {
    if (item.type == write_item_type::bytes)
      return 0;
    return item.byte_count();
  }

  /// Newest DCP's `_split_by_size_and_type` (single_file_per_rank) or
  /// consecutive runs of items (one file per item).
  std::vector<save_plan> split(const save_plan& plan, const plan_target& target,
                               size_t n) const {
    n = std::max<size_t>(n, 1);
    auto make_part = [&](uint64_t first) {
      save_plan part;
      part.storage_data = target.prefix + tag_separator + target.tag
                          + part_separator + std::to_string(first);
      part.planner_data = plan.planner_data;
      part.usable = plan.usable;
      return part;
    };
    std::vector<save_plan> parts;
    if (opts_.single_file_per_rank) {
      for (size_t i = 0; i < n; ++i)
        parts.push_back(make_part(i));
      if (n == 1) {
        parts[0].items = plan.items;
        return parts;
      }
      std::vector<const write_item*> tensors;
      size_t bytes_count = 0;
      for (const auto& item : plan.items) {
        if (item.type == write_item_type::bytes)
          parts[bytes_count++ % n].items.push_back(item);
        else
          tensors.push_back(&item);
      }
      std::stable_sort(tensors.begin(), tensors.end(),
                       [](const write_item* a, const write_item* b) {
                         return tensor_size(*a) > tensor_size(*b);
                       });
      std::vector<uint64_t> load(n, 0);
      for (auto item : tensors) {
        auto i = static_cast<size_t>(std::min_element(load.begin(), load.end())
                                     - load.begin());
        parts[i].items.push_back(*item);
        load[i] += tensor_size(*item);
      }
      return parts;
    }
    // One file per item, numbered in plan order: consecutive runs of
    // roughly equal bytes.
    if (plan.items.empty()) {
      parts.push_back(make_part(0));
      return parts;
    }
    auto k = std::min(n, plan.items.size());
    uint64_t total = 0;
    for (const auto& item : plan.items)
      total += std::max<uint64_t>(item.byte_count(), 1);
    uint64_t acc = 0;
    parts.push_back(make_part(0));
    for (size_t i = 0; i < plan.items.size(); ++i) {
      const auto& item = plan.items[i];
      if (!parts.back().items.empty() && parts.size() < k
          && acc >= total / k * parts.size())
        parts.push_back(make_part(i));
      parts.back().items.push_back(item);
      acc += std::max<uint64_t>(item.byte_count(), 1);
    }
    return parts;
  }

  /// One open data file being appended to.
  struct data_file {
    std::string name;
    std::string path;
    fd_guard fd;
    std::unique_ptr<file_sink> sink;
  };

  caf::error open_file(data_file& f, const plan_target& target, uint64_t n,
                       bool large) {
    f.name = data_file_name(target.prefix, target.tag, n);
    f.path = join(dir_, f.name);
    // Created afresh (O_EXCL | O_NOFOLLOW after removing any leftover of
    // the name): nothing planted there is written through.
    auto flags = O_WRONLY | O_CLOEXEC;
    bool direct = large && opts_.direct_io && opts_.sync_files;
    int fd = detail::create_exclusive_at(dirfd_.get(), f.name,
                                         flags | (direct ? O_DIRECT : 0), 0644);
    if (fd < 0 && direct && errno == EINVAL) {
      // The file system does not do direct I/O (tmpfs, some FUSE mounts).
      direct = false;
      fd = detail::create_exclusive_at(dirfd_.get(), f.name, flags, 0644);
    }
    if (fd < 0)
      return os_error("create", f.path, errno);
    f.fd = fd_guard{fd};
    {
      std::lock_guard<std::mutex> guard{mx_};
      created_.push_back(f.path);
    }
    file_sink_options sink_opts;
    sink_opts.direct = direct;
    sink_opts.early_writeback = opts_.sync_files && !direct;
    sink_opts.landing = opts_.landing;
    f.sink = std::make_unique<file_sink>(fd, f.path, 0, sink_opts);
    return {};
  }

  caf::error close_file(data_file& f) {
    if (auto err = f.sink->flush())
      return err;
    if (opts_.sync_files)
      if (auto err = fsync_fd(f.fd.get()))
        return os_error("fsync", f.path, err);
    if (f.fd.close() != 0)
      return os_error("close", f.path, errno);
    return {};
  }

  caf::error write_item_to(data_file& f, const write_item& item,
                           const item_source& source,
                           std::vector<write_result>& results) {
    auto offset = f.sink->position();
    auto res = write_plan_item(*f.sink, item, source, opts_.checksums);
    if (!res)
      return std::move(res.error());
    write_result r;
    r.index = item.index;
    r.size_in_bytes = res->length;
    r.storage_data.relative_path = f.name;
    r.storage_data.offset = offset;
    r.storage_data.length = res->length;
    r.storage_data.checksum = std::move(res->checksum);
    results.push_back(std::move(r));
    return {};
  }

  caf::error write_part(const save_plan& part, const plan_target& target,
                        const item_source& source,
                        std::vector<write_result>& results) {
    if (opts_.single_file_per_rank) {
      data_file f;
      if (auto err = open_file(f, target, target.first_file, true))
        return err;
      // Bytes items first, then tensors (DCP's order inside a file).
      for (int pass = 0; pass < 2; ++pass)
        for (const auto& item : part.items)
          if ((item.type == write_item_type::bytes) == (pass == 0))
            if (auto err = write_item_to(f, item, source, results))
              return err;
      return close_file(f);
    }
    for (size_t i = 0; i < part.items.size(); ++i) {
      data_file f;
      bool large = part.items[i].byte_count() >= direct_min_item;
      if (auto err = open_file(f, target, target.first_file + i, large))
        return err;
      if (auto err = write_item_to(f, part.items[i], source, results))
        return err;
      if (auto err = close_file(f))
        return err;
    }
    return {};
  }

  /// Every rank leaves a probe file (`.dcpp.probe.<rank>.<random>`) in the
  /// directory it was given, and names it in its local plan. The
  /// coordinator's prepare_global_plan checks that every rank's probe is in
  /// *its* directory: ranks of one save that were given different
  /// directories (or see different file systems) fail in step "plan",
  /// before anything is written or deleted. A file name, not a path or a
  /// device and inode number, so that hosts that mount one shared file
  /// system at different paths still agree.
  caf::error place_probe() {
    remove_probe();
    probe_ = std::string{probe_prefix} + std::to_string(rank_) + "."
             + make_save_tag();
    auto path = join(dir_, probe_);
    fd_guard fd{::openat(dirfd_.get(), probe_.c_str(),
                         O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                         0644)};
    if (fd.get() < 0) {
      probe_.clear();
      return os_error("create", path, errno);
    }
    return caf::none;
  }

  void remove_probe() {
    if (!probe_.empty())
      ::unlinkat(dirfd_.get(), probe_.c_str(), 0);
    probe_.clear();
  }

  /// The coordinator: fails naming every rank whose probe is not in this
  /// directory (plans that name no probe, made without a file-system
  /// writer's prepare_local_plan, are not checked). Then removes every
  /// probe in the directory but its own: the ones it found did their job,
  /// others are left by crashed or refused saves (the directory lock is
  /// held, so no other save of this directory is under way).
  caf::error check_probes(const std::vector<save_plan>& plans) {
    std::string missing;
    for (size_t r = 0; r < plans.size(); ++r) {
      const auto& name = plans[r].storage_data;
      if (name.rfind(probe_prefix, 0) != 0)
        continue;
      struct stat st {};
      if (!plain_file_name(name)
          || ::fstatat(dirfd_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW)
               != 0
          || !S_ISREG(st.st_mode))
        missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    }
    if (auto all = names_in_dir())
      for (const auto& name : *all)
        if (name.rfind(probe_prefix, 0) == 0 && name != probe_)
          ::unlinkat(dirfd_.get(), name.c_str(), 0);
    remove_probe();
    if (missing.empty())
      return caf::none;
    return make_error(errc::invalid_argument,
                      "prepare_global_plan: rank(s) " + missing
                        + " do not write into the coordinator's checkpoint "
                          "directory "
                        + dir_
                        + " (their probe files are not there): every rank of "
                          "a save must be given the same directory, on a "
                          "file system all ranks share");
  }

  /// Creates (if missing) and opens the checkpoint directory for this save;
  /// with `owned_directory` its last component is never followed.
  caf::error open_dir() {
    caf::expected<fd_guard> fd{caf::no_error};
    if (opts_.owned_directory) {
      fd = detail::make_owned_directory(dir_, opts_.sync_files);
    } else {
      if (auto err = make_directories(dir_, opts_.sync_files))
        return err;
      fd = detail::open_directory(dir_);
    }
    if (!fd)
      return std::move(fd.error());
    dirfd_ = std::move(*fd);
    return {};
  }

  /// The names in the open checkpoint directory (without "." and "..").
  caf::expected<std::vector<std::string>> names_in_dir() const {
    // fdopendir takes over the descriptor: hand it a duplicate.
    int fd = ::fcntl(dirfd_.get(), F_DUPFD_CLOEXEC, 0);
    DIR* d = fd < 0 ? nullptr : ::fdopendir(fd);
    if (d == nullptr) {
      auto err = errno;
      if (fd >= 0)
        ::close(fd);
      return os_error("list", dir_, err);
    }
    // The duplicate shares the directory offset with `dirfd_`: start over.
    ::rewinddir(d);
    std::vector<std::string> names;
    while (auto entry = ::readdir(d)) {
      std::string name = entry->d_name;
      if (name != "." && name != "..")
        names.push_back(std::move(name));
    }
    ::closedir(d);
    return names;
  }

  std::string dir_;
  filesystem_writer_options opts_;
  /// The checkpoint directory, opened by `set_up` (see `open_dir`): every
  /// file of a save is created, renamed and removed relative to it.
  fd_guard dirfd_;
  /// This rank's probe file in `dir_` (see `place_probe`), until the
  /// coordinator's check or an abort removes it.
  std::string probe_;
  bool is_coordinator_ = false;
  int32_t rank_ = 0;
  std::mutex mx_;
  std::vector<std::string> created_;
  bool tmp_created_ = false;
  /// Tag of plans without one (set_up draws a fresh one per save).
  std::string local_tag_ = make_save_tag();
  /// The coordinator's: this save's tag, drawn in set_up (and written into
  /// the lock file), handed out by prepare_global_plan.
  std::string save_tag_;
  /// The coordinator's directory lock, from set_up to commit or abort.
  dir_lock lock_;
  /// The data files in the directory when the lock was taken: the only
  /// ones the garbage collection may remove.
  std::set<std::string> before_lock_;
};

} // namespace

storage_writer_ptr make_filesystem_writer(std::string dir,
                                          filesystem_writer_options opts) {
  if (opts.landing == landing_mode::automatic)
    detail::prepare_landing(true);
  return std::make_shared<filesystem_writer>(std::move(dir), opts);
}

} // namespace dcpp
