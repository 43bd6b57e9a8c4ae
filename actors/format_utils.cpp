#include "actors/format_utils.hpp"

#include "actors/checkpointer.hpp"
#include "core/error.hpp"

#include <utility>

namespace dcpp {

caf::expected<metadata> import_torch_save(const std::string& path,
                                          storage_writer_ptr writer,
                                          const torch_save_limits& limits) {
  auto sd = read_torch_save(path, limits);
  if (!sd)
    return std::move(sd.error());
  // Keys that collide only once flattened ({"a.b": x, "a": {"b": y}}) fail
  // here, before the writer is touched.
  if (auto flat = flatten(*sd); !flat)
    return with_context(flat.error(), path, errc::invalid_argument);
  checkpointer_options opts;
  opts.no_dist = true;
  checkpointer cp{std::move(writer), nullptr, opts};
  return cp.save(*sd);
}

} // namespace dcpp
