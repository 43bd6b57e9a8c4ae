#pragma once

// What every dcpp program shares on its command line: one exit-code
// convention, --log-level / -v over SPDLOG_LEVEL, defaults shown in --help,
// and a suggestion for a mistyped subcommand.
//
// Exit codes of every program:
//   0  the operation succeeded (or --help)
//   1  the operation failed, or found damage (dcpp verify)
//   2  usage: an unknown option or subcommand, a missing or bad argument
// dcpp-launch passes on the exit code of the first rank that failed.

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace dcpp::cli {

inline constexpr int exit_ok = 0;
inline constexpr int exit_failed = 1;
inline constexpr int exit_usage = 2;

struct log_options {
  /// trace, debug, info, warn, error, critical or off; empty: SPDLOG_LEVEL,
  /// else info.
  std::string level;
  /// -v: debug, -vv: trace.
  int verbose = 0;
};

/// Shows every option's default in --help, and adds --log-level and (unless
/// `verbose_flag` is false: the program has its own -v) -v/--verbose. Call
/// before adding the program's own options.
void add_common_options(CLI::App& app, log_options& log,
                        bool verbose_flag = true);

/// A help footer naming the environment variables a program reads, e.g.
/// env_footer({"DCPP_SECRET: ...", ...}).
std::string env_footer(std::initializer_list<const char*> lines);

/// Parses the command line. Returns -1 if the program should go on, else the
/// exit code: 0 after --help, 2 after a usage error (printed as one line
/// `PROGRAM: usage: ...`, with "did you mean" for a mistyped subcommand).
int parse(CLI::App& app, int argc, char** argv, const std::string& program);

/// Makes spdlog's default logger write to stderr as "[TAG] level: message",
/// at the level of `log` (-v, --log-level), else SPDLOG_LEVEL, else info.
void init_logging(const log_options& log, const std::string& tag);

/// Changes the tag of the log lines (e.g. to "rank 3" once it is known).
void set_log_tag(const std::string& tag);

/// The closest of `candidates` to `word` (edit distance at most 2, or a
/// prefix), or empty.
/// A loopback TCP port the kernel considers free right now; 0 if none
/// could be found. (Another process may take it before the caller binds.)
uint16_t free_loopback_port();

std::string closest(const std::string& word,
                    const std::vector<std::string>& candidates);

} // namespace dcpp::cli
