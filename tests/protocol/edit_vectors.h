// The conflict test vectors of edits and deletes (issue 12): the table in
// docs/protocol.md ("Edits and deletes", "Test vectors") is this list,
// rendered by RenderRow; the store conformance suite (both backends) and the
// end-to-end test run every vector and check that the document holds exactly
// these rows. Header-only; no dependencies beyond the standard library and
// protocol/message_edits.h.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "protocol/message_edits.h"

namespace parley::testing {

// Alice sends message m (body "m"); a1 and a2 are two of alice's devices,
// b1 one of bob's.
enum class Actor { kA1, kA2, kB1 };
enum class EditOp { kEdit, kDelete, kDeleteForMe };
// When a step reaches the server: soon after m was sent, or after a window.
enum class When { kSoon, kAfterEditWindow, kAfterDeleteWindow };

struct EditStep {
  Actor actor = Actor::kA1;
  EditOp op = EditOp::kEdit;
  std::string body;       // kEdit
  std::string client_id;  // kEdit: "" = a fresh one per step (shown only when given)
  When when = When::kSoon;
  // The answer: "v1", "v1 dup" (edit / delete for everyone), "ok", "dup"
  // (delete for me), or an error code.
  std::string expect;
};

struct EditVector {
  int id = 0;
  bool bob_blocks_alice = false;  // bob blocks alice before m is sent (m is withheld from bob)
  std::vector<EditStep> steps;
  // The final state on every device of the user: "\"x\" v1" (text, version),
  // "deleted v2", "hidden" (deleted for me), "absent" (never had it).
  std::string alice;
  std::string bob;
  std::string note;  // what the row shows
};

inline std::vector<EditVector> EditVectors() {
  using A = Actor;
  using O = EditOp;
  using W = When;
  return {
      {1, false, {{A::kA1, O::kEdit, "x", "", W::kSoon, "v1"}}, "\"x\" v1", "\"x\" v1", "an edit"},
      {2, false, {{A::kA1, O::kEdit, "x", "", W::kSoon, "v1"}, {A::kA2, O::kEdit, "y", "", W::kSoon, "v2"}},
       "\"y\" v2", "\"y\" v2", "two devices edit at once: the later in server order wins"},
      {3, false, {{A::kA2, O::kEdit, "y", "", W::kSoon, "v1"}, {A::kA1, O::kEdit, "x", "", W::kSoon, "v2"}},
       "\"x\" v2", "\"x\" v2", "the same race, the other server order"},
      {4, false, {{A::kA1, O::kEdit, "x", "", W::kSoon, "v1"}, {A::kA2, O::kDelete, "", "", W::kSoon, "v2"}},
       "deleted v2", "deleted v2", "an edit, then a delete"},
      {5, false,
       {{A::kA1, O::kDelete, "", "", W::kSoon, "v1"}, {A::kA2, O::kEdit, "y", "", W::kSoon, "message_deleted"}},
       "deleted v1", "deleted v1", "a delete and an edit race: the delete is first in server order, the edit fails"},
      {6, false, {{A::kA1, O::kDelete, "", "", W::kSoon, "v1"}, {A::kA2, O::kDelete, "", "", W::kSoon, "v1 dup"}},
       "deleted v1", "deleted v1", "two deletes: the second is a duplicate"},
      {7, false,
       {{A::kA1, O::kEdit, "x", "c1", W::kSoon, "v1"}, {A::kA1, O::kEdit, "x", "c1", W::kSoon, "v1 dup"}},
       "\"x\" v1", "\"x\" v1", "a retried edit (same client id) is one edit"},
      {8, false,
       {{A::kA1, O::kEdit, "x", "c1", W::kSoon, "v1"},
        {A::kA1, O::kDelete, "", "", W::kSoon, "v2"},
        {A::kA1, O::kEdit, "x", "c1", W::kSoon, "v1 dup"}},
       "deleted v2", "deleted v2", "a retry after the delete gets its original answer and changes nothing"},
      {9, false,
       {{A::kB1, O::kEdit, "x", "", W::kSoon, "forbidden"}, {A::kB1, O::kDelete, "", "", W::kSoon, "forbidden"}},
       "\"m\" v0", "\"m\" v0", "only the sender edits or deletes for everyone"},
      {10, false, {{A::kB1, O::kDeleteForMe, "", "", W::kSoon, "ok"}}, "\"m\" v0", "hidden",
       "delete for me hides it on bob's devices only"},
      {11, false,
       {{A::kB1, O::kDeleteForMe, "", "", W::kSoon, "ok"},
        {A::kA1, O::kEdit, "x", "", W::kSoon, "v1"},
        {A::kA1, O::kDelete, "", "", W::kSoon, "v2"}},
       "deleted v2", "hidden", "edits and deletes of a message bob deleted for himself do not reach him"},
      {12, false,
       {{A::kA1, O::kDelete, "", "", W::kSoon, "v1"},
        {A::kB1, O::kDeleteForMe, "", "", W::kSoon, "ok"},
        {A::kB1, O::kDeleteForMe, "", "", W::kSoon, "dup"}},
       "deleted v1", "hidden", "a tombstone can be deleted for me, once"},
      {13, false,
       {{A::kA1, O::kEdit, "x", "", W::kAfterEditWindow, "edit_window_closed"},
        {A::kA1, O::kDelete, "", "", W::kAfterEditWindow, "v1"}},
       "deleted v1", "deleted v1", "after the edit window an edit fails; a delete still works"},
      {14, false,
       {{A::kA1, O::kEdit, "x", "", W::kSoon, "v1"}, {A::kA1, O::kEdit, "y", "", W::kAfterEditWindow, "edit_window_closed"}},
       "\"x\" v1", "\"x\" v1", "the window counts from the message's ts, not from the last edit"},
      {15, false,
       {{A::kA1, O::kDelete, "", "", W::kAfterDeleteWindow, "delete_window_closed"},
        {A::kB1, O::kDeleteForMe, "", "", W::kAfterDeleteWindow, "ok"}},
       "\"m\" v0", "hidden", "after the delete window only delete for me works"},
      {16, true,
       {{A::kA1, O::kEdit, "x", "", W::kSoon, "v1"},
        {A::kA1, O::kDelete, "", "", W::kSoon, "v2"},
        {A::kB1, O::kDeleteForMe, "", "", W::kSoon, "unknown_message"}},
       "deleted v2", "absent", "a message withheld from bob (a block): its edits and deletes never reach him"},
      {17, false,
       {{A::kA1, O::kDeleteForMe, "", "", W::kSoon, "ok"}, {A::kA2, O::kEdit, "x", "", W::kSoon, "v1"}},
       "hidden", "\"x\" v1", "the sender deleted it for herself; an edit from her other device still reaches bob"},
  };
}

inline const char* ActorName(Actor a) {
  switch (a) {
    case Actor::kA1: return "a1";
    case Actor::kA2: return "a2";
    case Actor::kB1: return "b1";
  }
  return "?";
}

// The vector's row of the docs table:
// | # | steps, in server order | answers | alice's devices | bob's devices |
inline std::string RenderRow(const EditVector& v) {
  std::string steps, answers;
  if (v.bob_blocks_alice) steps = "bob blocks alice before m; ";
  for (size_t i = 0; i < v.steps.size(); ++i) {
    const EditStep& s = v.steps[i];
    if (i > 0) {
      steps += "; ";
      answers += "; ";
    }
    steps += ActorName(s.actor);
    switch (s.op) {
      case EditOp::kEdit: steps += " edit \"" + s.body + "\""; break;
      case EditOp::kDelete: steps += " delete"; break;
      case EditOp::kDeleteForMe: steps += " delete_for_me"; break;
    }
    if (!s.client_id.empty()) steps += " [" + s.client_id + "]";
    if (s.when == When::kAfterEditWindow) steps += " after the edit window";
    if (s.when == When::kAfterDeleteWindow) steps += " after the delete window";
    answers += s.expect;
  }
  return "| " + std::to_string(v.id) + " | " + steps + " | " + answers + " | " + v.alice + " | " + v.bob + " | " +
         v.note + " |";
}

// docs/protocol.md lacks one of the rows: their numbers (empty: all there).
inline std::vector<int> MissingDocRows(const std::string& source_dir) {
  std::ifstream in(source_dir + "/docs/protocol.md");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  std::vector<int> missing;
  for (const EditVector& v : EditVectors())
    if (doc.find(RenderRow(v)) == std::string::npos) missing.push_back(v.id);
  return missing;
}

// One user's copy of message m, built from their stream the way a device
// builds it (protocol::ApplyChange), for comparing with a vector's state.
struct DeviceView {
  bool have = false;    // a message event (or history entry) arrived
  bool hidden = false;  // a delete_for_me event arrived
  // Version -1 until anything arrives, so that the message itself (version
  // 0) folds in like any change, in whatever order things arrive.
  protocol::LocalMessageState state{"", -1, false, 0};

  void OnMessage(const std::string& body, int64_t version, bool deleted) {
    have = true;
    protocol::ApplyChange(state, protocol::ReceivedChange{deleted, version, body, 0});
  }
  // Set when an edit or delete arrives (in stream order) for a message the
  // user never had or had deleted for themself: it must not reach them.
  bool leaked = false;

  void OnEdit(int64_t version, const std::string& body, int64_t at) {
    if (!have || hidden) leaked = true;
    protocol::ApplyChange(state, protocol::ReceivedChange{false, version, body, at});
  }
  void OnDelete(int64_t version) {
    if (!have || hidden) leaked = true;
    protocol::ApplyChange(state, protocol::ReceivedChange{true, version, "", 0});
  }
  void OnDeleteForMe() { hidden = true; }

  std::string Render() const {
    if (hidden) return "hidden";
    if (!have) return "absent";
    if (state.deleted) return "deleted v" + std::to_string(state.version);
    return "\"" + state.body + "\" v" + std::to_string(state.version);
  }
};

}  // namespace parley::testing
