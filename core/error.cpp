#include "core/error.hpp"

#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace dcpp {

std::string to_string(errc x) {
  switch (x) {
    case errc::none: return "none";
    case errc::missing_key: return "missing_key";
    case errc::shape_mismatch: return "shape_mismatch";
    case errc::dtype_mismatch: return "dtype_mismatch";
    case errc::kind_mismatch: return "kind_mismatch";
    case errc::unknown_dtype: return "unknown_dtype";
    case errc::overlapping_chunks: return "overlapping_chunks";
    case errc::incomplete_chunks: return "incomplete_chunks";
    case errc::chunk_out_of_bounds: return "chunk_out_of_bounds";
    case errc::conflicting_item: return "conflicting_item";
    case errc::invalid_argument: return "invalid_argument";
    case errc::corrupt_metadata: return "corrupt_metadata";
    case errc::corrupt_item: return "corrupt_item";
    case errc::checksum_mismatch: return "checksum_mismatch";
    case errc::io_error: return "io_error";
    case errc::not_found: return "not_found";
    case errc::path_escape: return "path_escape";
    case errc::too_large: return "too_large";
    case errc::timeout: return "timeout";
    case errc::rank_lost: return "rank_lost";
    case errc::checkpoint_failed: return "checkpoint_failed";
    case errc::protocol_error: return "protocol_error";
    case errc::unauthorized: return "unauthorized";
    case errc::storage_failure: return "storage_failure";
    case errc::aborted: return "aborted";
    case errc::unsupported: return "unsupported";
    case errc::injected_fault: return "injected_fault";
    case errc::num_values: break;
  }
  return "<invalid errc " + std::to_string(static_cast<int>(x)) + ">";
}

caf::error make_error(errc x) {
  return caf::error{static_cast<uint8_t>(x), error_category};
}

caf::error make_error(errc x, std::string context) {
  return caf::error{static_cast<uint8_t>(x), error_category,
                    caf::make_message(std::move(context))};
}

errc code_of(const caf::error& err) {
  if (!err || err.category() != error_category)
    return errc::none;
  return static_cast<errc>(err.code());
}

std::string context_of(const caf::error& err) {
  if (!err)
    return {};
  const auto& ctx = err.context();
  // The rendered text comes first; structured data may follow it.
  if (!ctx.empty() && ctx.match_element<std::string>(0))
    return ctx.get_as<std::string>(0);
  if (ctx.empty())
    return {};
  return caf::to_string(ctx);
}

std::string describe(const caf::error& err) {
  if (!err)
    return "no error";
  if (err.category() == error_category) {
    auto str = "dcpp::" + to_string(static_cast<errc>(err.code()));
    auto ctx = context_of(err);
    if (!ctx.empty())
      str += ": " + ctx;
    return str;
  }
  if (err.category() == caf::atom("system"))
    return "caf::" + caf::to_string(static_cast<caf::sec>(err.code()));
  return caf::to_string(err);
}

caf::error with_context(const caf::error& err, const std::string& prefix,
                        errc fallback) {
  if (!err)
    return err;
  if (err.category() == error_category) {
    auto ctx = context_of(err);
    return make_error(static_cast<errc>(err.code()),
                      ctx.empty() ? prefix : prefix + ": " + ctx);
  }
  return make_error(fallback, prefix + ": " + describe(err));
}

std::string to_string(const checkpoint_failure& x) {
  std::string out = x.op + " failed in step " + x.step + ":";
  bool first = true;
  for (const auto& [rank, err] : x.failures) {
    out += first ? " " : "; ";
    first = false;
    out += "rank " + std::to_string(rank) + ": " + describe(err);
  }
  if (x.failures.empty())
    out += " (no rank reported an error)";
  return out;
}

caf::error make_checkpoint_failure(checkpoint_failure x) {
  auto text = to_string(x);
  return caf::error{static_cast<uint8_t>(errc::checkpoint_failed),
                    error_category,
                    caf::make_message(std::move(text), std::move(x))};
}

const checkpoint_failure* checkpoint_failure_of(const caf::error& err) {
  if (code_of(err) != errc::checkpoint_failed)
    return nullptr;
  const auto& ctx = err.context();
  if (ctx.size() != 2 || !ctx.match_element<checkpoint_failure>(1))
    return nullptr;
  return &ctx.get_as<checkpoint_failure>(1);
}

} // namespace dcpp
