#pragma once

// CURVE key pairs of a job, derived from its shared secret (DCPP_SECRET).
//
// Every process of a job derives the same two key pairs from the secret:
// the coordinator's (its ROUTER is the CURVE server) and the ranks' (their
// DEALERs are CURVE clients, and the coordinator's ZAP handler admits only
// that public key). So the secret itself never crosses the wire: a peer
// proves it holds the secret by completing the CURVE handshake, and
// everything after the handshake is encrypted.
//
// Derivation: Argon2id (libsodium's crypto_pwhash, 16 MiB, 2 passes) of
// the secret, salted with the job id, gives a 32-byte master key, from
// which crypto_kdf derives the two secret keys; the public keys follow by
// scalar multiplication (what zmq_curve_public does). Argon2 makes guessing
// a weak secret from a captured handshake slow; the salt makes each job's
// guessing its own (a handshake captured from one job, or a table computed
// in advance, does not help with another job); a secret of 16 random bytes
// or more (dcpp-launch draws 16) is not guessable at all.
//
// The salt: the first 16 bytes of BLAKE2b (crypto_generichash) of a domain
// string and the job id (launch_env::job_id, which every process of a job
// knows before the handshake). A job without a job id gets the domain's
// fixed salt. So ranks with the same secret but another job id hold other
// keys and fail the CURVE handshake.

#include <caf/expected.hpp>

#include <array>
#include <cstdint>
#include <string>

namespace dcpp::detail {

struct curve_key_pair {
  std::array<uint8_t, 32> public_key{};
  std::array<uint8_t, 32> secret_key{};
};

struct curve_keys {
  curve_key_pair server;
  curve_key_pair client;
};

/// Derives the key pairs of job `job_id` (may be empty) from `secret`
/// (non-empty). Cached per (secret, job id) in the process: deriving costs
/// ~50 ms and 16 MiB once. Fails with errc::invalid_argument for an empty
/// secret and with errc::io_error if libsodium cannot be initialised or
/// runs out of memory.
caf::expected<curve_keys> derive_curve_keys(const std::string& secret,
                                            const std::string& job_id);

/// Why `secret` is likely to be guessed from a captured handshake, for a
/// warning; empty if it looks strong enough. The estimate is its length
/// times log2 of the alphabet its characters come from (digits, lower
/// case, upper case, other ASCII, other bytes), which is what a random
/// string of that length and alphabet holds; at least 128 bits (16 random
/// bytes: 32 hex digits, 22 base64 characters) are needed, and at least 8
/// distinct characters (no "aaaa..." or "abab...").
std::string weak_secret_reason(const std::string& secret);

/// The Z85 text of a key (40 characters), as ZeroMQ's tools print keys.
std::string z85(const std::array<uint8_t, 32>& key);

} // namespace dcpp::detail
