// Unit tests of parley-xmpp-bench's stream handling (bench/xmpp/xml_stream.h,
// the body format of xmpp_driver.h): no XMPP server needed. The splitter
// must give the same events whichever way the bytes are cut into reads.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "xml_stream.h"
#include "xmpp_driver.h"

namespace parley::xmppbench {
namespace {

// What ejabberd sends for a login, a message and the end of the stream
// (shortened from a real session, with the awkward parts kept: an XML
// declaration, '>' and quotes inside attribute values, whitespace between
// stanzas, a self-closing top-level stanza, nested children).
const std::string kServerBytes =
    "<?xml version='1.0'?>"
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='1742' "
    "from='localhost' version='1.0' xml:lang='en'>"
    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>"
    "<mechanism>SCRAM-SHA-1</mechanism></mechanisms><register xmlns='http://jabber.org/features/iq-register'/>"
    "</stream:features>\n "
    "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    "<iq type='result' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>u0@localhost/bench</jid>"
    "</bind></iq>"
    "<message from='u1@localhost/bench' to='u0@localhost/bench' type='chat' id='m1.99' note=\"a>b 'q'\">"
    "<body>R1 S7 T123456789 x &amp; &lt;y&gt; &#x263A;</body><request xmlns='urn:xmpp:receipts'/></message>"
    "<message from='u1@localhost/bench' id='rm1.5'><received xmlns='urn:xmpp:receipts' id='m1.5'/></message>"
    "</stream:stream>";

std::vector<XmlEvent> FeedInPieces(const std::string& bytes, const std::vector<size_t>& cuts) {
  XmlStreamSplitter splitter;
  std::vector<XmlEvent> events;
  size_t from = 0;
  for (size_t cut : cuts) {
    EXPECT_TRUE(splitter.Feed(std::string_view(bytes).substr(from, cut - from), events)) << splitter.error();
    from = cut;
  }
  EXPECT_TRUE(splitter.Feed(std::string_view(bytes).substr(from), events)) << splitter.error();
  EXPECT_EQ(splitter.buffered(), 0u);
  return events;
}

TEST(XmlStreamSplitterTest, SplitsAWholeStreamReadAtOnce) {
  const auto events = FeedInPieces(kServerBytes, {});
  ASSERT_EQ(events.size(), 7u);
  EXPECT_EQ(events[0].kind, XmlEvent::Kind::kStreamOpen);
  EXPECT_EQ(StanzaView(events[0].text).Attr("id"), "1742");
  EXPECT_EQ(events[1].kind, XmlEvent::Kind::kStanza);
  EXPECT_EQ(StanzaView(events[1].text).Name(), "stream:features");
  EXPECT_EQ(StanzaView(events[2].text).Name(), "success");
  EXPECT_EQ(events[2].text, "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
  EXPECT_EQ(StanzaView(events[3].text).ChildText("jid"), "u0@localhost/bench");
  EXPECT_EQ(StanzaView(events[4].text).Name(), "message");
  EXPECT_EQ(StanzaView(events[5].text).ChildAttr("received", "id"), "m1.5");
  EXPECT_EQ(events[6].kind, XmlEvent::Kind::kStreamClose);
}

TEST(XmlStreamSplitterTest, GivesTheSameEventsWhereverTheReadsAreCut) {
  const auto whole = FeedInPieces(kServerBytes, {});
  // Every single cut point, then every pair of cut points in a coarse grid,
  // then byte-by-byte reads.
  for (size_t cut = 1; cut < kServerBytes.size(); ++cut) {
    const auto events = FeedInPieces(kServerBytes, {cut});
    ASSERT_EQ(events.size(), whole.size()) << "cut at " << cut;
    for (size_t i = 0; i < whole.size(); ++i) {
      EXPECT_EQ(events[i].kind, whole[i].kind) << "cut at " << cut;
      EXPECT_EQ(events[i].text, whole[i].text) << "cut at " << cut;
    }
  }
  for (size_t a = 1; a < kServerBytes.size(); a += 7) {
    for (size_t b = a + 1; b < kServerBytes.size(); b += 13) {
      const auto events = FeedInPieces(kServerBytes, {a, b});
      ASSERT_EQ(events.size(), whole.size()) << "cuts at " << a << ", " << b;
      for (size_t i = 0; i < whole.size(); ++i) EXPECT_EQ(events[i].text, whole[i].text);
    }
  }
  std::vector<size_t> every_byte;
  for (size_t i = 1; i < kServerBytes.size(); ++i) every_byte.push_back(i);
  const auto events = FeedInPieces(kServerBytes, every_byte);
  ASSERT_EQ(events.size(), whole.size());
  for (size_t i = 0; i < whole.size(); ++i) EXPECT_EQ(events[i].text, whole[i].text);
}

TEST(XmlStreamSplitterTest, HandlesManyStanzasPerReadAcrossRandomReads) {
  // A long stream of message stanzas, read in random-sized chunks (many
  // stanzas in one read, one stanza over many reads).
  std::string bytes = "<stream:stream xmlns='jabber:client'>";
  constexpr int kMessages = 2000;
  for (int i = 0; i < kMessages; ++i) {
    bytes += ChatMessage("u1@localhost/bench", "m1." + std::to_string(i), MakeBody(1, i, 1000 + i, 60), i % 2 == 0);
    if (i % 10 == 0) bytes += " ";  // whitespace keep-alive between stanzas
  }
  std::mt19937 rng(42);
  std::uniform_int_distribution<size_t> len(1, 700);
  XmlStreamSplitter splitter;
  std::vector<XmlEvent> events;
  for (size_t pos = 0; pos < bytes.size();) {
    const size_t n = std::min(len(rng), bytes.size() - pos);
    ASSERT_TRUE(splitter.Feed(std::string_view(bytes).substr(pos, n), events)) << splitter.error();
    pos += n;
  }
  ASSERT_EQ(events.size(), static_cast<size_t>(kMessages) + 1);
  for (int i = 0; i < kMessages; ++i) {
    const StanzaView st(events[static_cast<size_t>(i) + 1].text);
    ASSERT_EQ(st.Name(), "message");
    BodyFields f;
    ASSERT_TRUE(ParseBody(st.ChildText("body").value_or(""), &f));
    EXPECT_EQ(f.seq, static_cast<uint64_t>(i));
    EXPECT_EQ(f.intended_ns, 1000 + i);
    EXPECT_EQ(st.HasChild("request"), i % 2 == 0);
  }
}

TEST(XmlStreamSplitterTest, ResetStartsANewStreamAfterSaslSuccess) {
  XmlStreamSplitter splitter;
  std::vector<XmlEvent> events;
  ASSERT_TRUE(splitter.Feed("<stream:stream><success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", events));
  ASSERT_EQ(events.size(), 2u);
  splitter.Reset();
  events.clear();
  ASSERT_TRUE(splitter.Feed("<?xml version='1.0'?><stream:stream id='2'><stream:features/>", events));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind, XmlEvent::Kind::kStreamOpen);
  EXPECT_EQ(StanzaView(events[0].text).Attr("id"), "2");
  EXPECT_EQ(events[1].text, "<stream:features/>");
}

TEST(XmlStreamSplitterTest, RefusesBadInputWithAReasonAndStaysFailed) {
  std::vector<XmlEvent> events;
  {
    XmlStreamSplitter s;
    EXPECT_FALSE(s.Feed("<stream:stream><message a='<'/>", events));
    EXPECT_NE(s.error().find("attribute"), std::string::npos);
    EXPECT_FALSE(s.Feed("<presence/>", events));
  }
  {
    XmlStreamSplitter s;
    EXPECT_FALSE(s.Feed("<!DOCTYPE x>", events));
    EXPECT_NE(s.error().find("DOCTYPE"), std::string::npos);
  }
  {
    XmlStreamSplitter s;
    EXPECT_FALSE(s.Feed("</stream:stream>", events));
  }
  {
    XmlStreamSplitter s;
    ASSERT_TRUE(s.Feed("<stream:stream><message><body>", events));
    const std::string big(kMaxStanzaBytes, 'x');
    EXPECT_FALSE(s.Feed(big, events));
    EXPECT_NE(s.error().find("larger"), std::string::npos);
  }
  EXPECT_TRUE(events.empty() || events[0].kind == XmlEvent::Kind::kStreamOpen);
}

TEST(StanzaViewTest, ReadsNamesAttributesAndDecodedText) {
  const std::string msg =
      "<message from='u1@localhost/bench' type=\"chat\" id='m1.99' note=\"a>b 'q'\">"
      "<body>R1 S7 T123456789 x &amp; &lt;y&gt; &#x263A; &#65;</body><request xmlns='urn:xmpp:receipts'/></message>";
  const StanzaView st(msg);
  EXPECT_EQ(st.Name(), "message");
  EXPECT_EQ(st.Attr("from"), "u1@localhost/bench");
  EXPECT_EQ(st.Attr("type"), "chat");
  EXPECT_EQ(st.Attr("note"), "a>b 'q'");
  EXPECT_EQ(st.Attr("to"), std::nullopt);
  EXPECT_EQ(st.ChildText("body"), "R1 S7 T123456789 x & <y> \xE2\x98\xBA A");
  EXPECT_TRUE(st.HasChild("request"));
  EXPECT_FALSE(st.HasChild("req"));
  EXPECT_EQ(st.ChildText("received"), std::nullopt);
  EXPECT_EQ(st.ChildText("request"), "");
}

TEST(StanzaWriterTest, EscapesValuesAndRoundTripsThroughTheReader) {
  const std::string msg = ChatMessage("a'b@localhost/r&s", "id<1>", "x & \"y\"", true);
  EXPECT_EQ(msg,
            "<message to='a&apos;b@localhost/r&amp;s' type='chat' id='id&lt;1&gt;'><body>x &amp; &quot;y&quot;</body>"
            "<request xmlns='urn:xmpp:receipts'/></message>");
  const StanzaView st(msg);
  EXPECT_EQ(st.Attr("to"), "a'b@localhost/r&s");
  EXPECT_EQ(st.Attr("id"), "id<1>");
  EXPECT_EQ(st.ChildText("body"), "x & \"y\"");
  const std::string receipt = ReceiptMessage("u0@localhost/bench", "m1.5");
  EXPECT_EQ(StanzaView(receipt).ChildAttr("received", "id"), "m1.5");
}

TEST(StanzaWriterTest, SaslPlainIsBase64OfNulSeparatedCredentials) {
  EXPECT_EQ(Base64Encode(""), "");
  EXPECT_EQ(Base64Encode("f"), "Zg==");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_EQ(Base64Encode("foo"), "Zm9v");
  // base64("\0u0\0bench")
  EXPECT_EQ(SaslPlainAuth("u0", "bench"),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AHUwAGJlbmNo</auth>");
}

TEST(BodyTest, PadsToTheAskedSizeAndParsesBack) {
  const std::string body = MakeBody(3, 12345, 987654321012, 80);
  EXPECT_EQ(body.size(), 80u);
  BodyFields f;
  ASSERT_TRUE(ParseBody(body, &f));
  EXPECT_EQ(f.run, 3u);
  EXPECT_EQ(f.seq, 12345u);
  EXPECT_EQ(f.intended_ns, 987654321012);
  EXPECT_EQ(MakeBody(1, 2, 3, 0), "R1 S2 T3 ");
  EXPECT_FALSE(ParseBody("hello", &f));
  EXPECT_FALSE(ParseBody("R1 S2 T", &f));
  EXPECT_FALSE(ParseBody("R1 Sx T3 ", &f));
}

TEST(SummarizeTest, NearestRankPercentilesInMilliseconds) {
  std::vector<int64_t> ns;
  for (int i = 1000; i >= 1; --i) ns.push_back(i * 1'000'000LL);  // 1..1000 ms, unsorted
  const LatencySummary s = Summarize(ns);
  EXPECT_EQ(s.count, 1000u);
  EXPECT_DOUBLE_EQ(s.p50, 500);
  EXPECT_DOUBLE_EQ(s.p90, 900);
  EXPECT_DOUBLE_EQ(s.p99, 990);
  EXPECT_DOUBLE_EQ(s.p999, 999);
  EXPECT_DOUBLE_EQ(s.max, 1000);
  std::vector<int64_t> empty;
  EXPECT_EQ(Summarize(empty).count, 0u);
}

}  // namespace
}  // namespace parley::xmppbench
