#include "actors/transport/curve_keys.hpp"

#include "core/error.hpp"

#include <sodium.h>
#include <zmq.h>

#include <map>
#include <mutex>

namespace dcpp::detail {

namespace {

// Changing any of these changes every key: old and new processes would no
// longer understand each other (bump hello_magic's version with them).
constexpr char salt_text[crypto_pwhash_SALTBYTES + 1]
  = "dcpp-curve-v1..."; // 16
constexpr char kdf_context[crypto_kdf_CONTEXTBYTES + 1] = "dcppcurv";
constexpr uint64_t server_subkey = 1;
constexpr uint64_t client_subkey = 2;
constexpr unsigned long long ops_limit = 2;
constexpr size_t mem_limit = size_t{16} << 20;

caf::expected<curve_key_pair> pair_from(const unsigned char* master,
                                        uint64_t id) {
  curve_key_pair out;
  if (crypto_kdf_derive_from_key(out.secret_key.data(), out.secret_key.size(),
                                 id, kdf_context, master)
      != 0)
    return make_error(errc::io_error, "crypto_kdf_derive_from_key failed");
  if (crypto_scalarmult_base(out.public_key.data(), out.secret_key.data()) != 0)
    return make_error(errc::io_error, "crypto_scalarmult_base failed");
  return out;
}

} // namespace

caf::expected<curve_keys> derive_curve_keys(const std::string& secret) {
  static_assert(sizeof(salt_text) - 1 == crypto_pwhash_SALTBYTES);
  static_assert(crypto_kdf_KEYBYTES == 32 && crypto_box_SECRETKEYBYTES == 32);
  if (secret.empty())
    return make_error(errc::invalid_argument, "empty secret");
  static std::mutex mx;
  static std::map<std::string, curve_keys> cache;
  std::lock_guard<std::mutex> guard{mx};
  if (auto i = cache.find(secret); i != cache.end())
    return i->second;
  if (sodium_init() < 0)
    return make_error(errc::io_error, "libsodium cannot be initialised");
  unsigned char master[crypto_kdf_KEYBYTES];
  if (crypto_pwhash(master, sizeof(master), secret.data(), secret.size(),
                    reinterpret_cast<const unsigned char*>(salt_text),
                    ops_limit, mem_limit, crypto_pwhash_ALG_ARGON2ID13)
      != 0)
    return make_error(errc::io_error,
                      "deriving the CURVE keys from the secret ran out of "
                      "memory (Argon2id needs 16 MiB)");
  curve_keys keys;
  auto server = pair_from(master, server_subkey);
  auto client = pair_from(master, client_subkey);
  sodium_memzero(master, sizeof(master));
  if (!server)
    return server.error();
  if (!client)
    return client.error();
  keys.server = *server;
  keys.client = *client;
  cache.emplace(secret, keys);
  return keys;
}

std::string z85(const std::array<uint8_t, 32>& key) {
  char text[41] = {};
  zmq_z85_encode(text, key.data(), key.size());
  return text;
}

} // namespace dcpp::detail
