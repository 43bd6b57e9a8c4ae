#include "actors/transport/launch_env.hpp"

#include "core/error.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
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
                      std::string{name} + "='" + str
                        + "' is not a non-negative integer");
  return std::optional<int64_t>{value};
}

/// The secret in a key file: its first line (a trailing newline and
/// carriage return dropped). Refuses an empty or unreadable file, and one
/// that others than its owner may read.
caf::expected<std::string> read_secret_file(const char* path) {
  auto what = std::string{"DCPP_SECRET_FILE="} + path;
  std::ifstream in{path, std::ios::binary};
  struct stat st {};
  if (!in || ::stat(path, &st) != 0)
    return make_error(errc::invalid_argument,
                      what + ": cannot be read (" + std::strerror(errno) + ")");
  if (st.st_mode & (S_IRWXG | S_IRWXO))
    return make_error(errc::invalid_argument,
                      what + ": group or others may read it (chmod 600)");
  std::string line;
  std::getline(in, line);
  if (!line.empty() && line.back() == '\r')
    line.pop_back();
  if (line.empty())
    return make_error(errc::invalid_argument, what + ": is empty");
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
  } else if (const char* file = get("DCPP_SECRET_FILE"); file && *file) {
    auto text = read_secret_file(file);
    if (!text)
      return text.error();
    out.secret = std::move(*text);
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

std::string first_slurm_host(const std::string& list) {
  // The first entry ends at a comma outside brackets.
  auto open = list.find('[');
  auto comma = list.find(',');
  if (comma != std::string::npos && (open == std::string::npos || comma < open))
    return list.substr(0, comma);
  if (open == std::string::npos)
    return list;
  auto close = list.find(']', open);
  if (close == std::string::npos)
    return {};
  // "node[07-09,12]": the prefix and the first number of the first range,
  // zero padding kept.
  auto ranges = list.substr(open + 1, close - open - 1);
  auto first = ranges.substr(0, ranges.find_first_of(",-"));
  if (first.empty()
      || first.find_first_not_of("0123456789") != std::string::npos)
    return {};
  auto suffix_end = list.find(',', close);
  auto suffix = list.substr(close + 1, suffix_end == std::string::npos
                                         ? std::string::npos
                                         : suffix_end - close - 1);
  return list.substr(0, open) + first + suffix;
}

} // namespace dcpp
