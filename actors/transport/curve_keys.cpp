#include "actors/transport/curve_keys.hpp"

#include "core/error.hpp"

#include <sodium.h>
#include <zmq.h>

#include <array>
#include <cmath>
#include <map>
#include <mutex>

namespace dcpp::detail {

namespace {

// Changing any of these changes every key: old and new processes would no
// longer understand each other (bump hello_magic's version with them).
constexpr char salt_domain[] = "dcpp-curve-v2 salt of job";
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

/// The Argon2 salt of a job: BLAKE2b of the domain, a NUL and the job id,
/// cut to the salt's size (crypto_generichash's shortest output is 16
/// bytes, crypto_pwhash's salt exactly 16).
caf::expected<std::array<unsigned char, crypto_pwhash_SALTBYTES>>
job_salt(const std::string& job_id) {
  static_assert(crypto_pwhash_SALTBYTES >= crypto_generichash_BYTES_MIN);
  std::string input{salt_domain, sizeof(salt_domain)}; // the NUL included
  input += job_id;
  std::array<unsigned char, crypto_pwhash_SALTBYTES> salt{};
  if (crypto_generichash(salt.data(), salt.size(),
                         reinterpret_cast<const unsigned char*>(input.data()),
                         input.size(), nullptr, 0)
      != 0)
    return make_error(errc::io_error, "crypto_generichash failed");
  return salt;
}

} // namespace

caf::expected<curve_keys> derive_curve_keys(const std::string& secret,
                                            const std::string& job_id) {
  static_assert(crypto_kdf_KEYBYTES == 32 && crypto_box_SECRETKEYBYTES == 32);
  if (secret.empty())
    return make_error(errc::invalid_argument, "empty secret");
  static std::mutex mx;
  static std::map<std::pair<std::string, std::string>, curve_keys> cache;
  std::lock_guard<std::mutex> guard{mx};
  if (auto i = cache.find({secret, job_id}); i != cache.end())
    return i->second;
  if (sodium_init() < 0)
    return make_error(errc::io_error, "libsodium cannot be initialised");
  auto salt = job_salt(job_id);
  if (!salt)
    return salt.error();
  unsigned char master[crypto_kdf_KEYBYTES];
  if (crypto_pwhash(master, sizeof(master), secret.data(), secret.size(),
                    salt->data(), ops_limit, mem_limit,
                    crypto_pwhash_ALG_ARGON2ID13)
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
  cache.emplace(std::make_pair(secret, job_id), keys);
  return keys;
}

std::string weak_secret_reason(const std::string& secret) {
  // Warned about, not refused: a secret that users chose and set is theirs
  // to judge (a job on a closed network may run on a pass phrase, and an
  // estimate cannot tell a random string from a chosen one), Argon2id and
  // the job's salt make each guess cost ~50 ms and 16 MiB for one job
  // only, and dcpp-launch, which draws the secret when none is set, always
  // draws 16 random bytes.
  constexpr double min_bits = 128;
  constexpr size_t min_distinct = 8;
  bool digit = false, lower = false, upper = false, ascii = false,
       other = false;
  std::array<bool, 256> seen{};
  size_t distinct = 0;
  for (unsigned char c : secret) {
    if (!seen[c])
      seen[c] = true, ++distinct;
    if (c >= '0' && c <= '9')
      digit = true;
    else if (c >= 'a' && c <= 'z')
      lower = true;
    else if (c >= 'A' && c <= 'Z')
      upper = true;
    else if (c < 0x80)
      ascii = true;
    else
      other = true;
  }
  double alphabet = (digit ? 10 : 0) + (lower ? 26 : 0) + (upper ? 26 : 0)
                    + (ascii ? 33 : 0) + (other ? 128 : 0);
  double bits = alphabet > 1
                  ? static_cast<double>(secret.size()) * std::log2(alphabet)
                  : 0;
  if (bits >= min_bits && distinct >= min_distinct)
    return {};
  std::string why = std::to_string(secret.size()) + " bytes";
  if (bits < min_bits)
    why += ", at most " + std::to_string(static_cast<int>(bits))
           + " bits of entropy by its length and characters";
  if (distinct < min_distinct)
    why += ", " + std::to_string(distinct) + " distinct characters";
  return why + "; at least " + std::to_string(static_cast<int>(min_bits))
         + " bits (16 random bytes) are needed";
}

std::string z85(const std::array<uint8_t, 32>& key) {
  char text[41] = {};
  zmq_z85_encode(text, key.data(), key.size());
  return text;
}

} // namespace dcpp::detail
