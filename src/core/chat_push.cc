// ChatService: push notifications (issue 11; docs/protocol.md "Push
// notifications", docs/architecture.md "Push").
//
// Core decides *when* to push; it never sends anything itself. After a
// message commits, each member it is visible to (never the sender; never a
// member it is withheld from, since the store gives such a member no
// position) who has no device in the foreground on this node gets one
// PushRequest; the store turns it into at most one job per registered device
// (coalescing, idempotency, mutes). A read that moves a user's aggregate
// queues a silent badge push for that user's devices not in the foreground.
// The dispatcher (src/push) claims the jobs through leases and sends them.
//
// Pushes are an optimisation (DESIGN.md guarantee 7): the request is queued
// after the message's commit, so a crash between the two loses that push,
// never the message; the device gets it by sync when it next connects.
//
// Foreground: a device counts as in the foreground while one of its
// connections said so (set_app_state, foreground by default). On this node
// that is foreground_ (per device); in the cluster shape the fabric tells
// which users are in the foreground on other nodes (per user, with its
// presence: remote_foreground_). A message to a user in the foreground
// anywhere pushes nothing. A badge push skips the devices in the foreground
// here; one in the foreground on another node may still get that silent
// push (the fabric shares presence per user, not per device): it only sets
// the badge the device already shows.
#include <spdlog/spdlog.h>

#include "core/chat_service.h"
#include "protocol/encode.h"

namespace parley::core {

using protocol::JsonWriter;

void ChatService::QueuePush(store::PushRequest req) {
  int64_t user = req.user_id;
  store_.EnqueuePush(std::move(req), OnCore<int>([this, user](Result<int> r) {
    if (!r) {
      spdlog::warn("event=push_not_queued user_id={} error=\"{}\"", user, r.error().ToString());
      return;
    }
    if (*r > 0 && push_queued_hook_) push_queued_hook_();
  }));
}

void ChatService::PushAfterMessage(const store::MessageRecord& msg,
                                   const std::vector<store::StreamPosition>& positions) {
  if (!config_.push.enabled) return;
  for (const auto& p : positions) {
    if (p.user_id == msg.sender_id) continue;
    // A user with a device in the foreground reads it there: no push at all.
    if (foreground_.count(p.user_id) != 0 || remote_foreground_.count(p.user_id) != 0) continue;
    store::PushRequest req;
    req.user_id = p.user_id;
    req.conversation_id = msg.conversation_id;
    req.seq = msg.seq;
    req.kind = store::PushKind::kMessage;
    req.now = clock_.NowMillis();
    req.coalesce_ms = config_.push.coalesce_ms;
    QueuePush(std::move(req));
  }
}

void ChatService::PushAfterRead(int64_t user_id, int64_t device_id, int64_t conversation_id, int64_t read) {
  if (!config_.push.enabled) return;
  store::PushRequest req;
  req.user_id = user_id;
  req.conversation_id = conversation_id;
  req.seq = read;
  req.kind = store::PushKind::kBadge;
  req.skip_devices.push_back(device_id);
  if (auto it = foreground_.find(user_id); it != foreground_.end())
    for (const auto& [d, n] : it->second) req.skip_devices.push_back(d);
  req.now = clock_.NowMillis();
  req.coalesce_ms = config_.push.coalesce_ms;
  QueuePush(std::move(req));
}

void ChatService::DoRegisterPush(const ClientPtr& c, Req req) {
  auto r = std::get<protocol::RegisterPushRequest>(req.body);
  store_.SetPushEndpoint(c->user_id, c->device_id, r.provider, r.token, clock_.NowMillis(),
                         OnCoreStatus([this, c, req, provider = r.provider](Status s) {
                           if (!s.ok()) return Fail(c, req, s);
                           spdlog::info("event=push_registered user_id={} device_id={} provider={}", c->user_id,
                                        c->device_id, provider);
                           Respond(c, req, [&](JsonWriter& w) {
                             w.Field("device_id", c->device_id).Field("provider", provider);
                           });
                         }));
}

void ChatService::DoUnregisterPush(const ClientPtr& c, Req req) {
  store_.RemovePushEndpoint(c->user_id, c->device_id, OnCore<bool>([this, c, req](Result<bool> r) {
                              if (!r) return Fail(c, req, r.error());
                              Respond(c, req, [&](JsonWriter& w) {
                                w.Field("device_id", c->device_id).Field("removed", *r);
                              });
                            }));
}

void ChatService::DoMuteConversation(const ClientPtr& c, Req req) {
  auto m = std::get<protocol::MuteConversationRequest>(req.body);
  store_.SetMuted(c->user_id, m.conversation_id, m.muted, clock_.NowMillis(),
                  OnCore<store::SocialResult>([this, c, req, m](Result<store::SocialResult> r) {
                    if (!r) {
                      // Do not tell a non-member whether the conversation exists.
                      if (r.error().code() == ErrorCode::kUnknownConversation)
                        return Fail(c, req, Status(ErrorCode::kNotMember, "you are not a member of this conversation"));
                      return Fail(c, req, r.error());
                    }
                    Respond(c, req, [&](JsonWriter& w) {
                      w.Field("conversation_id", m.conversation_id).Field("muted", m.muted);
                    });
                    if (!r->changed) return;
                    store::StreamEvent e;
                    e.kind = store::EventKind::kMute;
                    e.conversation_id = m.conversation_id;
                    e.created_at = clock_.NowMillis();
                    e.flag = m.muted;
                    PublishEvents(std::move(e), r->positions);
                  }));
}

void ChatService::DoSetPushPreviews(const ClientPtr& c, Req req) {
  bool previews = std::get<protocol::SetPushPreviewsRequest>(req.body).previews;
  store_.SetPushPreviews(c->user_id, previews, clock_.NowMillis(),
                         OnCore<store::SocialResult>([this, c, req, previews](Result<store::SocialResult> r) {
                           if (!r) return Fail(c, req, r.error());
                           Respond(c, req, [&](JsonWriter& w) { w.Field("previews", previews); });
                           if (!r->changed) return;
                           store::StreamEvent e;
                           e.kind = store::EventKind::kPushPreviews;
                           e.created_at = clock_.NowMillis();
                           e.flag = previews;
                           PublishEvents(std::move(e), r->positions);
                         }));
}

void ChatService::DoPushSettings(const ClientPtr& c, Req req) {
  store_.GetPushSettings(c->user_id, OnCore<std::pair<bool, std::vector<int64_t>>>(
                                         [this, c, req](Result<std::pair<bool, std::vector<int64_t>>> r) {
                                           if (!r) return Fail(c, req, r.error());
                                           Respond(c, req, [&](JsonWriter& w) {
                                             w.Field("previews", r->first).Key("muted").BeginArray();
                                             for (int64_t id : r->second) w.Int(id);
                                             w.EndArray().Field("push_enabled", config_.push.enabled);
                                           });
                                         }));
}

}  // namespace parley::core
