// Password hashing and device tokens, through libsodium.
//
// Passwords: Argon2id (crypto_pwhash_str). Hashing costs tens of milliseconds
// and tens of MiB by design, so core runs it on a WorkerPool, never on an I/O
// thread or the core executor. The cheap setting exists only for tests and
// benchmarks (config `insecure_fast_password_hashing`) and is never a default.
//
// Tokens: 32 random bytes, base64url without padding (43 characters), shown
// to the client once; the store keeps only their BLAKE2b-256 hash, so a stolen
// database yields no usable tokens. Hashing a token is cheap (no pool needed).
//
// Thread-safety: all functions are safe on any thread once InitSodium() ran.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace parley::core {

enum class PasswordCost {
  kInteractive,   // Argon2id, libsodium's INTERACTIVE limits (2 passes, 64 MiB)
  kInsecureFast,  // Argon2id, libsodium's MIN limits: tests and benchmarks only
};

// Initialises libsodium; call once at start-up. Fails kInternal.
Status InitSodium();

// Returns the encoded hash (algorithm and parameters included), or kInternal
// when memory is short.
Result<std::string> HashPassword(std::string_view password, PasswordCost cost);
bool VerifyPassword(std::string_view encoded_hash, std::string_view password);

// A new random device token (base64url, 43 characters).
std::string NewDeviceToken();
// The value stored for a token: BLAKE2b-256 of it, hex-encoded.
std::string HashToken(std::string_view token);

}  // namespace parley::core
