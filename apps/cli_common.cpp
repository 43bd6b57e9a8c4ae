#include "apps/cli_common.hpp"

#include "core/printable.hpp"

#include <spdlog/cfg/env.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <iostream>
#include <string_view>
#include <vector>

namespace dcpp::cli {

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min(
        {row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string first_line(const std::string& text) {
  return text.substr(0, text.find('\n'));
}

// spdlog ignores a level name it does not know in SPDLOG_LEVEL
// ("verbose", "inf"): say so instead of logging at another level silently.
void warn_bad_env_levels() {
  const char* env = std::getenv("SPDLOG_LEVEL");
  if (env == nullptr)
    return;
  static const std::vector<std::string> names = {"trace",   "debug",    "info",
                                                 "warning", "warn",     "error",
                                                 "err",     "critical", "off"};
  std::string_view rest{env};
  while (!rest.empty()) {
    auto item = rest.substr(0, rest.find(','));
    rest.remove_prefix(std::min(rest.size(), item.size() + 1));
    auto level = std::string{item.substr(item.find('=') + 1)};
    std::transform(level.begin(), level.end(), level.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    if (std::find(names.begin(), names.end(), level) != names.end())
      continue;
    auto guess = closest(level, names);
    spdlog::warn("SPDLOG_LEVEL: '{}' is not a log level (trace, debug, info, "
                 "warn, error, critical, off){}; ignored",
                 printable(item, 64),
                 guess.empty() ? std::string{}
                               : "; did you mean '" + guess + "'?");
  }
}

} // namespace

void add_common_options(CLI::App& app, log_options& log, bool verbose_flag) {
  app.option_defaults()->always_capture_default();
  app
    .add_option("--log-level", log.level,
                "log level: trace, debug, info, warn, error, critical or "
                "off (default: SPDLOG_LEVEL, else info)")
    ->check(CLI::IsMember(
      {"trace", "debug", "info", "warn", "error", "critical", "off"}));
  if (verbose_flag)
    app.add_flag("-v,--verbose", log.verbose,
                 "more log lines: -v debug, -vv trace");
}

std::string env_footer(std::initializer_list<const char*> lines) {
  std::string out = "Environment:";
  for (const auto* line : lines)
    out += std::string{"\n  "} + line;
  out += "\n  SPDLOG_LEVEL: log level (e.g. debug, or info,dcpp=debug); "
         "--log-level and -v win";
  out += "\nExit codes: 0 ok, 1 the operation failed or found damage, 2 "
         "usage.";
  return out;
}

std::string closest(const std::string& word,
                    const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = 3;
  for (const auto& c : candidates) {
    auto d = edit_distance(word, c);
    if (d < best_d
        || (best.empty() && !word.empty()
            && c.compare(0, word.size(), word) == 0)) {
      best = c;
      best_d = std::min(d, best_d);
    }
  }
  return best;
}

int parse(CLI::App& app, int argc, char** argv, const std::string& program) {
  // Global flags (-v, --log-level) are taken before or after the
  // subcommand: what a subcommand does not know falls through to the app.
  for (auto* sub : app.get_subcommands([](CLI::App*) { return true; }))
    sub->fallthrough();
  try {
    app.parse(argc, argv);
    return -1;
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e) == 0 ? exit_ok : exit_usage;
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e) == 0 ? exit_ok : exit_usage;
  } catch (const CLI::ParseError& e) {
    auto subs = app.get_subcommands([](CLI::App*) { return true; });
    bool none_parsed = std::none_of(
      subs.begin(), subs.end(), [](const CLI::App* s) { return s->parsed(); });
    auto rest = app.remaining();
    if (!subs.empty() && none_parsed && !rest.empty()
        && rest.front().rfind("-", 0) != 0) {
      std::vector<std::string> names;
      for (const auto* s : subs)
        names.push_back(s->get_name());
      auto guess = closest(rest.front(), names);
      std::cerr << program << ": unknown subcommand '" << rest.front() << "'";
      if (!guess.empty())
        std::cerr << "; did you mean '" << guess << "'?";
      std::cerr << " (see " << program << " --help)" << std::endl;
      return exit_usage;
    }
    std::cerr << program << ": usage: " << first_line(e.what()) << " (see "
              << program << " --help)" << std::endl;
    return exit_usage;
  }
}

void init_logging(const log_options& log, const std::string& tag) {
  auto logger = spdlog::stderr_color_mt("dcpp");
  spdlog::set_default_logger(logger);
  set_log_tag(tag);
  spdlog::set_level(spdlog::level::info);
  warn_bad_env_levels();
  spdlog::cfg::load_env_levels();
  if (log.verbose >= 2)
    spdlog::set_level(spdlog::level::trace);
  else if (log.verbose == 1)
    spdlog::set_level(spdlog::level::debug);
  if (!log.level.empty())
    spdlog::set_level(spdlog::level::from_str(log.level));
}

void set_log_tag(const std::string& tag) {
  spdlog::set_pattern("[" + tag + "] %^%l%$: %v");
}

uint16_t free_loopback_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0
      && ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

} // namespace dcpp::cli
