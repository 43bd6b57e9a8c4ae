#pragma once

// A fork-join helper for the storage backends: a plan's items (or parts)
// spread over a few threads, with the first error stopping the rest.

#include <caf/error.hpp>

#include <cstddef>
#include <functional>

namespace dcpp::detail {

/// Runs `fn(i)` for i in [0, n) on up to `threads` threads (the calling
/// thread included), each taking the next index; stops handing out work
/// after the first error and returns it. An exception from `fn` counts as
/// an `errc::invalid_argument` error. Every thread runs in the storage fault
/// scope (`fault::io_rank()`) of the caller.
caf::error run_parallel(size_t n, size_t threads,
                        const std::function<caf::error(size_t)>& fn);

} // namespace dcpp::detail
