// request_roundtrip_fuzz: decoded requests survive re-encoding with JsonWriter.
//
// The input is a JSON frame. When DecodeRequest accepts it:
//  - every decoded string (send body, client id, usernames, passwords, ...)
//    written with JsonWriter, as a value and as a key, is valid JSON that
//    simdjson reads back as exactly the same bytes;
//  - the whole request re-encoded as a frame with JsonWriter decodes again to
//    an equal request (decode . encode . decode == decode).
// When the input does not start with '{' it is also used as a message body:
// a `send` frame written by JsonWriter around any UTF-8 body of 1..kMaxBodyBytes
// bytes must decode, with the body unchanged (what the SDK relies on), unless
// it holds U+0000, which is refused as bad_request.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

#include "fuzz_common.h"
#include "protocol/frames.h"
#include "protocol/json_writer.h"
#include "protocol/limits.h"

namespace parley::protocol {
namespace {

using fuzz::Escaped;

// JsonWriter writes `s` as a document, inside an array and as an object key;
// simdjson must read back the same bytes each time.
void CheckStringRoundTrip(std::string_view s, const char* what) {
  {
    JsonWriter w;
    w.String(s);
    simdjson::dom::element e;
    auto err = fuzz::ParseJson(w.str(), &e);
    CHECK(err == simdjson::SUCCESS, std::string(what) + ": " + simdjson::error_message(err) + ": " + Escaped(w.str()));
    std::string_view back;
    CHECK(e.get_string().get(back) == simdjson::SUCCESS && back == s,
          std::string(what) + " changed: " + Escaped(s) + " -> " + Escaped(w.str()));
  }
  {
    // {"<s>":"<s>","<k>":["<s>",-1]} with a second key k that differs from s.
    std::string_view k = s == "n" ? "m" : "n";
    JsonWriter w;
    w.BeginObject().Field(s, s).Key(k).BeginArray().String(s).Int(-1).EndArray().EndObject();
    simdjson::dom::element e;
    auto err = fuzz::ParseJson(w.str(), &e);
    CHECK(err == simdjson::SUCCESS, std::string(what) + ": " + simdjson::error_message(err) + ": " + Escaped(w.str()));
    simdjson::dom::object obj;
    CHECK(e.get(obj) == simdjson::SUCCESS);
    CHECK(obj.size() == 2, Escaped(w.str()));
    std::string_view v, in_array;
    auto first = *obj.begin();
    CHECK(first.key == s, std::string(what) + " as key changed: " + Escaped(w.str()));
    CHECK(first.value.get_string().get(v) == simdjson::SUCCESS && v == s, Escaped(w.str()));
    CHECK(obj.at_key(k).at(0).get_string().get(in_array) == simdjson::SUCCESS && in_array == s, Escaped(w.str()));
  }
}

// Re-encodes a decoded request as a client frame. Returns false for a body
// alternative added after this fuzzer (not re-encoded).
bool EncodeRequest(const Request& r, std::string* out) {
  JsonWriter w;
  w.BeginObject().Field("v", kVersion).Key("id").Raw(r.id_json).Field("type", RequestTypeName(r.type));
  bool known = std::visit(
      [&w](const auto& b) {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, RegisterRequest>) {
          w.Field("username", b.username).Field("password", b.password);
        } else if constexpr (std::is_same_v<T, LoginRequest>) {
          w.Field("username", b.username).Field("password", b.password);
          w.Field("device_name", b.device_name).Field("platform", b.platform);
        } else if constexpr (std::is_same_v<T, AuthRequest>) {
          w.Field("token", b.token);
        } else if constexpr (std::is_same_v<T, EmptyRequest>) {
        } else if constexpr (std::is_same_v<T, UnlinkDeviceRequest>) {
          w.Field("device_id", b.device_id);
        } else if constexpr (std::is_same_v<T, OpenConversationRequest>) {
          w.Field("username", b.username);
        } else if constexpr (std::is_same_v<T, SendRequest>) {
          if (b.conversation_id != 0) w.Field("conversation_id", b.conversation_id);
          if (!b.to.empty()) w.Field("to", b.to);
          w.Field("client_id", b.client_id).Field("body", b.body);
        } else if constexpr (std::is_same_v<T, ReceiptRequest>) {
          w.Key("items").BeginArray();
          for (const auto& it : b.items)
            w.BeginObject()
                .Field("conversation_id", it.conversation_id)
                .Field("delivered", it.delivered)
                .Field("read", it.read)
                .EndObject();
          w.EndArray();
        } else if constexpr (std::is_same_v<T, SyncRequest>) {
          if (b.after) w.Field("after", *b.after);
          w.Field("limit", b.limit);
        } else if constexpr (std::is_same_v<T, AckRequest>) {
          w.Field("user_seq", b.user_seq);
        } else if constexpr (std::is_same_v<T, HistoryRequest>) {
          w.Field("conversation_id", b.conversation_id).Field("before", b.before).Field("limit", b.limit);
        } else if constexpr (std::is_same_v<T, SnapshotRequest>) {
          w.Field("messages", b.messages);
        } else if constexpr (std::is_same_v<T, SetProfileRequest>) {
          if (b.display_name) w.Field("display_name", *b.display_name);
          if (b.about) w.Field("about", *b.about);
        } else if constexpr (std::is_same_v<T, UserRequest>) {
          w.Field("username", b.username);
        } else if constexpr (std::is_same_v<T, SearchUsersRequest>) {
          w.Field("query", b.query).Field("after", b.after).Field("limit", b.limit);
        } else if constexpr (std::is_same_v<T, ListConversationsRequest>) {
          w.Field("before_activity", b.before_activity).Field("before_id", b.before_id);
          w.Field("limit", b.limit).Field("messages", b.messages);
        } else if constexpr (std::is_same_v<T, ChangePasswordRequest>) {
          w.Field("old_password", b.old_password).Field("new_password", b.new_password);
        } else if constexpr (std::is_same_v<T, EditMessageRequest>) {
          w.Field("conversation_id", b.conversation_id).Field("seq", b.seq);
          w.Field("client_id", b.client_id).Field("body", b.body);
        } else if constexpr (std::is_same_v<T, DeleteMessageRequest>) {
          w.Field("conversation_id", b.conversation_id).Field("seq", b.seq);
          w.Field("for", b.for_everyone ? "everyone" : "me");
        } else {
          return false;
        }
        return true;
      },
      r.body);
  w.EndObject();
  *out = w.Take();
  return known;
}

// Every string of a decoded body, for the piecewise round trip.
template <typename F>
void ForEachString(const RequestBody& body, F&& f) {
  std::visit(
      [&f](const auto& b) {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, RegisterRequest>) {
          f(b.username, "username"), f(b.password, "password");
        } else if constexpr (std::is_same_v<T, LoginRequest>) {
          f(b.username, "username"), f(b.password, "password"), f(b.device_name, "device_name"),
              f(b.platform, "platform");
        } else if constexpr (std::is_same_v<T, AuthRequest>) {
          f(b.token, "token");
        } else if constexpr (std::is_same_v<T, OpenConversationRequest> || std::is_same_v<T, UserRequest>) {
          f(b.username, "username");
        } else if constexpr (std::is_same_v<T, SendRequest>) {
          f(b.to, "to"), f(b.client_id, "client_id"), f(b.body, "body");
        } else if constexpr (std::is_same_v<T, SetProfileRequest>) {
          if (b.display_name) f(*b.display_name, "display_name");
          if (b.about) f(*b.about, "about");
        } else if constexpr (std::is_same_v<T, SearchUsersRequest>) {
          f(b.query, "query"), f(b.after, "after");
        } else if constexpr (std::is_same_v<T, ChangePasswordRequest>) {
          f(b.old_password, "old_password"), f(b.new_password, "new_password");
        } else if constexpr (std::is_same_v<T, EditMessageRequest>) {
          f(b.client_id, "client_id"), f(b.body, "body");
        }
      },
      body);
}

bool SameBody(const RequestBody& a, const RequestBody& b) {
  if (a.index() != b.index()) return false;
  return std::visit(
      [&b](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        const T& y = std::get<T>(b);
        if constexpr (std::is_same_v<T, RegisterRequest>) {
          return x.username == y.username && x.password == y.password;
        } else if constexpr (std::is_same_v<T, LoginRequest>) {
          return x.username == y.username && x.password == y.password && x.device_name == y.device_name &&
                 x.platform == y.platform;
        } else if constexpr (std::is_same_v<T, AuthRequest>) {
          return x.token == y.token;
        } else if constexpr (std::is_same_v<T, EmptyRequest>) {
          return true;
        } else if constexpr (std::is_same_v<T, UnlinkDeviceRequest>) {
          return x.device_id == y.device_id;
        } else if constexpr (std::is_same_v<T, OpenConversationRequest> || std::is_same_v<T, UserRequest>) {
          return x.username == y.username;
        } else if constexpr (std::is_same_v<T, SendRequest>) {
          return x.conversation_id == y.conversation_id && x.to == y.to && x.client_id == y.client_id &&
                 x.body == y.body;
        } else if constexpr (std::is_same_v<T, ReceiptRequest>) {
          if (x.items.size() != y.items.size()) return false;
          for (size_t i = 0; i < x.items.size(); ++i)
            if (x.items[i].conversation_id != y.items[i].conversation_id ||
                x.items[i].delivered != y.items[i].delivered || x.items[i].read != y.items[i].read)
              return false;
          return true;
        } else if constexpr (std::is_same_v<T, SyncRequest>) {
          return x.after == y.after && x.limit == y.limit;
        } else if constexpr (std::is_same_v<T, AckRequest>) {
          return x.user_seq == y.user_seq;
        } else if constexpr (std::is_same_v<T, HistoryRequest>) {
          return x.conversation_id == y.conversation_id && x.before == y.before && x.limit == y.limit;
        } else if constexpr (std::is_same_v<T, SnapshotRequest>) {
          return x.messages == y.messages;
        } else if constexpr (std::is_same_v<T, SetProfileRequest>) {
          return x.display_name == y.display_name && x.about == y.about;
        } else if constexpr (std::is_same_v<T, SearchUsersRequest>) {
          return x.query == y.query && x.after == y.after && x.limit == y.limit;
        } else if constexpr (std::is_same_v<T, ListConversationsRequest>) {
          return x.before_activity == y.before_activity && x.before_id == y.before_id && x.limit == y.limit &&
                 x.messages == y.messages;
        } else if constexpr (std::is_same_v<T, ChangePasswordRequest>) {
          return x.old_password == y.old_password && x.new_password == y.new_password;
        } else if constexpr (std::is_same_v<T, EditMessageRequest>) {
          return x.conversation_id == y.conversation_id && x.seq == y.seq && x.client_id == y.client_id &&
                 x.body == y.body;
        } else if constexpr (std::is_same_v<T, DeleteMessageRequest>) {
          return x.conversation_id == y.conversation_id && x.seq == y.seq && x.for_everyone == y.for_everyone;
        } else {
          return true;  // an alternative added after this fuzzer
        }
      },
      a);
}

void RoundTripFrame(std::string_view frame) {
  Decoded d = DecodeRequest(frame);
  if (!d.status.ok()) return;
  const Request& r = d.request;

  ForEachString(r.body, [](const std::string& s, const char* what) { CheckStringRoundTrip(s, what); });
  CheckStringRoundTrip(RequestTypeName(r.type), "type");

  std::string again;
  if (!EncodeRequest(r, &again)) return;
  Decoded d2 = DecodeRequest(again);
  CHECK(d2.status.ok(), "re-encoded request rejected: " + d2.status.ToString() + "\n  frame: " + Escaped(again, 400));
  CHECK(d2.request.type == r.type);
  CHECK(d2.id_json == r.id_json, Escaped(d2.id_json) + " != " + Escaped(r.id_json));
  CHECK(SameBody(r.body, d2.request.body), "re-encoded request decodes differently: " + Escaped(again, 400));
}

// The input as a message body, wrapped into a send frame by JsonWriter.
void RoundTripBody(std::string_view body) {
  if (body.empty() || body.size() > kMaxBodyBytes || !fuzz::ReferenceIsValidUtf8(body)) return;
  JsonWriter w;
  w.BeginObject()
      .Field("v", kVersion)
      .Field("id", "r-1")
      .Field("type", "send")
      .Field("conversation_id", int64_t{3})
      .Field("client_id", "c-1")
      .Field("body", body)
      .EndObject();
  Decoded d = DecodeRequest(w.str());
  if (body.find('\0') != std::string_view::npos) {
    // U+0000 is refused in every text field (frames.cc RefuseNul).
    CHECK(!d.status.ok() && d.status.code() == ErrorCode::kBadRequest,
          "a body holding U+0000 was not refused: " + Escaped(body));
    return;
  }
  CHECK(d.status.ok(), "send of a valid body rejected: " + d.status.ToString() + "\n  frame: " + Escaped(w.str()));
  const auto* s = std::get_if<SendRequest>(&d.request.body);
  CHECK(s != nullptr && s->body == body, "body changed: " + Escaped(body));
}

}  // namespace
}  // namespace parley::protocol

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  parley::protocol::RoundTripFrame(input);
  if (input.empty() || input.front() != '{') parley::protocol::RoundTripBody(input);
  return 0;
}
