#include "actors/transport/launch_env.hpp"

#include "core/error.hpp"
#include "core/printable.hpp"
#include "storage/posix_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <optional>

namespace dcpp {

namespace {

using getter = std::function<const char*(const char*)>;

/// Parses a non-negative integer variable; nullopt when unset or empty.
caf::expected<std::optional<int64_t>> number(const getter& get,
                                             const char* name) {
  const char* str = get(name);
  if (str == nullptr || *str == '\0')
    return std::optional<int64_t>{};
  char* end = nullptr;
  errno = 0;
  auto value = std::strtoll(str, &end, 10);
  if (errno != 0 || end == str || *end != '\0' || value < 0)
    return make_error(errc::invalid_argument,
                      std::string{name} + "='" + printable(str)
                        + "' is not a non-negative integer");
  return std::optional<int64_t>{value};
}

/// The most a secret file may hold. A secret is one line of a few dozen
/// bytes; a larger file is the wrong file, and is refused without being
/// read.
constexpr off_t max_secret_file_bytes = 4096;

/// Refuses a directory that group or others may write without the sticky
/// bit: they could replace the secret file in it (rename over it) with one
/// of their own. With the sticky bit (/tmp) only the file's owner may
/// rename or remove it, and the file's owner is checked.
caf::error check_secret_directory(const std::string& what,
                                  const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0)
    return make_error(errc::invalid_argument,
                      what + ": its directory " + printable(dir)
                        + " cannot be examined (" + detail::errno_text(errno)
                        + ")");
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0)
    return make_error(errc::invalid_argument,
                      what + ": its directory " + printable(dir)
                        + " may be written by group or others, who could "
                          "replace the file (chmod go-w, or move the file)");
  return caf::none;
}

/// The secret in a key file: its first line (a trailing newline and
/// carriage return dropped). Refuses, naming the file, anything but a
/// regular file (a FIFO would block the read forever, a device never end),
/// a file larger than max_secret_file_bytes, a file of another user (but
/// root), one that others than its owner may read or write, one in a
/// directory that others may write, and an empty file. A symbolic link to
/// the file is followed (Kubernetes mounts secrets so); the directories of
/// both the link and the file are checked.
caf::expected<std::string> read_secret_file(const char* path) {
  auto what = "DCPP_SECRET_FILE=" + printable(path);
  auto fail = [&](const std::string& why) {
    return make_error(errc::invalid_argument, what + ": " + why);
  };
  // O_NONBLOCK: opening a FIFO without a writer returns at once instead of
  // waiting for one; the fstat below then refuses it.
  detail::fd_guard fd{
    detail::open_fd(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)};
  if (fd.get() < 0)
    return fail("cannot be opened (" + detail::errno_text(errno) + ")");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    return fail("cannot be examined (" + detail::errno_text(errno) + ")");
  if (!S_ISREG(st.st_mode))
    return fail(std::string{"is "} + detail::file_kind(st.st_mode)
                + ", not a regular file");
  if (st.st_size > max_secret_file_bytes)
    return fail("is " + std::to_string(st.st_size)
                + " bytes; a secret file holds one line of at most "
                + std::to_string(max_secret_file_bytes) + " bytes");
  if (st.st_uid != ::geteuid() && st.st_uid != 0)
    return fail("belongs to user " + std::to_string(st.st_uid)
                + ", not to this process's user or root");
  if (st.st_mode & (S_IRWXG | S_IRWXO))
    return fail("group or others may read it (chmod 600)");
  std::string given{path};
  if (auto err = check_secret_directory(what, detail::parent_of(given)))
    return err;
  if (char* real = ::realpath(path, nullptr)) {
    std::string resolved{real};
    std::free(real);
    if (detail::parent_of(resolved) != detail::parent_of(given))
      if (auto err = check_secret_directory(what, detail::parent_of(resolved)))
        return err;
  }
  // One byte more than the limit: a file that grew since the fstat is
  // refused as well. pread_fully ends with -1 at the end of the file.
  std::string text(static_cast<size_t>(max_secret_file_bytes) + 1, '\0');
  uint64_t got = 0;
  auto rc = detail::pread_fully(fd.get(), text.data(), text.size(), 0, got);
  if (rc > 0)
    return fail("cannot be read (" + detail::errno_text(rc) + ")");
  if (rc == 0)
    return fail("grew beyond " + std::to_string(max_secret_file_bytes)
                + " bytes while it was read");
  text.resize(static_cast<size_t>(got));
  auto line = text.substr(0, text.find('\n'));
  if (!line.empty() && line.back() == '\r')
    line.pop_back();
  if (line.empty())
    return fail("is empty");
  return line;
}

struct convention {
  const char* source;
  const char* rank;
  const char* world;
  const char* local_rank;
};

constexpr convention conventions[] = {
  {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
  {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
  {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
   "OMPI_COMM_WORLD_LOCAL_RANK"},
};

} // namespace

caf::expected<launch_env> read_launch_env(const getter& get_or_null) {
  getter get = get_or_null ? get_or_null
                           : [](const char* name) { return std::getenv(name); };
  launch_env out;
  for (const auto& conv : conventions) {
    auto rank = number(get, conv.rank);
    if (!rank)
      return rank.error();
    auto world = number(get, conv.world);
    if (!world)
      return world.error();
    if (!*rank && !*world)
      continue;
    if (!*rank || !*world)
      return make_error(errc::invalid_argument, std::string{"only one of "}
                                                  + conv.rank + " and "
                                                  + conv.world + " is set");
    auto local = number(get, conv.local_rank);
    if (!local)
      return local.error();
    if (**world < 1 || **world > 1'000'000 || **rank >= **world)
      return make_error(errc::invalid_argument,
                        std::string{conv.rank} + "=" + std::to_string(**rank)
                          + " is not below " + conv.world + "="
                          + std::to_string(**world));
    out.rank = static_cast<int32_t>(**rank);
    out.world_size = static_cast<int32_t>(**world);
    out.local_rank = static_cast<int32_t>(local->value_or(**rank));
    out.source = conv.source;
    break;
  }
  auto set = [&](const char* name) {
    const char* v = get(name);
    return v && *v ? std::string{v} : std::string{};
  };
  auto addr = set("DCPP_MASTER_ADDR");
  if (addr.empty())
    addr = set("MASTER_ADDR");
  for (const char* name :
       {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"})
    if (addr.empty())
      addr = first_slurm_host(set(name));
  if (addr.empty())
    addr = set("SLURM_LAUNCH_NODE_IPADDR");
  if (!addr.empty())
    out.master_addr = addr;
  bool own_port = false;
  for (const char* name : {"DCPP_MASTER_PORT", "MASTER_PORT"}) {
    auto port = number(get, name);
    if (!port)
      return port.error();
    if (!*port)
      continue;
    if (**port < 1 || **port > 65535)
      return make_error(errc::invalid_argument, std::string{name} + "="
                                                  + std::to_string(**port)
                                                  + " is not a TCP port");
    out.master_port = static_cast<uint16_t>(**port);
    own_port = std::string{name} == "DCPP_MASTER_PORT";
    break;
  }
  out.bind_addr = set("DCPP_BIND_ADDR");
  out.agent_store = !own_port && set("TORCHELASTIC_USE_AGENT_STORE") == "True";
  auto restarts = number(get, "TORCHELASTIC_RESTART_COUNT");
  if (!restarts)
    return restarts.error();
  out.restart_count = static_cast<int32_t>(
    std::min<int64_t>(restarts->value_or(0), 1'000'000));
  if (const char* secret = get("DCPP_SECRET"); secret && *secret) {
    out.secret = secret;
    out.secret_source = "DCPP_SECRET";
  } else if (const char* file = get("DCPP_SECRET_FILE"); file && *file) {
    auto text = read_secret_file(file);
    if (!text)
      return text.error();
    out.secret = std::move(*text);
    out.secret_source = "DCPP_SECRET_FILE=" + printable(file);
  }
  out.job_id = set("DCPP_JOB_ID");
  if (out.job_id.empty())
    out.job_id = set("TORCHELASTIC_RUN_ID");
  if (out.job_id.empty()) {
    out.job_id = set("SLURM_JOB_ID");
    if (auto step = set("SLURM_STEP_ID"); !out.job_id.empty() && !step.empty())
      out.job_id += "." + step;
  }
  if (out.job_id.empty())
    out.job_id = set("OMPI_MCA_ess_base_jobid");
  return out;
}

namespace {

// One bracket group of a host list entry: numbers and ranges ("01-04,7").
struct number_range {
  uint64_t lo;
  uint64_t hi;
  size_t width; // zero padding: the digits of the range's first number
};

// An entry ("rack[1-2]-node[01-04]") as literal text and bracket groups in
// turn; a literal segment has no ranges.
struct segment {
  std::string text;
  std::vector<number_range> ranges;
};

caf::error bad_host_list(std::string_view list, const std::string& what) {
  auto shown = std::string{list.substr(0, 200)};
  if (list.size() > 200)
    shown += "...";
  return make_error(errc::invalid_argument,
                    "SLURM host list '" + shown + "': " + what);
}

caf::expected<std::vector<number_range>> parse_ranges(std::string_view list,
                                                      std::string_view group) {
  std::vector<number_range> out;
  size_t pos = 0;
  while (pos <= group.size()) {
    auto end = group.find(',', pos);
    if (end == std::string_view::npos)
      end = group.size();
    auto item = group.substr(pos, end - pos);
    auto dash = item.find('-');
    auto lo_text = item.substr(0, dash);
    auto hi_text = dash == std::string_view::npos ? lo_text
                                                  : item.substr(dash + 1);
    auto digits = [](std::string_view t) {
      return !t.empty() && t.size() <= 18
             && t.find_first_not_of("0123456789") == std::string_view::npos;
    };
    if (!digits(lo_text) || !digits(hi_text))
      return bad_host_list(list, "'[" + std::string{group}
                                   + "]' is not a list of numbers and ranges");
    number_range r{std::stoull(std::string{lo_text}),
                   std::stoull(std::string{hi_text}), lo_text.size()};
    if (r.hi < r.lo)
      return bad_host_list(list,
                           "range '" + std::string{item} + "' runs backwards");
    out.push_back(r);
    pos = end + 1;
  }
  return out;
}

// The entries of a host list: split at commas outside brackets, each cut
// into literal text and bracket groups.
caf::expected<std::vector<std::vector<segment>>>
parse_host_list(std::string_view list) {
  std::vector<std::vector<segment>> entries(1);
  std::string text;
  for (size_t i = 0; i < list.size(); ++i) {
    char c = list[i];
    if (c == ',') {
      if (!text.empty())
        entries.back().push_back({std::move(text), {}});
      text.clear();
      if (entries.back().empty())
        return bad_host_list(list, "empty entry");
      entries.emplace_back();
    } else if (c == '[') {
      auto close = list.find(']', i);
      if (close == std::string_view::npos)
        return bad_host_list(list, "'[' without ']'");
      auto ranges = parse_ranges(list, list.substr(i + 1, close - i - 1));
      if (!ranges)
        return std::move(ranges.error());
      if (!text.empty())
        entries.back().push_back({std::move(text), {}});
      text.clear();
      entries.back().push_back({{}, std::move(*ranges)});
      i = close;
    } else if (c == ']') {
      return bad_host_list(list, "']' without '['");
    } else {
      text += c;
    }
  }
  if (!text.empty())
    entries.back().push_back({std::move(text), {}});
  if (entries.back().empty())
    return bad_host_list(list, list.empty() ? "empty" : "empty entry");
  return entries;
}

std::string padded(uint64_t n, size_t width) {
  auto s = std::to_string(n);
  if (s.size() < width)
    s.insert(0, width - s.size(), '0');
  return s;
}

std::string host_name(const std::vector<segment>& entry,
                      const std::vector<std::pair<size_t, uint64_t>>& at) {
  std::string host;
  for (size_t k = 0; k < entry.size(); ++k)
    host += entry[k].ranges.empty()
              ? entry[k].text
              : padded(at[k].second, entry[k].ranges[at[k].first].width);
  return host;
}

// Where each segment of an entry starts: its first range's first number.
std::vector<std::pair<size_t, uint64_t>>
first_numbers(const std::vector<segment>& entry) {
  std::vector<std::pair<size_t, uint64_t>> at; // (range index, number)
  for (const auto& seg : entry)
    at.emplace_back(0, seg.ranges.empty() ? 0 : seg.ranges[0].lo);
  return at;
}

} // namespace

caf::expected<std::vector<std::string>>
expand_slurm_host_list(std::string_view list, size_t max_hosts) {
  auto entries = parse_host_list(list);
  if (!entries)
    return std::move(entries.error());
  std::vector<std::string> hosts;
  for (const auto& entry : *entries) {
    // An odometer over the entry's bracket groups, the rightmost turning
    // fastest, as `scontrol show hostnames` orders them.
    auto at = first_numbers(entry);
    for (bool done = false; !done;) {
      if (hosts.size() == max_hosts)
        return bad_host_list(list, "more than " + std::to_string(max_hosts)
                                     + " hosts");
      hosts.push_back(host_name(entry, at));
      done = true;
      for (size_t k = entry.size(); done && k-- > 0;) {
        const auto& ranges = entry[k].ranges;
        if (ranges.empty())
          continue;
        auto& [r, n] = at[k];
        if (n < ranges[r].hi) {
          ++n;
          done = false;
        } else if (r + 1 < ranges.size()) {
          n = ranges[++r].lo;
          done = false;
        } else {
          r = 0;
          n = ranges[0].lo;
        }
      }
    }
  }
  return hosts;
}

std::string first_slurm_host(const std::string& list) {
  // Parsing checks the whole list; only the first name is built.
  auto entries = parse_host_list(list);
  if (!entries)
    return {};
  return host_name(entries->front(), first_numbers(entries->front()));
}

} // namespace dcpp
