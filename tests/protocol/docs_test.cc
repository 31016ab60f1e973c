// docs/protocol.md stays complete: every request type of the registry
// (PARLEY_REQUEST_TYPES), every error code (PARLEY_ERROR_CODES) and every
// frame type the server sends is documented. A type added to the code
// without its documentation fails here.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/error_code.h"
#include "protocol/encode.h"
#include "protocol/frames.h"
#include "test_paths.h"

namespace parley::protocol {
namespace {

std::string ProtocolDoc() {
  std::ifstream in(parley::testing::SourceDir() + "/docs/protocol.md");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool HasHeadingNaming(const std::string& doc, std::string_view name) {
  std::istringstream lines(doc);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("### ", 0) != 0) continue;
    // "### add_contact, remove_contact, list_contacts" names three.
    std::string rest = line.substr(4);
    size_t start = 0;
    while (start <= rest.size()) {
      size_t comma = rest.find(',', start);
      std::string word = rest.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      while (!word.empty() && word.front() == ' ') word.erase(0, 1);
      while (!word.empty() && word.back() == ' ') word.pop_back();
      if (word == name) return true;
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  return false;
}

TEST(ProtocolDocTest, EveryRequestTypeHasATableRowAndASection) {
  std::string doc = ProtocolDoc();
  ASSERT_FALSE(doc.empty()) << "docs/protocol.md not found";
  for (RequestType t : AllRequestTypes()) {
    std::string name(RequestTypeName(t));
    std::string auth = RequestNeedsAuth(t) ? "yes" : "no";
    EXPECT_NE(doc.find("| `" + name + "` | " + auth + " |"), std::string::npos)
        << name << ": no row (or a wrong auth column) in the table under \"Requests\"";
    EXPECT_TRUE(HasHeadingNaming(doc, name)) << name << ": no ### section";
  }
}

TEST(ProtocolDocTest, EveryErrorCodeIsInTheErrorTableWithItsRetryability) {
  std::string doc = ProtocolDoc();
  struct Code {
    std::string wire;
    bool retryable;
  };
  std::vector<Code> codes = {
#define PARLEY_X(e, wire, retry) {wire, retry},
      PARLEY_ERROR_CODES(PARLEY_X)
#undef PARLEY_X
  };
  for (const Code& c : codes) {
    if (c.wire == "ok") continue;  // not an error; never on the wire
    std::string row = "| `" + c.wire + "` | " + (c.retryable ? "yes" : "no") + " |";
    EXPECT_NE(doc.find(row), std::string::npos)
        << c.wire << ": missing from the table under \"Errors\" (or a wrong retryable column)";
  }
}

TEST(ProtocolDocTest, EveryEventKindIsDescribedWithAnExample) {
  std::string doc = ProtocolDoc();
  for (store::EventKind kind : AllEventKinds()) {
    std::string name(EventKindName(kind));
    EXPECT_NE(doc.find("**`" + name + "`**"), std::string::npos)
        << name << ": no **`" << name << "`** entry under \"Events and the user stream\"";
    EXPECT_NE(doc.find("\"kind\":\"" + name + "\""), std::string::npos) << name << ": no example event";
  }
}

TEST(ProtocolDocTest, EveryServerFrameTypeHasAnExample) {
  std::string doc = ProtocolDoc();
  for (std::string type : {"response", "error", "event", "typing", "presence"}) {
    bool spaced = doc.find("\"type\": \"" + type + "\"") != std::string::npos;
    bool compact = doc.find("\"type\":\"" + type + "\"") != std::string::npos;
    EXPECT_TRUE(spaced || compact) << "no example of a \"" << type << "\" frame";
  }
}

}  // namespace
}  // namespace parley::protocol
