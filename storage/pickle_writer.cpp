// The pickle writer of `pickle::write` (storage/pickle.hpp): protocol 2,
// the subset of opcodes that `.metadata` needs (see docs/dcp-format.md,
// section 2.6).

#include "storage/pickle.hpp"
#include "storage/pickle_opcodes.hpp"

#include <cstring>
#include <string>

namespace dcpp::pickle {

// -- writer -------------------------------------------------------------------

namespace {

class writer {
public:
  std::string out;

  void emit(const value* x) {
    if (!x) {
      out += static_cast<char>(op::none);
      return;
    }
    switch (x->k) {
      case kind::none:
      case kind::mark: out += static_cast<char>(op::none); break;
      case kind::boolean:
        out += static_cast<char>(x->b ? op::newtrue : op::newfalse);
        break;
      case kind::integer: emit_int(x->i); break;
      case kind::floating: {
        uint64_t raw;
        std::memcpy(&raw, &x->f, sizeof(raw));
        out += static_cast<char>(op::binfloat);
        for (int i = 7; i >= 0; --i)
          out += static_cast<char>((raw >> (8 * i)) & 0xff);
        break;
      }
      case kind::string: emit_text(x->s); break;
      case kind::bytes:
        // Protocol 3 opcodes; every Python 3 reads them in any pickle.
        if (x->s.size() < 256) {
          out += static_cast<char>(op::short_binbytes);
          out += static_cast<char>(x->s.size());
        } else if (x->s.size() <= UINT32_MAX) {
          out += static_cast<char>(op::binbytes);
          emit_le(x->s.size(), 4);
        } else {
          out += static_cast<char>(op::binbytes8);
          emit_le(x->s.size(), 8);
        }
        out += x->s;
        break;
      case kind::tuple: emit_tuple(x->items); break;
      case kind::list:
        out += static_cast<char>(op::empty_list);
        if (!x->items.empty()) {
          out += static_cast<char>(op::mark);
          for (const auto& item : x->items)
            emit(item.get());
          out += static_cast<char>(op::appends);
        }
        break;
      case kind::dict:
        out += static_cast<char>(op::empty_dict);
        if (!x->items.empty()) {
          out += static_cast<char>(op::mark);
          for (const auto& item : x->items)
            emit(item.get());
          if (x->items.size() % 2 != 0)
            out += static_cast<char>(op::none);
          out += static_cast<char>(op::setitems);
        }
        break;
      case kind::global: emit_global(x->s, x->name); break;
      case kind::object: emit_object(*x); break;
      case kind::persid:
        emit(x->items.empty() ? nullptr : x->items[0].get());
        out += static_cast<char>(op::binpersid);
        break;
    }
  }

private:
  void emit_le(uint64_t x, size_t n) {
    for (size_t i = 0; i < n; ++i)
      out += static_cast<char>((x >> (8 * i)) & 0xff);
  }

  /// As Python's pickler at protocol 2: BININT1 / BININT2 for small
  /// non-negative values, BININT for int32, LONG1 (shortest two's
  /// complement) beyond.
  void emit_int(int64_t x) {
    if (x >= 0 && x <= 0xff) {
      out += static_cast<char>(op::binint1);
      emit_le(static_cast<uint64_t>(x), 1);
    } else if (x >= 0 && x <= 0xffff) {
      out += static_cast<char>(op::binint2);
      emit_le(static_cast<uint64_t>(x), 2);
    } else if (x >= INT32_MIN && x <= INT32_MAX) {
      out += static_cast<char>(op::binint);
      emit_le(static_cast<uint32_t>(static_cast<int32_t>(x)), 4);
    } else {
      uint64_t raw;
      std::memcpy(&raw, &x, sizeof(raw));
      uint8_t bytes[8];
      for (size_t i = 0; i < 8; ++i)
        bytes[i] = static_cast<uint8_t>((raw >> (8 * i)) & 0xff);
      size_t n = 8;
      while (n > 1) {
        auto hi = bytes[n - 1];
        auto next_sign = bytes[n - 2] & 0x80;
        if ((hi == 0x00 && next_sign == 0) || (hi == 0xff && next_sign != 0))
          --n;
        else
          break;
      }
      out += static_cast<char>(op::long1);
      out += static_cast<char>(n);
      out.append(reinterpret_cast<const char*>(bytes), n);
    }
  }

  void emit_text(const std::string& str) {
    if (str.size() <= UINT32_MAX) {
      out += static_cast<char>(op::binunicode);
      emit_le(str.size(), 4);
    } else {
      out += static_cast<char>(op::binunicode8);
      emit_le(str.size(), 8);
    }
    out += str;
  }

  void emit_tuple(const std::vector<value_ptr>& items) {
    static constexpr uint8_t small[] = {op::empty_tuple, op::tuple1, op::tuple2,
                                        op::tuple3};
    if (items.size() > 3)
      out += static_cast<char>(op::mark);
    for (const auto& item : items)
      emit(item.get());
    out += static_cast<char>(items.size() > 3 ? op::tuple
                                              : small[items.size()]);
  }

  void emit_global(const std::string& module, const std::string& name) {
    if (module.find('\n') == std::string::npos
        && name.find('\n') == std::string::npos) {
      out += static_cast<char>(op::global);
      out += module;
      out += '\n';
      out += name;
      out += '\n';
      return;
    }
    // GLOBAL cannot spell a newline; STACK_GLOBAL (protocol 4) can.
    emit_text(module);
    emit_text(name);
    out += static_cast<char>(op::stack_global);
  }

  void emit_object(const value& x) {
    auto item = [&x](size_t i) -> const value* {
      return i < x.items.size() ? x.items[i].get() : nullptr;
    };
    emit(item(0));
    if (auto args = item(1))
      emit(args);
    else
      out += static_cast<char>(op::empty_tuple);
    if (x.items.size() > 2) {
      emit(item(2));
      out += static_cast<char>(op::newobj_ex);
    } else {
      out += static_cast<char>(x.newobj ? op::newobj : op::reduce);
    }
    if (!x.dictitems.empty()) {
      out += static_cast<char>(op::mark);
      for (const auto& item : x.dictitems)
        emit(item.get());
      out += static_cast<char>(op::setitems);
    }
    if (x.state) {
      emit(x.state.get());
      out += static_cast<char>(op::build);
    }
  }
};

} // namespace

std::string write(const value& x) {
  writer w;
  w.out += static_cast<char>(op::proto);
  w.out += static_cast<char>(2);
  w.emit(&x);
  w.out += static_cast<char>(op::stop);
  return std::move(w.out);
}

} // namespace dcpp::pickle
