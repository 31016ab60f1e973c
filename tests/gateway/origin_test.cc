// The WebSocket Origin rule (gateway.h, OriginAllowed) and the validation of
// --allowed-origins entries.
#include <gtest/gtest.h>

#include "gateway/gateway.h"

namespace parley::gateway {
namespace {

TEST(OriginAllowedTest, NoOriginIsAllowed) {
  EXPECT_TRUE(OriginAllowed("", "example.com", {}));
  EXPECT_TRUE(OriginAllowed("", "", {}));
}

TEST(OriginAllowedTest, SameOriginMatchesTheHostHeaderIgnoringSchemeAndCase) {
  EXPECT_TRUE(OriginAllowed("https://chat.example.com", "chat.example.com", {}));
  EXPECT_TRUE(OriginAllowed("http://127.0.0.1:8080", "127.0.0.1:8080", {}));
  EXPECT_TRUE(OriginAllowed("HTTPS://Chat.Example.COM", "chat.example.com", {}));
  EXPECT_TRUE(OriginAllowed("https://[::1]:8443", "[::1]:8443", {}));
}

TEST(OriginAllowedTest, ForeignNullAndLookAlikeOriginsAreRefused) {
  EXPECT_FALSE(OriginAllowed("https://evil.example", "chat.example.com", {}));
  EXPECT_FALSE(OriginAllowed("null", "chat.example.com", {}));
  EXPECT_FALSE(OriginAllowed("https://chat.example.com:444", "chat.example.com", {}));
  EXPECT_FALSE(OriginAllowed("https://chat.example.com.evil.example", "chat.example.com", {}));
  EXPECT_FALSE(OriginAllowed("https://evil.example", "", {}));
  EXPECT_FALSE(OriginAllowed("chat.example.com", "chat.example.com", {}));  // no scheme: not an origin
}

TEST(OriginAllowedTest, ListedOriginsAndTheWildcardAreAllowed) {
  std::vector<std::string> list = {"https://app.example.com", "http://localhost:3000"};
  EXPECT_TRUE(OriginAllowed("https://app.example.com", "api.example.com", list));
  EXPECT_TRUE(OriginAllowed("https://APP.example.com", "api.example.com", list));
  EXPECT_TRUE(OriginAllowed("http://localhost:3000", "api.example.com", list));
  EXPECT_FALSE(OriginAllowed("http://app.example.com", "api.example.com", list));  // the scheme counts here
  EXPECT_FALSE(OriginAllowed("http://localhost:3001", "api.example.com", list));
  EXPECT_TRUE(OriginAllowed("https://api.example.com", "api.example.com", list));  // same origin still
  EXPECT_TRUE(OriginAllowed("https://anything.example", "api.example.com", {"*"}));
}

TEST(OriginAllowedTest, AllowedOriginEntriesAreValidated) {
  for (const char* ok : {"*", "https://app.example.com", "http://localhost:3000", "HTTPS://A.B"})
    EXPECT_TRUE(ValidAllowedOrigin(ok)) << ok;
  for (const char* bad : {"", "app.example.com", "https://", "https://a.example/", "https://a.example/path",
                          "ftp://a.example", "https://a b", "null", "**"})
    EXPECT_FALSE(ValidAllowedOrigin(bad)) << bad;
}

}  // namespace
}  // namespace parley::gateway
