// RevocationNotes: tells an auth whose store read was in flight while its
// user's devices were revoked that what it read may be from before the
// revocation.
//
// An auth reads the device by its token on one of the store's readers; the
// answer can be from before a revocation (an unlink, a password change, an
// account disabled, here or on another node) and arrive after the
// revocation closed the device's connections: attached as read, the revoked
// device would stay connected. So auth reads are numbered as issued (Begin);
// a revocation is noted, per user, with the number of the next read (Note);
// a read whose answer comes in (End) learns whether a revocation of its user
// was noted after it was issued, and then ChatService reads the device again.
//
// Bounded: notes are kept only while some read is in flight, and all are
// dropped when none is. Past `max_noted` users, the notes older than every
// read still in flight (which no read in flight needs) are dropped first;
// if that is not enough, or the revocation is of anyone's devices (user 0: a
// fabric cut, when revocations on other nodes may have been missed), every
// read in flight at that moment counts as revoked.
//
// Threading: none; ChatService uses it on its core executor only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <unordered_map>

namespace parley::core {

class RevocationNotes {
 public:
  using Read = uint64_t;

  explicit RevocationNotes(size_t max_noted) : max_noted_(max_noted) {}

  // An auth read is issued: its number, for End.
  Read Begin() {
    open_.push_back(true);
    return ++issued_;
  }

  // The answer of read `as_of` (of a device of `user_id`; 0 when the read
  // failed) is in: whether a revocation of that user, or of anyone's, was
  // noted since it was issued.
  // REQUIRES: `as_of` came from Begin and was not ended.
  bool End(Read as_of, int64_t user_id) {
    bool revoked = anyone_ > as_of;
    if (auto it = notes_.find(user_id); it != notes_.end()) revoked = revoked || it->second > as_of;
    open_[as_of - oldest_] = false;
    while (!open_.empty() && !open_.front()) {
      open_.pop_front();
      ++oldest_;
    }
    if (open_.empty()) {
      notes_.clear();
      anyone_ = 0;
    }
    return revoked;
  }

  // Devices of `user_id` were revoked (0: perhaps anyone's).
  void Note(int64_t user_id) {
    if (open_.empty()) return;  // every later read sees the revocation
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
  // User -> the number of the first read issued after their revocation.
  std::unordered_map<int64_t, Read> notes_;
  // Every read numbered below this counts as revoked (0: none).
  Read anyone_ = 0;
};

}  // namespace parley::core
