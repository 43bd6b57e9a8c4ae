#include "actors/format_utils.hpp"

#include "actors/checkpointer.hpp"
#include "core/error.hpp"
#include "core/unflatten.hpp"

#include <map>
#include <utility>
#include <vector>

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

caf::expected<metadata>
export_torch_save(storage_reader_ptr reader, const std::string& path,
                  const torch_save_export_options& opts) {
  if (!reader)
    return make_error(errc::invalid_argument,
                      "export_torch_save: no storage reader");
  auto md = reader->read_metadata();
  if (!md)
    return std::move(md.error());
  std::vector<std::string> fqns;
  fqns.reserve(md->state_dict_metadata.size());
  for (const auto& [fqn, item] : md->state_dict_metadata)
    fqns.push_back(fqn);
  auto tree = unflatten(fqns, opts.flat ? flatten_mapping{} : md->planner_data);
  if (!tree)
    return std::move(tree.error());
  // Loaded by flat key (the request names each key once, at the top level),
  // then nested by the tree.
  auto flat_md = *md;
  flat_md.planner_data.clear();
  auto sd = make_state_dict_for(flat_md);
  checkpointer_options copts;
  copts.no_dist = true;
  checkpointer cp{nullptr, std::move(reader), copts};
  if (auto err = cp.load(sd))
    return err;
  std::map<std::string, const value*> values;
  torch_save_write_options wopts;
  for (const auto& [key, v] : sd.entries()) {
    values.emplace(key, &v);
    if (auto saved = sd.carried_dtype(key))
      wopts.carried.emplace(key, *saved);
  }
  wopts.restore_optimizer_keys = opts.restore_optimizer_keys;
  if (auto err = write_torch_save(path, *tree, values, wopts))
    return err;
  return md;
}

} // namespace dcpp
