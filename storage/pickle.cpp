#include "storage/pickle.hpp"

#include "core/error.hpp"
#include "storage/pickle_opcodes.hpp"

#include <cstring>
#include <unordered_map>

// How the reader stays safe on hostile input:
//
// - Every length read from the input is checked against the bytes left
//   before anything is allocated, and every opcode consumes at least one
//   byte, so the number of values (and of container slots) is bounded by
//   the input size.
// - Values are built in place (pickle mutates lists, dicts and objects after
//   creating and memoizing them), but a value may only be mutated while no
//   other value contains it, and never with itself. That makes cycles
//   impossible, so every value can be destroyed and walked recursively.
// - Each value records its nesting depth exactly (possible because of the
//   rule above) and the reader refuses anything deeper than
//   `read_limits::max_depth`; MARK nesting has the same limit.
// - The memo is a hash map with at most `read_limits::max_memo` entries, so
//   a huge BINPUT index allocates nothing.
// - Stack pops below the current MARK are "stack underflow" errors, exactly
//   like CPython's unpickler.

namespace dcpp::pickle {

// -- value --------------------------------------------------------------------

const char* kind_name(kind k) {
  switch (k) {
    case kind::none: return "None";
    case kind::boolean: return "bool";
    case kind::integer: return "int";
    case kind::floating: return "float";
    case kind::string: return "str";
    case kind::bytes: return "bytes";
    case kind::tuple: return "tuple";
    case kind::list: return "list";
    case kind::dict: return "dict";
    case kind::global: return "global";
    case kind::object: return "object";
    case kind::persid: return "persistent id";
    case kind::mark: return "mark";
  }
  return "?";
}

value_ptr value::get(std::string_view key) const {
  if (k != kind::dict)
    return nullptr;
  // The last matching pair wins, as in a Python dict built by SETITEMS.
  for (size_t i = items.size(); i >= 2; i -= 2) {
    const auto& key_ptr = items[i - 2];
    if (key_ptr && key_ptr->k == kind::string && key_ptr->s == key)
      return items[i - 1];
  }
  return nullptr;
}

std::string value::global_name() const {
  if (k == kind::global)
    return name;
  if (k == kind::object && !items.empty() && items[0]
      && items[0]->k == kind::global)
    return items[0]->name;
  return {};
}

std::string value::global_module() const {
  if (k == kind::global)
    return s;
  if (k == kind::object && !items.empty() && items[0]
      && items[0]->k == kind::global)
    return items[0]->s;
  return {};
}

// -- factories ----------------------------------------------------------------

namespace {

std::shared_ptr<value> make_kind(kind k) {
  auto result = std::make_shared<value>();
  result->k = k;
  return result;
}

} // namespace

value_ptr make_none() {
  return make_kind(kind::none);
}

value_ptr make_bool(bool x) {
  auto result = make_kind(kind::boolean);
  result->b = x;
  return result;
}

value_ptr make_int(int64_t x) {
  auto result = make_kind(kind::integer);
  result->i = x;
  return result;
}

value_ptr make_float(double x) {
  auto result = make_kind(kind::floating);
  result->f = x;
  return result;
}

value_ptr make_string(std::string x) {
  auto result = make_kind(kind::string);
  result->s = std::move(x);
  return result;
}

value_ptr make_tuple(std::vector<value_ptr> xs) {
  auto result = make_kind(kind::tuple);
  result->items = std::move(xs);
  return result;
}

value_ptr make_list(std::vector<value_ptr> xs) {
  auto result = make_kind(kind::list);
  result->items = std::move(xs);
  return result;
}

value_ptr make_dict(std::vector<std::pair<value_ptr, value_ptr>> kvs) {
  auto result = make_kind(kind::dict);
  result->items.reserve(kvs.size() * 2);
  for (auto& [key, val] : kvs) {
    result->items.emplace_back(std::move(key));
    result->items.emplace_back(std::move(val));
  }
  return result;
}

value_ptr make_global(std::string module, std::string name) {
  auto result = make_kind(kind::global);
  result->s = std::move(module);
  result->name = std::move(name);
  return result;
}

value_ptr make_reduce(value_ptr callable, value_ptr args, value_ptr state) {
  auto result = make_kind(kind::object);
  result->items = {std::move(callable), std::move(args)};
  result->state = std::move(state);
  return result;
}

value_ptr make_ordered_dict(std::vector<std::pair<value_ptr, value_ptr>> kvs) {
  auto result = make_kind(kind::object);
  result->items = {make_global("collections", "OrderedDict"), make_tuple({})};
  for (auto& [key, val] : kvs) {
    result->dictitems.emplace_back(std::move(key));
    result->dictitems.emplace_back(std::move(val));
  }
  return result;
}

value_ptr make_newobj(value_ptr cls, value_ptr args, value_ptr state) {
  auto result = make_kind(kind::object);
  result->items = {std::move(cls), std::move(args)};
  result->state = std::move(state);
  result->newobj = true;
  return result;
}

value_ptr make_persid(value_ptr pid) {
  auto result = make_kind(kind::persid);
  result->items = {std::move(pid)};
  return result;
}

// -- reader -------------------------------------------------------------------

namespace {

const char* opcode_name(uint8_t code) {
  switch (code) {
    case op::mark: return "MARK";
    case op::stop: return "STOP";
    case op::pop: return "POP";
    case op::pop_mark: return "POP_MARK";
    case op::binint: return "BININT";
    case op::binint1: return "BININT1";
    case op::binint2: return "BININT2";
    case op::none: return "NONE";
    case op::binpersid: return "BINPERSID";
    case op::reduce: return "REDUCE";
    case op::binstring: return "BINSTRING";
    case op::short_binstring: return "SHORT_BINSTRING";
    case op::binunicode: return "BINUNICODE";
    case op::append: return "APPEND";
    case op::build: return "BUILD";
    case op::global: return "GLOBAL";
    case op::dict: return "DICT";
    case op::empty_dict: return "EMPTY_DICT";
    case op::appends: return "APPENDS";
    case op::get: return "GET";
    case op::binget: return "BINGET";
    case op::long_binget: return "LONG_BINGET";
    case op::list: return "LIST";
    case op::empty_list: return "EMPTY_LIST";
    case op::put: return "PUT";
    case op::binput: return "BINPUT";
    case op::long_binput: return "LONG_BINPUT";
    case op::setitem: return "SETITEM";
    case op::tuple: return "TUPLE";
    case op::empty_tuple: return "EMPTY_TUPLE";
    case op::setitems: return "SETITEMS";
    case op::binfloat: return "BINFLOAT";
    case op::proto: return "PROTO";
    case op::newobj: return "NEWOBJ";
    case op::tuple1: return "TUPLE1";
    case op::tuple2: return "TUPLE2";
    case op::tuple3: return "TUPLE3";
    case op::newtrue: return "NEWTRUE";
    case op::newfalse: return "NEWFALSE";
    case op::long1: return "LONG1";
    case op::long4: return "LONG4";
    case op::binbytes: return "BINBYTES";
    case op::short_binbytes: return "SHORT_BINBYTES";
    case op::short_binunicode: return "SHORT_BINUNICODE";
    case op::binunicode8: return "BINUNICODE8";
    case op::binbytes8: return "BINBYTES8";
    case op::empty_set: return "EMPTY_SET";
    case op::additems: return "ADDITEMS";
    case op::frozenset: return "FROZENSET";
    case op::newobj_ex: return "NEWOBJ_EX";
    case op::stack_global: return "STACK_GLOBAL";
    case op::memoize: return "MEMOIZE";
    case op::frame: return "FRAME";
    case op::bytearray8: return "BYTEARRAY8";
    default: return nullptr;
  }
}

std::string hex_byte(uint8_t x) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out = "0x";
  out += digits[x >> 4];
  out += digits[x & 0xf];
  return out;
}

/// Checks UTF-8 as Python's "utf-8" codec with "surrogatepass" does (the
/// pickle module decodes text that way): no overlong forms, nothing above
/// U+10FFFF, encoded surrogates allowed.
bool valid_utf8(std::string_view str) {
  size_t i = 0;
  auto n = str.size();
  while (i < n) {
    auto c = static_cast<uint8_t>(str[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len)
      return false;
    for (size_t j = 1; j < len; ++j) {
      auto cc = static_cast<uint8_t>(str[i + j]);
      if ((cc & 0xc0) != 0x80)
        return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static constexpr uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10ffff)
      return false;
    i += len;
  }
  return true;
}

/// A value under construction. Every value the reader makes is a `node`, so
/// the bookkeeping travels with the value (memo and stack share nodes).
struct node : value {
  /// Container nesting: 0 for scalars and globals, 1 + the deepest child
  /// otherwise.
  size_t depth = 0;
  /// Set once another value holds this one; it may no longer be mutated.
  bool contained = false;
  /// Made by EMPTY_SET: ADDITEMS may extend it.
  bool is_set = false;
};

using node_ptr = std::shared_ptr<node>;

class machine {
public:
  machine(std::string_view input, const read_limits& limits)
    : in_(input), limits_(limits) {
    // nop
  }

  caf::expected<value_ptr> run() {
    while (pos_ < in_.size()) {
      op_pos_ = pos_;
      code_ = static_cast<uint8_t>(in_[pos_++]);
      in_op_ = true;
      if (code_ == op::stop)
        return finish();
      if (auto err = step())
        return err;
    }
    op_pos_ = in_.size();
    in_op_ = false;
    return fail("input ends before STOP");
  }

private:
  // -- errors -----------------------------------------------------------------

  caf::error fail(const std::string& what) const {
    std::string msg = "pickle: " + what + " (";
    if (in_op_) {
      msg += "opcode ";
      if (auto name = opcode_name(code_))
        msg += name;
      else
        msg += "unknown";
      msg += " " + hex_byte(code_) + " ";
    }
    msg += "at offset " + std::to_string(op_pos_) + ")";
    return make_error(errc::corrupt_metadata, std::move(msg));
  }

  // -- input ------------------------------------------------------------------

  size_t left() const {
    return in_.size() - pos_;
  }

  caf::error need(uint64_t n, const char* what) const {
    if (n > left())
      return fail(std::string{what} + " of " + std::to_string(n)
                  + " bytes exceeds the " + std::to_string(left())
                  + " bytes left");
    return {};
  }

  uint64_t read_le(size_t n) {
    uint64_t x = 0;
    for (size_t i = 0; i < n; ++i)
      x |= static_cast<uint64_t>(static_cast<uint8_t>(in_[pos_ + i]))
           << (8 * i);
    pos_ += n;
    return x;
  }

  /// Reads a fixed-width little-endian argument.
  caf::error arg(size_t n, uint64_t& out) {
    if (auto err = need(n, "argument"))
      return err;
    out = read_le(n);
    return {};
  }

  /// Reads a text line (protocol 0 arguments and GLOBAL), without '\n'.
  caf::error line(std::string_view& out) {
    auto end = in_.find('\n', pos_);
    if (end == std::string_view::npos)
      return fail("unterminated text argument");
    out = in_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return {};
  }

  caf::error decimal_line(uint64_t& out) {
    std::string_view text;
    if (auto err = line(text))
      return err;
    if (text.empty() || text.size() > 19)
      return fail("bad decimal argument");
    out = 0;
    for (auto ch : text) {
      if (ch < '0' || ch > '9')
        return fail("bad decimal argument");
      out = out * 10 + static_cast<uint64_t>(ch - '0');
    }
    return {};
  }

  // -- values -----------------------------------------------------------------

  node_ptr make(kind k) {
    auto result = std::make_shared<node>();
    result->k = k;
    return result;
  }

  /// Makes `x` a child of a new value and returns the depth that gives it.
  static size_t adopt(const node_ptr& x) {
    x->contained = true;
    return x->depth;
  }

  caf::error check_depth(const node_ptr& x) const {
    if (x->depth > limits_.max_depth)
      return fail("nesting deeper than " + std::to_string(limits_.max_depth));
    return {};
  }

  /// Guards every in-place mutation (APPEND(S), SETITEM(S), ADDITEMS,
  /// BUILD): the target must not be inside another value, and must not be
  /// added to itself. Together this rules out cycles.
  caf::error check_mutation(const node_ptr& target,
                            const node_ptr& added) const {
    if (target->contained)
      return fail("modifies a value that is already inside another value");
    if (target == added)
      return fail("adds a value to itself");
    return {};
  }

  // -- stack ------------------------------------------------------------------

  size_t fence() const {
    return marks_.empty() ? 0 : marks_.back();
  }

  caf::error push(node_ptr x) {
    stack_.push_back(std::move(x));
    return {};
  }

  caf::error pop(node_ptr& out) {
    if (stack_.size() <= fence())
      return fail("stack underflow");
    out = std::move(stack_.back());
    stack_.pop_back();
    return {};
  }

  caf::error top(node_ptr& out) const {
    if (stack_.size() <= fence())
      return fail("stack underflow");
    out = stack_.back();
    return {};
  }

  /// Pops everything above the innermost MARK and the MARK itself.
  caf::error pop_mark(std::vector<node_ptr>& out) {
    if (marks_.empty())
      return fail("no MARK on the stack");
    auto first = marks_.back();
    marks_.pop_back();
    out.assign(std::make_move_iterator(stack_.begin() + first),
               std::make_move_iterator(stack_.end()));
    stack_.resize(first);
    return {};
  }

  // -- builders ---------------------------------------------------------------

  caf::error push_sequence(kind k, std::vector<node_ptr> xs) {
    auto result = make(k);
    size_t deepest = 0;
    result->items.reserve(xs.size());
    for (auto& x : xs) {
      deepest = std::max(deepest, adopt(x));
      result->items.emplace_back(std::move(x));
    }
    result->depth = deepest + 1;
    if (auto err = check_depth(result))
      return err;
    return push(std::move(result));
  }

  caf::error push_tuple_of(size_t n) {
    if (stack_.size() - fence() < n)
      return fail("stack underflow");
    std::vector<node_ptr> xs(std::make_move_iterator(stack_.end() - n),
                             std::make_move_iterator(stack_.end()));
    stack_.resize(stack_.size() - n);
    return push_sequence(kind::tuple, std::move(xs));
  }

  /// Adds `xs` to the list `target` (APPEND / APPENDS).
  caf::error extend_list(const node_ptr& target, std::vector<node_ptr> xs) {
    if (!target->is(kind::list))
      return fail("target is not a list");
    for (auto& x : xs) {
      if (auto err = check_mutation(target, x))
        return err;
      target->depth = std::max(target->depth, adopt(x) + 1);
      target->items.emplace_back(std::move(x));
    }
    return check_depth(target);
  }

  /// Adds key/value pairs to the dict `target`, or to the dictitems of the
  /// object `target` (SETITEM / SETITEMS).
  caf::error extend_dict(const node_ptr& target, std::vector<node_ptr> xs) {
    if ((!target->is(kind::dict) && !target->is(kind::object))
        || target->is_set)
      return fail("target is not a dict or an object");
    if (xs.size() % 2 != 0)
      return fail("odd number of items for a dict");
    auto& slots = target->is(kind::dict) ? target->items : target->dictitems;
    for (auto& x : xs) {
      if (auto err = check_mutation(target, x))
        return err;
      target->depth = std::max(target->depth, adopt(x) + 1);
      slots.emplace_back(std::move(x));
    }
    return check_depth(target);
  }

  /// A set is kept as Python's protocol 2 spells it: an object
  /// `REDUCE(builtins.set, ([items],))` (or `frozenset`).
  node_ptr make_set(const char* type, std::vector<node_ptr> xs) {
    auto items = make(kind::list);
    size_t deepest = 0;
    for (auto& x : xs) {
      deepest = std::max(deepest, adopt(x));
      items->items.emplace_back(std::move(x));
    }
    items->depth = deepest + 1;
    auto args = make(kind::tuple);
    args->depth = items->depth + 1;
    items->contained = true;
    args->items.emplace_back(std::move(items));
    auto callable = make(kind::global);
    callable->s = "builtins";
    callable->name = type;
    callable->contained = true;
    auto result = make(kind::object);
    result->depth = args->depth + 1;
    args->contained = true;
    result->items = {std::move(callable), std::move(args)};
    return result;
  }

  caf::error add_to_set(const node_ptr& target, std::vector<node_ptr> xs) {
    if (!target->is_set)
      return fail("target is not a set");
    // The set's inner list and tuple are private to it: never on the stack
    // or in the memo. Mutating them keeps all invariants.
    auto args = std::const_pointer_cast<value>(target->items[1]);
    auto items = std::const_pointer_cast<value>(args->items[0]);
    auto items_node = std::static_pointer_cast<node>(items);
    auto args_node = std::static_pointer_cast<node>(args);
    for (auto& x : xs) {
      if (auto err = check_mutation(target, x))
        return err;
      items_node->depth = std::max(items_node->depth, adopt(x) + 1);
      items_node->items.emplace_back(std::move(x));
    }
    args_node->depth = items_node->depth + 1;
    target->depth = args_node->depth + 1;
    return check_depth(target);
  }

  caf::error push_object(node_ptr callable, node_ptr args, bool is_new,
                         node_ptr kwargs = nullptr) {
    if (!callable->is(kind::global) && !callable->is(kind::object))
      return fail("callable is not a global");
    if (!args->is(kind::tuple))
      return fail("arguments are not a tuple");
    auto result = make(kind::object);
    result->newobj = is_new;
    auto deepest = std::max(adopt(callable), adopt(args));
    result->items = {std::move(callable), std::move(args)};
    if (kwargs) {
      deepest = std::max(deepest, adopt(kwargs));
      result->items.emplace_back(std::move(kwargs));
    }
    result->depth = deepest + 1;
    if (auto err = check_depth(result))
      return err;
    return push(std::move(result));
  }

  caf::error push_string(kind k, uint64_t len, bool text) {
    if (auto err = need(len, "string"))
      return err;
    auto str = in_.substr(pos_, static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    auto result = make(k);
    if (text && !valid_utf8(str))
      return fail("text is not valid UTF-8");
    result->s.assign(str.data(), str.size());
    return push(std::move(result));
  }

  caf::error push_int(int64_t x) {
    auto result = make(kind::integer);
    result->i = x;
    return push(std::move(result));
  }

  /// LONG1 / LONG4: little-endian two's complement of any length; refuses
  /// values outside int64.
  caf::error push_long(uint64_t len) {
    if (auto err = need(len, "integer"))
      return err;
    auto bytes = in_.substr(pos_, static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    if (bytes.empty())
      return push_int(0);
    auto byte = [&](size_t i) { return static_cast<uint8_t>(bytes[i]); };
    bool negative = (byte(bytes.size() - 1) & 0x80) != 0;
    uint8_t fill = negative ? 0xff : 0x00;
    if (bytes.size() > 8) {
      for (size_t i = 8; i < bytes.size(); ++i)
        if (byte(i) != fill)
          return fail("integer does not fit in 64 bits");
      if (((byte(7) & 0x80) != 0) != negative)
        return fail("integer does not fit in 64 bits");
    }
    uint64_t raw = negative ? ~uint64_t{0} : 0;
    for (size_t i = 0; i < std::min<size_t>(bytes.size(), 8); ++i) {
      raw &= ~(uint64_t{0xff} << (8 * i));
      raw |= static_cast<uint64_t>(byte(i)) << (8 * i);
    }
    int64_t x;
    std::memcpy(&x, &raw, sizeof(x));
    return push_int(x);
  }

  caf::error check_allowed(std::string_view module, std::string_view name) {
    if (limits_.allow_global == nullptr || limits_.allow_global(module, name))
      return {};
    return fail("refusing global '" + std::string{module} + "."
                + std::string{name} + "'");
  }

  caf::error push_global(std::string_view module, std::string_view name) {
    if (module.empty() || name.empty())
      return fail("empty global name");
    if (!valid_utf8(module) || !valid_utf8(name))
      return fail("global name is not valid UTF-8");
    if (auto err = check_allowed(module, name))
      return err;
    auto result = make(kind::global);
    result->s.assign(module.data(), module.size());
    result->name.assign(name.data(), name.size());
    return push(std::move(result));
  }

  // -- memo -------------------------------------------------------------------

  caf::error memo_put(uint64_t index) {
    node_ptr x;
    if (auto err = top(x))
      return err;
    auto i = memo_.find(index);
    if (i != memo_.end()) {
      i->second = std::move(x);
      return {};
    }
    if (memo_.size() >= limits_.max_memo)
      return fail("more than " + std::to_string(limits_.max_memo)
                  + " memo entries");
    memo_.emplace(index, std::move(x));
    return {};
  }

  caf::error memo_get(uint64_t index) {
    auto i = memo_.find(index);
    if (i == memo_.end())
      return fail("memo index " + std::to_string(index) + " is not set");
    return push(i->second);
  }

  // -- the interpreter loop ---------------------------------------------------

  caf::expected<value_ptr> finish() {
    node_ptr result;
    if (auto err = pop(result))
      return err;
    if (!marks_.empty())
      return fail("unclosed MARK at STOP");
    if (!stack_.empty())
      return fail("more than one value on the stack at STOP");
    if (pos_ != in_.size())
      return fail(std::to_string(left()) + " trailing bytes after STOP");
    return value_ptr{std::move(result)};
  }

  caf::error step() {
    uint64_t n = 0;
    switch (code_) {
      // framing
      case op::proto:
        if (auto err = arg(1, n))
          return err;
        if (n > 5)
          return fail("unsupported protocol " + std::to_string(n));
        return {};
      case op::frame:
        if (auto err = arg(8, n))
          return err;
        return need(n, "frame");
      // marks and stack
      case op::mark:
        if (marks_.size() >= limits_.max_depth)
          return fail("MARKs nested deeper than "
                      + std::to_string(limits_.max_depth));
        marks_.push_back(stack_.size());
        return {};
      case op::pop: {
        if (stack_.size() > fence()) {
          stack_.pop_back();
          return {};
        }
        std::vector<node_ptr> discard;
        return pop_mark(discard);
      }
      case op::pop_mark: {
        std::vector<node_ptr> discard;
        return pop_mark(discard);
      }
      // scalars
      case op::none: return push(make(kind::none));
      case op::newtrue:
      case op::newfalse: {
        auto result = make(kind::boolean);
        result->b = code_ == op::newtrue;
        return push(std::move(result));
      }
      case op::binint1:
        if (auto err = arg(1, n))
          return err;
        return push_int(static_cast<int64_t>(n));
      case op::binint2:
        if (auto err = arg(2, n))
          return err;
        return push_int(static_cast<int64_t>(n));
      case op::binint:
        if (auto err = arg(4, n))
          return err;
        return push_int(static_cast<int32_t>(static_cast<uint32_t>(n)));
      case op::long1:
        if (auto err = arg(1, n))
          return err;
        return push_long(n);
      case op::long4:
        if (auto err = arg(4, n))
          return err;
        if (static_cast<int32_t>(static_cast<uint32_t>(n)) < 0)
          return fail("negative byte count");
        return push_long(n);
      case op::binfloat: {
        if (auto err = need(8, "argument"))
          return err;
        uint64_t raw = 0;
        for (size_t i = 0; i < 8; ++i)
          raw = (raw << 8) | static_cast<uint8_t>(in_[pos_ + i]);
        pos_ += 8;
        auto result = make(kind::floating);
        std::memcpy(&result->f, &raw, sizeof(double));
        return push(std::move(result));
      }
      // text and bytes
      case op::short_binunicode:
        if (auto err = arg(1, n))
          return err;
        return push_string(kind::string, n, true);
      case op::binunicode:
        if (auto err = arg(4, n))
          return err;
        return push_string(kind::string, n, true);
      case op::binunicode8:
        if (auto err = arg(8, n))
          return err;
        return push_string(kind::string, n, true);
      case op::short_binstring:
      case op::binstring: {
        // Python 2 `str`: decoded as text when it is valid UTF-8.
        if (code_ == op::short_binstring) {
          if (auto err = arg(1, n))
            return err;
        } else {
          if (auto err = arg(4, n))
            return err;
          if (static_cast<int32_t>(static_cast<uint32_t>(n)) < 0)
            return fail("negative byte count");
        }
        if (auto err = need(n, "string"))
          return err;
        auto text = valid_utf8(in_.substr(pos_, static_cast<size_t>(n)));
        return push_string(text ? kind::string : kind::bytes, n, false);
      }
      case op::short_binbytes:
        if (auto err = arg(1, n))
          return err;
        return push_string(kind::bytes, n, false);
      case op::binbytes:
        if (auto err = arg(4, n))
          return err;
        return push_string(kind::bytes, n, false);
      case op::binbytes8:
      case op::bytearray8:
        if (auto err = arg(8, n))
          return err;
        return push_string(kind::bytes, n, false);
      // tuples
      case op::empty_tuple: return push_sequence(kind::tuple, {});
      case op::tuple1: return push_tuple_of(1);
      case op::tuple2: return push_tuple_of(2);
      case op::tuple3: return push_tuple_of(3);
      case op::tuple: {
        std::vector<node_ptr> xs;
        if (auto err = pop_mark(xs))
          return err;
        return push_sequence(kind::tuple, std::move(xs));
      }
      // lists
      case op::empty_list: return push_sequence(kind::list, {});
      case op::list: {
        std::vector<node_ptr> xs;
        if (auto err = pop_mark(xs))
          return err;
        return push_sequence(kind::list, std::move(xs));
      }
      case op::append: {
        node_ptr x;
        node_ptr target;
        if (auto err = pop(x))
          return err;
        if (auto err = top(target))
          return err;
        std::vector<node_ptr> xs;
        xs.emplace_back(std::move(x));
        return extend_list(target, std::move(xs));
      }
      case op::appends: {
        std::vector<node_ptr> xs;
        node_ptr target;
        if (auto err = pop_mark(xs))
          return err;
        if (auto err = top(target))
          return err;
        return extend_list(target, std::move(xs));
      }
      // dicts
      case op::empty_dict: return push_sequence(kind::dict, {});
      case op::dict: {
        std::vector<node_ptr> xs;
        if (auto err = pop_mark(xs))
          return err;
        if (xs.size() % 2 != 0)
          return fail("odd number of items for a dict");
        return push_sequence(kind::dict, std::move(xs));
      }
      case op::setitem: {
        std::vector<node_ptr> xs(2);
        node_ptr target;
        if (auto err = pop(xs[1]))
          return err;
        if (auto err = pop(xs[0]))
          return err;
        if (auto err = top(target))
          return err;
        return extend_dict(target, std::move(xs));
      }
      case op::setitems: {
        std::vector<node_ptr> xs;
        node_ptr target;
        if (auto err = pop_mark(xs))
          return err;
        if (auto err = top(target))
          return err;
        return extend_dict(target, std::move(xs));
      }
      // sets
      case op::empty_set:
        if (auto err = check_allowed("builtins", "set"))
          return err;
        return push(make_set_node("set", {}));
      case op::additems: {
        std::vector<node_ptr> xs;
        node_ptr target;
        if (auto err = pop_mark(xs))
          return err;
        if (auto err = top(target))
          return err;
        return add_to_set(target, std::move(xs));
      }
      case op::frozenset: {
        std::vector<node_ptr> xs;
        if (auto err = pop_mark(xs))
          return err;
        if (auto err = check_allowed("builtins", "frozenset"))
          return err;
        auto result = make_set("frozenset", std::move(xs));
        if (auto err = check_depth(result))
          return err;
        return push(std::move(result));
      }
      // globals and objects
      case op::global: {
        std::string_view module;
        std::string_view name;
        if (auto err = line(module))
          return err;
        if (auto err = line(name))
          return err;
        return push_global(module, name);
      }
      case op::stack_global: {
        node_ptr name;
        node_ptr module;
        if (auto err = pop(name))
          return err;
        if (auto err = pop(module))
          return err;
        if (!name->is(kind::string) || !module->is(kind::string))
          return fail("module and name are not strings");
        return push_global(module->s, name->s);
      }
      case op::reduce: {
        node_ptr args;
        node_ptr callable;
        if (auto err = pop(args))
          return err;
        if (auto err = pop(callable))
          return err;
        return push_object(std::move(callable), std::move(args), false);
      }
      case op::newobj: {
        node_ptr args;
        node_ptr cls;
        if (auto err = pop(args))
          return err;
        if (auto err = pop(cls))
          return err;
        return push_object(std::move(cls), std::move(args), true);
      }
      case op::newobj_ex: {
        node_ptr kwargs;
        node_ptr args;
        node_ptr cls;
        if (auto err = pop(kwargs))
          return err;
        if (auto err = pop(args))
          return err;
        if (auto err = pop(cls))
          return err;
        if (!kwargs->is(kind::dict))
          return fail("keyword arguments are not a dict");
        if (kwargs->items.empty())
          kwargs = nullptr;
        return push_object(std::move(cls), std::move(args), true,
                           std::move(kwargs));
      }
      case op::build: {
        node_ptr state;
        node_ptr target;
        if (auto err = pop(state))
          return err;
        if (auto err = top(target))
          return err;
        if (!target->is(kind::object))
          return fail("target is not an object");
        if (target->state)
          return fail("object already has a state");
        if (auto err = check_mutation(target, state))
          return err;
        target->depth = std::max(target->depth, adopt(state) + 1);
        target->state = std::move(state);
        return check_depth(target);
      }
      case op::binpersid: {
        node_ptr pid;
        if (auto err = pop(pid))
          return err;
        auto result = make(kind::persid);
        result->depth = adopt(pid) + 1;
        result->items.emplace_back(std::move(pid));
        if (auto err = check_depth(result))
          return err;
        return push(std::move(result));
      }
      // memo
      case op::memoize: return memo_put(memo_.size());
      case op::binput:
        if (auto err = arg(1, n))
          return err;
        return memo_put(n);
      case op::long_binput:
        if (auto err = arg(4, n))
          return err;
        return memo_put(n);
      case op::put:
        if (auto err = decimal_line(n))
          return err;
        return memo_put(n);
      case op::binget:
        if (auto err = arg(1, n))
          return err;
        return memo_get(n);
      case op::long_binget:
        if (auto err = arg(4, n))
          return err;
        return memo_get(n);
      case op::get:
        if (auto err = decimal_line(n))
          return err;
        return memo_get(n);
      default: return fail("unsupported opcode");
    }
  }

  node_ptr make_set_node(const char* type, std::vector<node_ptr> xs) {
    auto result = make_set(type, std::move(xs));
    result->is_set = true;
    return result;
  }

  std::string_view in_;
  read_limits limits_;
  size_t pos_ = 0;
  /// Offset and code of the opcode being executed, for error messages.
  size_t op_pos_ = 0;
  uint8_t code_ = 0;
  bool in_op_ = false;
  std::vector<node_ptr> stack_;
  /// Stack sizes at each open MARK.
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, node_ptr> memo_;
};

} // namespace

caf::expected<value_ptr> read(std::string_view bytes,
                              const read_limits& limits) {
  machine vm{bytes, limits};
  return vm.run();
}

} // namespace dcpp::pickle
