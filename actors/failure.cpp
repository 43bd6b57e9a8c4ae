#include "actors/failure.hpp"

#include "core/error.hpp"

#include <cctype>

namespace dcpp {

caf::error
make_checkpoint_failure(const op_id& op, const std::string& step,
                        const std::map<int32_t, caf::error>& failures) {
  std::string ctx = to_string(op) + " failed in step " + step + ":";
  bool first = true;
  for (const auto& [rank, err] : failures) {
    ctx += first ? " " : "; ";
    first = false;
    ctx += "rank " + std::to_string(rank) + ": " + describe(err);
  }
  if (failures.empty())
    ctx += " (no rank reported an error)";
  return make_error(errc::checkpoint_failed, std::move(ctx));
}

caf::optional<checkpoint_failure>
parse_checkpoint_failure(const caf::error& err) {
  if (code_of(err) != errc::checkpoint_failed)
    return caf::none;
  auto ctx = context_of(err);
  static const std::string failed_in = " failed in step ";
  auto pos = ctx.find(failed_in);
  if (pos == std::string::npos)
    return caf::none;
  checkpoint_failure out;
  out.op = ctx.substr(0, pos);
  auto step_begin = pos + failed_in.size();
  auto colon = ctx.find(':', step_begin);
  if (colon == std::string::npos)
    return caf::none;
  out.step = ctx.substr(step_begin, colon - step_begin);
  // Entries are separated by "; rank "; an entry's text may itself contain
  // "; " but not "; rank <digits>: ".
  auto rest = ctx.substr(colon + 1);
  size_t i = 0;
  auto next_entry = [&](size_t from) -> size_t {
    for (auto p = rest.find("; rank ", from); p != std::string::npos;
         p = rest.find("; rank ", p + 1)) {
      auto q = p + 7;
      auto digits = q;
      while (digits < rest.size() && isdigit(static_cast<unsigned char>(rest[digits])))
        ++digits;
      if (digits > q && rest.compare(digits, 2, ": ") == 0)
        return p;
    }
    return std::string::npos;
  };
  if (rest.compare(0, 6, " rank ") != 0)
    return out; // no entries
  i = 1;
  while (i < rest.size()) {
    auto end = next_entry(i);
    auto entry = rest.substr(i, end == std::string::npos ? std::string::npos
                                                         : end - i);
    // entry: "rank <r>: <text>"
    auto sep = entry.find(": ");
    if (entry.compare(0, 5, "rank ") == 0 && sep != std::string::npos) {
      auto rank = std::stol(entry.substr(5, sep - 5));
      out.failures[static_cast<int32_t>(rank)] = entry.substr(sep + 2);
    }
    if (end == std::string::npos)
      break;
    i = end + 2;
  }
  return out;
}

} // namespace dcpp
