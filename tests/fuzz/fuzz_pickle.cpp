// Fuzz target: the restricted pickle VM (storage/pickle.hpp).
//
// Properties, for any input:
// - `pickle::read` returns a value or `errc::corrupt_metadata` (no crash,
//   no hang, no allocation beyond the input's size);
// - a value it returns survives `pickle::write` and `pickle::read` again,
//   equal in structure, and writing that copy gives the same bytes.
//
// The writer has no memo: a value that shares sub-values (through the
// reader's memo) is written once per use, so its size can grow exponentially
// with the input. Values whose expanded size exceeds a fixed budget skip the
// round trip (documented behaviour, not a bug).

#include "core/error.hpp"
#include "storage/pickle.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>

using namespace dcpp;
using pickle::kind;
using pickle::value;
using pickle::value_ptr;

namespace {

/// Bytes of the value tree once shared references are expanded.
constexpr uint64_t max_expanded = uint64_t{1} << 22;

/// Expanded size of `x`, saturating at `max_expanded + 1`.
uint64_t expanded_size(const value* x,
                       std::unordered_map<const value*, uint64_t>& cache) {
  if (x == nullptr)
    return 1;
  if (auto i = cache.find(x); i != cache.end())
    return i->second;
  uint64_t total = 1 + x->s.size() + x->name.size();
  auto add = [&](uint64_t n) { total = std::min(total + n, max_expanded + 1); };
  for (const auto& item : x->items)
    add(expanded_size(item.get(), cache));
  for (const auto& item : x->dictitems)
    add(expanded_size(item.get(), cache));
  add(expanded_size(x->state.get(), cache));
  cache.emplace(x, total);
  return total;
}

bool same_bits(double x, double y) {
  uint64_t a;
  uint64_t b;
  std::memcpy(&a, &x, sizeof(a));
  std::memcpy(&b, &y, sizeof(b));
  return a == b;
}

/// Structural equality (shared references compare by content).
bool same(const value* x, const value* y) {
  if (x == nullptr || y == nullptr)
    return x == y;
  if (x->k != y->k || x->b != y->b || x->i != y->i || !same_bits(x->f, y->f)
      || x->s != y->s || x->name != y->name || x->newobj != y->newobj
      || x->items.size() != y->items.size()
      || x->dictitems.size() != y->dictitems.size())
    return false;
  for (size_t i = 0; i < x->items.size(); ++i)
    if (!same(x->items[i].get(), y->items[i].get()))
      return false;
  for (size_t i = 0; i < x->dictitems.size(); ++i)
    if (!same(x->dictitems[i].get(), y->dictitems[i].get()))
      return false;
  return same(x->state.get(), y->state.get());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes{reinterpret_cast<const char*>(data), size};
  auto result = pickle::read(bytes);
  if (!result) {
    DCPP_FUZZ_CHECK(code_of(result.error()) == errc::corrupt_metadata,
                    describe(result.error()));
    return 0;
  }
  const auto& root = *result;
  DCPP_FUZZ_CHECK(root != nullptr, "read returned no value");
  std::unordered_map<const value*, uint64_t> cache;
  if (expanded_size(root.get(), cache) > max_expanded)
    return 0;
  auto written = pickle::write(*root);
  auto again = pickle::read(written);
  DCPP_FUZZ_CHECK(again, "re-reading the written pickle failed: "
                           + describe(again.error()));
  DCPP_FUZZ_CHECK(same(root.get(), again->get()),
                  "the written pickle reads back as a different value");
  DCPP_FUZZ_CHECK(pickle::write(**again) == written,
                  "writing the copy gives different bytes");
  return 0;
}
