// Rebuilding the nesting of a flattened state dict from its flatten
// mapping (DCP's unflatten_state_dict), and refusing mappings that cannot
// describe one tree.

#include "core/unflatten.hpp"

#include "core/error.hpp"

#include <catch2/catch.hpp>

using namespace dcpp;

namespace {

using kind = nested_node::kind;

const nested_node& child(const nested_node& node, const std::string& name) {
  for (const auto& [key, x] : node.children)
    if (key == name)
      return x;
  FAIL("no child '" << name << "'");
  static nested_node none;
  return none;
}

std::string refusal(const std::vector<std::string>& fqns,
                    const flatten_mapping& mapping,
                    const unflatten_limits& limits = {}) {
  auto res = unflatten(fqns, mapping, limits);
  REQUIRE(!res);
  CHECK(code_of(res.error()) == errc::corrupt_metadata);
  return context_of(res.error());
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

} // namespace

TEST_CASE("a training checkpoint nests again: dicts, lists, top-level keys",
          "[unflatten]") {
  auto pos = path_element::position;
  std::vector<std::string> fqns{"epoch",
                                "model.w",
                                "optim.param_groups.0.lr",
                                "optim.param_groups.1.lr",
                                "optim.state.0.exp_avg",
                                "x.2"};
  flatten_mapping mapping{
    {"model.w", {"model", "w"}},
    {"optim.param_groups.0.lr", {"optim", "param_groups", pos(0), "lr"}},
    {"optim.param_groups.1.lr", {"optim", "param_groups", pos(1), "lr"}},
    {"optim.state.0.exp_avg", {"optim", "state", "0", "exp_avg"}},
    {"x.2", {"x", pos(2)}},
  };
  auto root = unflatten(fqns, mapping);
  REQUIRE(root);
  CHECK(root->type == kind::dict);
  REQUIRE(root->children.size() == 4);
  CHECK(root->children[0].first == "epoch");
  CHECK(child(*root, "epoch").type == kind::leaf);
  CHECK(child(*root, "epoch").fqn == "epoch");
  CHECK(child(child(*root, "model"), "w").fqn == "model.w");
  const auto& optim = child(*root, "optim");
  const auto& groups = child(optim, "param_groups");
  CHECK(groups.type == kind::list);
  REQUIRE(groups.children.size() == 2);
  CHECK(child(groups.children[1].second, "lr").fqn
        == "optim.param_groups.1.lr");
  // A dict whose keys were ints is a dict keyed by str, as DCP records it.
  const auto& state = child(optim, "state");
  CHECK(state.type == kind::dict);
  CHECK(child(child(state, "0"), "exp_avg").fqn == "optim.state.0.exp_avg");
  // Positions no key fills are None, as DCP pads a list.
  const auto& x = child(*root, "x");
  CHECK(x.type == kind::list);
  REQUIRE(x.children.size() == 3);
  CHECK(x.children[0].second.type == kind::none);
  CHECK(x.children[1].second.type == kind::none);
  CHECK(x.children[2].second.fqn == "x.2");
}

TEST_CASE("without a mapping every key stays flat", "[unflatten]") {
  auto root = unflatten({"a.b", "c"}, {});
  REQUIRE(root);
  REQUIRE(root->children.size() == 2);
  CHECK(root->children[0].first == "a.b");
  CHECK(root->children[0].second.fqn == "a.b");
}

TEST_CASE("a mapping that is not one tree is refused, naming the key",
          "[unflatten]") {
  auto pos = path_element::position;
  SECTION("a key the checkpoint lacks") {
    auto why = refusal({"a.b"}, {{"a.b", {"a", "b"}}, {"ghost", {"g", "h"}}});
    CHECK(contains(why, "key 'ghost'"));
    CHECK(contains(why, "is not a key of the checkpoint"));
  }
  SECTION("a path through another key's value") {
    auto why = refusal({"a", "a.b"}, {{"a.b", {"a", "b"}}});
    CHECK(contains(why, "key 'a.b' maps to ('a', 'b')"));
    CHECK(contains(why, "runs through the value of key 'a'"));
  }
  SECTION("a path ending on a container") {
    auto why = refusal({"a.b", "z"}, {{"a.b", {"a", "b"}}, {"z", {"a"}}});
    CHECK(contains(why, "key 'z' maps to ('a',)"));
    CHECK(contains(why, "holds the values of other keys (e.g. 'a.b')"));
  }
  SECTION("two keys on one path") {
    auto why = refusal({"p", "q"}, {{"p", {"m", "n"}}, {"q", {"m", "n"}}});
    CHECK(contains(why, "key 'q' and key 'p' both map to ('m', 'n')"));
  }
  SECTION("a position where a dict is") {
    auto why = refusal({"a.b", "a.0"},
                       {{"a.b", {"a", "b"}}, {"a.0", {"a", pos(0)}}});
    CHECK(contains(why, "key 'a.0'"));
    CHECK(contains(why, "needs a list where other keys (e.g. 'a.b') have a "
                        "dict"));
  }
  SECTION("a key where a list is") {
    auto why = refusal({"l.0.x", "l.0.y", "l.k"},
                       {{"l.0.x", {"l", pos(0), "x"}},
                        {"l.0.y", {"l", pos(0), "y"}},
                        {"l.k", {"l", "k"}}});
    CHECK(contains(why, "key 'l.k'"));
    CHECK(contains(why, "needs a dict where other keys (e.g. 'l.0.x') have "
                        "a list"));
  }
  SECTION("an empty path") {
    CHECK(contains(refusal({"e"}, {{"e", {}}}), "key 'e' has an empty path"));
  }
  SECTION("a position at the top level") {
    CHECK(contains(refusal({"t"}, {{"t", {pos(0)}}}),
                   "key 't' maps to (0,), a list position at the top level"));
  }
  SECTION("a position far beyond the keys (no unbounded padding)") {
    unflatten_limits limits;
    limits.max_padding = 10;
    auto why = refusal({"l.1000000"}, {{"l.1000000", {"l", pos(1000000)}}},
                       limits);
    CHECK(contains(why, "key 'l.1000000'"));
    CHECK(contains(why, "list position 1000000 is beyond any list"));
  }
  SECTION("a position that is not a number") {
    path_element bad{"x1"};
    bad.index = true;
    CHECK(contains(refusal({"l"}, {{"l", {"l", bad}}}),
                   "key 'l' maps to ('l', x1): list position 'x1' is not "
                   "a number"));
  }
}
