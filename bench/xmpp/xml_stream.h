// The XMPP stream framing used by parley-xmpp-bench: just enough XML to drive
// ejabberd and Prosody as a client (RFC 6120), and no more.
//
// XmlStreamSplitter cuts the bytes of one XMPP stream into events: the
// stream header (<stream:stream ...>, which stays open), each complete
// top-level stanza (a child of the stream element, with everything inside
// it), and the stream's end. Bytes may arrive split at any point and several
// stanzas may arrive in one read: Feed() keeps what it cannot complete yet.
// It checks nesting by depth only, not by name: it is a load driver's parser
// for well-formed server output, not a validating one. What it refuses
// (a stanza larger than the limit, markup it does not know such as DOCTYPE
// or CDATA, '<' inside an attribute value) comes back as an error.
//
// StanzaView reads one complete stanza: the element's name, an attribute of
// the top element, and the text of the first descendant with a given name.
// Text is returned with the five predefined entities and numeric character
// references decoded.
//
// The writer helpers build the stanzas the driver sends; every value they
// put in markup goes through XmlEscape.
//
// Thread-safety: none; one splitter per connection, used by one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace parley::xmppbench {

// Largest stanza (or stream header) the splitter buffers; the servers are
// configured with max_stanza_size 65536, so anything larger is an error.
inline constexpr size_t kMaxStanzaBytes = 256 * 1024;

struct XmlEvent {
  enum class Kind { kStreamOpen, kStanza, kStreamClose };
  Kind kind;
  std::string text;  // the header tag for kStreamOpen, the whole stanza for kStanza, empty for kStreamClose
};

class XmlStreamSplitter {
 public:
  // Appends `bytes` and moves every event now complete to `out` (in order).
  // Returns false on malformed or oversized input; error() says why, and the
  // splitter stays failed (every later Feed() returns false).
  [[nodiscard]] bool Feed(std::string_view bytes, std::vector<XmlEvent>& out);

  // Forgets everything buffered: a new stream starts (after SASL success).
  void Reset();

  const std::string& error() const { return error_; }
  // Bytes held waiting for the rest of a stanza (for tests and limits).
  size_t buffered() const { return buf_.size() - pos_; }

 private:
  bool Fail(std::string why);

  std::string buf_;
  size_t pos_ = 0;           // first byte not yet consumed into an event
  size_t scan_ = 0;          // where scanning resumes (>= pos_)
  int depth_ = 0;            // 0 outside the stream, 1 inside it, >1 inside a stanza
  size_t stanza_start_ = 0;  // offset of the current stanza's '<' when depth_ > 1
  std::string error_;
};

class StanzaView {
 public:
  explicit StanzaView(std::string_view stanza) : s_(stanza) {}
  std::string_view text() const { return s_; }

  // The top element's qualified name ("message", "stream:features", "iq").
  std::string_view Name() const;
  // The value of the top element's attribute `name`, decoded; nullopt if absent.
  std::optional<std::string> Attr(std::string_view name) const;
  // The decoded text of the first element named `name` anywhere inside the
  // stanza (not the top element); nullopt if there is none. An empty element
  // gives "".
  std::optional<std::string> ChildText(std::string_view name) const;
  // True if an element named `name` appears inside the stanza.
  bool HasChild(std::string_view name) const { return FindStartTag(name, 1).has_value(); }
  // The value of attribute `attr` on the first element named `name` inside
  // the stanza; nullopt if the element or the attribute is absent.
  std::optional<std::string> ChildAttr(std::string_view name, std::string_view attr) const;

 private:
  struct Tag {
    size_t begin;  // '<'
    size_t end;    // one past '>'
    bool self_closing;
  };
  std::optional<Tag> FindStartTag(std::string_view name, size_t from) const;
  static std::optional<std::string> AttrIn(std::string_view tag, std::string_view name);

  std::string_view s_;
};

// Escapes & < > ' " for use in text or a quoted attribute value.
std::string XmlEscape(std::string_view raw);
// Decodes &amp; &lt; &gt; &apos; &quot; and &#N; / &#xN; (as UTF-8). Unknown
// entities are kept as they are.
std::string XmlUnescape(std::string_view text);
std::string Base64Encode(std::string_view raw);

// The client's stream header (what opens every stream and every restart).
std::string StreamHeader(std::string_view domain);
// SASL PLAIN with no authorization identity: base64("\0user\0password").
std::string SaslPlainAuth(std::string_view user, std::string_view password);
// XEP-0077 registration of user/password (an iq set with id `id`).
std::string RegisterIq(std::string_view id, std::string_view user, std::string_view password);
std::string BindIq(std::string_view id, std::string_view resource);
std::string SessionIq(std::string_view id);

// A chat message to `to` with `id` and `body`; with `request_receipt` it asks
// for a XEP-0184 receipt.
std::string ChatMessage(std::string_view to, std::string_view id, std::string_view body, bool request_receipt);
// The XEP-0184 receipt for message `id`, sent to `to`.
std::string ReceiptMessage(std::string_view to, std::string_view id);

}  // namespace parley::xmppbench
