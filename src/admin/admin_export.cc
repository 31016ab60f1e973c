// Admin API, compliance export (issue 12 item 7): all data of one user, as
// JSON, in pages whose size is bounded (never the whole history in one
// answer). `parley-admin user export` walks the pages and writes the one
// document docs/operations.md describes ("User export").
//
//   GET /admin/v1/users/{username}/export
//     the account, devices, contacts, blocked users, settings, and every
//     conversation of the user (members, draft, last seq) — no messages;
//   GET /admin/v1/users/{username}/export/conversations/{id}?before=SEQ&limit=N
//     one page of that conversation's messages exactly as the user's own
//     `history` shows them (withheld ones absent, deleted ones as tombstones),
//     ascending; `next_before` continues backwards.
//
// Never exported: password hashes, token hashes, push tokens, other users'
// private settings.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>

#include "admin/admin_api.h"
#include "admin/admin_http.h"
#include "protocol/encode.h"
#include "protocol/limits.h"

namespace parley::admin {

using nlohmann::json;

namespace {

// Conversations read per store call while the account part is assembled.
constexpr int kExportConversationPage = 200;
// Messages per conversation page: the default and the most a page may ask.
constexpr int kExportDefaultMessages = 500;
constexpr int kExportMaxMessages = 2'000;

json ProfileJson(const store::ProfileRecord& p) {
  return json{{"user_id", p.user_id}, {"username", p.username}, {"display_name", p.display_name}, {"about", p.about}};
}

json MessageJson(const store::MessageRecord& m) {
  json j{{"seq", m.seq},
         {"sender_id", m.sender_id},
         {"sender_device_id", m.sender_device_id},
         {"client_id", m.client_id},
         {"created_at", m.created_at},
         {"body", m.body}};
  if (m.version > 0) j["version"] = m.version;
  if (m.edited_at > 0) j["edited_at"] = m.edited_at;
  if (m.deleted_at > 0) j["deleted_at"] = m.deleted_at;
  return j;
}

}  // namespace

// The account part, filled in by the chain of reads below.
struct AdminApi::UserExport {
  store::UserRecord user;
  json doc;
  json conversations = json::array();
  Respond respond;
};

void AdminApi::OpsExportUser(const std::string& username, Respond respond) {
  store_.GetUserByName(username, [this, respond](Result<store::UserRecord> u) {
    if (!u) return respond(ErrorResponse(u.error()));
    auto x = std::make_shared<UserExport>();
    x->user = *u;
    x->respond = respond;
    x->doc = json{{"format", "parley-user-export"},
                  {"version", 1},
                  {"exported_at", clock_.NowMillis()},
                  {"user",
                   {{"user_id", u->id},
                    {"username", u->username},
                    {"display_name", u->display_name},
                    {"about", u->about},
                    {"created_at", u->created_at},
                    {"last_seen", u->last_seen == 0 ? json(nullptr) : json(u->last_seen)},
                    {"presence_visibility", std::string(protocol::PresenceVisibilityName(u->presence_visibility))},
                    {"disabled", u->disabled}}}};
    ExportDevices(std::move(x));
  });
}

void AdminApi::ExportDevices(std::shared_ptr<UserExport> x) {
  store_.ListDevices(x->user.id, [this, x](Result<std::vector<store::DeviceRecord>> d) {
    if (!d) return x->respond(ErrorResponse(d.error()));
    json devices = json::array();
    for (const auto& r : *d) {
      devices.push_back({{"device_id", r.id}, {"name", r.name}, {"platform", r.platform},
                         {"created_at", r.created_at}, {"last_seen_at", r.last_seen_at}});
    }
    x->doc["devices"] = std::move(devices);
    store_.ListContacts(x->user.id, [this, x](Result<std::vector<store::ContactRecord>> c) {
      if (!c) return x->respond(ErrorResponse(c.error()));
      json contacts = json::array();
      for (const auto& r : *c) {
        json p = ProfileJson(r.profile);
        p["added_at"] = r.added_at;
        contacts.push_back(std::move(p));
      }
      x->doc["contacts"] = std::move(contacts);
      store_.ListBlocked(x->user.id, [this, x](Result<std::vector<store::ProfileRecord>> b) {
        if (!b) return x->respond(ErrorResponse(b.error()));
        json blocked = json::array();
        for (const auto& r : *b) blocked.push_back({{"user_id", r.user_id}, {"username", r.username}});
        x->doc["blocked"] = std::move(blocked);
        store_.GetPushSettings(x->user.id, [this, x](Result<std::pair<bool, std::vector<store::ConversationId>>> s) {
          if (s) x->doc["push"] = {{"previews", s->first}, {"muted_conversations", s->second}};
          ExportConversations(x, 0, 0);
        });
      });
    });
  });
}

void AdminApi::ExportConversations(std::shared_ptr<UserExport> x, int64_t before_activity, int64_t before_id) {
  store_.ListConversations(
      x->user.id, before_activity, before_id, kExportConversationPage, 0,
      [this, x](Result<store::ConversationPage> page) {
        if (!page) return x->respond(ErrorResponse(page.error()));
        for (const auto& s : page->conversations) {
          json members = json::array();
          for (const auto& m : s.conversation.members) members.push_back({{"user_id", m.user_id}, {"username", m.username}});
          json c{{"conversation_id", s.conversation.id},
                 {"created_at", s.conversation.created_at},
                 {"members", std::move(members)},
                 {"last_seq", s.conversation.last_seq}};
          if (!s.draft.text.empty()) c["draft"] = {{"text", s.draft.text}, {"updated_at", s.draft.updated_at}};
          x->conversations.push_back(std::move(c));
        }
        if (page->has_more) return ExportConversations(x, page->next_activity, page->next_id);
        x->doc["conversations"] = std::move(x->conversations);
        x->respond(JsonResponse(200, x->doc));
      });
}

void AdminApi::OpsExportConversation(const std::string& username, int64_t conversation_id, const std::string& query,
                                     Respond respond) {
  auto params = ParseQuery(query);
  int64_t before = 0, limit = kExportDefaultMessages;
  if (params.count("before") && !ParseInt(params["before"], &before, 0, INT64_MAX)) {
    return respond(ErrorResponse(Status(ErrorCode::kBadRequest, "before must be a seq (0: from the newest)")));
  }
  if (params.count("limit") && !ParseInt(params["limit"], &limit, 1, kExportMaxMessages)) {
    return respond(
        ErrorResponse(Status(ErrorCode::kBadRequest, "limit must be 1-" + std::to_string(kExportMaxMessages))));
  }
  store_.GetUserByName(username, [this, conversation_id, before, limit, respond](Result<store::UserRecord> u) {
    if (!u) return respond(ErrorResponse(u.error()));
    store::UserId user = u->id;
    store_.GetConversation(conversation_id, [this, user, before, limit, respond](Result<store::ConversationRecord> c) {
      if (!c) return respond(ErrorResponse(c.error()));
      bool member = false;
      for (const auto& m : c->members) member = member || m.user_id == user;
      // Another user's conversation is not part of this user's data.
      if (!member) return respond(ErrorResponse(Status(ErrorCode::kUnknownConversation, "not a conversation of this user")));
      store::ConversationId id = c->id;
      store_.History(id, user, before, static_cast<int>(limit),
                     [id, limit, respond](Result<std::vector<store::MessageRecord>> h) {
                       if (!h) return respond(ErrorResponse(h.error()));
                       json messages = json::array();
                       for (const auto& m : *h) messages.push_back(MessageJson(m));
                       bool more = static_cast<int64_t>(h->size()) == limit && !h->empty() && h->front().seq > 1;
                       json page{{"conversation_id", id}, {"messages", std::move(messages)}, {"has_more", more}};
                       if (more) page["next_before"] = h->front().seq;
                       respond(JsonResponse(200, page));
                     });
    });
  });
}

}  // namespace parley::admin
