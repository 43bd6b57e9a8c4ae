#pragma once

// The progress line of the process that hosts a job's coordinator: one line
// per job on stderr (the sum over all ranks), updated in place on a terminal
// and printed every few seconds otherwise (logs of batch jobs).

#include <chrono>

namespace dcpp::cli {

/// Installs the process's progress listener (actors/progress.hpp): on a
/// terminal a line redrawn at most 10 times a second, else one line every
/// `every`. Call `stop_progress_line` before stderr goes away.
void start_progress_line(std::chrono::milliseconds every
                         = std::chrono::seconds(5));

void stop_progress_line();

} // namespace dcpp::cli
