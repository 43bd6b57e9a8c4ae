#include "storage/pickle_emitter.hpp"

#include "storage/little_endian.hpp"

#include <limits>
#include <string_view>
#include <utility>

namespace dcpp::detail {

namespace {

/// Emits protocol-2 pickle opcodes with memoization exactly as CPython's
/// pickler does for `_rebuild_tensor_v2` arguments, so that the output
/// matches Python's torch.save byte for byte.
class pickle_emitter {
public:
  std::string out;

  void proto() {
    out += "\x80\x02";
  }

  void memoize() {
    if (memo_ < 256) {
      out += 'q';
      out += static_cast<char>(memo_);
    } else {
      out += 'r';
      put32(out, memo_);
    }
    ++memo_;
  }

  void global(std::string_view module, std::string_view name) {
    out += 'c';
    out += module;
    out += '\n';
    out += name;
    out += '\n';
    memoize();
  }

  void unicode(std::string_view str) {
    out += 'X';
    put32(out, static_cast<uint32_t>(str.size()));
    out += str;
    memoize();
  }

  void integer(int64_t x) {
    if (x >= 0 && x <= 0xFF) {
      out += 'K';
      out += static_cast<char>(x);
    } else if (x >= 0 && x <= 0xFFFF) {
      out += 'M';
      put16(out, static_cast<uint16_t>(x));
    } else if (x >= std::numeric_limits<int32_t>::min()
               && x <= std::numeric_limits<int32_t>::max()) {
      out += 'J';
      put32(out, static_cast<uint32_t>(static_cast<int32_t>(x)));
    } else {
      // LONG1: little-endian two's complement, minimal length.
      std::string bytes;
      auto u = static_cast<uint64_t>(x);
      for (int i = 0; i < 8; ++i)
        bytes += static_cast<char>(u >> (8 * i));
      auto msb = [](char c) {
        return (static_cast<unsigned char>(c) & 0x80) != 0;
      };
      while (bytes.size() > 1) {
        auto last = static_cast<unsigned char>(bytes.back());
        auto prev = bytes[bytes.size() - 2];
        if ((last == 0x00 && !msb(prev)) || (last == 0xFF && msb(prev)))
          bytes.pop_back();
        else
          break;
      }
      out += '\x8a';
      out += static_cast<char>(bytes.size());
      out += bytes;
    }
  }

  void tuple(int_list xs) {
    if (xs.empty()) {
      out += ')';
      return;
    }
    if (xs.size() <= 3) {
      for (auto x : xs)
        integer(x);
      out += static_cast<char>(0x84 + xs.size()); // TUPLE1..TUPLE3
    } else {
      out += '(';
      for (auto x : xs)
        integer(x);
      out += 't';
    }
    memoize();
  }

private:
  uint32_t memo_ = 0;
};

} // namespace

std::string tensor_pickle(dtype type, int64_t storage_numel, int_list sizes,
                          int_list strides) {
  // A dtype without a typed storage class (torch 2.x's uint16, float8_*...)
  // is pickled as 2.x does: `_rebuild_tensor_v3` over a
  // `torch.storage.UntypedStorage` sized in bytes, the dtype as the 7th
  // argument.
  const bool v3 = storage_class_name(type).empty();
  pickle_emitter p;
  p.proto();
  p.global("torch._utils", v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
  p.out += '('; // MARK: the arguments
  p.out += '('; // MARK: the persistent id of the storage
  p.unicode("storage");
  if (v3)
    p.global("torch.storage", "UntypedStorage");
  else
    p.global("torch", storage_class_name(type));
  p.unicode("0");
  p.unicode("cpu");
  p.integer(v3 ? storage_numel * static_cast<int64_t>(element_size(type))
               : storage_numel);
  p.out += 't';
  p.memoize();
  p.out += 'Q'; // BINPERSID
  p.integer(0); // storage offset
  p.tuple(sizes);
  p.tuple(strides);
  p.out += '\x89'; // requires_grad: NEWFALSE
  p.global("collections", "OrderedDict");
  p.out += ")R"; // OrderedDict(): no backward hooks
  p.memoize();
  if (v3)
    p.global("torch", to_string(type));
  p.out += 't';
  p.memoize();
  p.out += 'R';
  p.memoize();
  p.out += '.';
  return std::move(p.out);
}

} // namespace dcpp::detail
