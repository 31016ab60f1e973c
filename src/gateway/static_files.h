// Serves the web client (web/ in the repository) as static files over the
// gateway's plain HTTP routes: GET/HEAD of `/` (index.html) and of files
// below the web root.
//
// What it is not: a general web server. Only paths made of
// [A-Za-z0-9._-] segments separated by '/' are looked up, no segment may
// start with '.', percent-escapes are refused, and the resolved file must lie
// inside the root after symlinks are followed: so no directory traversal.
// Directory listings are never produced.
//
// Caching: every answer carries `Cache-Control: no-cache` and a strong ETag
// (size and modification time), and `If-None-Match` with that ETag answers
// 304 without a body. The files have no content hashes in their names (there
// is no build step), so browsers revalidate on each load; the service worker
// (web/sw.js) is what keeps the app usable offline.
//
// Security: every answer for a file carries kAppContentSecurityPolicy; the
// gateway adds nosniff, Referrer-Policy, X-Frame-Options and (with TLS) HSTS
// to every HTTP response (gateway.h).
//
// Thread-safety: immutable after construction; Serve may be called from any
// thread concurrently. Files are read from disk on each request (they are
// small; edits show up without a restart).
#pragma once

#include <cstddef>
#include <string>

#include "gateway/gateway.h"

namespace parley::gateway {

// Largest file served; larger files answer 404 (nothing in web/ comes close).
inline constexpr size_t kMaxStaticFileBytes = 8 * 1024 * 1024;
// How many directories above the binary's own are searched for a web/ dir
// (build/<tree>/bin/parleyd sits three levels below the repository root).
inline constexpr int kWebRootSearchDepth = 4;

// The policy of the web client's files: everything from this origin only
// (the WebSocket included: 'self' covers ws: and wss: to the same host), no
// inline script or style, no framing.
inline constexpr const char* kAppContentSecurityPolicy =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; manifest-src 'self'; worker-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'";

class StaticFiles {
 public:
  // `root` is the directory holding index.html; "" disables serving.
  explicit StaticFiles(std::string root);

  // Answers `request` if it names a file of the web root (or `/`): true and
  // `response` filled (200, 304, or 404 for a well-formed path with no file).
  // False if serving is disabled or the path is not one this handler owns
  // (the caller then answers 404 as before).
  bool Serve(const HttpRequest& request, HttpResponse* response) const;

  const std::string& root() const { return root_; }

 private:
  std::string root_;  // canonical, without a trailing '/'; "" = disabled
};

// The web root to use when --web-root is not given: the first of
// <exe dir>/../share/parley/web (an installed layout) and <ancestor>/web for
// the binary's directory and up to kWebRootSearchDepth ancestors (a build
// tree inside the repository) that holds index.html. "" if none does.
std::string DefaultWebRoot();

// Content-Type for a file name, by extension ("application/octet-stream" if
// unknown).
std::string ContentTypeFor(const std::string& path);

}  // namespace parley::gateway
