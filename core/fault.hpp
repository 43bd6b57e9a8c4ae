#pragma once

// Fault injection: storage failures, lost or late messages, and ranks that
// fail, stall or die at a named step, for tests, the soak test
// (apps/soak.cpp) and `dcpp-worker --fault` / DCPP_FAULT.
//
// Off unless rules are installed, programmatically (`fault::install`, used
// by in-process tests) or from the environment variable DCPP_FAULT, which
// the first hook of a process reads. When off, a hook costs one atomic load.
// This is its own library (dcpp_fault) beside the pure core: it sleeps,
// blocks and ends processes, which the data model never does.
//
// A spec is a list of rules separated by ',' or ';', each
//
//   WHERE:WHAT[@WHO][:ARG]
//
// Steps (WHO: a rank, or '*' / absent for every rank):
//   plan:WHAT     the rank made its local plan (save or load), before it
//                 sends it
//   write:WHAT    the rank wrote its data, before reporting its write results
//   read:WHAT     the rank read its data, before reporting
//   commit:WHAT   the coordinator's rank got the commit order, before it
//                 writes `.metadata`
//   rename:WHAT   (file system) `.metadata.tmp` is written and fsynced,
//                 before the rename that commits it
// with WHAT
//   exit          the process dies at once (_Exit(137), as after kill -9)
//   hang          the rank stops there for this operation: it sends nothing
//                 more (its process stays alive, so heartbeats go on and
//                 only deadlines notice); in `rename` the writing thread
//                 blocks until `fault::clear()` (in a process: forever)
//   fail          the step fails on that rank with errc::injected_fault
//   slow:MS       the rank is MS milliseconds late there: the rank agent
//                 sends its report that much later (no thread sleeps); in
//                 `rename` and in a world of one the calling thread sleeps
// Every step rule fires at most once per operation and rank, any number of
// times over a process's life.
//
// Storage (WHO: the rank whose thread writes; K counts that rank's write
// system calls since the rules were installed, from 1):
//   io:eio@R:K     the K-th write fails with EIO
//   io:enospc@R:K  the K-th write stores half of its bytes; every later
//                  write fails with ENOSPC (a disk that filled up)
//   io:short@R:K   the K-th write stores half of its bytes and says so: a
//                  short write that the writer must continue
//   io:slow@R:MS   every write first sleeps MS milliseconds
//
// Messages between a rank and the coordinator (WHO: FROM>TO with one side
// 'c' for the coordinator and the other a rank or '*'; a rank alone means
// both directions):
//   msg:drop@2>c      every message from rank 2 to the coordinator is lost
//   msg:drop@c>1:3    the 3rd message from the coordinator to rank 1 is lost
//   msg:delay@1:MS    messages between rank 1 and the coordinator arrive MS
//                     milliseconds late
//
// Hooks print one line to stderr when a fault fires ("dcpp: injected fault:
// rank 1 hangs in step write"): scripts wait for it before a `kill -9`.

#include <caf/error.hpp>

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dcpp::fault {

/// Replaces the installed rules with those of `spec` (empty: none) and
/// resets every counter. A malformed rule is errc::invalid_argument naming
/// it; the old rules then stay.
caf::error install(std::string_view spec);

/// Removes every rule, resets the counters and releases blocked hangs.
void clear();

/// The spec installed now ("" when off).
std::string current();

/// True if any rule is installed (reads DCPP_FAULT on first use).
bool active();

/// How many times a fault fired since the rules were installed.
uint64_t fired();

// -- steps --------------------------------------------------------------------

enum class step : uint8_t { plan, write, read, commit, rename };

const char* to_string(step x);

/// What a hook tells its caller to do (`exit` happens inside).
enum class action : uint8_t { none, fail, hang, slow };

struct verdict {
  action what = action::none;
  /// For `fail`: errc::injected_fault naming the rank and the step.
  caf::error error;
  /// For `slow`: how late the rank goes on.
  std::chrono::milliseconds delay{0};
};

/// The hook of `s` on `rank` in operation `op` (a number that tells
/// operations apart in this process: take it from `next_op()`; rules fire
/// once per operation).
verdict at_step(step s, int32_t rank, uint64_t op);

/// A fresh operation number for `at_step`, unique in this process (1, 2,
/// ...). Numbers that restart elsewhere (an agent's op sequence in a new
/// process group, a counter per storage writer) would collide with an
/// earlier operation's, and a rule would not fire again.
uint64_t next_op();

/// For hooks that cannot return early (a storage thread): blocks the
/// calling thread until `clear()` or `install()`.
void block_until_released();

// -- storage ------------------------------------------------------------------

/// Marks the calling thread's writes as rank `rank`'s while it lives.
class io_scope {
public:
  explicit io_scope(int32_t rank);
  ~io_scope();
  io_scope(const io_scope&) = delete;
  io_scope& operator=(const io_scope&) = delete;

private:
  int32_t prev_;
};

/// The rank of the calling thread's writes (-1: none).
int32_t io_rank();

/// ::write and ::pwrite through the storage rules of `io_rank()`.
ssize_t write(int fd, const void* data, size_t size);
ssize_t pwrite(int fd, const void* data, size_t size, off_t offset);

// -- messages -----------------------------------------------------------------

struct delivery {
  bool drop = false;
  std::chrono::milliseconds delay{0};
};

/// The fate of one message between rank `rank` and the coordinator.
delivery on_message(int32_t rank, bool to_coordinator);

} // namespace dcpp::fault
