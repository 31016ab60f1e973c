// XmlStreamSplitter scans for markup with a small state machine: outside a
// tag it looks for '<'; inside one it looks for the closing '>' while
// skipping quoted attribute values. A tag that is not complete yet is
// rescanned from its '<' when more bytes come (tags are short; stanzas are
// bounded by kMaxStanzaBytes). Depth says where a tag belongs: 0 outside the
// stream, 1 directly inside <stream:stream>, more inside a stanza.
#include "xml_stream.h"

#include <cstring>

namespace parley::xmppbench {

namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }
bool EndsName(char c) { return IsSpace(c) || c == '>' || c == '/'; }

// The end (one past '>') of the tag whose '<' is at `begin`, skipping quoted
// attribute values; 0 if the buffer ends first; npos if a quoted value holds '<'.
size_t TagEnd(std::string_view s, size_t begin) {
  char quote = 0;
  for (size_t i = begin + 1; i < s.size(); ++i) {
    const char c = s[i];
    if (quote != 0) {
      if (c == quote) quote = 0;
      else if (c == '<') return std::string_view::npos;
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '>') {
      return i + 1;
    }
  }
  return 0;
}

void AppendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace

bool XmlStreamSplitter::Fail(std::string why) {
  error_ = std::move(why);
  return false;
}

void XmlStreamSplitter::Reset() {
  buf_.clear();
  pos_ = scan_ = stanza_start_ = 0;
  depth_ = 0;
  error_.clear();
}

bool XmlStreamSplitter::Feed(std::string_view bytes, std::vector<XmlEvent>& out) {
  if (!error_.empty()) return false;
  buf_.append(bytes);
  const std::string_view s(buf_);
  while (scan_ < s.size()) {
    const size_t lt = s.find('<', scan_);
    if (lt == std::string_view::npos) {  // text (whitespace keep-alives between stanzas, or stanza content)
      scan_ = s.size();
      if (depth_ <= 1) pos_ = scan_;
      break;
    }
    if (depth_ <= 1) pos_ = lt;  // text between stanzas is dropped
    if (lt + 1 >= s.size()) {
      scan_ = lt;
      break;
    }
    size_t end = 0;
    const char next = s[lt + 1];
    if (next == '?') {  // processing instruction (the XML declaration)
      const size_t close = s.find("?>", lt + 2);
      end = close == std::string_view::npos ? 0 : close + 2;
    } else if (next == '!') {
      if (s.size() - lt < 4) {
        scan_ = lt;
        break;
      }
      if (s.compare(lt, 4, "<!--") != 0) return Fail("unsupported markup (DOCTYPE or CDATA) in the stream");
      const size_t close = s.find("-->", lt + 4);
      end = close == std::string_view::npos ? 0 : close + 3;
    } else {
      end = TagEnd(s, lt);
      if (end == std::string_view::npos) return Fail("'<' inside an attribute value");
    }
    if (end == 0) {  // the tag is not complete yet
      scan_ = lt;
      break;
    }
    scan_ = end;
    if (next == '?' || next == '!') {
      if (depth_ <= 1) pos_ = end;
      continue;
    }
    if (next == '/') {  // end tag
      if (depth_ == 0) return Fail("end tag outside the stream");
      --depth_;
      if (depth_ == 0) {
        out.push_back({XmlEvent::Kind::kStreamClose, {}});
        pos_ = end;
      } else if (depth_ == 1) {
        out.push_back({XmlEvent::Kind::kStanza, std::string(s.substr(stanza_start_, end - stanza_start_))});
        pos_ = end;
      }
      continue;
    }
    const bool self_closing = s[end - 2] == '/';
    if (depth_ == 0) {
      if (self_closing) return Fail("self-closing element where the stream header was expected");
      out.push_back({XmlEvent::Kind::kStreamOpen, std::string(s.substr(lt, end - lt))});
      depth_ = 1;
      pos_ = end;
    } else if (depth_ == 1) {
      if (self_closing) {
        out.push_back({XmlEvent::Kind::kStanza, std::string(s.substr(lt, end - lt))});
        pos_ = end;
      } else {
        stanza_start_ = lt;
        depth_ = 2;
      }
    } else if (!self_closing) {
      ++depth_;
    }
  }
  if (s.size() - pos_ > kMaxStanzaBytes) return Fail("stanza larger than " + std::to_string(kMaxStanzaBytes) + " bytes");
  // Drop what has been consumed once it is at least half of the buffer.
  if (pos_ > 0 && pos_ * 2 >= buf_.size()) {
    buf_.erase(0, pos_);
    scan_ -= pos_;
    if (depth_ > 1) stanza_start_ -= pos_;
    pos_ = 0;
  }
  return true;
}

std::string_view StanzaView::Name() const {
  if (s_.size() < 2 || s_[0] != '<') return {};
  size_t i = 1;
  while (i < s_.size() && !EndsName(s_[i])) ++i;
  return s_.substr(1, i - 1);
}

std::optional<std::string> StanzaView::AttrIn(std::string_view tag, std::string_view name) {
  size_t i = 1;
  while (i < tag.size() && !EndsName(tag[i])) ++i;  // skip the element's name
  while (i < tag.size()) {
    while (i < tag.size() && IsSpace(tag[i])) ++i;
    if (i >= tag.size() || tag[i] == '>' || tag[i] == '/') return std::nullopt;
    const size_t name_begin = i;
    while (i < tag.size() && tag[i] != '=' && !IsSpace(tag[i]) && tag[i] != '>') ++i;
    const std::string_view attr_name = tag.substr(name_begin, i - name_begin);
    while (i < tag.size() && IsSpace(tag[i])) ++i;
    if (i >= tag.size() || tag[i] != '=') return std::nullopt;
    ++i;
    while (i < tag.size() && IsSpace(tag[i])) ++i;
    if (i >= tag.size() || (tag[i] != '"' && tag[i] != '\'')) return std::nullopt;
    const char quote = tag[i++];
    const size_t value_end = tag.find(quote, i);
    if (value_end == std::string_view::npos) return std::nullopt;
    if (attr_name == name) return XmlUnescape(tag.substr(i, value_end - i));
    i = value_end + 1;
  }
  return std::nullopt;
}

std::optional<std::string> StanzaView::Attr(std::string_view name) const {
  const size_t end = TagEnd(s_, 0);
  if (end == 0 || end == std::string_view::npos) return std::nullopt;
  return AttrIn(s_.substr(0, end), name);
}

std::optional<StanzaView::Tag> StanzaView::FindStartTag(std::string_view name, size_t from) const {
  size_t i = from;
  while ((i = s_.find('<', i)) != std::string_view::npos) {
    if (s_.compare(i + 1, name.size(), name) == 0 && i + 1 + name.size() < s_.size() &&
        EndsName(s_[i + 1 + name.size()])) {
      const size_t end = TagEnd(s_, i);
      if (end == 0 || end == std::string_view::npos) return std::nullopt;
      return Tag{i, end, s_[end - 2] == '/'};
    }
    ++i;
  }
  return std::nullopt;
}

std::optional<std::string> StanzaView::ChildText(std::string_view name) const {
  const auto tag = FindStartTag(name, 1);
  if (!tag) return std::nullopt;
  if (tag->self_closing) return std::string();
  const std::string close = "</" + std::string(name);
  const size_t close_at = s_.find(close, tag->end);
  if (close_at == std::string_view::npos) return std::nullopt;
  return XmlUnescape(s_.substr(tag->end, close_at - tag->end));
}

std::optional<std::string> StanzaView::ChildAttr(std::string_view name, std::string_view attr) const {
  const auto tag = FindStartTag(name, 1);
  if (!tag) return std::nullopt;
  return AttrIn(s_.substr(tag->begin, tag->end - tag->begin), attr);
}

std::string XmlEscape(std::string_view raw) {
  std::string out;
  out.reserve(raw.size());
  for (const char c : raw) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&apos;"; break;
      case '"': out += "&quot;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

std::string XmlUnescape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const size_t amp = text.find('&', i);
    if (amp == std::string_view::npos) {
      out.append(text.substr(i));
      break;
    }
    out.append(text.substr(i, amp - i));
    const size_t semi = text.find(';', amp);
    if (semi == std::string_view::npos) {
      out.append(text.substr(amp));
      break;
    }
    const std::string_view ent = text.substr(amp + 1, semi - amp - 1);
    if (ent == "amp") out.push_back('&');
    else if (ent == "lt") out.push_back('<');
    else if (ent == "gt") out.push_back('>');
    else if (ent == "apos") out.push_back('\'');
    else if (ent == "quot") out.push_back('"');
    else if (ent.size() >= 2 && ent[0] == '#') {
      const bool hex = ent[1] == 'x' || ent[1] == 'X';
      const std::string digits(ent.substr(hex ? 2 : 1));
      char* stop = nullptr;
      const unsigned long cp = std::strtoul(digits.c_str(), &stop, hex ? 16 : 10);
      if (!digits.empty() && stop == digits.c_str() + digits.size() && cp <= 0x10FFFF) {
        AppendUtf8(out, static_cast<uint32_t>(cp));
      } else {
        out.append(text.substr(amp, semi - amp + 1));
      }
    } else {
      out.append(text.substr(amp, semi - amp + 1));
    }
    i = semi + 1;
  }
  return out;
}

std::string Base64Encode(std::string_view raw) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((raw.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < raw.size(); i += 3) {
    const uint32_t v = (static_cast<uint8_t>(raw[i]) << 16) | (static_cast<uint8_t>(raw[i + 1]) << 8) |
                       static_cast<uint8_t>(raw[i + 2]);
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(kAlphabet[(v >> 6) & 63]);
    out.push_back(kAlphabet[v & 63]);
  }
  if (i < raw.size()) {
    uint32_t v = static_cast<uint8_t>(raw[i]) << 16;
    if (i + 1 < raw.size()) v |= static_cast<uint8_t>(raw[i + 1]) << 8;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(i + 1 < raw.size() ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::string StreamHeader(std::string_view domain) {
  return "<?xml version='1.0'?><stream:stream to='" + XmlEscape(domain) +
         "' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
}

std::string SaslPlainAuth(std::string_view user, std::string_view password) {
  std::string creds;
  creds.push_back('\0');
  creds.append(user);
  creds.push_back('\0');
  creds.append(password);
  return "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + Base64Encode(creds) + "</auth>";
}

std::string RegisterIq(std::string_view id, std::string_view user, std::string_view password) {
  return "<iq type='set' id='" + XmlEscape(id) + "'><query xmlns='jabber:iq:register'><username>" + XmlEscape(user) +
         "</username><password>" + XmlEscape(password) + "</password></query></iq>";
}

std::string BindIq(std::string_view id, std::string_view resource) {
  return "<iq type='set' id='" + XmlEscape(id) + "'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>" +
         XmlEscape(resource) + "</resource></bind></iq>";
}

std::string SessionIq(std::string_view id) {
  return "<iq type='set' id='" + XmlEscape(id) + "'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>";
}

std::string ChatMessage(std::string_view to, std::string_view id, std::string_view body, bool request_receipt) {
  std::string out = "<message to='" + XmlEscape(to) + "' type='chat' id='" + XmlEscape(id) + "'><body>" +
                    XmlEscape(body) + "</body>";
  if (request_receipt) out += "<request xmlns='urn:xmpp:receipts'/>";
  out += "</message>";
  return out;
}

std::string ReceiptMessage(std::string_view to, std::string_view id) {
  return "<message to='" + XmlEscape(to) + "' id='r" + XmlEscape(id) + "'><received xmlns='urn:xmpp:receipts' id='" +
         XmlEscape(id) + "'/></message>";
}

}  // namespace parley::xmppbench
