// The SHA-256 fingerprint of an X.509 certificate, as lowercase hex: what
// parleyd logs for its loaded certificate and what the SDK reports as
// Connection::peer_certificate_sha256() (docs/operations.md, "TLS").
#pragma once

#include <string>

typedef struct x509_st X509;  // OpenSSL's type, without its headers

namespace parley::netutil {

// "" when `cert` is null or cannot be digested.
std::string CertificateSha256(X509* cert);

}  // namespace parley::netutil
