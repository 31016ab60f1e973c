// frame_decode_fuzz: protocol::DecodeRequest on arbitrary bytes.
//
// Invariants:
//  - never crashes, leaks or hits undefined behaviour (ASan/UBSan);
//  - deterministic: decoding the same frame twice gives the same outcome;
//  - a frame that is not UTF-8 (reference validator, RFC 3629) is always
//    `invalid_utf8`, and a UTF-8 frame never is;
//  - on success: the type is known and its name round-trips through
//    RequestTypeFromName, id_json is non-empty and is a JSON string or a
//    non-negative integer, the body alternative matches the type, and every
//    decoded field respects its documented limit (protocol/limits.h);
//  - whatever the outcome, the error frame built with EncodeError for it (and
//    on success the response frame) is valid UTF-8 and valid JSON that says
//    what was encoded: id echoed verbatim (or null), op, code, message, retryable.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

#include "common/status.h"
#include "fuzz_common.h"
#include "protocol/encode.h"
#include "protocol/frames.h"
#include "protocol/limits.h"

namespace parley::protocol {
namespace {

using fuzz::Escaped;
using fuzz::ReferenceIsValidUtf8;

constexpr int64_t kMaxId = (int64_t{1} << 53) - 1;

bool IsCanonicalUsername(const std::string& u) {
  auto c = CanonicalUsername(u);
  return c.has_value() && *c == u;
}

bool HasControl(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return true;
  return false;
}

// The body alternative each type decodes to.
bool BodyMatchesType(RequestType t, const RequestBody& b) {
  switch (t) {
    case RequestType::kRegister: return std::holds_alternative<RegisterRequest>(b);
    case RequestType::kLogin: return std::holds_alternative<LoginRequest>(b);
    case RequestType::kAuth: return std::holds_alternative<AuthRequest>(b);
    case RequestType::kPing:
    case RequestType::kLogout:
    case RequestType::kListDevices:
    case RequestType::kListContacts:
    case RequestType::kListBlocked: return std::holds_alternative<EmptyRequest>(b);
    case RequestType::kUnlinkDevice: return std::holds_alternative<UnlinkDeviceRequest>(b);
    case RequestType::kOpenConversation: return std::holds_alternative<OpenConversationRequest>(b);
    case RequestType::kSend: return std::holds_alternative<SendRequest>(b);
    case RequestType::kReceipt: return std::holds_alternative<ReceiptRequest>(b);
    case RequestType::kSync: return std::holds_alternative<SyncRequest>(b);
    case RequestType::kAck: return std::holds_alternative<AckRequest>(b);
    case RequestType::kHistory: return std::holds_alternative<HistoryRequest>(b);
    case RequestType::kSnapshot: return std::holds_alternative<SnapshotRequest>(b);
    case RequestType::kSetProfile: return std::holds_alternative<SetProfileRequest>(b);
    case RequestType::kAddContact:
    case RequestType::kRemoveContact:
    case RequestType::kBlock:
    case RequestType::kUnblock: return std::holds_alternative<UserRequest>(b);
    case RequestType::kSearchUsers: return std::holds_alternative<SearchUsersRequest>(b);
    case RequestType::kListConversations: return std::holds_alternative<ListConversationsRequest>(b);
    case RequestType::kChangePassword: return std::holds_alternative<ChangePasswordRequest>(b);
    case RequestType::kEditMessage: return std::holds_alternative<EditMessageRequest>(b);
    case RequestType::kDeleteMessage: return std::holds_alternative<DeleteMessageRequest>(b);
    default: return true;  // a type added after this fuzzer: not checked here
  }
}

void CheckString(const std::string& s, size_t max, const char* what) {
  CHECK(s.size() <= max, std::string(what) + " longer than its limit: " + Escaped(s));
  CHECK(ReferenceIsValidUtf8(s), std::string(what) + " is not UTF-8: " + Escaped(s));
}

// Every decoded field within its documented limit.
void CheckBody(const RequestBody& body) {
  std::visit(
      [](const auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, RegisterRequest>) {
          CHECK(IsCanonicalUsername(r.username), Escaped(r.username));
          CHECK(r.password.size() >= kMinPasswordBytes);
          CheckString(r.password, kMaxPasswordBytes, "register.password");
        } else if constexpr (std::is_same_v<T, LoginRequest>) {
          CHECK(IsCanonicalUsername(r.username), Escaped(r.username));
          CheckString(r.password, kMaxPasswordBytes, "login.password");
          CheckString(r.device_name, kMaxDeviceNameBytes, "login.device_name");
          CheckString(r.platform, kMaxPlatformBytes, "login.platform");
          CHECK(!HasControl(r.device_name) && !HasControl(r.platform), Escaped(r.device_name + r.platform));
        } else if constexpr (std::is_same_v<T, AuthRequest>) {
          CheckString(r.token, kMaxTokenBytes, "auth.token");
        } else if constexpr (std::is_same_v<T, UnlinkDeviceRequest>) {
          CHECK(r.device_id >= 1 && r.device_id <= kMaxId);
        } else if constexpr (std::is_same_v<T, OpenConversationRequest>) {
          CHECK(IsCanonicalUsername(r.username), Escaped(r.username));
        } else if constexpr (std::is_same_v<T, SendRequest>) {
          CHECK((r.conversation_id > 0) != !r.to.empty(), "exactly one of conversation_id and to");
          CHECK(r.conversation_id >= 0 && r.conversation_id <= kMaxId);
          if (!r.to.empty()) CHECK(IsCanonicalUsername(r.to), Escaped(r.to));
          CHECK(!r.client_id.empty() && r.client_id.size() <= kMaxClientIdBytes);
          for (char c : r.client_id)
            CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_',
                  Escaped(r.client_id));
          CHECK(!r.body.empty());
          CheckString(r.body, kMaxBodyBytes, "send.body");
        } else if constexpr (std::is_same_v<T, ReceiptRequest>) {
          CHECK(!r.items.empty() && r.items.size() <= kMaxReceiptItems);
          for (const auto& it : r.items) {
            CHECK(it.conversation_id >= 1 && it.conversation_id <= kMaxId);
            CHECK(it.delivered >= 0 && it.delivered <= kMaxId);
            CHECK(it.read >= 0 && it.read <= kMaxId);
          }
        } else if constexpr (std::is_same_v<T, SyncRequest>) {
          if (r.after) CHECK(*r.after >= 0 && *r.after <= kMaxId);
          CHECK(r.limit >= 1 && r.limit <= kMaxSyncLimit);
        } else if constexpr (std::is_same_v<T, AckRequest>) {
          CHECK(r.user_seq >= 0 && r.user_seq <= kMaxId);
        } else if constexpr (std::is_same_v<T, HistoryRequest>) {
          CHECK(r.conversation_id >= 1 && r.conversation_id <= kMaxId);
          CHECK(r.before >= 0 && r.before <= kMaxId);
          CHECK(r.limit >= 1 && r.limit <= kMaxHistoryLimit);
        } else if constexpr (std::is_same_v<T, SnapshotRequest>) {
          CHECK(r.messages >= 0 && r.messages <= kMaxSnapshotMessages);
        } else if constexpr (std::is_same_v<T, SetProfileRequest>) {
          CHECK(r.display_name || r.about);
          if (r.display_name) {
            CheckString(*r.display_name, kMaxDisplayNameBytes, "set_profile.display_name");
            CHECK(!HasControl(*r.display_name), Escaped(*r.display_name));
          }
          if (r.about) {
            CheckString(*r.about, kMaxAboutBytes, "set_profile.about");
            CHECK(!HasControl(*r.about), Escaped(*r.about));
          }
        } else if constexpr (std::is_same_v<T, UserRequest>) {
          CHECK(IsCanonicalUsername(r.username), Escaped(r.username));
        } else if constexpr (std::is_same_v<T, SearchUsersRequest>) {
          CHECK(!r.query.empty());
          CheckString(r.query, kMaxSearchQueryBytes, "search_users.query");
          CHECK(r.query.front() != ' ' && r.query.back() != ' ', Escaped(r.query));
          for (char c : r.query) CHECK(!(c >= 'A' && c <= 'Z'), Escaped(r.query));
          CheckString(r.after, kMaxUsernameBytes, "search_users.after");
          CHECK(r.limit >= 1 && r.limit <= kMaxSearchLimit);
        } else if constexpr (std::is_same_v<T, ListConversationsRequest>) {
          CHECK(r.before_activity >= 0 && r.before_activity <= kMaxId);
          CHECK(r.before_id >= 0 && r.before_id <= kMaxId);
          CHECK(r.limit >= 1 && r.limit <= kMaxConversationsLimit);
          CHECK(r.messages >= 0 && r.messages <= kMaxSnapshotMessages);
        } else if constexpr (std::is_same_v<T, ChangePasswordRequest>) {
          CHECK(r.new_password.size() >= kMinPasswordBytes);
          CheckString(r.old_password, kMaxPasswordBytes, "change_password.old_password");
          CheckString(r.new_password, kMaxPasswordBytes, "change_password.new_password");
        }
      },
      body);
}

// id_json as DecodeRequest documents it: a JSON string (of at most
// kMaxRequestIdBytes decoded bytes) or a non-negative integer, minified.
void CheckIdJson(const std::string& id_json) {
  simdjson::dom::element e;
  CHECK(fuzz::ParseJson(id_json, &e) == simdjson::SUCCESS, "id_json is not JSON: " + Escaped(id_json));
  if (e.is_string()) {
    CHECK(e.get_string().value().size() <= kMaxRequestIdBytes);
  } else {
    int64_t v = 0;
    CHECK(e.get_int64().get(v) == simdjson::SUCCESS && v >= 0, "id_json: " + Escaped(id_json));
    CHECK(id_json == std::to_string(v), "integer id_json is not canonical: " + Escaped(id_json));
  }
  CHECK(simdjson::minify(e) == id_json, "id_json is not minified: " + Escaped(id_json));
}

// A server frame: valid UTF-8 and JSON, v:1, the given type, id echoed
// verbatim (null when there is none), op as given (null when empty).
simdjson::dom::object CheckServerFrame(const std::string& frame, std::string_view type, std::string_view id_json,
                                       std::string_view op) {
  CHECK(ReferenceIsValidUtf8(frame), "frame is not UTF-8: " + Escaped(frame));
  simdjson::dom::element root;
  auto err = fuzz::ParseJson(frame, &root);
  CHECK(err == simdjson::SUCCESS, std::string(simdjson::error_message(err)) + ": " + Escaped(frame));
  simdjson::dom::object obj;
  CHECK(root.get(obj) == simdjson::SUCCESS, Escaped(frame));
  int64_t v = 0;
  CHECK(obj["v"].get_int64().get(v) == simdjson::SUCCESS && v == kVersion, Escaped(frame));
  std::string_view t;
  CHECK(obj["type"].get_string().get(t) == simdjson::SUCCESS && t == type, Escaped(frame));
  simdjson::dom::element id;
  CHECK(obj["id"].get(id) == simdjson::SUCCESS, Escaped(frame));
  if (id_json.empty()) {
    CHECK(id.is_null(), Escaped(frame));
  } else {
    CHECK(simdjson::minify(id) == id_json, "id not echoed verbatim: " + Escaped(frame));
  }
  simdjson::dom::element ope;
  CHECK(obj["op"].get(ope) == simdjson::SUCCESS, Escaped(frame));
  if (op.empty()) {
    CHECK(ope.is_null(), Escaped(frame));
  } else {
    std::string_view o;
    CHECK(ope.get_string().get(o) == simdjson::SUCCESS && o == op, Escaped(frame));
  }
  return obj;
}

void CheckErrorFrame(std::string_view id_json, std::string_view op, const Status& status) {
  std::string frame = EncodeError(id_json, op, status);
  auto obj = CheckServerFrame(frame, "error", id_json, op);
  std::string_view code, message;
  bool retryable = false;
  CHECK(obj["code"].get_string().get(code) == simdjson::SUCCESS && code == ErrorCodeName(status.code()),
        Escaped(frame));
  CHECK(obj["message"].get_string().get(message) == simdjson::SUCCESS && message == status.message(),
        Escaped(frame));
  CHECK(obj["retryable"].get_bool().get(retryable) == simdjson::SUCCESS &&
            retryable == ErrorCodeRetryable(status.code()),
        Escaped(frame));
  CHECK(obj["retry_after_ms"].error() == simdjson::NO_SUCH_FIELD, Escaped(frame));
}

}  // namespace
}  // namespace parley::protocol

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace parley;
  using namespace parley::protocol;
  using fuzz::Escaped;
  std::string_view frame(reinterpret_cast<const char*>(data), size);

  Decoded d = DecodeRequest(frame);

  Decoded again = DecodeRequest(frame);
  CHECK(again.status.code() == d.status.code() && again.status.message() == d.status.message() &&
            again.id_json == d.id_json && again.type == d.type,
        "DecodeRequest is not deterministic");

  bool utf8 = fuzz::ReferenceIsValidUtf8(frame);
  CHECK(utf8 == (d.status.code() != ErrorCode::kInvalidUtf8),
        "utf8=" + std::to_string(utf8) + " but status " + d.status.ToString());

  if (!d.id_json.empty()) CheckIdJson(d.id_json);
  if (d.type) CHECK(RequestTypeFromName(RequestTypeName(*d.type)) == d.type, "type name does not round-trip");

  std::string_view op = d.type ? RequestTypeName(*d.type) : std::string_view();
  if (d.status.ok()) {
    CHECK(d.type.has_value() && *d.type == d.request.type, "decoded type differs from the request's");
    std::string_view name = RequestTypeName(d.request.type);
    CHECK(!name.empty());
    CHECK(RequestTypeFromName(name) == d.request.type, "type name does not round-trip: " + std::string(name));
    CHECK(!d.id_json.empty(), "an accepted request has no id");
    CHECK(d.request.id_json == d.id_json);
    CHECK(BodyMatchesType(d.request.type, d.request.body), "body alternative does not match " + std::string(name));
    CheckBody(d.request.body);
    // What the gateway answers: a response, or an error such as
    // not_authenticated raised after decoding.
    std::string response = EncodeResponse(d.id_json, name, [](JsonWriter& w) { w.Field("ok", true); });
    CheckServerFrame(response, "response", d.id_json, name);
    CheckErrorFrame(d.id_json, name, Status(ErrorCode::kNotAuthenticated, "log in first"));
  } else {
    CHECK(!d.status.message().empty(), "an error without a message: " + d.status.ToString());
    CheckErrorFrame(d.id_json, op, d.status);
  }
  return 0;
}
