// Static files for the web client. The path check is a whitelist (segments of
// [A-Za-z0-9._-], none starting with '.', no escapes) followed by a
// containment check on the canonical path, so neither "..", encoded
// separators nor a symlink pointing outside the root can reach another file.
#include "gateway/static_files.h"

#include <array>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

namespace parley::gateway {

namespace fs = std::filesystem;

namespace {

constexpr std::array<std::pair<const char*, const char*>, 14> kContentTypes = {{
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".mjs", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".json", "application/json"},
    {".webmanifest", "application/manifest+json"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".ico", "image/x-icon"},
    {".txt", "text/plain; charset=utf-8"},
    {".woff2", "font/woff2"},
    {".webp", "image/webp"},
    {".jpg", "image/jpeg"},
    {".map", "application/json"},
}};

bool SafeRelativePath(const std::string& rel) {
  if (rel.empty() || rel.front() == '/' || rel.back() == '/') return false;
  bool segment_start = true;
  for (char c : rel) {
    if (c == '/') {
      if (segment_start) return false;  // "//"
      segment_start = true;
      continue;
    }
    if (segment_start && c == '.') return false;  // ".", "..", dot files
    segment_start = false;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-';
    if (!ok) return false;
  }
  return true;
}

bool Inside(const std::string& root, const std::string& path) {
  return path.size() > root.size() && path.compare(0, root.size(), root) == 0 && path[root.size()] == '/';
}

void NotFound(HttpResponse* r) {
  r->status = 404;
  r->content_type = "text/plain; charset=utf-8";
  r->body = "not found\n";
  r->cache_control = "no-store";
}

}  // namespace

std::string ContentTypeFor(const std::string& path) {
  for (const auto& [ext, type] : kContentTypes) {
    std::string e(ext);
    if (path.size() > e.size() && path.compare(path.size() - e.size(), e.size(), e) == 0) return type;
  }
  return "application/octet-stream";
}

StaticFiles::StaticFiles(std::string root) {
  if (root.empty()) return;
  std::error_code ec;
  fs::path canonical = fs::canonical(root, ec);
  if (ec || !fs::is_directory(canonical, ec)) return;
  root_ = canonical.string();
  while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
}

bool StaticFiles::Serve(const HttpRequest& request, HttpResponse* response) const {
  if (root_.empty()) return false;
  std::string path = request.target.substr(0, request.target.find('?'));
  if (path.empty() || path.front() != '/') return false;
  std::string rel = path == "/" ? "index.html" : path.substr(1);
  if (!SafeRelativePath(rel)) {
    NotFound(response);
    return true;
  }
  std::error_code ec;
  fs::path file = fs::canonical(fs::path(root_) / rel, ec);
  if (ec || !Inside(root_, file.string()) || !fs::is_regular_file(file, ec)) {
    NotFound(response);
    return true;
  }
  auto size = fs::file_size(file, ec);
  auto mtime = fs::last_write_time(file, ec);
  if (ec || size > kMaxStaticFileBytes) {
    NotFound(response);
    return true;
  }
  std::ostringstream tag;
  tag << '"' << std::hex << size << '-' << mtime.time_since_epoch().count() << '"';
  response->etag = tag.str();
  response->cache_control = "no-cache";
  response->content_type = ContentTypeFor(rel);
  // Every file of the app gets the app's policy: it governs the pages and
  // the service worker (sw.js), which fetches from this origin. The other
  // security headers come from the gateway (gateway.h).
  response->headers.emplace_back("Content-Security-Policy", kAppContentSecurityPolicy);
  if (!request.if_none_match.empty() && request.if_none_match == response->etag) {
    response->status = 304;
    response->body.clear();
    return true;
  }
  std::ifstream in(file, std::ios::binary);
  std::string body(size, '\0');
  if (!in.read(body.data(), static_cast<std::streamsize>(size))) {
    NotFound(response);
    response->etag.clear();
    response->headers.clear();
    return true;
  }
  response->status = 200;
  response->body = std::move(body);
  return true;
}

std::string DefaultWebRoot() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  fs::path dir = exe.parent_path();
  auto usable = [](const fs::path& p) {
    std::error_code e;
    return fs::is_regular_file(p / "index.html", e);
  };
  if (fs::path installed = dir / ".." / "share" / "parley" / "web"; usable(installed))
    return fs::weakly_canonical(installed, ec).string();
  for (int i = 0; i <= kWebRootSearchDepth && !dir.empty(); ++i) {
    if (usable(dir / "web")) return (dir / "web").string();
    if (dir == dir.parent_path()) break;
    dir = dir.parent_path();
  }
  return "";
}

}  // namespace parley::gateway
