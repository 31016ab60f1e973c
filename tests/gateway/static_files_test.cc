// StaticFiles: what the web client's files are served with, and that nothing
// outside the web root can be reached.
#include "gateway/static_files.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace parley::gateway {
namespace {

namespace fs = std::filesystem;

class StaticFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = fs::temp_directory_path() / ("parley-static-" + std::to_string(::getpid()));
    fs::remove_all(base_);
    fs::create_directories(base_ / "web" / "js");
    Write("web/index.html", "<!doctype html><title>t</title>");
    Write("web/js/app.js", "export {};");
    Write("web/manifest.webmanifest", "{}");
    Write("secret.txt", "do not serve");
    fs::create_symlink(base_ / "secret.txt", base_ / "web" / "link.txt");
  }
  void TearDown() override { fs::remove_all(base_); }

  void Write(const std::string& rel, const std::string& text) { std::ofstream(base_ / rel) << text; }

  HttpResponse Get(const StaticFiles& files, const std::string& target, const std::string& etag = "") {
    HttpRequest req;
    req.method = "GET";
    req.target = target;
    req.if_none_match = etag;
    HttpResponse res;
    EXPECT_TRUE(files.Serve(req, &res)) << target;
    return res;
  }

  fs::path base_;
};

TEST_F(StaticFilesTest, ServesIndexAtRootWithTypeAndCachingHeaders) {
  StaticFiles files((base_ / "web").string());
  HttpResponse res = Get(files, "/?x=1");
  EXPECT_EQ(res.status, 200);
  EXPECT_EQ(res.body, "<!doctype html><title>t</title>");
  EXPECT_EQ(res.content_type, "text/html; charset=utf-8");
  EXPECT_EQ(res.cache_control, "no-cache");
  EXPECT_FALSE(res.etag.empty());
  auto csp = [](const HttpResponse& r) {
    for (auto& [k, v] : r.headers)
      if (k == "Content-Security-Policy") return v;
    return std::string();
  };
  EXPECT_EQ(csp(res), kAppContentSecurityPolicy);
  // Scripts too: the policy governs the service worker (sw.js).
  EXPECT_EQ(csp(Get(files, "/js/app.js")), kAppContentSecurityPolicy);
  EXPECT_EQ(std::string(kAppContentSecurityPolicy).find("unsafe-"), std::string::npos);
  EXPECT_EQ(Get(files, "/js/app.js").content_type, "text/javascript; charset=utf-8");
  EXPECT_EQ(Get(files, "/manifest.webmanifest").content_type, "application/manifest+json");
}

TEST_F(StaticFilesTest, MatchingEtagAnswersNotModifiedWithoutBody) {
  StaticFiles files((base_ / "web").string());
  HttpResponse first = Get(files, "/js/app.js");
  HttpResponse again = Get(files, "/js/app.js", first.etag);
  EXPECT_EQ(again.status, 304);
  EXPECT_TRUE(again.body.empty());
  EXPECT_EQ(again.etag, first.etag);
  EXPECT_EQ(Get(files, "/js/app.js", "\"other\"").status, 200);
}

TEST_F(StaticFilesTest, RefusesTraversalEscapesDotFilesAndSymlinksOutOfRoot) {
  StaticFiles files((base_ / "web").string());
  for (const char* target : {"/../secret.txt", "/js/../../secret.txt", "/%2e%2e/secret.txt", "/js/%2fapp.js",
                             "/.hidden", "/js//app.js", "/link.txt", "/js/", "/js", "/missing.js", "/a\\b"}) {
    HttpResponse res = Get(files, target);
    EXPECT_EQ(res.status, 404) << target;
    EXPECT_EQ(res.body, "not found\n") << target;
  }
}

TEST_F(StaticFilesTest, DisabledOrMissingRootServesNothing) {
  HttpRequest req;
  req.method = "GET";
  req.target = "/";
  HttpResponse res;
  EXPECT_FALSE(StaticFiles("").Serve(req, &res));
  EXPECT_FALSE(StaticFiles((base_ / "nope").string()).Serve(req, &res));
  EXPECT_TRUE(StaticFiles((base_ / "nope").string()).root().empty());
}

TEST(ContentTypeTest, UnknownExtensionIsOctetStream) {
  EXPECT_EQ(ContentTypeFor("a.bin"), "application/octet-stream");
  EXPECT_EQ(ContentTypeFor("icon.svg"), "image/svg+xml");
  EXPECT_EQ(ContentTypeFor("sw.js"), "text/javascript; charset=utf-8");
}

}  // namespace
}  // namespace parley::gateway
