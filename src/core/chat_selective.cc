// Selective sync (issue 12 item 3; docs/protocol.md "select_sync",
// docs/architecture.md "Selective sync").
//
// A session's selection lives on its Client (in the SelectiveSink that
// replaces the connection's sink on the fabric): the set of conversations it
// syncs in full. Sync pages are read from the stream as usual; each event of
// a conversation outside the set (of a summarised kind) is replaced, in the
// answer, by one summary per conversation and page carrying the ranges of
// user seqs it stands for, so the page still covers (after, next] exactly
// once. Live events go through the SelectiveSink, which does the same per
// event. The selection is per connection and never stored: a device states
// it again after each reconnect, before its first sync.
#include <algorithm>
#include <map>
#include <span>

#include <fmt/format.h>

#include "core/chat_service.h"
#include "protocol/encode.h"
#include "protocol/limits.h"

namespace parley::core {

using protocol::JsonWriter;

namespace {
Counter& SummariesOut(const char* path) {
  return Metrics::Default().GetCounter("parley_sync_summaries_total",
                                       "Summaries sent to selective devices in place of conversation events, by path",
                                       fmt::format("path=\"{}\"", path));
}
}  // namespace

void ChatService::WriteSyncPage(JsonWriter& w, int64_t after, const store::StreamPage& page,
                                const std::vector<store::ConversationState>* states) {
  // Too large for one answer: the first events that fit, each measured in
  // full (a summarised one takes less), and the rest on the next page.
  protocol::WritePageWithin(
      w, page.events.size(), config_.max_page_bytes,
      [&](JsonWriter& s, size_t n) { WriteSyncEvents(s, after, page, n, states); },
      [&page](JsonWriter& s, size_t i) { protocol::WriteEvent(s, page.events[i]); });
}

void ChatService::WriteSyncEvents(JsonWriter& w, int64_t after, const store::StreamPage& page, size_t count,
                                  const std::vector<store::ConversationState>* states) {
  const std::span<const store::StreamEvent> events(page.events.data(), count);
  w.Key("events").BeginArray();
  if (states == nullptr) {
    for (const auto& e : events) protocol::WriteEvent(w, e);
  } else {
    // The conversations of `states` are summarised: each one's covered
    // ranges first, then one entry at the place of its first covered event.
    std::map<int64_t, protocol::SeqRanges> covers;
    for (const auto& s : *states) covers[s.conversation_id];
    for (const auto& e : events) {
      if (!protocol::SummarisedInSelectiveSync(e) || e.conversation_id == 0) continue;
      auto it = covers.find(e.conversation_id);
      if (it == covers.end()) continue;  // selected
      auto& r = it->second;
      if (!r.empty() && r.back().second + 1 == e.user_seq) r.back().second = e.user_seq;
      else r.emplace_back(e.user_seq, e.user_seq);
    }
    for (const auto& e : events) {
      auto it = protocol::SummarisedInSelectiveSync(e) ? covers.find(e.conversation_id) : covers.end();
      if (it == covers.end()) {
        protocol::WriteEvent(w, e);
        continue;
      }
      if (it->second.empty() || it->second.front().first != e.user_seq) continue;  // covered by its summary
      store::ConversationState state{e.conversation_id, 0, 0};
      for (const auto& s : *states)
        if (s.conversation_id == e.conversation_id) state = s;
      protocol::WriteSyncSummary(w, state, it->second);
    }
  }
  w.EndArray()
      .Field("after", after)
      .Field("next", events.empty() ? after : events.back().user_seq)
      .Field("head", page.head)
      .Field("has_more", page.has_more || count < page.events.size());
}

void ChatService::RespondSelectivePage(const ClientPtr& c, const Req& req, int64_t after, store::StreamPage page) {
  // The conversations of this page that are summarised, in order of first appearance.
  std::vector<int64_t> ids;
  for (const auto& e : page.events) {
    if (!protocol::SummarisedInSelectiveSync(e) || e.conversation_id == 0) continue;
    if (c->selective->Selected(e.conversation_id)) continue;
    if (std::find(ids.begin(), ids.end(), e.conversation_id) == ids.end()) ids.push_back(e.conversation_id);
  }
  if (ids.empty()) return Respond(c, req, [&](JsonWriter& w) { WriteSyncPage(w, after, page, nullptr); });
  auto shared = std::make_shared<store::StreamPage>(std::move(page));
  size_t count = ids.size();
  store_.GetConversationStates(
      c->user_id, ids,
      OnCore<std::vector<store::ConversationState>>(
          [this, c, req, after, shared, count, ids](Result<std::vector<store::ConversationState>> states) {
            if (!states) return Fail(c, req, states.error());
            if (!c->selective) {
              // The session went back to full sync meanwhile: answer in full.
              return Respond(c, req, [&](JsonWriter& w) { WriteSyncPage(w, after, *shared, nullptr); });
            }
            // WriteSyncPage summarises exactly the conversations named here.
            std::vector<store::ConversationState> all = *states;
            for (int64_t id : ids) {
              bool found = false;
              for (const auto& s : all) found = found || s.conversation_id == id;
              if (!found) all.push_back(store::ConversationState{id, 0, 0});
            }
            SummariesOut("sync").Inc(count);
            Respond(c, req, [&](JsonWriter& w) { WriteSyncPage(w, after, *shared, &all); });
          }));
}

SelectiveSink::Summarise ChatService::LiveSummariser(int64_t user_id) {
  return [this, user_id](int64_t conversation_id, int64_t user_seq, std::function<void(fabric::SharedFrame)> done) {
    core_.Post([this, user_id, conversation_id, user_seq, done = std::move(done)]() mutable {
      store_.GetConversationStates(
          user_id, {conversation_id},
          OnCore<std::vector<store::ConversationState>>(
              [this, conversation_id, user_seq, done = std::move(done)](Result<std::vector<store::ConversationState>> r) {
                // Not readable: no frame; the device sees a gap and syncs.
                if (!r) return done(nullptr);
                store::ConversationState state{conversation_id, 0, 0};
                if (!r->empty()) state = r->front();
                SummariesOut("live").Inc();
                frames_out_.Inc();
                done(std::make_shared<const std::string>(protocol::EncodeSummaryEvent(state, user_seq)));
              }));
    });
  };
}

// One at a time per connection (Client::select_turns): a selection waits for
// reads (membership, the recent conversations), and `add` widens the
// selection as the previous request left it, so each must take effect before
// the next one starts (two adds would otherwise lose one, and an older
// selection could replace a newer one).
void ChatService::DoSelectSync(const ClientPtr& c, Req req) {
  RunInTurn(c, &Client::select_turns, std::move(req), &ChatService::RunSelectSync);
}

void ChatService::RunSelectSync(const ClientPtr& c, Req req) {
  auto r = std::get<protocol::SelectSyncRequest>(req.body);
  if (r.all) {
    if (c->selective) {
      // Attach the plain sink before detaching the selective one: a frame
      // published in between reaches the device twice (dropped by user seq),
      // never not at all.
      fabric_.Attach(c->user_id, c->device_id, c->sink);
      fabric_.Detach(c->user_id, c->device_id, c->selective.get());
      c->selective.reset();
    }
    return InstallSelection(c, req, {}, {});
  }
  if (!r.add.empty()) {
    // Widening a full-sync session changes nothing: it already gets everything.
    if (!c->selective) return InstallSelection(c, req, {}, {});
    std::unordered_set<int64_t> selection = c->selective->Selection();
    std::vector<int64_t> check;
    for (int64_t id : r.add)
      if (selection.insert(id).second) check.push_back(id);
    return InstallSelection(c, req, std::move(selection), std::move(check));
  }
  std::unordered_set<int64_t> selection(r.conversations.begin(), r.conversations.end());
  if (r.recent == 0) return InstallSelection(c, req, std::move(selection), r.conversations);
  store_.ListConversations(
      c->user_id, 0, 0, r.recent, 0,
      OnCore<store::ConversationPage>([this, c, req, selection = std::move(selection),
                                       listed = r.conversations](Result<store::ConversationPage> page) mutable {
        if (!page) {
          Fail(c, req, page.error());
          return EndTurn(c, &Client::select_turns, &ChatService::RunSelectSync);
        }
        for (const auto& s : page->conversations) selection.insert(s.conversation.id);
        InstallSelection(c, req, std::move(selection), std::move(listed));
      }));
}

void ChatService::InstallSelection(const ClientPtr& c, const Req& req, std::unordered_set<int64_t> selection,
                                   std::vector<int64_t> to_check) {
  auto fail = [this, c, req](const Status& s) {
    Fail(c, req, s);
    EndTurn(c, &Client::select_turns, &ChatService::RunSelectSync);
  };
  // `head`: the user's newest user seq once the selection is in effect (a
  // summary at or below it was made before; protocol.md, select_sync).
  auto answer = [this, c, req](const std::unordered_set<int64_t>* selected) {
    std::vector<int64_t> ids;
    if (selected != nullptr) ids.assign(selected->begin(), selected->end());
    std::sort(ids.begin(), ids.end());
    auto respond = [this, c, req, selective = selected != nullptr, ids = std::move(ids)](int64_t head) {
      Respond(c, req, [&](JsonWriter& w) {
        w.Field("selective", selective).Key("conversations").BeginArray();
        for (int64_t id : ids) w.Int(id);
        w.EndArray().Field("head", head);
      });
      EndTurn(c, &Client::select_turns, &ChatService::RunSelectSync);
    };
    auto cached = [this, c] {
      auto it = live_.find(c->user_id);
      return it != live_.end() ? it->second.head : 0;
    };
    if (!config_.cluster) return respond(cached());
    // Other nodes append to this user's stream too (as for ping): their
    // events are not in this node's cached head.
    store_.GetHead(c->user_id, OnCore<int64_t>([this, c, respond, cached](Result<int64_t> head) {
      if (!head) return respond(cached());  // the selection is in effect: answer it
      NoteHead(c->user_id, *head);
      respond(*head);
    }));
  };
  auto req_type = std::get<protocol::SelectSyncRequest>(req.body);
  if (req_type.all || (!req_type.add.empty() && !c->selective)) return answer(nullptr);
  if (selection.size() > protocol::kMaxSyncSelection) {
    return fail(Status(ErrorCode::kBadRequest,
                       fmt::format("a selection holds at most {} conversations (recent ones included); this one "
                                   "would hold {}: select again with fewer",
                                   protocol::kMaxSyncSelection, selection.size())));
  }
  auto install = [this, c, answer](std::unordered_set<int64_t> sel) {
    if (c->closed) return;  // its turns were dropped with it
    if (c->selective) {
      c->selective->SetSelection(std::move(sel));
    } else {
      c->selective = std::make_shared<SelectiveSink>(c->sink, std::move(sel), LiveSummariser(c->user_id));
      // As in the other direction: attach first, so no live frame is lost.
      fabric_.Attach(c->user_id, c->device_id, c->selective);
      fabric_.Detach(c->user_id, c->device_id, c->sink.get());
    }
    auto current = c->selective->Selection();
    answer(&current);
  };
  if (to_check.empty()) return install(std::move(selection));
  // Every named conversation must be one of the user's: the states come back
  // only for those.
  store_.GetConversationStates(
      c->user_id, to_check,
      OnCore<std::vector<store::ConversationState>>(
          [to_check, install, fail, selection = std::move(selection)](
              Result<std::vector<store::ConversationState>> states) mutable {
            if (!states) return fail(states.error());
            for (int64_t id : to_check) {
              bool found = false;
              for (const auto& s : *states) found = found || s.conversation_id == id;
              if (!found)
                return fail(Status(ErrorCode::kNotMember,
                                   fmt::format("you are not a member of conversation {} (or it does not exist)", id)));
            }
            install(std::move(selection));
          }));
}

}  // namespace parley::core
