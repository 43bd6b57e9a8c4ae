#pragma once

// Little-endian integers in byte strings: the zip structures and the pickle
// opcodes of a tensor item (storage/zip_writer.hpp, zip_reader.hpp,
// pickle_emitter.hpp).

#include <cstdint>
#include <cstring>
#include <string>

namespace dcpp::detail {

/// The value of a saturated 32-bit zip field (the real one is in a Zip64
/// extra field or record).
constexpr uint64_t u32_max = 0xFFFFFFFFull;

inline void put16(std::string& out, uint16_t x) {
  char buf[2] = {static_cast<char>(x), static_cast<char>(x >> 8)};
  out.append(buf, 2);
}

inline void put32(std::string& out, uint32_t x) {
  char buf[4];
  for (int i = 0; i < 4; ++i)
    buf[i] = static_cast<char>(x >> (8 * i));
  out.append(buf, 4);
}

inline void put64(std::string& out, uint64_t x) {
  char buf[8];
  for (int i = 0; i < 8; ++i)
    buf[i] = static_cast<char>(x >> (8 * i));
  out.append(buf, 8);
}

inline uint16_t get16(const char* p) {
  auto u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint16_t>(u[0] | (u[1] << 8));
}

inline uint32_t get32(const char* p) {
  auto u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | (static_cast<uint32_t>(u[1]) << 8)
         | (static_cast<uint32_t>(u[2]) << 16)
         | (static_cast<uint32_t>(u[3]) << 24);
}

inline uint64_t get64(const char* p) {
  return static_cast<uint64_t>(get32(p))
         | (static_cast<uint64_t>(get32(p + 4)) << 32);
}

inline bool host_is_little_endian() {
  uint16_t x = 1;
  unsigned char c;
  std::memcpy(&c, &x, 1);
  return c == 1;
}

} // namespace dcpp::detail
