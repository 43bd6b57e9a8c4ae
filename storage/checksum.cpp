#include "storage/checksum.hpp"

#include "core/error.hpp"

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <cctype>
#include <cstring>
#include <new>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DCPP_HAVE_CLMUL 1
#endif

namespace dcpp {

namespace {

// -- CRC-32 -------------------------------------------------------------------

struct crc_tables {
  uint32_t t[8][256];
};

crc_tables make_crc_tables() {
  crc_tables x{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k)
      c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    x.t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i)
    for (int s = 1; s < 8; ++s)
      x.t[s][i] = (x.t[s - 1][i] >> 8) ^ x.t[0][x.t[s - 1][i] & 0xFF];
  return x;
}

const crc_tables& tables() {
  static const crc_tables x = make_crc_tables();
  return x;
}

/// Slicing-by-8 over the inverted CRC state.
uint32_t crc32_tables(uint32_t c, const unsigned char* p, size_t n) {
  const auto& t = tables().t;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= c;
    c = t[7][w & 0xFF] ^ t[6][(w >> 8) & 0xFF] ^ t[5][(w >> 16) & 0xFF]
        ^ t[4][(w >> 24) & 0xFF] ^ t[3][(w >> 32) & 0xFF]
        ^ t[2][(w >> 40) & 0xFF] ^ t[1][(w >> 48) & 0xFF] ^ t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n-- > 0)
    c = (c >> 8) ^ t[0][(c ^ *p++) & 0xFF];
  return c;
}

#ifdef DCPP_HAVE_CLMUL

#define DCPP_CLMUL_TARGET __attribute__((target("pclmul,sse4.1")))

DCPP_CLMUL_TARGET inline __m128i clmul_load(const unsigned char* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

/// Folds the 128-bit `acc` forward by the distance `k` encodes and adds
/// `next`.
DCPP_CLMUL_TARGET inline __m128i clmul_fold(__m128i acc, __m128i k,
                                            __m128i next) {
  __m128i lo = _mm_clmulepi64_si128(acc, k, 0x00);
  __m128i hi = _mm_clmulepi64_si128(acc, k, 0x11);
  return _mm_xor_si128(_mm_xor_si128(hi, next), lo);
}

/// Folding CRC-32 with PCLMULQDQ (Gopal et al., "Fast CRC Computation for
/// Generic Polynomials Using PCLMULQDQ", Intel 2009; the bit-reflected
/// constants of the zip polynomial). `len` >= 64 and a multiple of 16; `crc`
/// is the inverted state.
DCPP_CLMUL_TARGET uint32_t crc32_clmul(uint32_t crc, const unsigned char* buf,
                                       size_t len) {
  alignas(16) static const uint64_t k1k2[] = {0x0154442bd4, 0x01c6e41596};
  alignas(16) static const uint64_t k3k4[] = {0x01751997d0, 0x00ccaa009e};
  alignas(16) static const uint64_t k5k0[] = {0x0163cd6124, 0x0000000000};
  alignas(16) static const uint64_t poly[] = {0x01db710641, 0x01f7011641};
  __m128i x1 = clmul_load(buf);
  __m128i x2 = clmul_load(buf + 16);
  __m128i x3 = clmul_load(buf + 32);
  __m128i x4 = clmul_load(buf + 48);
  x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128(static_cast<int>(crc)));
  __m128i x0 = _mm_load_si128(reinterpret_cast<const __m128i*>(k1k2));
  buf += 64;
  len -= 64;
  // Four independent lanes of 16 bytes each.
  while (len >= 64) {
    x1 = clmul_fold(x1, x0, clmul_load(buf));
    x2 = clmul_fold(x2, x0, clmul_load(buf + 16));
    x3 = clmul_fold(x3, x0, clmul_load(buf + 32));
    x4 = clmul_fold(x4, x0, clmul_load(buf + 48));
    buf += 64;
    len -= 64;
  }
  // Fold the four lanes into one, then the remaining 16-byte blocks.
  x0 = _mm_load_si128(reinterpret_cast<const __m128i*>(k3k4));
  x1 = clmul_fold(x1, x0, x2);
  x1 = clmul_fold(x1, x0, x3);
  x1 = clmul_fold(x1, x0, x4);
  while (len >= 16) {
    x1 = clmul_fold(x1, x0, clmul_load(buf));
    buf += 16;
    len -= 16;
  }
  // 128 -> 64 bits.
  x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
  x3 = _mm_setr_epi32(~0, 0, ~0, 0);
  x1 = _mm_srli_si128(x1, 8);
  x1 = _mm_xor_si128(x1, x2);
  x0 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(k5k0));
  x2 = _mm_srli_si128(x1, 4);
  x1 = _mm_and_si128(x1, x3);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_xor_si128(x1, x2);
  // Barrett reduction to 32 bits.
  x0 = _mm_load_si128(reinterpret_cast<const __m128i*>(poly));
  x2 = _mm_and_si128(x1, x3);
  x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
  x2 = _mm_and_si128(x2, x3);
  x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
  x1 = _mm_xor_si128(x1, x2);
  return static_cast<uint32_t>(_mm_extract_epi32(x1, 1));
}

bool have_clmul() {
  static const bool result = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  }();
  return result;
}

#endif // DCPP_HAVE_CLMUL

constexpr std::string_view checksum_scheme = "xxh64:";

} // namespace

uint32_t crc32(uint32_t crc, const void* data, size_t size) {
  auto p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
#ifdef DCPP_HAVE_CLMUL
  if (size >= 64 && have_clmul()) {
    auto n = size & ~size_t{15};
    c = crc32_clmul(c, p, n);
    p += n;
    size -= n;
  }
#endif
  return ~crc32_tables(c, p, size);
}

std::string format_checksum(uint64_t hash) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out{checksum_scheme};
  for (int i = 15; i >= 0; --i)
    out += digits[(hash >> (4 * i)) & 0xF];
  return out;
}

std::string item_checksum(std::string_view item) {
  return format_checksum(XXH64(item.data(), item.size(), 0));
}

namespace detail {

namespace {

XXH64_state_t* state_of(unsigned char* buf) {
  return reinterpret_cast<XXH64_state_t*>(buf);
}

const XXH64_state_t* state_of(const unsigned char* buf) {
  return reinterpret_cast<const XXH64_state_t*>(buf);
}

} // namespace

hasher::hasher() {
  static_assert(sizeof(XXH64_state_t) <= sizeof(state_)
                  && alignof(XXH64_state_t) <= 8,
                "hasher::state_ cannot hold an XXH64_state_t");
  XXH64_reset(state_of(state_), 0);
}

void hasher::update(const void* data, size_t size) {
  XXH64_update(state_of(state_), data, size);
}

uint64_t hasher::digest() const {
  return XXH64_digest(state_of(state_));
}

/// Checks the form of a recorded checksum; fails with `errc::unsupported`
/// for a scheme other than xxh64.
caf::error check_checksum_form(std::string_view expected,
                               const std::string& what) {
  if (expected.substr(0, checksum_scheme.size()) != checksum_scheme
      || expected.size() != checksum_scheme.size() + 16)
    return make_error(errc::unsupported,
                      what + ": unknown checksum '" + std::string{expected}
                        + "' (expected xxh64:<16 hex digits>)");
  return {};
}

caf::error compare_checksum(std::string_view expected, uint64_t actual,
                            const std::string& what) {
  auto got = format_checksum(actual);
  std::string want{expected};
  for (auto& c : want)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (want == got)
    return {};
  return make_error(errc::checksum_mismatch,
                    what + ": checksum mismatch: " + "recorded " + want
                      + ", computed " + got);
}

} // namespace detail

} // namespace dcpp
