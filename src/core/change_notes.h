// ChangeNotes: tells a store read whose answer was in flight while a user
// changed that what it read of that user may be from before the change.
//
// A read runs on one of the store's readers; its answer can be from before
// a change that completed meanwhile and still arrive after it, when the
// change's own follow-up (closing a revoked device's connections,
// re-checking a watcher's presence) could not reach what the read was
// about to install. So reads are numbered as issued (Begin); a change is
// noted, per user, with the number of the next read (Note); a read whose
// answer is in asks whether one of its users changed since it was issued
// (ChangedSince), reads that again if so, and ends (End). ChatService keeps
// two: the auth reads' notes of revoked devices, and the presence
// subscriptions' notes of visibility changes.
//
// Bounded: notes are kept only while some read is in flight, and all are
// dropped when none is. Past `max_noted` users, the notes older than every
// read still in flight (which no read in flight needs) are dropped first;
// if that is not enough, or the change is anyone's (user 0: a fabric cut,
// when changes on other nodes may have been missed; every user's
// visibility), every user counts as changed for every read in flight at
// that moment.
//
// Threading: none; ChatService uses them on its core executor only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <unordered_map>

namespace parley::core {

class ChangeNotes {
 public:
  using Read = uint64_t;

  explicit ChangeNotes(size_t max_noted) : max_noted_(max_noted) {}

  // A read is issued: its number, for ChangedSince and End.
  Read Begin() {
    open_.push_back(true);
    return ++issued_;
  }

  // Whether `user_id` (0: nobody in particular), or anyone, changed since
  // read `as_of` was issued.
  // REQUIRES: `as_of` came from Begin and was not ended.
  bool ChangedSince(Read as_of, int64_t user_id) const {
    if (anyone_ > as_of) return true;
    auto it = notes_.find(user_id);
    return it != notes_.end() && it->second > as_of;
  }

  // Read `as_of` is answered; what was noted only for it goes.
  // REQUIRES: `as_of` came from Begin and was not ended.
  void End(Read as_of) {
    open_[as_of - oldest_] = false;
    while (!open_.empty() && !open_.front()) {
      open_.pop_front();
      ++oldest_;
    }
    if (open_.empty()) {
      notes_.clear();
      anyone_ = 0;
    }
  }

  // `user_id` changed (0: perhaps anyone).
  void Note(int64_t user_id) {
    if (open_.empty()) return;  // every later read sees the change
    if (user_id != 0) {
      if (auto it = notes_.find(user_id); it != notes_.end()) {
        it->second = issued_ + 1;  // noted again: no more room
        return;
      }
      // A note matters only to reads issued before it: past the bound, drop
      // those that no read still in flight was issued before.
      if (notes_.size() >= max_noted_)
        std::erase_if(notes_, [this](const auto& note) { return note.second <= oldest_; });
      if (notes_.size() < max_noted_) {
        notes_.emplace(user_id, issued_ + 1);
        return;
      }
    }
    notes_.clear();
    anyone_ = issued_ + 1;
  }

  // Users noted one by one (for tests).
  size_t noted() const { return notes_.size(); }

 private:
  const size_t max_noted_;
  Read issued_ = 0;
  // Reads from oldest_ to issued_, true while in flight; the front is always
  // one in flight (empty: none is).
  std::deque<bool> open_;
  Read oldest_ = 1;
  // User -> the number of the first read issued after their change.
  std::unordered_map<int64_t, Read> notes_;
  // Every read numbered below this counts as changed for every user (0: none).
  Read anyone_ = 0;
};

}  // namespace parley::core
