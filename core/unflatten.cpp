#include "core/unflatten.hpp"

#include "core/error.hpp"

#include <unordered_map>
#include <unordered_set>

namespace dcpp {

namespace {

using kind = nested_node::kind;

class builder {
public:
  builder(size_t keys, const unflatten_limits& limits)
    : max_position_(keys + limits.max_padding) {
    // nop
  }

  caf::error place(const std::string& fqn, const object_path& path) {
    if (path.empty())
      return fail(fqn, "has an empty path");
    if (path.front().index)
      return fail(fqn, "maps to " + to_string(path)
                         + ", a list position at the top level (the top "
                           "level is a dict)");
    nested_node* node = &root_;
    std::string prefix;
    for (size_t i = 0; i < path.size(); ++i) {
      bool last = i + 1 == path.size();
      auto child = step(fqn, path, i, prefix, *node);
      if (!child)
        return std::move(child.error());
      nested_node& x = **child;
      if (last) {
        if (x.type == kind::leaf)
          return fail(fqn,
                      "and key '" + x.fqn + "' both map to " + to_string(path));
        if (x.type != kind::none)
          return fail(fqn, "maps to " + to_string(path)
                             + ", which holds the values of other keys (e.g. '"
                             + some_leaf(x) + "')");
        x.type = kind::leaf;
        x.fqn = fqn;
        return {};
      }
      auto want = path[i + 1].index ? kind::list : kind::dict;
      if (x.type == kind::none) {
        x.type = want;
      } else if (x.type == kind::leaf) {
        return fail(fqn, "maps to " + to_string(path)
                           + ", which runs through the value of key '" + x.fqn
                           + "'");
      } else if (x.type != want) {
        return fail(fqn, "maps to " + to_string(path) + ", which needs a "
                           + (want == kind::list ? "list" : "dict")
                           + " where other keys (e.g. '" + some_leaf(x)
                           + "') have a "
                           + (x.type == kind::list ? "list" : "dict"));
      }
      node = &x;
    }
    return {};
  }

  nested_node result() && {
    return std::move(root_);
  }

private:
  static caf::error fail(const std::string& fqn, const std::string& what) {
    return make_error(errc::corrupt_metadata,
                      "planner_data: key '" + fqn + "' " + what);
  }

  /// The child of `node` at `path[i]`, created as `none` if absent.
  /// `prefix` names `node` (the path so far) and is extended by `path[i]`.
  caf::expected<nested_node*> step(const std::string& fqn,
                                   const object_path& path, size_t i,
                                   std::string& prefix, nested_node& node) {
    const auto& element = path[i];
    auto& index = children_[prefix];
    prefix += std::to_string(element.key.size()) + ':' + element.key;
    if (node.type == kind::dict) {
      if (element.index)
        return fail(fqn, "maps to " + to_string(path) + ": position "
                           + element.key + " where other keys have a dict");
      auto it = index.find(element.key);
      if (it != index.end())
        return &node.children[it->second].second;
      index.emplace(element.key, node.children.size());
      node.children.emplace_back(element.key, nested_node{kind::none, {}, {}});
      return &node.children.back().second;
    }
    // A list (the caller made it one because this element is a position).
    if (!element.index)
      return fail(fqn, "maps to " + to_string(path) + ": key '" + element.key
                         + "' where other keys have a list");
    if (element.key.empty() || element.key.size() > 18
        || element.key.find_first_not_of("0123456789") != std::string::npos)
      return fail(fqn, "maps to " + to_string(path) + ": list position '"
                         + element.key + "' is not a number");
    if (std::stoull(element.key) > max_position_)
      return fail(fqn, "maps to " + to_string(path) + ": list position "
                         + element.key
                         + " is beyond any list of this "
                           "checkpoint");
    auto pos = std::stoull(element.key);
    while (node.children.size() <= pos)
      node.children.emplace_back(std::to_string(node.children.size()),
                                 nested_node{kind::none, {}, {}});
    return &node.children[pos].second;
  }

  /// A key below `x`, for messages.
  static std::string some_leaf(const nested_node& x) {
    if (x.type == kind::leaf)
      return x.fqn;
    for (const auto& [name, child] : x.children)
      if (auto found = some_leaf(child); !found.empty())
        return found;
    return {};
  }

  nested_node root_;
  size_t max_position_;
  // Position of each key among a dict's children (dicts may be wide), by
  // the dict's path: nodes move as their siblings' vectors grow.
  std::unordered_map<std::string, std::unordered_map<std::string, size_t>>
    children_;
};

} // namespace

caf::expected<nested_node> unflatten(const std::vector<std::string>& fqns,
                                     const flatten_mapping& mapping,
                                     const unflatten_limits& limits) {
  std::unordered_set<std::string> known(fqns.begin(), fqns.end());
  for (const auto& [key, path] : mapping)
    if (known.count(key) == 0)
      return make_error(errc::corrupt_metadata,
                        "planner_data: key '" + key + "' (path "
                          + to_string(path)
                          + ") is not a key of the checkpoint");
  builder b{fqns.size(), limits};
  for (const auto& fqn : fqns) {
    auto i = mapping.find(fqn);
    auto err = i != mapping.end() ? b.place(fqn, i->second)
                                  : b.place(fqn, object_path{fqn});
    if (err)
      return err;
  }
  return std::move(b).result();
}

} // namespace dcpp
