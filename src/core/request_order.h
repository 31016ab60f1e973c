// RequestOrder: makes requests of one key take effect in the order they
// arrived, although each first waits for store reads that may complete in any
// order (the store serves reads on several connections: SQLite's
// --sqlite-read-connections, PostgreSQL's --pg-read-connections).
//
// Each request takes a ticket at arrival (Take). When its reads are done it
// asks to take effect (Land): it may, unless a later ticket of the same key
// already did, in which case it is stale and dropped (what it would publish
// is older than what the later one published). A request that fails before
// taking effect gives its ticket back (Drop). A key is forgotten as soon as
// none of its tickets is in flight, so the map holds only keys with reads
// outstanding; a ticket taken after that is later than every one before it.
//
// Used where the newest request of a key wins outright (typing per
// conversation and typer, the block-set cache per user). Requests that must
// all take effect, in order, wait their turn instead (ChatService's serial
// queues).
//
// Threading: none; ChatService uses it on its core executor only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <unordered_map>
#include <utility>

#include "common/id_hash.h"

namespace parley::core {

template <typename Key, typename Hash = std::hash<Key>>
class RequestOrder {
 public:
  using Ticket = uint64_t;

  // A request of `key` arrived: its place in the order.
  Ticket Take(const Key& key) {
    Entry& e = entries_[key];
    ++e.in_flight;
    return ++e.issued;
  }

  // The request holding `ticket` is ready to take effect. Returns true if it
  // may (no later ticket of `key` has taken effect; it now has), false if it
  // is stale. Either way the ticket is given back.
  // REQUIRES: `ticket` came from Take(key) and was neither landed nor dropped.
  bool Land(const Key& key, Ticket ticket) {
    auto it = entries_.find(key);
    if (it == entries_.end()) return true;  // not reachable for a valid ticket
    Entry& e = it->second;
    const bool fresh = ticket > e.landed;
    if (fresh) e.landed = ticket;
    Release(it);
    return fresh;
  }

  // The request holding `ticket` will not take effect (it failed): gives
  // the ticket back without superseding earlier ones.
  // REQUIRES: as for Land.
  void Drop(const Key& key, Ticket ticket) {
    (void)ticket;
    auto it = entries_.find(key);
    if (it != entries_.end()) Release(it);
  }

  // Something other than these requests just made the key's state current
  // (e.g. a local write): every ticket in flight becomes stale. Nothing is
  // kept when none is in flight.
  void Supersede(const Key& key) {
    auto it = entries_.find(key);
    if (it != entries_.end()) it->second.landed = ++it->second.issued;
  }

  // Keys with tickets in flight (tests: the map does not grow).
  size_t keys() const { return entries_.size(); }

 private:
  struct Entry {
    Ticket issued = 0;   // the last ticket taken
    Ticket landed = 0;   // the last ticket that took effect (0: none yet)
    size_t in_flight = 0;
  };
  using Map = std::unordered_map<Key, Entry, Hash>;

  void Release(typename Map::iterator it) {
    if (--it->second.in_flight == 0) entries_.erase(it);
  }

  Map entries_;
};

}  // namespace parley::core
