#pragma once

// The pickle opcodes dcpp's restricted reader (pickle.cpp) and its writer
// (pickle_writer.cpp) know, named as in Python's pickletools. Private to
// storage/.

#include <cstdint>

namespace dcpp::pickle {

/// The opcodes this reader and writer know (names as in pickletools).
namespace op {

constexpr uint8_t mark = '(';
constexpr uint8_t stop = '.';
constexpr uint8_t pop = '0';
constexpr uint8_t pop_mark = '1';
constexpr uint8_t binint = 'J';
constexpr uint8_t binint1 = 'K';
constexpr uint8_t binint2 = 'M';
constexpr uint8_t none = 'N';
constexpr uint8_t binpersid = 'Q';
constexpr uint8_t reduce = 'R';
constexpr uint8_t binstring = 'T';
constexpr uint8_t short_binstring = 'U';
constexpr uint8_t binunicode = 'X';
constexpr uint8_t append = 'a';
constexpr uint8_t build = 'b';
constexpr uint8_t global = 'c';
constexpr uint8_t dict = 'd';
constexpr uint8_t empty_dict = '}';
constexpr uint8_t appends = 'e';
constexpr uint8_t get = 'g';
constexpr uint8_t binget = 'h';
constexpr uint8_t long_binget = 'j';
constexpr uint8_t list = 'l';
constexpr uint8_t empty_list = ']';
constexpr uint8_t put = 'p';
constexpr uint8_t binput = 'q';
constexpr uint8_t long_binput = 'r';
constexpr uint8_t setitem = 's';
constexpr uint8_t tuple = 't';
constexpr uint8_t empty_tuple = ')';
constexpr uint8_t setitems = 'u';
constexpr uint8_t binfloat = 'G';
constexpr uint8_t proto = 0x80;
constexpr uint8_t newobj = 0x81;
constexpr uint8_t tuple1 = 0x85;
constexpr uint8_t tuple2 = 0x86;
constexpr uint8_t tuple3 = 0x87;
constexpr uint8_t newtrue = 0x88;
constexpr uint8_t newfalse = 0x89;
constexpr uint8_t long1 = 0x8a;
constexpr uint8_t long4 = 0x8b;
constexpr uint8_t binbytes = 'B';
constexpr uint8_t short_binbytes = 'C';
constexpr uint8_t short_binunicode = 0x8c;
constexpr uint8_t binunicode8 = 0x8d;
constexpr uint8_t binbytes8 = 0x8e;
constexpr uint8_t empty_set = 0x8f;
constexpr uint8_t additems = 0x90;
constexpr uint8_t frozenset = 0x91;
constexpr uint8_t newobj_ex = 0x92;
constexpr uint8_t stack_global = 0x93;
constexpr uint8_t memoize = 0x94;
constexpr uint8_t frame = 0x95;
constexpr uint8_t bytearray8 = 0x96;

} // namespace op

} // namespace dcpp::pickle
