#pragma once

// A small, restricted pickle reader and writer: exactly what DCP's
// `.metadata` and torch.save's `data.pkl` need, and nothing that can run
// code. Globals are recorded by name, never resolved; REDUCE, NEWOBJ and
// BUILD build inert `object` records that the caller interprets.
//
// The reader accepts protocols 0 to 5 and bounds everything it allocates by
// the input size (plus fixed limits on nesting and memo size), so garbage
// input yields `errc::corrupt_metadata`, never a crash or a hang.
//
// Differences from CPython's unpickler, all on inputs no real DCP or
// torch.save file contains:
// - A pickle must end with STOP, leaving exactly one value and no open MARK,
//   with no bytes after it.
// - Recursive structures are refused: APPEND(S), SETITEM(S), ADDITEMS and
//   BUILD may only modify a value that no other value holds yet, and never
//   add a value to itself. So every value graph is acyclic (shared
//   references stay shared) and at most `max_depth` deep.
// - APPEND(S) only targets lists; SETITEM(S) targets dicts and objects (the
//   `dictitems` of `__reduce__`, how an OrderedDict is pickled); BUILD only
//   targets objects, once.
// - Sets are kept as protocol 2 spells them: an `object` REDUCE of the
//   global `builtins.set` (or `frozenset`) with args `([items],)`.
// - NEWOBJ_EX with non-empty keyword arguments gives an object whose
//   `items` has the kwargs dict as a third element.

#include <caf/expected.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dcpp::pickle {

struct value;
using value_ptr = std::shared_ptr<const value>;

/// The kinds of values the reader produces.
enum class kind : uint8_t {
  none,
  boolean,
  integer, ///< fits in int64 (larger LONG1/LONG4 values are refused)
  floating,
  string, ///< unicode text (UTF-8 bytes)
  bytes,
  tuple,
  list,
  dict,   ///< ordered (key, value) pairs
  global, ///< `module`.`name`, unresolved
  object, ///< result of REDUCE / NEWOBJ (+ BUILD): callable + args + state
  persid, ///< BINPERSID: the persistent id value (torch storages)
  mark,   ///< internal; never in a value returned by `read`
};

/// "None", "bool", "int", "float", "str", "bytes", "tuple", "list", "dict",
/// "global", "object", "persistent id" (Python's names where there are).
const char* kind_name(kind k);

struct value {
  kind k = kind::none;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  /// string / bytes; for `global`: module; for `object`: unused.
  std::string s;
  /// `global`: name.
  std::string name;
  /// tuple / list: items; dict: keys and values interleaved (k0, v0, k1,
  /// v1, ...); object: [callable, args]; persid: [pid].
  std::vector<value_ptr> items;
  /// object: the BUILD state (nullptr if none); set by BUILD.
  value_ptr state;
  /// object: key/value pairs added by SETITEM(S), interleaved like a dict's
  /// `items` (what `__reduce__` returns as dictitems, e.g. the entries of a
  /// `collections.OrderedDict`).
  std::vector<value_ptr> dictitems;
  /// object: made by NEWOBJ (cls.__new__) rather than REDUCE.
  bool newobj = false;

  bool is(kind x) const {
    return k == x;
  }

  /// For dicts: the value under string key `key`, or nullptr.
  value_ptr get(std::string_view key) const;

  /// For `global` and for objects whose callable is a global: the class
  /// name ("Metadata"), and its module.
  std::string global_name() const;
  std::string global_module() const;
};

value_ptr make_none();
value_ptr make_bool(bool x);
value_ptr make_int(int64_t x);
value_ptr make_float(double x);
value_ptr make_string(std::string x);
value_ptr make_tuple(std::vector<value_ptr> xs);
value_ptr make_list(std::vector<value_ptr> xs);
value_ptr make_dict(std::vector<std::pair<value_ptr, value_ptr>> kvs);
value_ptr make_global(std::string module, std::string name);
/// REDUCE(callable, args) with optional BUILD state.
value_ptr make_reduce(value_ptr callable, value_ptr args,
                      value_ptr state = nullptr);
/// `collections.OrderedDict` as Python pickles it: REDUCE of the class with
/// no arguments, then its entries as SETITEMS.
value_ptr make_ordered_dict(std::vector<std::pair<value_ptr, value_ptr>> kvs);
/// NEWOBJ(cls, args) with optional BUILD state.
value_ptr make_newobj(value_ptr cls, value_ptr args, value_ptr state = nullptr);
value_ptr make_persid(value_ptr pid);

struct read_limits {
  /// Deepest nesting of containers.
  size_t max_depth = 256;
  /// Most memo entries.
  size_t max_memo = 1u << 20;
  /// When set, every global the pickle names (GLOBAL, STACK_GLOBAL, and the
  /// `builtins.set`/`frozenset` of set opcodes) must pass it, or the read
  /// fails with "refusing global 'module.name'". Checking as the globals
  /// appear costs nothing; walking the decoded graph for them afterwards
  /// took as long as decoding it.
  bool (*allow_global)(std::string_view module, std::string_view name)
    = nullptr;
};

/// Decodes one pickle (protocol 0-5 framing, opcodes listed in
/// docs/dcp-format.md, plus PUT/GET and BYTEARRAY8). Fails with
/// `errc::corrupt_metadata` naming the opcode and byte offset.
caf::expected<value_ptr> read(std::string_view bytes,
                              const read_limits& limits = {});

/// Encodes `x` as protocol 2: GLOBAL, BINUNICODE, BININT*/LONG1, BINFLOAT,
/// NONE, NEWTRUE/NEWFALSE, tuples, EMPTY_LIST+APPENDS, EMPTY_DICT+SETITEMS,
/// REDUCE, NEWOBJ (then SETITEMS of its dictitems), BUILD, BINPERSID, STOP. No
/// memo, so shared references are written once per use. Beyond protocol 2, and
/// only when needed (every Python 3 reads them): `bytes` as (SHORT_)BINBYTES, a
/// global whose name contains a newline as STACK_GLOBAL, kwargs (third object
/// item) with NEWOBJ_EX.
std::string write(const value& x);

} // namespace dcpp::pickle
